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


def test_bench_dashboard_reports_the_whole_log_against_the_days_first_read_and_a_refresh():
    figures = run_bench("dashboard", "--days", "2", "--per-day", "3000", "--new", "10")
    assert figures["log_entries"] > 6000 and figures["new_entries"] == 10
    assert all(figures[k] >= 0 for k in ("whole_log_cpu_s", "first_read_cpu_s", "refresh_cpu_s"))
