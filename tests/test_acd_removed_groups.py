"""An admin's rules edit removes (or renames) a seat group while callers wait in it: nobody is
stranded. The callers move to the general 12345 seats keeping their place and waiting time, a free
general seat is offered them, the timers (lost callers, callbacks) still treat them, and the
supervisors are told (real Redis)."""
from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from acd_support import events, make_acd, seat
from call_routing.acd.routing import REMOVED_GRACE_S


def without(rules, skill_id, *, renamed_to=None):
    """``rules`` after an admin's edit that removes ``skill_id`` (or renames it ``renamed_to``)."""
    skills = {k: v for k, v in rules.skills.items() if k != skill_id}
    if renamed_to:
        skills[renamed_to] = dataclasses.replace(rules.skills[skill_id], id=renamed_to)
    return dataclasses.replace(rules, skills=MappingProxyType(skills), version=f"{rules.version}-no-{skill_id}")


@pytest.fixture
def acd(redis_url, rules, clock):
    return make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)


def tourism_callers(acd, clock, n=2):
    calls = []
    for i in range(n):
        clock.advance(1)
        calls.append(acd.enqueue("tourism", "12301", f"1380000{i:04d}").call_id)
    return calls


def test_callers_of_a_removed_group_go_to_a_free_general_seat_in_their_order_keeping_their_wait(acd, rules, clock):
    seat(acd, "t1", {"tourism": 50})
    acd.pause("t1", "training")  # the tourism seat is away: its callers wait
    seat(acd, "gen", {"general": 5})
    acd.pause("gen", "training")
    acd.tick()  # a ticker on the rules that still have tourism
    first, second = tourism_callers(acd, clock)
    for _ in range(20):  # the ticker, once a second
        clock.advance(1)
        acd.tick()
    acd.rules = without(rules, "tourism")  # the admin publishes an edit without the tourism group
    acd.tick()
    assert acd.call(first)["queues"] == ["tourism"]  # a second after the edit: still where they were
    clock.advance(REMOVED_GRACE_S)
    assert acd.tick()["regrouped"] == 2
    assert [acd.call(c)["queues"] for c in (first, second)] == [["general"], ["general"]]
    assert acd.call(first)["skill"] == "general"
    assert [acd.position(c).position for c in (first, second)] == [1, 2]  # nobody lost their place
    assert acd.position(first).waited_s == pytest.approx(21 + REMOVED_GRACE_S)  # nor their waiting time
    acd.ready("gen")  # the general seat comes back: it is offered the first tourism caller
    assert acd.agent("gen")["state"] == "ringing" and acd.agent("gen")["call"] == first
    acd.answer(first, "gen")
    assert acd.call(first)["state"] == "connected"
    moves = events(acd, "overflow")
    assert {(e["call"], e["from"], e["to"], e["reason"]) for e in moves} == \
        {(first, "tourism", "general", "removed"), (second, "tourism", "general", "removed")}
    (alert,) = [a for a in acd.alerts() if a["alert"] == "group_removed"]
    assert (alert["skill"], alert["name"], alert["to"], alert["calls"]) == ("tourism", "旅游服务坐席", "general", "2")


def test_a_renamed_group_s_caller_rings_a_ready_general_seat_at_the_move(acd, rules, clock):
    seat(acd, "l1", {"legal": 5})
    acd.pause("l1", "training")
    acd.tick()
    legal = acd.enqueue("legal", "12348", "13900001111").call_id
    seat(acd, "gen", {"general": 5})  # ready, but a legal caller is not the general group's
    assert acd.agent("gen")["state"] == "ready"
    acd.rules = without(rules, "legal", renamed_to="legal_aid")  # the admin renames the group
    clock.advance(REMOVED_GRACE_S + 1)
    assert acd.tick()["regrouped"] == 1
    assert acd.agent("gen")["call"] == legal  # the general seat rings for the legal caller at once
    assert acd.call(legal)["state"] == "ringing"


def test_a_caller_ringing_at_the_edit_moves_when_back_in_line(acd, rules, clock):
    seat(acd, "t1", {"tourism": 50})
    seat(acd, "gen", {"general": 5})
    acd.pause("gen", "training")
    acd.tick()
    (call,) = tourism_callers(acd, clock, 1)
    assert acd.agent("t1")["call"] == call  # the tourism seat rings
    acd.rules = without(rules, "tourism")
    clock.advance(REMOVED_GRACE_S + 1)
    assert acd.tick()["regrouped"] == 0  # ringing: nothing to move yet
    acd.no_answer(call)  # not answered: back in line, in the removed group
    assert acd.call(call)["queues"] == ["tourism"]
    assert acd.tick()["regrouped"] == 1
    acd.ready("gen")
    assert acd.agent("gen")["call"] == call


def test_the_lost_caller_timer_still_runs_and_a_callback_is_dialed_by_the_general_seats(acd, rules, clock):
    seat(acd, "t1", {"tourism": 50})
    acd.pause("t1", "training")
    acd.tick()
    live, booked = tourism_callers(acd, clock)
    assert acd.request_callback(booked).ok  # the second caller took a callback, keeping the place
    acd.rules = without(rules, "tourism")
    clock.advance(REMOVED_GRACE_S + 1)
    assert acd.tick()["regrouped"] == 2
    assert acd.call(booked)["kind"] == "callback" and acd.call(booked)["queues"] == ["general"]
    # the live caller's front-end stopped asking at their entry: the move is no sign of life
    clock.advance(acd.lost_after_s - REMOVED_GRACE_S)
    assert acd.tick()["lost"] == 1
    assert acd.call(live)["kind"] == "callback" and acd.call(live)["queues"] == ["general"]
    seat(acd, "gen", {"general": 5})  # a general seat signs in: it is offered the first caller, a callback
    offer = acd.call(live)
    assert (offer["state"], offer["agent"], offer["kind"]) == ("ringing", "gen", "callback")


def test_a_ticker_on_older_rules_leaves_a_group_just_added_alone(redis_url, rules, clock):
    older = without(rules, "tourism")  # tourism is new in the rules the admin just published
    newer = make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)
    behind = make_acd(redis_url, older, clock, heartbeat_timeout_s=3600)
    seat(newer, "t1", {"tourism": 50})
    newer.pause("t1", "training")
    (call,) = tourism_callers(newer, clock, 1)
    for _ in range(3):
        clock.advance(1)
        assert behind.tick()["regrouped"] == 0
    assert newer.call(call)["queues"] == ["tourism"]


def test_a_caller_routed_before_the_edit_and_queued_after_it_waits_for_the_general_seats(acd, rules):
    from ivr.services import AcdQueue

    acd.rules = without(rules, "tourism")
    AcdQueue(acd).enqueue("CAlate", skill="tourism", line="12301", caller="13800000001", ticket=None)
    assert acd.call("CAlate")["queues"] == ["general"] and acd.call("CAlate")["line"] == "12301"
