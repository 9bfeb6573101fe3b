"""The queue log and the KPIs a 12345 centre is judged on: 接通率, 15-s/30-s answer rates,
呼损率, average wait and handle time — per line and in total."""
from __future__ import annotations

import pytest

from acd_support import events, make_acd, seat
from call_routing.acd.kpi import audit


@pytest.fixture
def acd(redis_url, rules, clock):
    return make_acd(redis_url, rules, clock, heartbeat_timeout_s=3600, abandon_callback_after_s=None)


def test_kpis_per_line_and_in_total_come_from_the_queue_log(acd, clock):
    seat(acd, "x", {"general": 5, "telecom": 5})
    acd.pause("x", "briefing")
    fast = acd.enqueue("general", "12345", "13800000001").call_id
    clock.advance(0.5)
    slow = acd.enqueue("telecom", "12300", "13800000002").call_id
    clock.advance(0.5)
    lost = acd.enqueue("general", "12345", "13800000003").call_id
    still = acd.enqueue("general", "12345", "13800000004", call_id="zz-last").call_id
    clock.advance(9)
    acd.ready("x")  # gets the first in line: fast, after 10 s
    acd.answer(fast)
    clock.advance(5)
    acd.hangup(lost)  # abandoned after 14 s
    clock.advance(55)
    acd.hangup(fast)  # 60 s talk
    clock.advance(20.5)
    acd.wrapup_done("x")  # 20.5 s wrap-up; next: slow (waited 90 s)
    assert acd.agent("x")["call"] == slow
    acd.answer(slow)
    clock.advance(100)
    acd.hangup(slow)
    clock.advance(19.5)
    acd.pause("x", "break")
    k = acd.kpis()
    total = k["total"]
    assert (total["offered"], total["answered"], total["abandoned"]) == (4, 2, 1)
    assert total["connection_rate"] == 0.5  # 接通率
    assert total["abandon_rate"] == 0.25  # 呼损率
    assert total["answer_rate_15s"] == 0.25 and total["answer_rate_30s"] == 0.25
    assert total["avg_wait_s"] == pytest.approx(50)  # (10 + 90) / 2
    assert total["avg_handle_s"] == pytest.approx(80 + 20)  # talk (60+100)/2 + wrap-up 20
    line = k["lines"]["12345"]
    assert (line["offered"], line["answered"], line["abandoned"]) == (3, 1, 1)
    assert line["avg_abandon_wait_s"] == pytest.approx(14)
    assert k["lines"]["12300"]["answer_rate_30s"] == 0.0
    assert acd.call(still)["state"] == "waiting"
    # every offered call is answered, abandoned or still waiting
    assert total["offered"] == total["answered"] + total["abandoned"] + 1


def test_the_queue_log_records_every_kind_of_event_in_order(acd, clock):
    seat(acd, "x", {"general": 5})
    a = acd.enqueue("general", "12345", "13800000001").call_id
    acd.no_answer(a)
    acd.ready("x")
    acd.answer(a)
    acd.hangup(a)
    acd.wrapup_done("x")
    b = acd.enqueue("telecom", "12300", "13800000002").call_id  # unstaffed: overflow at once
    acd.answer(b)
    acd.hangup(b)
    kinds = [e["e"] for e in events(acd)]
    for kind in ("agent", "enter", "offer", "noanswer", "connect", "complete", "wrapup", "overflow", "warn"):
        assert kind in kinds
    assert kinds.index("enter") < kinds.index("offer") < kinds.index("noanswer") < kinds.index("connect")
    assert all("13800000001" not in str(e) for e in events(acd))  # caller numbers are masked in the log
    assert events(acd, "enter", a)[0]["caller"] == "138****0001"
    assert audit(events(acd)) == {"offers": 3, "double_assignments": 0, "double_connects": 0}


def test_kpis_can_be_limited_to_a_period(acd, clock):
    acd.enqueue("general", "12345", "13800000001")
    start = clock.advance(3600)
    acd.enqueue("general", "12345", "13800000002")
    assert acd.kpis()["total"]["offered"] == 2
    assert acd.kpis(since=start)["total"]["offered"] == 1
    assert acd.kpis(until=start)["total"]["offered"] == 1


def test_a_transferred_caller_who_hangs_up_in_the_expert_queue_is_not_a_lost_call(acd, clock):
    seat(acd, "x", {"general": 5})
    call = acd.enqueue("general", "12348", "13800000001").call_id
    acd.answer(call)
    seat(acd, "e", {"legal_expert": 5}, login=False)
    acd.login("e", "paused", "meeting")
    acd.transfer(call, "legal_expert")
    clock.advance(40)
    acd.hangup(call)
    total = acd.kpis()["total"]
    assert (total["offered"], total["answered"], total["abandoned"]) == (1, 1, 0)
    assert total["transfers_abandoned"] == 1 and total["abandon_rate"] == 0.0
