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


def test_a_caller_back_in_line_after_an_unanswered_offer_gets_a_fresh_start(redis_url, rules):
    clock = Clock()
    acd = make_acd(redis_url, rules, clock)
    seat(acd, "a1", {"legal": 5})
    acd.enqueue("legal", "12348", "13800138000", call_id="c1")
    assert acd.call("c1")["state"] == "ringing"
    clock.advance(21)  # the seat never answers: back in line at the ring timeout
    assert acd.tick()["ring_timeout"] == 1 and acd.call("c1")["state"] == "waiting"
    clock.advance(119)
    assert acd.tick()["lost"] == 0
    clock.advance(2)
    assert acd.tick()["lost"] == 1 and acd.call("c1")["kind"] == "callback"


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
        f"{tmp_path / 'rules.yaml'}:{line}: queue.lost_after_s: 20 must be a whole number of seconds from 60 to 3600"]


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
