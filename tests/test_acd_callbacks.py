"""Callbacks keep the caller's place in line and are dialed exactly once."""
from __future__ import annotations

import threading

import pytest

from acd_support import events, make_acd, seat
from call_routing.acd import RecordingDialer, place_callback
from call_routing.acd.callbacks import AGENT_NO_ANSWER, NO_ANSWER


@pytest.fixture
def dialed():
    return []


@pytest.fixture
def acd(redis_url, rules, clock, dialed):
    # the dispatcher records offers; tests run the "rq job" (place_callback) themselves
    return make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600,
                    dispatch_callback=lambda acd, offer: dialed.append(offer))


def three_callers(acd, clock):
    ids = []
    for number in ("13800000001", "13800000002", "13800000003"):
        ids.append(acd.enqueue("general", "12345", number).call_id)
        clock.advance(10)
    return ids


def test_a_caller_who_accepts_a_callback_keeps_their_place_in_line(acd, clock, dialed):
    a, b, c = three_callers(acd, clock)
    assert acd.request_callback(b).ok
    acd.hangup(b)  # B puts the phone down: nothing is lost
    assert acd.call(b)["state"] == "waiting" and acd.position(b).position == 2
    seat(acd, "x", {"general": 5})
    assert acd.agent("x")["call"] == a
    acd.answer(a)
    acd.hangup(a)
    result = acd.wrapup_done("x")
    assert [(o.call_id, o.kind) for o in result.offers] == [(b, "callback")]  # B before C
    assert acd.position(c).position == 1
    dialer = RecordingDialer()
    assert place_callback(acd, b, result.offers[0].n, dialer) == "connected"
    assert [(r.number, r.agent_id) for r in dialer.calls] == [("13800000002", "x")]
    assert acd.call(b)["state"] == "connected" and acd.agent("x")["state"] == "busy"
    assert [o.call_id for o in dialed] == [b]


def test_a_caller_who_hangs_up_after_waiting_gets_a_missed_call_callback_in_the_same_place(acd, clock):
    a, b, c = three_callers(acd, clock)
    assert acd.hangup(b).status == "callback"  # waited 20 s ≥ 10 s
    assert acd.position(b).position == 2
    (cb,) = events(acd, "callback", b)
    assert cb["reason"] == "abandoned"
    assert events(acd, "abandon", b)  # it still counts as a lost call (呼损)
    quick = acd.enqueue("general", "12345", "13800000009").call_id
    clock.advance(3)
    assert acd.hangup(quick).status == "abandoned"  # 3 s: probably a misdial, no callback


def test_an_anonymous_caller_cannot_be_called_back(acd, clock):
    call = acd.enqueue("general", "12345", None).call_id
    clock.advance(30)
    assert acd.request_callback(call).status == "no_number"
    assert acd.hangup(call).status == "abandoned"


def test_a_callback_is_dialed_exactly_once_even_if_its_job_runs_twice(acd, clock):
    a, b, c = three_callers(acd, clock)
    acd.request_callback(a)
    seat(acd, "x", {"general": 5})
    n = acd.call(a)["offers"]
    dialer = RecordingDialer(outcome="placed")
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(place_callback(acd, a, n, dialer))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(dialer.calls) == 1
    assert sorted(outcomes) == ["already_dialed"] * 7 + ["placed"]


def test_an_unanswered_callback_is_retried_later_from_its_place_then_given_up(acd, clock, dialed):
    acd.callback_attempts = 2
    a, b, c = three_callers(acd, clock)
    acd.request_callback(a)
    seat(acd, "x", {"general": 5})
    seat(acd, "y", {"general": 5}, login=False)
    assert place_callback(acd, a, 1, RecordingDialer(NO_ANSWER)) == NO_ANSWER
    assert acd.call(a)["state"] == "retry"
    assert acd.agent("x")["call"] == b  # the agent moves on to the next caller
    clock.advance(301)
    acd.tick()
    acd.login("y")
    assert acd.agent("y")["call"] == a  # back at the head, ahead of C
    assert place_callback(acd, a, 2, RecordingDialer(NO_ANSWER)) == NO_ANSWER
    assert acd.call(a)["state"] == "failed"
    assert acd.kpis()["total"]["callbacks_failed"] == 1


def test_an_agent_who_misses_a_callback_is_paused_and_the_callback_keeps_its_place(acd, clock):
    a, b, c = three_callers(acd, clock)
    acd.request_callback(a)
    seat(acd, "x", {"general": 5})
    assert place_callback(acd, a, 1, RecordingDialer(AGENT_NO_ANSWER)) == AGENT_NO_ANSWER
    assert acd.agent("x")["state"] == "paused"
    assert acd.position(a).position == 1
    assert place_callback(acd, a, 1, RecordingDialer()) == "already_dialed"


def test_a_caller_with_a_pending_callback_who_rings_again_takes_back_the_place(acd, clock, dialed):
    a, b, c = three_callers(acd, clock)
    acd.hangup(b)  # missed-call callback pending for 13800000002
    again = acd.enqueue("general", "12345", "13800000002").call_id
    assert acd.position(again).position == 2  # the old place, ahead of C
    assert acd.call(b)["state"] == "resumed"
    seat(acd, "x", {"general": 5})
    acd.answer(a)
    acd.hangup(a)
    acd.wrapup_done("x")
    assert acd.agent("x")["call"] == again
    assert dialed == []  # the cancelled callback is never dialed


def test_a_callback_job_through_a_real_rq_worker_dials_through_the_configured_dialer(
        redis_url, rules, clock, monkeypatch):
    from rq import SimpleWorker

    from call_routing.acd.callbacks import DIALER_ENV, RQ_QUEUE
    from intake.callback_jobs import rq_dispatch

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv(DIALER_ENV, "acd_support:RedisRecordingDialer")
    acd = make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600, dispatch_callback=rq_dispatch)
    call = acd.enqueue("general", "12345", "13800000007").call_id
    acd.request_callback(call)
    seat(acd, "x", {"general": 5})  # the offer enqueues the rq job
    import redis as redis_lib
    from rq import Queue

    conn = redis_lib.Redis.from_url(redis_url)
    SimpleWorker([Queue(RQ_QUEUE, connection=conn)], connection=conn).work(burst=True)
    assert acd.redis.lrange("test:dialed", 0, -1) == [f"{call} 13800000007 x 1"]
    assert acd.call(call)["state"] == "connected"
    conn.close()
