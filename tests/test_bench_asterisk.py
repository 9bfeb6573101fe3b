"""bench.asterisk on a real Asterisk 22: a few calls end to end, every one served, none lost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.asterisk_lab import locate

pytestmark = pytest.mark.pbx
ROOT = Path(__file__).resolve().parent.parent


def test_bench_asterisk_serves_every_call_and_reports_its_figures():
    launcher, why = locate()
    if launcher is None:
        pytest.skip(f"real-PBX test skipped: {why}")
    run = subprocess.run([sys.executable, "-m", "bench.asterisk", "--calls", "4", "--agents", "4", "--talk", "1-2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["calls"] == 4 and figures["completed"] == 4, run.stderr[-3000:]
    assert figures["lost"] == 0 and figures["fallback"] == 0 and figures["peak_calls"] == 4
    assert figures["route_p99_ms"] > 0 and figures["asterisk_cpu_ms_per_call"] > 0
    assert figures["product_cpu_ms_per_call"] > 0 and figures["assign_p99_ms"] is not None
