"""A caller whose call front-end died (an AGI server killed mid-call, a web process gone, a status
callback lost) must not haunt the queue: no agent is offered a caller who is not there, and the
citizen is called back. A waiting caller's front-end asks about them every few seconds
(``position(..., caller_there=True)``, from the flow's waiting loop); one nobody asked about for
``queue.lost_after_s`` is taken as lost by the ticker."""
from __future__ import annotations

import redis

from acd_support import Clock, events, make_acd, seat
from call_routing.acd import ACD
from test_acd_timers import with_timers


def _alive(acd, *call_ids):
    for call_id in call_ids:
        assert acd.position(call_id, caller_there=True).state == "waiting"


def test_a_caller_nobody_asks_about_is_called_back_keeping_their_place(redis_url, rules):
    clock = Clock()
    acd = make_acd(redis_url, rules, clock)
    assert acd.lost_after_s == 120  # the shipped rules
    acd.enqueue("general", "12345", "13800138000", call_id="gone-with-number")
    clock.advance(1)
    acd.enqueue("general", "12345", None, call_id="gone-anonymous")
    clock.advance(1)
    acd.enqueue("general", "12345", "13900139000", call_id="still-here")
    for _ in range(11):  # the front-end of still-here keeps asking, every 10 s
        clock.advance(10)
        _alive(acd, "still-here")
        assert acd.tick()["lost"] == 0
    clock.advance(10)  # 122 and 121 s since the two others were last heard of
    assert acd.tick()["lost"] == 2
    # the caller with a number: a missed-call callback, first in line as before
    lost = acd.call("gone-with-number")
    assert (lost["state"], lost["kind"]) == ("waiting", "callback")
    assert acd.position("gone-with-number").position == 1 and acd.position("still-here").position == 2
    assert acd.call("gone-anonymous")["state"] == "abandoned"
    assert acd.call("still-here")["kind"] == "live"
    # counted as lost calls (呼损) and called back, said to the supervisor
    assert [e.get("reason") for e in events(acd, "abandon")] == ["lost", "lost"]
    assert [e["reason"] for e in events(acd, "callback", "gone-with-number")] == ["lost"]
    assert {a["call"] for a in acd.alerts() if a["alert"] == "lost"} == {"gone-with-number", "gone-anonymous"}
    total = acd.kpis()["total"]
    assert (total["offered"], total["abandoned"], total["lost"]) == (3, 2, 2)
    # the next free seat gets the callback, not a ghost caller to ring into silence
    seat(acd, "a1", {"general": 5})
    assert acd.call("gone-with-number")["state"] == "ringing" and acd.call("gone-with-number")["agent"] == "a1"
    assert acd.tick()["lost"] == 0  # nothing taken twice


def test_only_live_callers_waiting_in_line_are_ever_taken_as_lost(redis_url, rules):
    clock = Clock()
    acd = make_acd(redis_url, rules, clock)
    # a callback waiting for a seat has nobody on the line to ask about
    acd.enqueue("general", "12345", "13700137000", call_id="cb")
    assert acd.request_callback("cb").status == "ok"
    # a connected call, and a call cold-transferred by its agent (the caller waits in the
    # conference, where no waiting loop asks about them)
    seat(acd, "a1", {"legal": 5})
    acd.enqueue("legal", "12348", "13600136000", call_id="talking")
    assert acd.answer("talking", "a1").status == "ok"
    seat(acd, "a2", {"legal": 5})
    seat(acd, "a3", {"civil_affairs": 5})
    acd.pause("a3", "break")  # the group is staffed, nobody free: the transferred caller waits
    acd.enqueue("legal", "12348", "13500135000", call_id="moved")
    assert acd.answer("moved", "a2").status == "ok"
    assert acd.transfer("moved", "civil_affairs").status == "ok"
    assert acd.call("moved")["state"] == "waiting"
    clock.advance(600)
    assert acd.tick()["lost"] == 0
    assert acd.call("cb")["kind"] == "callback" and acd.call("talking")["state"] == "connected"
    assert acd.call("moved")["state"] == "waiting" and acd.call("moved")["kind"] == "transfer"
    assert not acd.redis.zcard(acd.keys.seen())  # their entries were dropped on the way


def test_a_ring_nobody_answered_is_no_sign_of_the_caller(redis_url, rules):
    """Going back in line after an unanswered offer says nothing of the caller: the clock runs
    from the last time their front-end asked, not from the return."""
    clock = Clock()
    acd = make_acd(redis_url, rules, clock)
    seat(acd, "a1", {"legal": 5})
    acd.enqueue("legal", "12348", "13800138000", call_id="c1")  # nobody asks about it from here on
    assert acd.call("c1")["state"] == "ringing"
    clock.advance(21)  # the seat never answers: back in line at the ring timeout
    assert acd.tick()["ring_timeout"] == 1 and acd.call("c1")["state"] == "waiting"
    clock.advance(98)  # 119 s since the caller was last heard of
    assert acd.tick()["lost"] == 0
    clock.advance(2)
    assert acd.tick()["lost"] == 1 and acd.call("c1")["kind"] == "callback"


def _run(acd, clock, seconds, *, asking=(), every=5):
    """``seconds`` of the ticker (once a second) while the front-ends of ``asking`` ask about their
    callers every ``every`` s, as the flow's waiting loop does (a front-end that sees the offer
    dials the seat: it asks nothing more until the ring ends). Returns the calls taken as lost."""
    from ivr.services import AcdQueue

    queue, lost = AcdQueue(acd), 0
    for i in range(seconds):
        clock.advance(1)
        lost += acd.tick()["lost"]
        for call_id in asking:
            if i % every == 0 and acd.call(call_id)["state"] == "waiting":
                queue.status(call_id)
            elif acd.call(call_id)["state"] == "ringing" and acd.call(call_id)["offers"] != _seen(acd, call_id):
                queue.status(call_id)  # the loop's next round sees the offer at once
    return lost


def _seen(acd, call_id):
    return int(acd.redis.hget(acd.keys.call(call_id), "offer_seen") or 0)


def test_a_ghost_cycling_through_the_seats_is_swept_within_the_lost_caller_limit(redis_url, rules):
    """Issue 16: an AGI call sent to the dialplan's fallback during an outage, whose hang-up
    message was lost, stays in line as a ghost: offered to a seat nobody rings, returned at the
    ring timeout, offered again. It is swept once its front-end has been silent for
    ``lost_after_s`` (even while ringing) — and the caller behind it, whose wait ticks keep
    coming, gets the seat."""
    from ivr.services import AcdQueue

    clock = Clock()
    acd = make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)  # the consoles are there
    queue = AcdQueue(acd)
    queue.enqueue("ghost", skill="general", line="12345", caller=None, ticket="1")
    assert queue.status("ghost").state == "waiting"  # its waiting loop asked once, then the outage
    clock.advance(1)
    queue.enqueue("here", skill="general", line="12345", caller="13900139000", ticket="2")
    seat(acd, "a1", {"general": 5})
    assert acd.call("ghost")["agent"] == "a1"  # the ghost is first in line: it gets the seat
    # ring timeouts at 21, 41, … 101 s: not rung, back in line, offered to the free seat again
    assert _run(acd, clock, 118, asking=["here"]) == 0
    assert acd.call("ghost")["offers"] >= 5 and acd.call("here")["state"] == "waiting"
    assert acd.agent("a1")["state"] == "ringing" and acd.agent("a1")["call"] == "ghost"
    # 120 s after its last sign of life, the sweep takes the ghost out of the seat's ring
    assert _run(acd, clock, 3, asking=["here"]) == 1
    assert acd.call("ghost")["state"] == "abandoned"
    [taken] = events(acd, "abandon", "ghost")
    assert (taken["reason"], taken["agent"]) == ("lost", "a1")
    # the seat is free for the caller who is there: it rings (their loop saw the offer)
    assert acd.call("here")["state"] == "ringing" and acd.call("here")["agent"] == "a1"
    assert acd.agent("a1")["state"] == "ringing"
    offers = acd.call("ghost")["offers"]
    assert _run(acd, clock, 300, asking=["here"]) == 0
    assert acd.call("ghost")["offers"] == offers  # never offered again
    assert acd.call("here")["kind"] == "live"


def test_a_ghost_with_a_number_is_called_back_and_the_seat_it_held_is_not_paused(redis_url, rules):
    from ivr.services import AcdQueue

    clock = Clock()
    acd = make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)  # the consoles are there
    queue = AcdQueue(acd)
    queue.enqueue("ghost", skill="general", line="12345", caller="13800138000", ticket="1")
    assert queue.status("ghost").state == "waiting"
    seat(acd, "a1", {"general": 5})
    seat(acd, "a2", {"general": 5})
    assert _run(acd, clock, 125) == 1
    ghost = acd.call("ghost")
    assert (ghost["kind"], ghost["state"]) in {("callback", "waiting"), ("callback", "ringing")}
    assert [e["reason"] for e in events(acd, "callback", "ghost")] == ["lost"]
    assert {acd.agent(a)["state"] for a in ("a1", "a2")} <= {"ready", "ringing"}  # nobody paused
    assert acd.kpis()["total"]["lost"] == 1 and acd.kpis()["total"]["no_answer"] == 0


def test_a_caller_whose_wait_ticks_keep_coming_is_never_swept(redis_url, rules):
    """A genuine caller: offered again and again to seats that let it ring out (20 s of ring with
    no wait tick each time, the loop dialing), between rounds of their waiting loop every 5 s."""
    clock = Clock()
    acd = make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)  # the consoles are there
    seat(acd, "a1", {"general": 5})
    acd.enqueue("general", "12345", "13900139000", call_id="here")
    for _ in range(12):  # ten minutes
        assert _run(acd, clock, 50, asking=["here"]) == 0
        if acd.agent("a1")["state"] == "paused":  # the seat let it ring out: back to ready
            acd.ready("a1")
    here = acd.call("here")
    assert here["kind"] == "live" and here["state"] in ("waiting", "ringing") and here["offers"] >= 10
    assert not events(acd, "abandon")


def test_how_long_is_the_admins_setting(redis_url, rules):
    clock = Clock()
    current = {"rules": with_timers(rules, lost_after_s=300)}
    acd = make_acd(redis_url, lambda: current["rules"], clock)
    acd.enqueue("general", "12345", "13800138000", call_id="c1")
    clock.advance(200)
    assert acd.tick()["lost"] == 0
    current["rules"] = with_timers(rules, lost_after_s=180)  # an admin's edit applies at the next tick
    assert acd.tick()["lost"] == 1
    # 0 given to the ACD itself (a tool, a test) turns it off
    never = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules, clock=clock, dispatch_callback=False,
                lost_after_s=0)
    never.enqueue("general", "12345", "13900139000", call_id="c2")
    clock.advance(10_000)
    assert never.tick()["lost"] == 0 and never.call("c2")["kind"] == "live"


def test_the_call_flows_waiting_loop_is_the_sign_of_life(redis_url, rules):
    """Both front-ends wait through ``CallFlow.wait`` → ``AcdQueue.status``: that is what keeps a
    caller in line."""
    from ivr.services import AcdQueue

    clock = Clock()
    acd = make_acd(redis_url, rules, clock)
    queue = AcdQueue(acd)
    queue.enqueue("c1", skill="general", line="12345", caller="13800138000", ticket="7")
    clock.advance(100)
    assert queue.status("c1").state == "waiting"
    clock.advance(100)
    assert acd.tick()["lost"] == 0
    clock.advance(21)
    assert acd.tick()["lost"] == 1 and queue.status("c1").state == "callback"


def test_a_lost_after_shorter_than_a_front_ends_round_is_refused_at_its_line(rules_path, tmp_path):
    from call_routing.rules import check_rules

    text = rules_path.read_text(encoding="utf-8")
    assert "  lost_after_s: 120 " in text
    text = text.replace("  lost_after_s: 120 ", "  lost_after_s: 20 ", 1)
    (tmp_path / "emergency_keywords.yaml").write_text(
        (rules_path.parent / "emergency_keywords.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(text, encoding="utf-8")
    line = next(i + 1 for i, ln in enumerate(text.splitlines()) if "lost_after_s: 20" in ln)
    loaded, problems = check_rules(tmp_path / "rules.yaml")
    assert loaded is None
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'rules.yaml'}:{line}: queue.lost_after_s: 「20」应为 60 到 3600 之间的整数（秒）"]


def test_a_seat_nobody_rang_is_not_paused_one_that_let_it_ring_is(redis_url, rules):
    """On Asterisk the caller's own waiting loop rings the seat when it sees the offer: with that
    loop gone (its AGI server died), the seat's phone never rang and its agent is not to blame."""
    from ivr.services import AcdQueue

    clock = Clock()
    acd = make_acd(redis_url, rules, clock)
    queue = AcdQueue(acd)
    queue.enqueue("ghost", skill="general", line="12345", caller="13800138000", ticket="1")
    assert queue.status("ghost").state == "waiting"  # its front-end asked once, then died
    seat(acd, "a1", {"general": 5})
    assert acd.call("ghost")["state"] == "ringing" and acd.call("ghost")["agent"] == "a1"
    clock.advance(21)  # nobody asks about the caller, nobody rings a1's phone
    assert acd.tick()["ring_timeout"] == 1
    assert acd.agent("a1")["state"] != "paused"
    assert [e["reason"] for e in events(acd, "noanswer", "ghost")] == ["not-rung"]
    assert acd.kpis()["total"]["no_answer"] == 0  # nobody was rung: no seat failed to answer
    assert acd.call("ghost")["state"] in ("waiting", "ringing")  # back in line (and offered again)
    # a caller whose front-end is there sees the offer: a seat that lets it ring out is paused
    seat(acd, "a2", {"legal": 5})
    acd.pause("a2", "break")
    queue.enqueue("here", skill="legal", line="12348", caller="13900139000", ticket="2")
    assert queue.status("here").state == "waiting"
    acd.ready("a2")
    assert queue.status("here").state == "offered"  # the loop sees the offer and dials a2
    clock.advance(21)
    assert acd.tick()["ring_timeout"] >= 1
    assert acd.agent("a2")["state"] == "paused" and acd.agent("a2")["reason"] == "no-answer"


def test_an_ended_call_s_record_is_kept_two_days_then_dropped(redis_url, rules):
    """Redis keeps data across restarts (docs/acd.md): ended calls must not pile up in it."""
    clock = Clock()
    acd = make_acd(redis_url, rules, clock)
    seat(acd, "a1", {"general": 5})
    acd.enqueue("general", "12345", "13800138000", call_id="done")
    acd.answer("done", "a1")
    ttl = acd.redis.ttl(acd.keys.call("done"))
    assert ttl == -1  # a call in progress is never dropped
    acd.hangup("done", "agent")
    assert 2 * 86400 - 5 <= acd.redis.ttl(acd.keys.call("done")) <= 2 * 86400
    acd.enqueue("general", "12345", None, call_id="gave-up")
    acd.hangup("gave-up")
    assert acd.call("gave-up")["state"] == "abandoned" and acd.redis.ttl(acd.keys.call("gave-up")) > 86400
