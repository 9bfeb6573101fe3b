"""The ACD's timers come from ``queue:`` in transfer_rules.yaml: an admin's edit applies from the
next operation, without restarting anything; a value given to the ACD itself wins (tools, tests)."""
from __future__ import annotations

import dataclasses
from types import MappingProxyType

import redis

from acd_support import Clock, seat
from call_routing.acd import ACD

CALLER = "13800138000"


def with_timers(rules, **timers):
    return dataclasses.replace(rules, acd_settings=MappingProxyType({**rules.acd_settings, **timers}),
                               version=rules.version + "-timers")


def test_an_admins_timer_edit_applies_from_the_next_operation(redis_url, rules):
    clock = Clock()
    current = {"rules": rules}
    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), lambda: current["rules"], clock=clock,
              dispatch_callback=False)
    assert (acd.ring_timeout_s, acd.abandon_callback_after_s, acd.wrapup_max_s) == (20, 10, 120)  # the shipped file
    # a caller who hung up after 15 s is called back under the shipped 10 s...
    acd.enqueue("general", "12345", CALLER, call_id="m1")
    clock.advance(15)
    assert acd.hangup("m1").status == "callback"
    # ...and not once the admin has raised it to 30 s
    current["rules"] = with_timers(rules, missed_call_callback_after_s=30)
    acd.enqueue("general", "12345", "13900139000", call_id="m2")
    clock.advance(15)
    assert acd.hangup("m2").status != "callback" and acd.call("m2")["state"] == "abandoned"
    # a shorter ring timeout: an unanswered offer goes back to the queue after 7 s, not 20
    current["rules"] = with_timers(rules, ring_timeout_s=7)
    seat(acd, "a1", {"legal": 5})  # (the general queue holds m1's callback)
    acd.enqueue("legal", "12348", "13700137000", call_id="r1")
    assert acd.call("r1")["state"] == "ringing"
    clock.advance(8)
    assert acd.tick()["ring_timeout"] == 1 and acd.agent("a1")["state"] == "paused"
    # a value given to the ACD itself is not overridden by the rules
    fixed = ACD(acd.redis, lambda: current["rules"], clock=clock, dispatch_callback=False, ring_timeout_s=45)
    assert fixed.ring_timeout_s == 45 and fixed.callback_attempts == 3
