"""The call simulator as CI and the docs use it: a reduced load through both front-ends always,
the full 1,000-call run with ``HOTLINE_FULL=1`` (docs/simulate.md records its figures)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intake.callback_jobs import callback_job_id
from tools.simulate import Simulation

ROOT = Path(__file__).resolve().parent.parent


def run(calls, front="both", agents=None, seed=11, **kw):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with Simulation(calls, front, agents, seed, progress=False, **kw) as sim:
        result = sim.run()
    return sim, result


def check(sim, result):
    lost = [(r.id, r.front, r.detail) for r in sim.records.values() if r.outcome is None]
    assert result["lost"] == 0 and not lost, lost
    assert result["tickets_missing"] == 0, sim.missing_tickets
    assert result["server_errors"] == 0 and result["silence"] == 0, sim.stats.errors[:10]
    # what a Twilio caller hears before a person answers: never more than 2 s of silence
    quiet = {r.id: r.max_silence_s for r in sim.records.values() if r.max_silence_s > 2}
    assert result["max_silence_s"] <= 2 and not quiet, quiet
    assert result["connected"] + result["abandoned"] + result["callback"] + result["emergency"] + \
        result["fallback"] + result["announced"] == result["calls"]


def test_reduced_load_50_calls_through_both_front_ends_every_call_has_an_outcome_and_a_ticket(caplog):
    caplog.set_level(logging.ERROR)
    sim, result = run(50, "both", 6, seed=11)
    check(sim, result)
    fronts = {r.front for r in sim.records.values() if r.outcome == "connected"}
    assert fronts == {"twilio", "agi"}
    assert result["connected"] > 25 and result["fallback"] == 0
    assert result["assignments"] >= result["connected"] - result["subcenter"]
    assert result["webhooks"] > 0 and result["agi_commands"] > 0 and result["p99_ms"] > 0
    # every connected call reached a seat that signed in through the agent API
    assert all(r.agent in sim.agents for r in sim.records.values() if r.outcome == "connected" and r.detail == "")


def test_callers_who_book_a_callback_are_called_back_keeping_their_place(caplog):
    caplog.set_level(logging.ERROR)
    sim, result = run(16, "both", 2, seed=4, callback_share=0.5, abandon_share=0.0, emergency_share=0.0)
    check(sim, result)
    assert result["callback"] >= 4
    assert result["callbacks_connected"] == result["callback"]  # both fronts' callbacks dialled and bridged


def test_callback_job_ids_accept_asterisk_uniqueids():
    assert callback_job_id("1700000000.42", 1) != callback_job_id("1700000000_42", 1)
    import re

    assert re.fullmatch(r"[\w-]+", callback_job_id("1700000000.42", 3))
    assert callback_job_id("CA0123", 2) == "acd-callback-CA0123-2"


def test_the_command_prints_the_report_and_one_json_object_last():
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    proc = subprocess.run([sys.executable, "-m", "tools.simulate", "--calls", "6", "--agents", "2", "--seed", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("calls", "connected", "abandoned", "callback", "emergency", "lost", "tickets_missing", "p99_ms"):
        assert key in last
    assert last["calls"] == 6 and last["lost"] == 0
    assert "/6" in proc.stderr  # the progress bar


@pytest.mark.slow
def test_full_load_1000_concurrent_calls_through_the_whole_path(caplog):
    caplog.set_level(logging.CRITICAL)
    sim, result = run(1000, "both", 100, seed=1, call_timeout_s=600, processes=True, wait_tick_s=2)
    print(json.dumps(result))
    check(sim, result)
