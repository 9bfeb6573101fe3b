"""Benchmarks are runnable as documented and end with one JSON object of figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(name, *args):
    r = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_bench_router_reports_decisions_per_second_and_load_time():
    figures = run_bench("router", "--seconds", "0.3")
    assert figures["decisions_per_s"] > 0 and figures["rules_load_ms"] > 0
