"""Benchmark the routing core: decisions per second on one core, and rules load time.

    python -m bench.router [--seconds 3] [--rules FILE]

The call mix is what a city's lines see: mostly 12345, every legacy number in its carrier
forms, transition windows on both sides, and one call in ten with heard text (a few of them
emergencies). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import datetime

from call_routing.router import decide
from call_routing.rules import CHINA_TZ, DEFAULT_RULES_PATH, check_rules


def call_mix(rules, n=10_000, seed=12345):
    rng = random.Random(seed)
    legacy = sorted(rules.lines)
    times = [datetime(2020, 6, 1, tzinfo=CHINA_TZ).timestamp(), datetime(2024, 6, 1, tzinfo=CHINA_TZ).timestamp(),
             datetime(2027, 6, 1, tzinfo=CHINA_TZ).timestamp()]
    heard = ["我想咨询一下公积金怎么提取", "小区门口的路灯坏了", "楼下着火了", "有人晕倒了", "出租车绕路"]
    forms = ["{n}", "+86{n}", "0086{n}", "sip:{n}@pbx.example.gov.cn", "021{n}"]
    calls = []
    for _ in range(n):
        number = "12345" if rng.random() < 0.6 else rng.choice(legacy)
        dialed = rng.choice(forms).format(n=number)
        text = rng.choice(heard) if rng.random() < 0.1 else None
        calls.append((dialed, "13800138000", rng.choice(times), text))
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH))
    args = parser.parse_args(argv)

    loads = []
    for _ in range(20):
        t0 = time.perf_counter()
        rules, problems = check_rules(args.rules)
        loads.append((time.perf_counter() - t0) * 1000)
        if problems:
            raise SystemExit("\n".join(map(str, problems)))
    calls = call_mix(rules)
    for call in calls[:1000]:  # warm-up, builds the per-rules plans
        decide(*call, rules)
    rounds = []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for dialed, caller, at, text in calls:
            decide(dialed, caller, at, text, rules)
        rounds.append(len(calls) / (time.perf_counter() - t0))
    result = {
        "decisions_per_s": round(statistics.median(rounds)),
        "decisions_per_s_min": round(min(rounds)),
        "rules_load_ms": round(statistics.median(loads), 2),
        "calls_in_mix": len(calls),
        "rounds": len(rounds),
    }
    print(f"routing: {result['decisions_per_s']:,} decisions/s (median of {len(rounds)} rounds); "
          f"rules load {result['rules_load_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
