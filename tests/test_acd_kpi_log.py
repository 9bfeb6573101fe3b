"""Today's KPIs from a queue log that holds days of calls: only today's part of the log is read,
and the supervisor dashboard adds only what was written since its last read — on a real Redis,
with calls made through the ACD."""
from __future__ import annotations

import random

from acd_support import Clock, make_acd, seat
from call_routing.acd.kpi import kpis, read_log, start_id
from consoles.dashboard import Dashboard, start_of_day

RNG = random.Random(7)
CALLER = "13800138000"


class CountingRedis:
    """The ACD's client, counting the log entries read back (what the dashboard costs Redis)."""

    def __init__(self, client):
        self.client, self.entries_read = client, 0

    def xrange(self, *a, **kw):
        got = self.client.xrange(*a, **kw)
        self.entries_read += len(got)
        return got

    def xrevrange(self, *a, **kw):
        got = self.client.xrevrange(*a, **kw)
        self.entries_read += len(got)
        return got

    def __getattr__(self, name):
        return getattr(self.client, name)


def calls(acd, clock, n, *, line="12345", skill="general", wait_s=5, answered=True, prefix="c"):
    for i in range(n):
        call_id = f"{prefix}{clock.now:.0f}-{i}"
        acd.enqueue(skill, line, CALLER, call_id=call_id)
        clock.advance(wait_s)
        if answered:
            acd.answer(call_id, "a1")
            clock.advance(60)
            acd.hangup(call_id, "agent")
            acd.wrapup_done("a1")
        else:
            acd.hangup(call_id, "caller")
        clock.advance(RNG.uniform(0, 30))


def test_only_todays_part_of_a_long_log_is_read_and_the_figures_are_the_same(redis_url, rules):
    clock = Clock()
    acd = make_acd(redis_url, rules, clock, heartbeat_timeout_s=10 ** 9, abandon_callback_after_s=None)
    today = start_of_day(clock.now)
    clock.now = today - 3 * 86400  # three days of calls before today
    seat(acd, "a1", {"general": 5, "legal": 5})
    while clock.now < today - 600:
        calls(acd, clock, 20)
        clock.advance(3 * 3600)
    clock.now = today + 9 * 3600
    calls(acd, clock, 6)
    calls(acd, clock, 3, line="12348", skill="legal", answered=False)
    everything = list(read_log(acd.redis, acd.keys))
    expected = [e for e in everything if float(e["t"]) >= today]
    assert len(expected) < len(everything) / 3
    counting = CountingRedis(acd.redis)
    assert list(read_log(counting, acd.keys, since=today)) == expected
    # a binary search (a few dozen single entries) then today's entries, not the whole log
    assert counting.entries_read < len(expected) + 100 < len(everything)
    k = kpis(expected)["lines"]
    assert (k["12345"]["offered"], k["12345"]["answered"], k["12348"]["abandoned"]) == (6, 6, 3)
    # where today begins is found whatever the clocks: nothing recent → after the last entry
    assert start_id(acd.redis, acd.keys, clock.now + 86400).startswith("(")
    assert start_id(acd.redis, acd.keys, today - 10 * 86400) == "-"


def test_the_dashboard_adds_only_new_entries_and_agrees_with_a_full_reading(redis_url, rules):
    clock = Clock()
    acd = make_acd(redis_url, rules, clock, heartbeat_timeout_s=10 ** 9, abandon_callback_after_s=None)
    today = start_of_day(clock.now)
    clock.now = today - 86400 + 8 * 3600  # yesterday
    seat(acd, "a1", {"general": 5, "legal": 5})
    calls(acd, clock, 30, prefix="y")
    clock.now = today + 8 * 3600
    calls(acd, clock, 5)
    counting = CountingRedis(acd.redis)
    acd.redis = counting
    board = Dashboard(acd, ttl_s=0)
    first = board.today()
    assert first["total"]["offered"] == 5 and first["lines"]["12345"]["answered"] == 5
    read_first = counting.entries_read
    written_before = acd.redis.xlen(acd.keys.log())
    assert read_first < written_before / 2  # yesterday's part of the log was not read
    calls(acd, clock, 4, line="12348", skill="legal", answered=False)
    clock.advance(2 * 3600)
    calls(acd, clock, 2)
    counting.entries_read = 0
    second = board.today()
    written = acd.redis.xlen(acd.keys.log()) - written_before
    assert counting.entries_read == written  # only the entries written since the first read
    new_entries = [e for e in read_log(acd.redis.client, acd.keys) if float(e["t"]) >= today]
    full = kpis(new_entries)["total"]
    assert {k: second["total"][k] for k in full} == full  # (the dashboard adds the tickets' satisfaction)
    assert Dashboard(acd, ttl_s=0).today()["total"] == second["total"]  # a new process reading it all
    assert (second["total"]["offered"], second["lines"]["12348"]["abandoned"]) == (11, 4)
    hourly = {h["hour"]: h for h in second["hourly"]}
    assert sum(h["offered"] for h in hourly.values()) == 11 and hourly[8]["offered"] >= 5
    # the next day starts from zero
    clock.now = today + 86400 + 8 * 3600
    assert board.today()["total"]["offered"] == 0
    calls(acd, clock, 1)
    assert board.today()["total"]["offered"] == 1
