"""The call flow without any telephony: what callers hear and where they go, on the shipped
rules, an in-memory queue, and the real Redis ACD through its port."""
from __future__ import annotations

from datetime import datetime

import pytest

from call_routing.acd import ACD, Agent
from call_routing.rules import CHINA_TZ
from ivr import flow as F
from ivr.services import AcdQueue

T0 = datetime(2024, 6, 3, 10, 0, tzinfo=CHINA_TZ).timestamp()


class Clock:
    t = T0

    def __call__(self):
        return self.t


@pytest.fixture
def mem(rules):
    clock = Clock()
    queue, tickets = F.MemoryQueue(), F.MemoryTickets()
    domain = {"我家小区的公积金": {"skill": "housing_fund", "line": "12329"}}
    flow = F.CallFlow(rules, queue, tickets, F.MemoryCalls(), classify=lambda text: domain.get(text), clock=clock)
    return flow, queue, tickets, clock


def test_position_announcement_reads_counts_the_way_people_say_them():
    assert F.position_announcement(3, 50)["text"] == "您前面还有三位，预计等待一分钟。"
    assert F.position_announcement(2, 121)["text"] == "您前面还有两位，预计等待三分钟。"
    assert F.position_announcement(12, 600)["parts"] == ["您前面还有", "十二", "位，预计等待", "十", "分钟。"]
    assert F.position_announcement(0, 0)["text"] == F.NEXT_IN_LINE
    assert F.position_announcement(250, 3000)["text"].startswith(F.MANY_WAITING)
    assert [F.spoken_number(n) for n in (1, 10, 20, 21, 99)] == ["一", "十", "二十", "二十一", "九十九"]


def test_a_waiting_caller_hears_invitation_then_position_every_interval_then_callback_offer(mem, rules):
    flow, queue, tickets, clock = mem
    flow.start("c1", "12345", "13800138000")
    heard = []
    for _ in range(rules.callback_offer_after_s + 1):
        turn = flow.wait("c1")
        assert turn.action == "queue"
        heard += [s["text"] for s in turn.steps]
        clock.t += 1
    assert heard[0] == F.INVITE
    assert F.CALLBACK_OFFER in heard
    assert sum(t.startswith(F.POSITION_HEAD) or t == F.NEXT_IN_LINE for t in heard) >= 2


def test_the_caller_is_queued_by_the_first_wait_not_before(mem):
    flow, queue, *_ = mem
    turn = flow.start("c2", "12333", "13800138000")
    assert (turn.action, turn.skill) == ("queue", "labor_social_security")
    assert "c2" not in queue.calls
    flow.wait("c2")
    assert queue.calls["c2"]["skill"] == "labor_social_security"


def test_fire_heard_while_waiting_transfers_to_119_at_once_and_leaves_the_queue(mem, rules):
    flow, queue, tickets, _ = mem
    flow.start("c3", "12345", "13800138000")
    flow.wait("c3")
    turn = flow.heard("c3", "楼下着火了，烟很大")
    assert (turn.action, turn.target, turn.reason) == ("transfer", "119", "emergency")
    assert turn.steps[0]["text"] == rules.emergency_notice.format(number="119", name="消防救援")
    assert ("emergency", "c3") in queue.events and "c3" not in queue.calls
    assert tickets.tickets[turn.ticket]["transcript"] == [("speech", "楼下着火了，烟很大")]


def test_an_emergency_heard_by_another_process_during_a_wait_tick_is_not_overwritten_by_it(redis_client, rules):
    """queue_wait's tick and the AudioSocket server (or the wait URL and a media stream) change one
    call's state from two processes: the tick that read the state before the words must not write
    'waiting' over the emergency."""
    import threading
    import time

    queue = F.MemoryQueue()
    flow = F.CallFlow(rules, queue, F.MemoryTickets(), F.RedisCalls(redis_client))
    flow.start("c9", "12345", "13800138000")
    flow.wait("c9")
    slow = threading.Event()
    status = queue.status

    def slow_status(call_id):  # the tick is between reading the state and writing it back
        slow.set()
        time.sleep(0.4)
        return status(call_id)

    queue.status = slow_status
    tick = threading.Thread(target=flow.wait, args=("c9",))
    tick.start()
    assert slow.wait(2)
    queue.status = status
    turn = flow.heard("c9", "楼下着火了，烟很大")
    tick.join(3)
    assert (turn.action, turn.target) == ("transfer", "119")
    assert flow.state("c9").state == "transferring" and flow.state("c9").target_kind == "emergency"
    assert flow.wait("c9").reason == "emergency"  # the caller's next tick carries it out


def test_words_heard_as_a_seat_is_offered_the_call_do_not_undo_the_offer(redis_client, redis_url, rules):
    """Twilio: the caller's words are heard (slowly: the pre-fill still learning) while the ACD
    offers the call to a seat and the agent answers. The offer and the answer must not be written
    over by the words' older copy of the call, or the answered seat is never busy — the ACD would
    time its ring out and offer the call again while the agent talks to the caller."""
    import threading
    import time

    import redis

    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    classifying = threading.Event()

    def slow_classify(text):
        classifying.set()
        time.sleep(0.4)
        return {}

    flow = F.CallFlow(rules, AcdQueue(acd), F.MemoryTickets(), F.RedisCalls(redis_client), classify=slow_classify)
    flow.start("h1", "12345", "13800138000")
    assert flow.wait("h1").action == "queue"
    acd.save_agent(Agent("a1", "张敏", {"general": 10}, ("client:a1",)))
    words = threading.Thread(target=flow.heard, args=("h1", "我想问一下社保卡怎么补办"))
    words.start()
    assert classifying.wait(2)
    acd.login("a1")  # ready: the ACD offers the call; the Twilio front-end rings the seat
    assert flow.queue.status("h1").state == "offered"
    flow.offered("h1", "a1", "client:a1")
    words.join(3)
    flow.agent_answered("h1")
    assert acd.agent("a1")["state"] == "busy"
    call = flow.state("h1")
    assert (call.state, call.agent, call.heard) == ("talking", "a1", "我想问一下社保卡怎么补办")


def test_words_heard_as_the_caller_hangs_up_do_not_bring_the_call_back_into_the_queue(redis_client, redis_url, rules):
    """The caller's last words are still being classified when they hang up (or the agent's dial
    ends): the end must not be written over by the words' older copy of the call, or the ACD
    would keep a caller who is gone waiting in line and offer them to a seat."""
    import threading
    import time

    import redis

    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    classifying = threading.Event()

    def slow_classify(text):
        classifying.set()
        time.sleep(0.4)
        return {"skill": "labor_social_security", "line": "12333"}

    flow = F.CallFlow(rules, AcdQueue(acd), F.MemoryTickets(), F.RedisCalls(redis_client), classify=slow_classify)
    for call_id, end in (("e1", lambda c: flow.hung_up(c)), ("e2", lambda c: flow.fallback(c))):
        flow.start(call_id, "12345", "13800138000")
        assert flow.wait(call_id).action == "queue"
        classifying.clear()
        words = threading.Thread(target=flow.heard, args=(call_id, "我想问一下社保卡怎么补办"))
        words.start()
        assert classifying.wait(2)
        end(call_id)
        words.join(3)
        assert flow.state(call_id).state == "ended", call_id
        assert acd.call(call_id)["state"] in ("abandoned", "left"), call_id  # out of the line, not waiting
        assert flow.wait(call_id).action == "hangup"  # a late tick of the front-end hangs up, never queues


def test_a_late_wait_tick_after_the_agent_answered_leaves_the_call_talking(redis_client, redis_url, rules):
    """Twilio sends the wait URL while the caller holds in <Enqueue>; one sent just before the
    agent's answer can arrive after it. The call stays a conversation: when the caller hangs up,
    the ticket says completed, not abandoned, and the agent's seat is freed."""
    import redis

    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    tickets = F.MemoryTickets()
    flow = F.CallFlow(rules, AcdQueue(acd), tickets, F.RedisCalls(redis_client))
    turn = flow.start("t1", "12345", "13800138000")
    assert flow.wait("t1").action == "queue"
    acd.save_agent(Agent("a1", "张敏", {"general": 10}, ("client:a1",)))
    acd.login("a1")
    flow.offered("t1", "a1", "client:a1")
    flow.agent_answered("t1")
    flow.wait("t1")  # the late tick
    assert flow.state("t1").state == "talking"
    flow.hung_up("t1")
    assert tickets.tickets[turn.ticket]["status"] == "completed"
    assert acd.call("t1")["state"] == "completed" and acd.agent("a1")["state"] != "busy"


def test_a_fallback_reported_after_the_call_ended_does_not_change_how_it_ended(mem):
    flow, queue, tickets, _ = mem
    turn = flow.start("f1", "12345", "13800138000")
    flow.wait("f1")
    flow.hung_up("f1")
    assert tickets.tickets[turn.ticket]["status"] == "abandoned"
    flow.fallback("f1", known={})  # the dialplan's h extension reports the end once more
    assert tickets.tickets[turn.ticket]["status"] == "abandoned"
    assert flow.state("f1").state == "ended"


def test_a_caller_the_acd_lost_with_its_redis_is_queued_again_not_hung_up(redis_client, redis_url, rules):
    """Redis restarted without its data while a request still held the caller's state and wrote it
    back afterwards: the flow says waiting, the ACD knows no such call — in line again."""
    import redis

    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    flow = F.CallFlow(rules, AcdQueue(acd), F.MemoryTickets(), F.RedisCalls(redis_client))
    flow.start("r1", "12345", "13800138000")
    assert flow.wait("r1").action == "queue"
    state = flow.calls.get("r1")
    redis_client.flushall()  # the restart
    flow.calls.put("r1", state)  # the late write of the request that straddled it
    assert flow.wait("r1").action == "queue"
    assert acd.call("r1")["state"] == "waiting" and acd.position("r1").position == 1


class _DiesEnqueueing(AcdQueue):
    """The FastAGI process killed as it puts the caller in the ACD's line: before the ACD took
    them, or right after."""

    def __init__(self, acd, after: bool):
        super().__init__(acd)
        self.after = after

    def enqueue(self, call_id, **kw):
        if self.after:
            super().enqueue(call_id, **kw)
        raise SystemExit("killed")


def test_a_server_killed_as_it_queues_the_caller_leaves_no_ghost_in_the_acd_line(redis_client, redis_url, rules):
    """The dialplan's fallback seats served the caller; its end report must take the call out of
    the ACD's line, or an agent would be offered nobody and the caller called back as lost."""
    import redis

    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    dying = F.CallFlow(rules, _DiesEnqueueing(acd, after=True), F.MemoryTickets(), F.RedisCalls(redis_client))
    dying.start("k1", "12345", "13800138000")
    with pytest.raises(SystemExit):
        dying.wait("k1")
    assert acd.call("k1")["state"] == "waiting"
    restarted = F.CallFlow(rules, AcdQueue(acd), F.MemoryTickets(), F.RedisCalls(redis_client))
    restarted.fallback("k1", known={})  # [hotline-fallback]'s h extension, to the restarted server
    assert acd.call("k1")["state"] == "left"
    assert restarted.state("k1").state == "ended"


def test_a_server_killed_before_the_acd_took_the_caller_still_ends_the_call_and_keeps_its_ticket(
        redis_client, redis_url, rules):
    import redis

    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    tickets = F.MemoryTickets()
    dying = F.CallFlow(rules, _DiesEnqueueing(acd, after=False), tickets, F.RedisCalls(redis_client))
    ticket = dying.start("k2", "12345", "13800138000").ticket
    with pytest.raises(SystemExit):
        dying.wait("k2")
    assert acd.call("k2") is None
    restarted = F.CallFlow(rules, AcdQueue(acd), tickets, F.RedisCalls(redis_client))
    restarted.hung_up("k2", known={})  # the caller gave up in the dialplan's fallback
    assert restarted.state("k2").state == "ended" and tickets.tickets[ticket]["status"] == "abandoned"
    assert acd.call("k2") is None


def test_a_clear_domain_heard_moves_the_waiting_call_to_that_seat_group(mem):
    flow, queue, *_ = mem
    flow.start("c4", "12345", "13800138000")
    flow.wait("c4")
    turn = flow.heard("c4", "我家小区的公积金")
    assert turn.action == "queue" and turn.skill == "housing_fund"
    assert queue.calls["c4"]["skill"] == "housing_fund"


def test_a_failed_emergency_transfer_lands_with_the_general_seats(mem):
    flow, queue, *_ = mem
    flow.start("c5", "12345", "13800138000")
    flow.wait("c5")
    flow.heard("c5", "有人晕倒了，快叫救护车")
    turn = flow.transfer_ended("c5", "CONGESTION")
    assert (turn.action, turn.skill) == ("queue", "general")
    # in line at once, while the notice still plays: a seat freed now takes it
    assert (queue.calls["c5"]["skill"], queue.calls["c5"]["state"]) == ("general", "waiting")
    flow.wait("c5")
    assert queue.calls["c5"]["skill"] == "general"


def test_announce_and_hangup_opens_no_ticket(rules, tmp_path):
    # a merge number after its window with announce_and_hangup ends the call; nothing to serve
    flow = F.CallFlow(rules, F.MemoryQueue(), F.MemoryTickets(), F.MemoryCalls(),
                      clock=lambda: datetime(2030, 1, 1, tzinfo=CHINA_TZ).timestamp())
    turn = flow.start("c6", "12301", "13800138000")
    assert turn.action == "queue"  # shipped rules forward after the window
    assert turn.steps[0]["text"].startswith("12301旅游服务热线已停用")


def test_hangup_is_idempotent_and_closes_the_ticket_once(mem):
    flow, queue, tickets, _ = mem
    t = flow.start("c7", "12345", "13800138000")
    flow.wait("c7")
    flow.hung_up("c7")
    flow.hung_up("c7")
    assert [e for e in queue.events if e[0] == "abandoned"] == [("abandoned", "c7")]
    assert tickets.tickets[t.ticket]["status"] == "abandoned"


def test_the_contract_variables_are_all_there():
    names = set(F.Turn("queue").variables())
    assert {"HOTLINE_ACTION", "HOTLINE_TARGET", "HOTLINE_SKILL", "HOTLINE_LINE", "HOTLINE_TICKET",
            "HOTLINE_RULES_VERSION"} <= names


def test_on_the_redis_acd_an_agent_is_assigned_and_a_callback_keeps_the_place(redis_client, redis_url, rules):
    import redis

    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    flow = F.CallFlow(rules, AcdQueue(acd), F.MemoryTickets(), F.MemoryCalls())
    for i in range(3):
        flow.start(f"r{i}", "12345", f"1380013800{i}")
        assert flow.wait(f"r{i}").action == "queue"
    status = flow.queue.status("r2")
    assert (status.state, status.position) == ("waiting", 2)  # two callers ahead
    call = flow.state("r2")  # r2 has waited long enough to have been offered a callback
    call.callback_offered = True
    flow.calls.put("r2", call.__dict__)
    turn = flow.pressed("r2", "1")
    assert turn.action == "hangup" and turn.steps[0]["text"] == F.CALLBACK_BOOKED
    assert acd.call("r2")["kind"] == "callback" and acd.position("r2").position == 3
    acd.save_agent(Agent("a1", "张敏", {"general": 10}, ("PJSIP/agent1",)))
    acd.login("a1")
    turn = flow.wait("r0")
    assert (turn.action, turn.target) == ("transfer", "PJSIP/agent1")
