"""Three-way transfers (三方转接) on the Asterisk path, over real FastAGI sockets with the real
Redis ACD: the expert seat is reserved through the ACD (a second simultaneous three-way gets no
seat, never the same expert), the party leg's DIALSTATUS comes back (no answer → the caller is
the agent's again and the expert paused), cancel, the agent leaving (warm transfer), and
hangups on the agent's/party's channels that never close the citizen's call."""
from __future__ import annotations

import threading

import pytest
from agi_peer import Peer, agi_env, fastagi_session

from call_routing.acd import Agent
from call_routing.rules_store import RulesStore
from tests.acd_support import agi_world

LEGAL = "12348"  # dual line: seat group legal, expert seats legal_expert


@pytest.fixture(scope="module")
def store(rules_path):
    return RulesStore(rules_path)


@pytest.fixture
def world(store, redis_url, tmp_path):
    yield from agi_world(store, redis_url, tmp_path)


def agi(w, script, *args, uid="1700000000.1", channel="PJSIP/carrier-00000001", **peer) -> Peer:
    env = agi_env(LEGAL, uniqueid=uid, script=script, args=args, network=True)
    env["agi_channel"] = channel
    return fastagi_session(w.server.address, env, Peer(**peer))


def seat(w, agent_id, skills, endpoint=None):
    w.acd.save_agent(Agent(agent_id, agent_id, skills, endpoints=(endpoint or f"PJSIP/{agent_id}",)))
    w.acd.login(agent_id)


def talking(w, uid, agent, dialed=LEGAL, skill="legal") -> str:
    """A caller routed, queued, offered to ``agent`` and answered: agent and caller talking."""
    seat(w, agent, {skill: 50})
    route = fastagi_session(w.server.address, agi_env(dialed, uniqueid=uid, network=True), Peer())
    call_id = route.variables["HOTLINE_CALL_ID"]
    assert route.variables["HOTLINE_ACTION"] == "queue"
    waited = agi(w, "queue_wait", call_id, uid=uid)
    assert (waited.variables["HOTLINE_ACTION"], waited.variables["HOTLINE_TARGET"]) == ("transfer", f"PJSIP/{agent}")
    agi(w, "transfer", call_id, "answered", uid=uid, channel=f"PJSIP/{agent}-00000002")  # U() on answer
    assert w.acd.call(call_id)["state"] == "connected" and w.acd.agent(agent)["state"] == "busy"
    return call_id


def on_agent(w, call_id, agent, *args, **peer) -> Peer:
    """An AGI from the agent's channel (feature code *4, conference menu, hangup handler)."""
    return agi(w, "threeway", call_id, *args, uid=call_id, channel=f"PJSIP/{agent}-00000002", **peer)


def on_party(w, call_id, *args, **peer) -> Peer:
    """An AGI from the party leg (Local/<call>@hotline-party/n;2, its hangup handler, U())."""
    return agi(w, "threeway", call_id, *args, uid=call_id, channel=f"Local/{call_id}@hotline-party-0001;2", **peer)


def start_expert(w, call_id, agent) -> Peer:
    p = on_agent(w, call_id, agent, "start", "expert")
    return p


def state(w, agent):
    a = w.acd.agent(agent)
    return a["state"], a["reason"]


# -- reservation ----------------------------------------------------------------------------------

def test_the_expert_is_reserved_through_the_acd_and_the_party_leg_rings_that_seat(world):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    p = start_expert(w, call_id, "a1")
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_TARGET"], p.variables["HOTLINE_REASON"]) == \
        ("transfer", "PJSIP/e1", "expert")
    call = w.acd.call(call_id)
    assert (call["state"], call["agent"], call["skill"]) == ("ringing", "e1", "legal_expert")
    assert state(w, "a1") == ("paused", "three-way") and state(w, "e1")[0] == "ringing"
    # the Local channel's half asks what to ring: the reserved seat, with the ticket for the headers
    dial = on_party(w, call_id, "dial")
    assert (dial.variables["HOTLINE_ACTION"], dial.variables["HOTLINE_TARGET"]) == ("transfer", "PJSIP/e1")
    assert dial.variables["HOTLINE_TICKET"] == w.flow.state(call_id).ticket
    # a second *4 while this one is under way changes nothing
    again = start_expert(w, call_id, "a1")
    assert (again.variables["HOTLINE_ACTION"], again.variables["HOTLINE_REASON"]) == ("stay", "three_way_under_way")
    assert w.acd.call(call_id)["agent"] == "e1"


def test_two_simultaneous_three_ways_never_get_the_same_expert_the_second_gets_no_seat(world):
    w = world
    calls = [talking(w, "u1", "a1"), talking(w, "u2", "a2")]
    seat(w, "e1", {"legal_expert": 50})
    results, barrier = {}, threading.Barrier(2)

    def press_star4(call_id, agent):
        barrier.wait()
        results[call_id] = start_expert(w, call_id, agent).variables

    threads = [threading.Thread(target=press_star4, args=(c, a)) for c, a in zip(calls, ("a1", "a2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    actions = sorted((v["HOTLINE_ACTION"], v["HOTLINE_REASON"], v["HOTLINE_TARGET"]) for v in results.values())
    assert actions == [("stay", "no_expert_free", ""), ("transfer", "expert", "PJSIP/e1")]
    won = next(c for c, v in results.items() if v["HOTLINE_ACTION"] == "transfer")
    lost = next(c for c in calls if c != won)
    assert w.acd.call(won)["agent"] == "e1"
    # the loser's call is exactly as it was: connected to its agent, nothing moved, nothing logged
    loser_agent = w.acd.call(lost)["agent"]
    assert w.acd.call(lost)["state"] == "connected" and state(w, loser_agent) == ("busy", "")
    assert w.flow.state(lost).three_way is None
    assert [e for e in w.acd.events() if e["e"] == "transfer" and e.get("call") == lost] == []
    # with a second expert free, both get one — never the same
    seat(w, "e2", {"legal_expert": 50})
    p = start_expert(w, lost, loser_agent)
    assert p.variables["HOTLINE_TARGET"] == "PJSIP/e2" and w.acd.call(lost)["agent"] == "e2"


def test_no_expert_logged_in_changes_nothing(world):
    w = world
    call_id = talking(w, "u1", "a1")
    p = start_expert(w, call_id, "a1")
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_TARGET"]) == ("stay", "")
    assert w.acd.call(call_id)["state"] == "connected" and state(w, "a1") == ("busy", "")


# -- how the party leg ended ----------------------------------------------------------------------

@pytest.mark.parametrize("dialstatus", ["NOANSWER", "BUSY", "CHANUNAVAIL", "CONGESTION"])
def test_an_expert_who_does_not_answer_gives_the_caller_back_to_the_agent_and_is_paused(world, dialstatus):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    on_party(w, call_id, "dial")
    ended = on_party(w, call_id, "ended", dialstatus)  # the party leg's hangup handler
    assert (ended.variables["HOTLINE_ACTION"], ended.variables["HOTLINE_REASON"]) == ("stay", "no_answer")
    call = w.acd.call(call_id)
    assert (call["state"], call["agent"]) == ("connected", "a1") and state(w, "a1") == ("busy", "")
    assert state(w, "e1") == ("paused", "no-answer")  # like any seat that misses a call
    assert [e["reason"] for e in w.acd.events() if e["e"] == "takeback"] == ["no-answer"]
    assert w.flow.state(call_id).three_way is None
    # the agent may try again once the expert is back; the conversation still ends normally
    w.acd.ready("e1")
    assert start_expert(w, call_id, "a1").variables["HOTLINE_TARGET"] == "PJSIP/e1"


def test_cancel_frees_the_expert_and_the_caller_stays_with_the_agent(world):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    on_party(w, call_id, "dial")
    cancel = on_agent(w, call_id, "a1", "cancel")  # *9 in the agent's conference menu
    assert (cancel.variables["HOTLINE_ACTION"], cancel.variables["HOTLINE_REASON"]) == ("stay", "cancelled")
    assert w.acd.call(call_id)["agent"] == "a1" and state(w, "a1") == ("busy", "")
    assert state(w, "e1") == ("ready", "")  # free again at once, not paused
    # the dialplan then hangs up the party leg: its report (CANCEL) changes nothing
    late = on_party(w, call_id, "ended", "CANCEL")
    assert late.variables["HOTLINE_REASON"] == "no_three_way" and state(w, "e1") == ("ready", "")
    # the U() of an expert picking up at that very moment hangs the leg up (GOSUB_RESULT=ABORT)
    assert on_party(w, call_id, "answered").variables["HOTLINE_ACTION"] == "hangup"
    # a second cancel finds nothing to cancel: the party leg is left alone
    assert on_agent(w, call_id, "a1", "cancel").variables["HOTLINE_REASON"] == "no_three_way"


def test_cancel_after_the_expert_joined_sends_the_expert_to_wrap_up(world):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    on_party(w, call_id, "dial")
    assert on_party(w, call_id, "answered").variables["HOTLINE_ACTION"] == "stay"
    assert state(w, "e1")[0] == "busy" and w.acd.call(call_id)["agent"] == "e1"
    on_agent(w, call_id, "a1", "cancel")
    assert state(w, "e1")[0] == "wrapup" and state(w, "a1") == ("busy", "")


def test_the_agent_leaving_hands_the_caller_to_the_expert_then_the_survey(world):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    on_party(w, call_id, "dial")
    on_party(w, call_id, "answered")  # U() on the expert's channel: the seat is busy on the call
    assert w.acd.call(call_id)["agent"] == "e1" and state(w, "e1")[0] == "busy"
    left = on_agent(w, call_id, "a1", "agent-left")  # *0, or the agent hung up (hangup handler)
    assert (left.variables["HOTLINE_ACTION"], left.variables["HOTLINE_REASON"]) == ("stay", "handed")
    assert state(w, "a1")[0] == "wrapup" and state(w, "e1")[0] == "busy"
    assert on_agent(w, call_id, "a1", "agent-left").variables["HOTLINE_ACTION"] == "none"  # once
    # the expert hangs up: the party leg's report; the caller is alone -> survey
    ended = on_party(w, call_id, "ended", "ANSWER")
    assert ended.variables["HOTLINE_ACTION"] == "survey"
    # the caller's ConfBridge returns (nobody marked left): completed, the survey
    done = agi(w, "transfer", call_id, "ANSWER", uid=call_id)
    assert done.variables["HOTLINE_ACTION"] == "survey"
    assert w.acd.call(call_id)["state"] == "completed" and state(w, "e1")[0] == "wrapup"


def test_the_agent_leaving_while_the_expert_still_rings_cancels_it(world):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    on_party(w, call_id, "dial")
    left = on_agent(w, call_id, "a1", "agent-left")
    # survey: the dialplan hangs up the party leg; the caller leaves the conference (end_marked)
    assert (left.variables["HOTLINE_ACTION"], left.variables["HOTLINE_REASON"]) == ("survey", "agent_left")
    assert state(w, "e1") == ("ready", "") and w.acd.call(call_id)["agent"] == "a1"
    assert on_party(w, call_id, "answered").variables["HOTLINE_ACTION"] == "hangup"
    agi(w, "transfer", call_id, "ANSWER", uid=call_id)
    assert w.acd.call(call_id)["state"] == "completed" and state(w, "a1")[0] == "wrapup"


def test_the_caller_hanging_up_during_a_joined_three_way_frees_both_seats(world):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    on_party(w, call_id, "answered")
    agi(w, "transfer", call_id, "hangup", uid=call_id)  # the caller's h extension in [hotline-conf]
    assert state(w, "a1")[0] == "wrapup" and state(w, "e1")[0] == "wrapup"
    assert w.acd.call(call_id)["state"] == "completed"
    kinds = [e["e"] for e in w.acd.events() if e.get("call") == call_id]
    assert "abandon" not in kinds


def test_the_caller_hanging_up_while_the_expert_rings_is_not_an_abandoned_call(world):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    agi(w, "transfer", call_id, "hangup", uid=call_id)
    assert w.acd.call(call_id)["state"] == "completed"
    assert state(w, "e1") == ("ready", "") and state(w, "a1")[0] == "wrapup"
    assert w.acd.kpis()["total"]["abandoned"] == 0


@pytest.mark.parametrize("form", ["-1", "HANGUP", "511"])
def test_a_hangup_on_the_party_or_agent_channel_never_closes_the_citizens_call(world, form):
    w = world
    call_id = talking(w, "u1", "a1")
    seat(w, "e1", {"legal_expert": 50})
    start_expert(w, call_id, "a1")
    on_party(w, call_id, "dial", hangup_form=form, hangup_when=lambda cmd, n: True)
    on_agent(w, call_id, "a1", "cancel", hangup_form=form, hangup_when=lambda cmd, n: cmd.startswith("SET"))
    assert w.flow.state(call_id).state == "talking"
    assert w.acd.call(call_id)["state"] == "connected" and state(w, "a1") == ("busy", "")
    assert w.tickets.tickets[w.flow.state(call_id).ticket]["status"] == "open"


# -- sub-center ----------------------------------------------------------------------------------

def test_the_agent_pulls_in_the_subcenter_and_a_failed_leg_leaves_the_caller_with_the_agent(world):
    w = world
    route = fastagi_session(w.server.address, agi_env("12366", uniqueid="s1", network=True), Peer())
    call_id = route.variables["HOTLINE_CALL_ID"]
    assert route.variables["HOTLINE_ACTION"] == "transfer"
    # the sub-center was unreachable: the caller is queued to the tax seats and gets an agent
    seat(w, "a1", {"tax": 50})
    assert agi(w, "transfer", call_id, "CHANUNAVAIL", uid="s1").variables["HOTLINE_SKILL"] == "tax"
    assert agi(w, "queue_wait", call_id, uid="s1").variables["HOTLINE_TARGET"] == "PJSIP/a1"
    agi(w, "transfer", call_id, "answered", uid="s1")
    p = on_agent(w, call_id, "a1", "start", "subcenter")
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_TARGET"]) == \
        ("transfer", "sip:12366@subcenter-tax.example.gov.cn")
    assert state(w, "a1") == ("busy", "")  # no seat reserved for a sub-center
    assert on_party(w, call_id, "dial").variables["HOTLINE_TARGET"] == "sip:12366@subcenter-tax.example.gov.cn"
    assert on_party(w, call_id, "ended", "CONGESTION").variables["HOTLINE_ACTION"] == "stay"
    assert w.acd.call(call_id)["agent"] == "a1" and state(w, "a1") == ("busy", "")
    # again, answered this time; the agent leaves: the agent's part is over (wrap-up)
    on_agent(w, call_id, "a1", "start", "subcenter")
    on_party(w, call_id, "answered")
    assert on_agent(w, call_id, "a1", "agent-left").variables["HOTLINE_REASON"] == "handed"
    assert state(w, "a1")[0] == "wrapup" and w.acd.call(call_id)["state"] == "completed"
    on_party(w, call_id, "ended", "ANSWER")
    assert agi(w, "transfer", call_id, "ANSWER", uid="s1").variables["HOTLINE_ACTION"] == "survey"


def test_a_line_without_the_party_or_a_call_without_an_agent_gets_nothing(world):
    w = world
    call_id = talking(w, "u1", "a1", dialed="12345", skill="general")
    p = on_agent(w, call_id, "a1", "start", "expert")
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_REASON"]) == ("stay", "no_such_party")
    legacy = agi(w, "transfer", call_id, "threeway", "subcenter", uid=call_id)  # the older spelling
    assert legacy.variables["HOTLINE_ACTION"] == "stay"
    assert on_agent(w, "no-such-call", "a1", "start", "expert").variables["HOTLINE_ACTION"] == "none"


def test_the_agent_is_rung_for_as_long_as_the_rules_ring_timeout_says(world):
    w = world
    w.acd.ring_timeout_s = 35  # as if queue: ring_timeout_s: 35 had been published
    seat(w, "a35", {"legal": 50})
    route = fastagi_session(w.server.address, agi_env(LEGAL, uniqueid="rt1", network=True), Peer())
    waited = agi(w, "queue_wait", route.variables["HOTLINE_CALL_ID"], uid="rt1")
    assert waited.variables["HOTLINE_ACTION"] == "transfer" and waited.variables["HOTLINE_AGENT_RING_S"] == "35"
