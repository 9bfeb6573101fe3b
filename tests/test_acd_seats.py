"""Agent seats: offline → ready ⇄ ringing → busy → wrap-up → ready; paused with a reason;
log-out; heartbeats. Real Redis, injected clock."""
from __future__ import annotations

import pytest

from acd_support import events, make_acd, seat
from call_routing.acd import ACDError, Agent


@pytest.fixture
def acd(redis_url, rules, clock):
    return make_acd(redis_url, rules, clock)


def test_an_agent_who_logs_in_ready_is_offered_the_waiting_call(acd):
    call = acd.enqueue("general", "12345", "13812345678").call_id
    seat(acd, "a1", {"general": 5}, login=False)
    assert acd.agent("a1")["state"] == "offline"
    result = acd.login("a1")
    assert [(o.call_id, o.agent_id) for o in result.offers] == [(call, "a1")]
    assert acd.agent("a1")["state"] == "ringing"
    assert acd.call(call)["state"] == "ringing"


def test_a_full_call_takes_the_agent_through_busy_and_wrap_up_back_to_ready(acd, clock):
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    assert acd.answer(call).ok
    assert acd.agent("a1")["state"] == "busy"
    clock.advance(100)
    assert acd.hangup(call).status == "completed"
    agent = acd.agent("a1")
    assert agent["state"] == "wrapup" and agent["call"] == call  # the ticket is still on screen
    second = acd.enqueue("general", "12345", "13900001111").call_id
    assert acd.call(second)["state"] == "waiting"  # nobody is offered a call during wrap-up
    clock.advance(20)
    result = acd.wrapup_done("a1")
    assert [o.call_id for o in result.offers] == [second]
    states = [e["state"] for e in events(acd, "agent")]
    assert states == ["ready", "wrapup", "ready"]


def test_a_paused_agent_gets_no_calls_until_they_resume(acd):
    seat(acd, "a1", {"general": 5})
    assert acd.pause("a1", "lunch").ok
    agent = acd.agent("a1")
    assert (agent["state"], agent["reason"]) == ("paused", "lunch")
    call = acd.enqueue("general", "12345", "13812345678").call_id
    assert acd.call(call)["state"] == "waiting"
    result = acd.ready("a1")
    assert [o.call_id for o in result.offers] == [call]


def test_a_pause_needs_a_reason_and_a_ringing_agent_cannot_pause(acd):
    seat(acd, "a1", {"general": 5})
    with pytest.raises(ACDError):
        acd.pause("a1", "")
    acd.enqueue("general", "12345", "13812345678")
    assert acd.pause("a1", "break").status == "bad_state"
    assert acd.agent("a1")["state"] == "ringing"


def test_an_agent_can_log_in_paused_and_logging_in_twice_changes_nothing(acd):
    seat(acd, "a1", {"general": 5}, login=False)
    assert acd.login("a1", "paused", "meeting").ok
    assert acd.agent("a1")["state"] == "paused"
    assert acd.login("a1").status == "already"
    assert acd.login("nobody").status == "unknown"


def test_an_agent_who_logs_out_leaves_rotation(acd):
    seat(acd, "a1", {"general": 5})
    assert acd.logout("a1").ok
    assert acd.agent("a1")["state"] == "offline"
    call = acd.enqueue("general", "12345", "13812345678").call_id
    assert acd.call(call)["state"] == "waiting"
    assert acd.redis.scard(acd.keys.staffed("general")) == 0


def test_an_agent_logging_out_during_a_call_stays_until_the_call_ends(acd):
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    acd.answer(call)
    assert acd.logout("a1").status == "after_call"
    assert acd.agent("a1")["state"] == "busy"
    acd.hangup(call)
    assert acd.agent("a1")["state"] == "offline"
    assert events(acd, "wrapup")  # handle time is still recorded


def test_an_agent_logging_out_while_ringing_sends_the_call_to_the_next_agent(acd, clock):
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    clock.advance(1)
    seat(acd, "a2", {"general": 5})
    result = acd.logout("a1")
    assert [(o.call_id, o.agent_id) for o in result.offers] == [(call, "a2")]


def test_a_seat_whose_console_stops_heartbeating_leaves_rotation(acd, clock):
    seat(acd, "quiet", {"general": 5})
    seat(acd, "alive", {"general": 5})
    for _ in range(4):
        clock.advance(10)
        assert acd.heartbeat("alive")
    assert acd.tick()["heartbeat"] == 1
    assert acd.agent("quiet")["state"] == "offline"
    assert acd.agent("alive")["state"] == "ready"
    assert not acd.heartbeat("quiet")  # its console is told to log in again
    assert [e for e in events(acd, "agent") if e["agent"] == "quiet"][-1]["reason"] == "heartbeat"


def test_a_heartbeat_expiry_while_ringing_gives_the_call_to_another_agent(acd, clock):
    seat(acd, "quiet", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    clock.advance(5)
    seat(acd, "alive", {"general": 5})
    clock.advance(31)
    acd.heartbeat("alive")
    acd.ring_timeout_s = 999  # only the heartbeat can end this offer
    acd.tick()
    assert acd.call(call)["agent"] == "alive"


def test_a_forgotten_wrap_up_ends_by_itself(acd, clock):
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    acd.answer(call)
    acd.hangup(call)
    clock.advance(60)
    acd.heartbeat("a1")
    assert acd.tick()["wrapup_timeout"] == 0
    clock.advance(61)
    acd.heartbeat("a1")
    assert acd.tick()["wrapup_timeout"] == 1
    assert acd.agent("a1")["state"] == "ready"


def test_a_seat_profile_is_checked_against_the_rules_and_locked_while_logged_in(acd):
    with pytest.raises(ACDError, match="no skill"):
        acd.save_agent(Agent("x", "X", {"nonsense": 3}))
    with pytest.raises(ACDError, match="1 to 99"):
        acd.save_agent(Agent("x", "X", {"general": 0}))
    seat(acd, "a1", {"general": 5})
    with pytest.raises(ACDError, match="log out"):
        acd.save_agent(Agent("a1", "A", {"general": 9}))


def test_the_acd_carries_on_after_redis_forgets_its_scripts(acd):
    seat(acd, "a1", {"general": 5})
    acd.redis.script_flush()  # e.g. Redis restarted or failed over
    placed = acd.enqueue("general", "12345", "13812345678")
    assert placed.offers[0].agent_id == "a1"


def test_an_agent_pausing_during_wrap_up_finishes_the_wrap_up_first(acd, clock):
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    acd.answer(call)
    clock.advance(50)
    acd.hangup(call)
    clock.advance(10)
    assert acd.pause("a1", "toilet").info == "wrapup"
    assert acd.agent("a1")["state"] == "paused"
    (wrap,) = events(acd, "wrapup")
    assert float(wrap["wrap"]) == pytest.approx(10)
    assert [float(x) for x in acd.redis.lrange(acd.keys.handle("general"), 0, -1)] == [60.0]


def test_an_agent_can_log_out_from_a_pause_or_from_wrap_up(acd):
    seat(acd, "p", {"general": 5})
    acd.pause("p", "meeting")
    assert acd.logout("p").info == "paused"
    seat(acd, "w", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    acd.answer(call)
    acd.hangup(call)
    assert acd.logout("w").info == "wrapup"
    assert acd.agent("p")["state"] == acd.agent("w")["state"] == "offline"
    assert acd.logout("w").status == "already"


def test_a_seat_whose_console_dies_during_a_call_leaves_when_the_call_ends(acd, clock):
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", "13812345678").call_id
    acd.answer(call)
    clock.advance(31)
    assert acd.tick()["heartbeat"] == 1
    assert acd.agent("a1")["state"] == "busy"  # the caller is not cut off
    acd.hangup(call)
    agent = acd.agent("a1")
    assert (agent["state"], agent["reason"]) == ("offline", "heartbeat")
