"""Leaving the queue on purpose (emergency, fallback), the satisfaction survey in the queue log
and the KPIs, and three-way reservations of expert seats — on a real Redis."""
from __future__ import annotations

import pytest

from acd_support import events, make_acd, seat
from call_routing.acd import ACDError
from call_routing.acd.kpi import audit

CALLER = "13800138000"


@pytest.fixture
def acd(redis_url, rules, clock):
    # the default missed-call callback (after 10 s) is on: leave() must never trigger it
    return make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)


def test_a_caller_transferred_to_an_emergency_line_leaves_without_a_callback_and_is_not_lost(acd, clock):
    waiting = acd.enqueue("general", "12345", CALLER, call_id="fire").call_id
    clock.advance(40)  # long enough for a missed-call callback, had it been a hang-up
    r = acd.leave(waiting, "emergency")
    assert r.status == "ok" and float(r.info) == pytest.approx(40)
    call = acd.call(waiting)
    assert call["state"] == "left" and call["kind"] == "live"
    assert acd.position(waiting).position == 0
    assert [e["e"] for e in events(acd, call=waiting) if e["e"] != "warn"] == ["enter", "leave"]
    assert events(acd, "leave")[0]["reason"] == "emergency"
    assert not events(acd, "callback") and not events(acd, "abandon")
    k = acd.kpis()["total"]
    assert (k["offered"], k["abandoned"], k["left"], k["left_emergency"], k["abandon_rate"]) == (1, 0, 1, 1, 0.0)
    # a second leave, or a hang-up afterwards, changes nothing
    assert acd.leave(waiting, "emergency").status == "bad_state"
    assert acd.hangup(waiting).status == "gone"
    assert acd.kpis()["total"]["abandoned"] == 0


def test_leaving_while_ringing_releases_the_agent_who_takes_the_next_caller(acd, clock):
    seat(acd, "a1", {"general": 5})
    first = acd.enqueue("general", "12345", CALLER, call_id="c1")
    assert first.offers[0].agent_id == "a1"
    acd.enqueue("general", "12345", "13900000000", call_id="c2")
    r = acd.leave("c1", "fallback")
    assert [(o.call_id, o.agent_id) for o in r.offers] == [("c2", "a1")]
    assert acd.kpis()["total"]["left_fallback"] == 1
    assert audit(acd.events())["double_assignments"] == 0
    with pytest.raises(ACDError):
        acd.leave("c2", "bored")


def test_the_survey_goes_to_the_queue_log_once_and_into_satisfaction_per_line_and_total(acd, clock):
    seat(acd, "a1", {"general": 5, "legal": 5})
    scores = {"g1": "1", "g2": "2", "g3": "3", "l1": "1"}
    for call_id, score in scores.items():
        skill, line = ("legal", "12348") if call_id.startswith("l") else ("general", "12345")
        acd.enqueue(skill, line, CALLER, call_id=call_id)
        acd.answer(call_id, "a1")
        clock.advance(30)
        acd.hangup(call_id, "agent")
        assert acd.survey(call_id, score).status == "ok"
        assert acd.survey(call_id, "3").status == "already"  # Twilio retries, a second key press
        acd.wrapup_done("a1")
    # a sub-center call never queued in the ACD: the flow gives the line
    assert acd.survey("sub1", "2", "12360").status == "ok"
    assert acd.survey("sub1", "2", "12360").status == "already"
    survey = events(acd, "survey", call="g1")[0]
    assert (survey["score"], survey["line"], survey["agent"]) == ("1", "12345", "a1")
    k = acd.kpis()
    general, legal, total = k["lines"]["12345"], k["lines"]["12348"], k["total"]
    assert (general["survey_1"], general["survey_2"], general["survey_3"], general["surveyed"]) == (1, 1, 1, 3)
    assert general["satisfaction_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert legal["satisfaction_rate"] == 1.0 and k["lines"]["12360"]["survey_2"] == 1
    assert (total["surveyed"], total["survey_1"], total["satisfaction_rate"]) == (5, 2, 0.8)
    assert total["very_satisfied_rate"] == 0.4
    with pytest.raises(ACDError):
        acd.survey("g1", "5")


def test_a_three_way_transfer_reserves_a_free_expert_or_changes_nothing(acd, clock):
    seat(acd, "a1", {"legal": 5})
    acd.enqueue("legal", "12348", CALLER, call_id="c")
    acd.answer("c", "a1")
    # no expert logged in: refused, the call stays with the agent, no callback parked
    r = acd.transfer("c", "legal_expert", three_way=True)
    assert r.status == "no_seat" and not r.offers
    assert acd.call("c")["state"] == "connected" and acd.agent("a1")["state"] == "busy"
    seat(acd, "e1", {"legal_expert": 5})
    r = acd.transfer("c", "legal_expert", three_way=True)
    assert r.status == "ok" and [(o.agent_id, o.kind) for o in r.offers] == [("e1", "transfer")]
    agent = acd.agent("a1")
    assert (agent["state"], agent["reason"], agent["call"]) == ("paused", "three-way", "c")
    clock.advance(500)  # no wrap-up timeout puts a seat that is still in the conference back in rotation
    acd.tick()
    assert acd.agent("a1")["state"] == "paused"
    # the expert does not answer: the call is the agent's again, the expert is paused
    r = acd.take_back("c", "no-answer")
    assert r.status == "ok"
    assert (acd.call("c")["state"], acd.call("c")["agent"]) == ("connected", "a1")
    assert acd.agent("a1")["state"] == "busy" and acd.agent("e1")["state"] == "paused"
    # again, the expert joins; the agent leaves and wraps up; the caller hangs up on the expert
    acd.ready("e1")
    assert acd.transfer("c", "legal_expert", three_way=True).offers[0].agent_id == "e1"
    acd.answer("c", "e1")
    assert acd.end_three_way("a1").info == "wrapup" and acd.agent("a1")["state"] == "wrapup"
    acd.hangup("c", "caller")
    assert acd.agent("e1")["state"] == "wrapup" and acd.call("c")["state"] == "completed"
    a = audit(acd.events())
    assert (a["double_assignments"], a["double_connects"]) == (0, 0)
    k = acd.kpis()["total"]
    assert (k["offered"], k["answered"], k["transfers_connected"]) == (1, 1, 1)


def test_cancelling_a_three_way_frees_the_expert_for_the_next_transfer(acd, clock):
    seat(acd, "a1", {"legal": 5})
    seat(acd, "e1", {"legal_expert": 5})
    acd.enqueue("legal", "12348", CALLER, call_id="c")
    acd.answer("c", "a1")
    acd.transfer("c", "legal_expert", three_way=True)
    acd.answer("c", "e1")
    r = acd.take_back("c", "cancelled")  # the expert had joined: they wrap up
    assert r.status == "ok" and acd.agent("e1")["state"] == "wrapup"
    assert acd.call("c")["agent"] == "a1" and acd.call("c")["skill"] == "legal"
    assert acd.take_back("c").status == "bad_state"  # nothing left to take back
    acd.hangup("c", "agent")
    assert acd.agent("a1")["state"] == "wrapup" and acd.call("c")["state"] == "completed"


def test_the_shared_flow_feeds_leave_and_survey_for_both_front_ends(acd, clock, rules):
    """What Asterisk's handlers and Twilio's webhooks both call: the flow over the Redis ACD."""
    from ivr import flow as F
    from ivr.services import AcdQueue

    flow = F.CallFlow(rules, AcdQueue(acd), F.MemoryTickets(), F.MemoryCalls(), clock=clock)
    flow.start("fb", "12345", CALLER)
    flow.wait("fb")
    clock.advance(30)
    flow.fallback("fb")  # the dialplan's own fallback seats take the caller: not a missed call
    assert acd.call("fb")["state"] == "left" and not events(acd, "callback")
    seat(acd, "a1", {"general": 5}, endpoints=("PJSIP/agent1",))
    t = flow.start("sv", "12345", CALLER)
    assert flow.wait("sv").target == "PJSIP/agent1"
    flow.agent_answered("sv")
    assert flow.transfer_ended("sv", "ANSWER").action == "survey"
    flow.survey("sv", "3")
    k = acd.kpis()["total"]
    assert (k["left_fallback"], k["survey_3"], k["satisfaction_rate"]) == (1, 1, 0.0)
    assert flow.tickets.tickets[t.ticket]["survey"] == "dissatisfied"
