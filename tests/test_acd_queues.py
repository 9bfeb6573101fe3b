"""Call queues: who gets which call, no-answer, hang-ups, overflow, opening hours, transfers,
requeue, position and estimated wait, and rule edits while callers wait."""
from __future__ import annotations

from datetime import datetime

import pytest

from acd_support import events, make_acd, seat, with_skill
from call_routing.acd import ACDError
from call_routing.rules import CHINA_TZ


@pytest.fixture
def acd(redis_url, rules, clock):
    return make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)  # consoles beat; see test_acd_seats


def caller(i):
    return f"1380000{i:04d}"


def test_the_longest_idle_agent_gets_the_next_call(acd, clock):
    seat(acd, "early", {"general": 5})
    clock.advance(5)
    seat(acd, "late", {"general": 5})
    placed = acd.enqueue("general", "12345", caller(1))
    assert placed.offers[0].agent_id == "early"
    call = acd.call(placed.call_id)
    assert (call["state"], call["agent"], call["offers"]) == ("ringing", "early", 1)
    assert acd.agent("early")["state"] == "ringing" and acd.agent("late")["state"] == "ready"


def test_a_higher_skill_level_is_offered_first_even_if_idle_for_less_time(acd, clock):
    seat(acd, "novice", {"legal": 2})
    clock.advance(60)
    seat(acd, "senior", {"legal": 8})
    assert acd.enqueue("legal", "12348", caller(1)).offers[0].agent_id == "senior"


def test_priority_callers_are_answered_before_earlier_ordinary_callers(acd, clock):
    first = acd.enqueue("general", "12345", caller(1)).call_id
    clock.advance(1)
    urgent = acd.enqueue("general", "12345", caller(2), priority=5).call_id
    clock.advance(1)
    seat(acd, "a1", {"general": 5})
    assert acd.agent("a1")["call"] == urgent
    assert acd.position(first).position == 1


def test_callers_of_equal_priority_are_answered_in_arrival_order(acd, clock):
    ids = []
    for i in range(3):
        ids.append(acd.enqueue("general", "12345", caller(i)).call_id)
        clock.advance(1)
    assert [acd.position(c).position for c in ids] == [1, 2, 3]
    got = []
    for i in range(3):
        seat(acd, f"a{i}", {"general": 5})
        got.append(acd.agent(f"a{i}")["call"])
    assert got == ids


def test_an_unanswered_offer_goes_back_to_the_head_and_the_agent_is_auto_paused(acd, clock):
    seat(acd, "sleepy", {"general": 5})
    first = acd.enqueue("general", "12345", caller(1)).call_id
    clock.advance(1)
    second = acd.enqueue("general", "12345", caller(2)).call_id
    result = acd.no_answer(first)
    assert (acd.agent("sleepy")["state"], acd.agent("sleepy")["reason"]) == ("paused", "no-answer")
    assert result.offers == ()
    assert acd.position(first).position == 1 and acd.position(second).position == 2
    seat(acd, "awake", {"general": 5})
    assert acd.agent("awake")["call"] == first
    assert [e["agent"] for e in events(acd, "offer", first)] == ["sleepy", "awake"]
    assert events(acd, "noanswer", first)[0]["agent"] == "sleepy"


def test_an_offer_nobody_answers_within_the_ring_timeout_moves_on(acd, clock):
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", caller(1)).call_id
    clock.advance(5)
    seat(acd, "a2", {"general": 5})
    clock.advance(10)
    assert acd.tick()["ring_timeout"] == 0
    clock.advance(6)
    assert acd.tick()["ring_timeout"] == 1
    assert acd.call(call)["agent"] == "a2"
    assert acd.agent("a1")["state"] == "paused"


def test_a_caller_who_hangs_up_is_removed_at_once_and_logged_abandoned_with_the_wait(acd, clock):
    acd.abandon_callback_after_s = None
    call = acd.enqueue("general", "12345", caller(1)).call_id
    later = acd.enqueue("general", "12345", caller(2)).call_id
    clock.advance(7.5)
    assert acd.hangup(call).status == "abandoned"
    assert acd.call(call)["state"] == "abandoned"
    assert acd.position(later).position == 1
    (ab,) = events(acd, "abandon", call)
    assert float(ab["wait"]) == pytest.approx(7.5)
    seat(acd, "a1", {"general": 5})
    assert acd.agent("a1")["call"] == later


def test_a_caller_hanging_up_while_the_agent_rings_frees_the_agent_for_the_next_call(acd, clock):
    acd.abandon_callback_after_s = None
    seat(acd, "a1", {"general": 5})
    call = acd.enqueue("general", "12345", caller(1)).call_id
    nxt = acd.enqueue("general", "12345", caller(2)).call_id
    result = acd.hangup(call)
    assert [(o.call_id, o.agent_id) for o in result.offers] == [(nxt, "a1")]
    assert events(acd, "abandon", call)[0]["agent"] == "a1"


def test_a_call_overflows_to_the_general_group_after_the_configured_seconds(acd, clock, rules):
    assert rules.skills["science_tech"].overflow_after_s == 30
    seat(acd, "sci", {"science_tech": 5})
    acd.pause("sci", "training")  # logged in (so no immediate overflow) but not taking calls
    seat(acd, "gen", {"general": 5})
    call = acd.enqueue("science_tech", "12396", caller(1)).call_id
    assert acd.call(call)["state"] == "waiting"
    clock.advance(29.9)
    assert acd.tick()["overflow"] == 0
    clock.advance(0.2)
    assert acd.tick()["overflow"] == 1
    assert acd.call(call)["agent"] == "gen"
    (ov,) = events(acd, "overflow", call)
    assert (ov["from"], ov["to"], ov["reason"]) == ("science_tech", "general", "timeout")


def test_an_overflowed_call_can_still_be_taken_by_its_own_group(acd, clock):
    seat(acd, "sci", {"science_tech": 5})
    acd.pause("sci", "training")
    call = acd.enqueue("science_tech", "12396", caller(1)).call_id
    clock.advance(31)
    acd.tick()
    assert acd.call(call)["queues"] == ["science_tech", "general"]
    acd.ready("sci")
    assert acd.call(call)["agent"] == "sci"
    assert acd.redis.zcard(acd.keys.queue("general")) == 0  # offered once, gone from both queues


def test_an_open_group_with_nobody_logged_in_overflows_at_once_and_warns_the_supervisor(acd):
    seat(acd, "gen", {"general": 5})
    placed = acd.enqueue("telecom", "12300", caller(1))
    assert placed.skill == "general"
    assert placed.offers[0].agent_id == "gen"
    (ov,) = events(acd, "overflow", placed.call_id)
    assert ov["reason"] == "unstaffed"
    alerts = acd.alerts()
    assert alerts[0]["alert"] == "unstaffed" and alerts[0]["skill"] == "telecom"
    acd.enqueue("telecom", "12300", caller(2))
    assert len(acd.alerts()) == 1  # one warning a minute per group, not one per caller


def test_a_caller_sent_on_because_nobody_was_logged_in_is_offered_to_the_first_seat_of_their_group(acd, clock):
    gen = seat(acd, "gen", {"general": 5})
    acd.pause("gen", "break")  # the general seat is away: the caller waits in both groups
    placed = acd.enqueue("telecom", "12300", caller(1))
    assert placed.skill == "general" and not placed.offers
    clock.now += 20
    tel = seat(acd, "tel", {"telecom": 5})  # the telecom seat logs in: its own caller is offered to it
    assert acd.call(placed.call_id)["agent"] == "tel"
    assert acd.redis.zcard(acd.keys.queue("general")) == acd.redis.zcard(acd.keys.queue("telecom")) == 0
    acd.no_answer(placed.call_id)  # not answered: back to its place, for either group
    acd.ready("gen")
    assert acd.call(placed.call_id)["agent"] == "gen"


def test_a_closed_expert_group_takes_a_callback_instead_of_a_waiting_caller(acd, clock, rules):
    clock.now = datetime(2024, 6, 3, 19, 0, tzinfo=CHINA_TZ).timestamp()  # Monday evening
    assert not acd.is_open("legal_expert")
    seat(acd, "gen", {"general": 5})
    call = acd.enqueue("general", "12345", caller(1)).call_id
    acd.answer(call)
    acd.transfer(call, "legal_expert")
    info = acd.call(call)
    assert (info["skill"], info["kind"], info["state"]) == ("legal_expert", "callback", "waiting")
    assert events(acd, "callback", call)[0]["reason"] == "closed"
    # next working day the expert logs in and the callback is theirs
    clock.now = datetime(2024, 6, 4, 8, 30, tzinfo=CHINA_TZ).timestamp()
    result = seat(acd, "expert", {"legal_expert": 5}) and acd.agent("expert")
    assert result["call"] == call


def test_expert_seats_follow_chinas_working_day_calendar(acd):
    national_day = datetime(2024, 10, 1, 10, 0, tzinfo=CHINA_TZ).timestamp()
    makeup_sunday = datetime(2024, 9, 29, 10, 0, tzinfo=CHINA_TZ).timestamp()  # 调休 working Sunday
    assert not acd.is_open("legal_expert", national_day)
    assert acd.is_open("legal_expert", makeup_sunday)
    assert acd.is_open("general", national_day)
    assert not acd.is_open("legal_expert", datetime(2024, 6, 3, 17, 30, tzinfo=CHINA_TZ).timestamp())


def test_a_closed_group_without_callback_sends_callers_to_the_general_group(redis_url, rules, clock):
    edited = with_skill(rules, "tax", hours=rules.skills["legal_expert"].hours)
    acd = make_acd(redis_url, edited, clock, heartbeat_timeout_s=3600)
    clock.now = datetime(2024, 6, 8, 10, 0, tzinfo=CHINA_TZ).timestamp()  # a Saturday
    seat(acd, "tax1", {"tax": 5})
    placed = acd.enqueue("tax", "12366", caller(1))
    assert (placed.skill, placed.kind) == ("general", "live")


def test_expert_groups_are_reached_only_by_transfer(acd):
    seat(acd, "gen", {"general": 5})
    seat(acd, "expert", {"legal_expert": 5})
    with pytest.raises(ACDError, match="only by transfer"):
        acd.enqueue("legal_expert", "12348", caller(1))
    call = acd.enqueue("general", "12348", caller(1)).call_id
    acd.answer(call)
    result = acd.transfer(call, "legal_expert")
    assert result.offers[0].agent_id == "expert"
    assert acd.agent("gen")["state"] == "wrapup"
    acd.answer(call)
    assert acd.agent("expert")["state"] == "busy"
    assert events(acd, "transfer", call)[0]["to"] == "legal_expert"


def test_a_waiting_call_moved_to_another_skill_keeps_its_waiting_time(acd, clock):
    seat(acd, "legal1", {"legal": 5})
    acd.pause("legal1", "training")
    early = acd.enqueue("general", "12345", caller(1)).call_id
    clock.advance(20)
    later = acd.enqueue("legal", "12348", caller(2)).call_id
    clock.advance(5)
    assert acd.requeue(early, "legal").ok  # the speech pipeline heard a legal matter
    assert acd.call(early)["skill"] == "legal"
    assert acd.position(early).position == 1 and acd.position(later).position == 2
    assert acd.position(early).waited_s == pytest.approx(25)
    assert acd.redis.zcard(acd.keys.queue("general")) == 0
    with pytest.raises(ACDError):
        acd.requeue(early, "legal_expert")


def test_position_and_estimated_wait_come_from_recent_handle_times(acd, clock):
    seat(acd, "a1", {"general": 5})
    for i in range(2):  # two calls of 100 s talk + 20 s wrap-up
        c = acd.enqueue("general", "12345", caller(i)).call_id
        acd.answer(c)
        clock.advance(100)
        acd.hangup(c)
        clock.advance(20)
        acd.wrapup_done("a1")
    acd.pause("a1", "break")
    waiting = [acd.enqueue("general", "12345", caller(10 + i)).call_id for i in range(3) if clock.advance(1)]
    clock.advance(3)
    pos = acd.position(waiting[2])
    assert pos.position == 3
    assert pos.estimated_wait_s == pytest.approx(3 * 120)  # one seat logged in
    seat(acd, "a2", {"general": 5}, login=False)
    acd.login("a2", "paused", "break")
    assert acd.position(waiting[2]).estimated_wait_s == pytest.approx(3 * 120 / 2)
    assert acd.position(waiting[0]).callback_offer_due is False
    clock.advance(57)
    assert acd.position(waiting[0]).callback_offer_due is True


def test_a_rule_edit_keeps_waiting_callers_in_place_and_applies_from_the_next_check(redis_url, rules, clock):
    acd = make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600)
    seat(acd, "legal1", {"legal": 5})
    acd.pause("legal1", "training")
    seat(acd, "gen", {"general": 5})
    acd.pause("gen", "training")
    calls = [acd.enqueue("legal", "12348", caller(i)).call_id for i in range(2) if clock.advance(1)]
    clock.advance(20)
    acd.tick()
    assert acd.call(calls[0])["queues"] == ["legal"]  # legal overflows after 60 s
    acd.rules = with_skill(rules, "legal", overflow_after_s=15)  # the admin shortens it
    assert [acd.position(c).position for c in calls] == [1, 2]  # nobody lost their place
    assert acd.tick()["overflow"] == 2
    assert acd.call(calls[0])["queues"] == ["legal", "general"]
    acd.ready("gen")
    assert acd.agent("gen")["call"] == calls[0]


def test_callers_left_in_a_group_whose_last_seat_logged_out_move_on(acd, clock):
    seat(acd, "legal1", {"legal": 5})
    acd.pause("legal1", "training")
    seat(acd, "gen", {"general": 5})
    acd.pause("gen", "training")
    call = acd.enqueue("legal", "12348", caller(1)).call_id
    acd.logout("legal1")
    assert acd.tick()["stranded"] == 1
    assert "general" in acd.call(call)["queues"]


def test_each_call_carries_its_ticket_id(acd):
    call = acd.enqueue("general", "12345", caller(1), ticket="T-2024-0001").call_id
    assert acd.call(call)["ticket"] == "T-2024-0001"
    assert acd.set_ticket(call, "T-2024-0002")
    assert acd.call(call)["ticket"] == "T-2024-0002"
    assert not acd.set_ticket("no-such-call", "T")


def test_a_call_id_is_queued_only_once(acd):
    acd.enqueue("general", "12345", caller(1), call_id="CA123")
    with pytest.raises(ACDError, match="already"):
        acd.enqueue("general", "12345", caller(1), call_id="CA123")


def test_call_ids_from_the_front_ends_are_checked(acd):
    assert acd.enqueue("general", "12345", caller(1), call_id="CA0123456789abcdef").call_id == "CA0123456789abcdef"
    assert acd.enqueue("general", "12345", caller(2), call_id="1700000000.42").call_id == "1700000000.42"
    with pytest.raises(ACDError, match="call id"):
        acd.enqueue("general", "12345", caller(3), call_id="bad\tid")


def test_a_front_end_process_hears_offers_made_by_any_other_process(acd, redis_url, rules, clock):
    import threading

    heard, stop = [], threading.Event()
    listener = make_acd(redis_url, rules, clock)
    thread = threading.Thread(target=listener.follow_offers, args=(heard.append, stop, 0.05))
    thread.start()
    try:
        import time

        time.sleep(0.2)  # subscribed
        seat(acd, "a1", {"general": 5})
        call = acd.enqueue("general", "12345", caller(1)).call_id  # offered by "another process"
        deadline = time.time() + 5
        while not heard and time.time() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(5)
    assert [(o.call_id, o.agent_id, o.kind, o.n, o.skill) for o in heard] == [(call, "a1", "live", 1, "general")]
