"""Agents on a real Asterisk 22: a dual line to its seat group, *4 expert and *3 sub-center
three-way transfers (join, the agent dropping out, cancelling), a sub-center that cannot be
reached, and who hung up.

The agents' phones are Local channels into [lab-agent] (tests/pbx_world.py): the test presses
keys on them with AMI PlayDTMF, exactly as DTMF arrives from a phone, and hangs them up with
AMI Hangup. Who talks with whom is read from Asterisk's BridgeEnter/Leave and
ConfbridgeJoin/Leave events; seat states from the ACD the product shares with every front-end.
"""
from __future__ import annotations

import time

import pytest

from bench.asterisk_lab import wait_until
from ivr.flow import SURVEY
from ivr.prompts import sound_path

pytestmark = pytest.mark.pbx


def agent_phone(leg: str) -> str:
    """The phone's side of an agent's Local leg (``…;1`` is in the bridge, ``…;2`` is the phone)."""
    return leg[:-1] + "2"


def connect(world, number: str, agent: str, skills: dict):
    world.seat(agent, skills)
    call = world.call(number)
    leg = call.bridged_with(f"Local/{agent}@lab-agent")
    wait_until(lambda: (world.acd.agent(agent) or {}).get("state") == "busy", 10, 0.05,
               f"the ACD to see {agent} talking")
    return call, leg


def in_conference(call, *members, exactly=True, timeout=15.0):
    def check():
        now = call.conference()
        ok = now == set(members) if exactly else set(members) <= now
        return now if ok else None
    return wait_until(check, timeout, 0.05, f"conference of {call.uid} to be {members}")


def party_leg(call, timeout=15.0) -> str:
    def find():
        return next((c for c in call.conference() if "@hotline-party-" in c), None)
    return wait_until(find, timeout, 0.05, "the three-way party in the conference")


def test_a_dual_line_reaches_its_seat_group_and_the_caller_hanging_up_is_recorded(pbx):
    world = pbx
    world.seat("2900", {"general": 50})  # a general seat is free too: the line's own group must win
    call, leg = connect(world, "12348", "2001", {"legal": 50})
    assert call.first_var("HOTLINE_SKILL") == "legal"
    call_id = call.call_id()
    assert world.acd.call(call_id)["agent"] == "2001"
    assert (world.acd.agent("2900") or {}).get("state") == "ready"
    call.hangup()  # the citizen hangs up first
    wait_until(lambda: call.hung_up(leg), 10, 0.05, "the agent's leg to end")
    ended = wait_until(lambda: [e for e in world.acd.events() if e.get("call") == call_id and e["e"] == "complete"],
                       10, 0.1, "the ACD to complete the call")
    assert ended[-1].get("by") == "caller"
    assert wait_until(lambda: (world.acd.agent("2001") or {}).get("state") in ("wrapup", "ready"), 10, 0.1,
                      "the seat to be released")


def agent_hangs_up_after_a_call(world, agent: str):
    """A 12345 call answered by ``agent``, who hangs up first: the caller is sent to the survey
    and Asterisk is playing its question (a key pressed before the survey's AGI listens is lost,
    as it would be on a phone: one clean-clone run pressed 1 in that gap)."""
    call, leg = connect(world, "12345", agent, {"general": 50})
    call_id = call.call_id()
    world.ami.action("Hangup", Channel=agent_phone(leg))
    call.wait_var("HOTLINE_ACTION", "survey", timeout=10)
    question = sound_path(world.prompt_dir, SURVEY)
    wait_until(lambda: any(e.get("Event") == "AGIExecStart" and question in e.get("Command", "")
                           for e in call.events()), 10, 0.05, "the survey question")
    return call, call_id


def test_the_agent_hanging_up_sends_the_caller_to_the_survey(pbx):
    world = pbx
    call, call_id = agent_hangs_up_after_a_call(world, "2002")
    call.dtmf(call.citizen(), "1")  # 满意
    wait_until(lambda: call.hung_up(call.channel()), 30, 0.1, "the call to end after the survey")
    def recorded():
        ended = [e for e in world.acd.events() if e.get("call") == call_id and e["e"] in ("complete", "survey")]
        return ended if {e["e"] for e in ended} == {"complete", "survey"} else None
    ended = wait_until(recorded, 5, 0.1, "the ACD to record the completed call and its survey")
    assert next(e for e in ended if e["e"] == "complete").get("by") == "agent"


def test_star4_expert_three_way_then_the_agent_drops_out(pbx):
    world = pbx
    world.seat("2101", {"legal_expert": 50})
    call, leg = connect(world, "12348", "2003", {"legal": 50})
    call_id = call.call_id()
    caller = call.channel()
    call.dtmf(agent_phone(leg), "*4")
    party = party_leg(call)
    # caller, agent and expert talk together: the expert's phone is bridged with the party leg
    in_conference(call, caller, leg, party)
    expert = wait_until(lambda: call.bridged("Local/2101@lab-agent"), 15, 0.05, "the expert to answer")
    assert not call.hung_up(leg)
    wait_until(lambda: (world.acd.agent("2101") or {}).get("state") == "busy", 10, 0.05, "the expert seat busy")
    assert world.acd.agent("2101")["call"] == call_id
    # the agent leaves the conference (*0): caller and expert go on together
    call.dtmf(agent_phone(leg), "*0")
    in_conference(call, caller, party)
    wait_until(lambda: (world.acd.agent("2003") or {}).get("state") in ("wrapup", "ready"), 10, 0.05,
               "the agent to wrap up")
    # the expert hangs up: nobody is left with the caller, who gets the survey, never silence
    world.ami.action("Hangup", Channel=agent_phone(expert))
    call.wait_var("HOTLINE_ACTION", "survey", timeout=15)


def test_star4_with_no_expert_free_changes_nothing(pbx):
    world = pbx
    call, leg = connect(world, "12348", "2004", {"legal": 50})
    call.dtmf(agent_phone(leg), "*4")
    wait_until(lambda: call.ran("Playback", "beeperr"), 10, 0.05, "the error tone to the agent")
    assert not call.conference() and not call.hung_up(leg) and not call.hung_up(call.channel())
    assert world.acd.agent("2004")["state"] == "busy"


def test_star4_while_the_expert_group_is_closed_reserves_no_general_seat(pbx):
    world = pbx
    path = world.rules_path
    shipped = path.read_text("utf-8")
    closed = shipped.replace("  legal_expert:\n    name: 公共法律服务专家坐席\n    expert: true\n    hours: always",
                             '  legal_expert:\n    name: 公共法律服务专家坐席\n    expert: true\n'
                             '    hours: {days: everyday, open: "00:00", close: "00:01"}')
    assert closed != shipped
    try:
        path.write_text(closed, "utf-8")
        world.seat("2102", {"legal_expert": 50})
        world.seat("2901", {"general": 50, "legal": 10})
        call, leg = connect(world, "12348", "2005", {"legal": 50})
        import time
        time.sleep(1.5)  # rules edits are picked up within a second
        call.dtmf(agent_phone(leg), "*4")
        wait_until(lambda: call.ran("Playback", "beeperr"), 10, 0.05, "the error tone to the agent")
        assert world.acd.agent("2901")["state"] == "ready" and world.acd.agent("2102")["state"] == "ready"
        assert not call.conference()
    finally:
        path.write_text(shipped, "utf-8")


def test_star3_subcenter_unreachable_then_three_way_cancel_and_hand_over(pbx):
    world = pbx
    world.phone_mode("pstn", "down")  # the carrier cannot reach the sub-center
    world.seat("2006", {"customs": 50})
    call = world.call("12360")
    assert call.first_var("HOTLINE_ACTION") == "transfer"
    ticket = call.first_var("HOTLINE_TICKET")
    # unreachable: back to the line's seat group, with the ticket it opened
    leg = call.bridged_with("Local/2006@lab-agent", timeout=30)
    assert call.var("HOTLINE_TICKET") == ticket and call.var("HOTLINE_SKILL") == "customs"
    world.phone_mode("pstn", "up")
    caller = call.channel()
    # *3: caller, agent and sub-center together
    call.dtmf(agent_phone(leg), "*3")
    party = party_leg(call)
    in_conference(call, caller, leg, party)
    wait_until(lambda: call.bridged("Local/812360@lab-pstn"), 15, 0.05, "the sub-center to answer")
    # *9 cancels: the sub-center is dropped, the caller is back with the agent
    call.dtmf(agent_phone(leg), "*9")
    in_conference(call, caller, leg)
    wait_until(lambda: call.hung_up(party), 10, 0.05, "the party leg to be hung up")
    # *3 again, then the agent drops out (*0): caller and sub-center go on together
    call.dtmf(agent_phone(leg), "*3")
    party = wait_until(lambda: next((c for c in call.conference() if "@hotline-party-" in c and c != party), None),
                       15, 0.05, "the second party leg")
    in_conference(call, caller, leg, party)
    call.dtmf(agent_phone(leg), "*0")
    in_conference(call, caller, party)
    assert not call.hung_up(caller)


def test_the_caller_hanging_up_while_the_expert_rings_releases_both_seats(pbx):
    world = pbx
    world.seat("2103", {"legal_expert": 50}, mode="noanswer")
    call, leg = connect(world, "12348", "2007", {"legal": 50})
    call_id = call.call_id()
    call.dtmf(agent_phone(leg), "*4")
    wait_until(lambda: any(e.get("Event") == "Newchannel" and e["Channel"].startswith("Local/2103@lab-agent")
                           for e in world.events_since(call.mark)), 15, 0.05, "the expert's phone to ring")
    call.hangup()
    # the expert was only rung: free again at once, not paused; the agent's call is over
    wait_until(lambda: (world.acd.agent("2103") or {}).get("state") == "ready", 15, 0.1, "the expert released")
    wait_until(lambda: (world.acd.agent("2007") or {}).get("state") in ("wrapup", "ready"), 15, 0.1,
               "the agent released")
    ended = [e for e in world.acd.events() if e.get("call") == call_id and e["e"] == "complete"]
    assert ended and ended[-1].get("by") == "caller"


def test_the_caller_hanging_up_during_the_survey_leaves_the_call_completed_not_abandoned(pbx):
    world = pbx
    call, call_id = agent_hangs_up_after_a_call(world, "2008")
    call.hangup()
    wait_until(lambda: call.hung_up(call.channel()), 10, 0.05, "the call to end")
    time.sleep(1)
    assert world.acd.call(call_id)["state"] == "completed"
    ended = [e for e in world.acd.events() if e.get("call") == call_id]
    assert [e.get("by") for e in ended if e["e"] == "complete"] == ["agent"]
    assert not [e for e in ended if e["e"] in ("abandon", "abandoned")]


def test_the_caller_hanging_up_in_a_three_way_ends_the_agent_and_party_legs(pbx):
    """The citizen hangs up while agent and expert are in the conference, then (warm transfer)
    while only the expert is: nobody is left on a line the ACD already counts as over — an
    expert's phone (or a sub-center's trunk leg) must not stay in an empty conference."""
    world = pbx
    world.seat("2104", {"legal_expert": 50})
    world.seat("2105", {"legal_expert": 50})

    def three_way(agent):
        """A 12348 call answered by ``agent``, who brings an expert in (*4): all three talking."""
        call, leg = connect(world, "12348", agent, {"legal": 50})
        caller = call.channel()
        call.dtmf(agent_phone(leg), "*4")
        party = party_leg(call)
        in_conference(call, caller, leg, party)
        expert = wait_until(lambda: call.bridged("Local/210"), 15, 0.05, "the expert to answer")
        return call, leg, caller, party, expert

    # 1. all three in the conference
    call, leg, caller, party, expert = three_way("2009")
    call.hangup()
    wait_until(lambda: call.hung_up(leg), 10, 0.05, "the agent's leg to end with the caller")
    wait_until(lambda: call.hung_up(party) and call.hung_up(expert), 10, 0.05, "the expert's leg to end")
    # 2. warm transfer: the agent left (*0), the caller talks with the expert, then hangs up
    call, leg, caller, party, expert = three_way("2010")
    call.dtmf(agent_phone(leg), "*0")
    in_conference(call, caller, party)
    call.hangup()
    wait_until(lambda: call.hung_up(party) and call.hung_up(expert), 10, 0.05, "the expert's leg to end")
    assert not world.lab.rx("core show channels concise").strip()
