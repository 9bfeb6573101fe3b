"""Benchmark the supervisor dashboard's figures for today over a queue log holding many days.

    python -m bench.dashboard [--days 10] [--per-day 100000] [--new 90]

Fills the queue log (``acd:log``) of a fresh embedded Redis (or ``REDIS_URL``, prefix
``benchdash``, deleted afterwards) with ``--days`` past days and today so far, ``--per-day``
entries a day, then times: today's figures by reading the whole log (what the dashboard did
before session 3), the dashboard's first read of the day (from where the day begins in the
log), and a refresh after ``--new`` entries were written. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import redis

from call_routing.acd import ACD
from call_routing.acd.kpi import kpis, read_entries
from runtime.redis_server import redis_url_or_embedded
from call_routing.rules import load_rules
from consoles.dashboard import Dashboard, start_of_day

EVENTS = ("enter", "offer", "connect", "complete", "wrapup", "survey")


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, round(time.process_time() - c0, 4), round(time.perf_counter() - w0, 4)


def _fill(r, log: str, days: int, per_day: int, now: float, today: float) -> None:
    pipe = r.pipeline(transaction=False)
    for d in range(days, -1, -1):
        start = today - d * 86400
        span = (now - start) if d == 0 else 86400
        for i in range(int(per_day * span / 86400)):
            pipe.xadd(log, {"e": EVENTS[i % 6], "t": f"{start + 86400 * i / per_day:.3f}", "call": f"c{d}-{i // 6}",
                            "line": "12345", "kind": "live", "wait": "5", "talk": "60", "wrap": "20", "score": "1",
                            "agent": "a1"})
            if len(pipe) >= 5000:
                pipe.execute()
    pipe.execute()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--per-day", type=int, default=100_000, help="log entries a day (≈ 6 per call)")
    parser.add_argument("--new", type=int, default=90, help="entries written between two refreshes")
    args = parser.parse_args(argv)
    url, embedded = redis_url_or_embedded()
    try:
        r = redis.Redis.from_url(url, decode_responses=True)
        now = time.time()
        today = start_of_day(now)
        acd = ACD(r, load_rules(os.environ.get("RULES_PATH") or None), clock=lambda: now,
                  prefix="benchdash" if not embedded else "acd")
        log = acd.keys.log()
        r.delete(log)
        _fill(r, log, args.days, args.per_day, now, today)
        whole, whole_cpu, whole_wall = _timed(
            lambda: kpis(e for _, e in read_entries(r, acd.keys, "-") if float(e["t"]) >= today))
        board = Dashboard(acd, ttl_s=0)
        first, first_cpu, first_wall = _timed(board.today)
        assert first["total"]["offered"] == whole["total"]["offered"], "the dashboard disagrees with the log"
        pipe = r.pipeline(transaction=False)
        for i in range(args.new):
            pipe.xadd(log, {"e": "enter", "t": f"{now:.3f}", "call": f"n{i}", "line": "12345", "kind": "live"})
        pipe.execute()
        again, refresh_cpu, refresh_wall = _timed(board.today)
        assert again["total"]["offered"] == first["total"]["offered"] + args.new
        result = {"log_entries": r.xlen(log), "whole_log_cpu_s": whole_cpu, "whole_log_wall_s": whole_wall,
                  "first_read_cpu_s": first_cpu, "first_read_wall_s": first_wall,
                  "refresh_cpu_s": refresh_cpu, "refresh_wall_s": refresh_wall, "new_entries": args.new}
        if not embedded:
            r.delete(log)
    finally:
        if embedded:
            embedded.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
