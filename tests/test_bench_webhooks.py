"""``python -m bench.webhooks`` runs as documented: the product under gunicorn with its own
settings, every /twilio/voice request a new signed call (all answered 200, no CallSid repeated),
one JSON object last."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    r = subprocess.run([sys.executable, "-m", "bench.webhooks", "--seconds", "3", "--connections", "10", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not shutil.which("wrk"), reason="bench.webhooks needs wrk (apt-get install wrk)")
def test_bench_webhooks_reports_figures_for_the_product_as_it_serves():
    figures = run()
    assert figures["req_per_s"] > 0 and figures["p99_ms"] > 0
    assert figures["errors"] == 0  # every signed call answered 200
    assert figures["callsid_repeats"] == 0
    assert figures["target_met"] == (figures["req_per_s"] >= 1000 and figures["p99_ms"] <= 100)
    from runtime.serving import default_workers

    # the product's gunicorn settings (runtime/serving.py)
    assert figures["worker_class"] == "sync" and figures["workers"] == default_workers()
    assert figures["connections"] == 10


def test_the_product_serves_with_one_sync_worker_per_core_plus_one_unless_told(monkeypatch):
    import gc
    import os

    from runtime import serving

    monkeypatch.delenv("WEB_WORKERS", raising=False)
    assert serving.default_workers() == (os.cpu_count() or 1) + 1
    monkeypatch.setenv("WEB_WORKERS", "7")
    assert serving.default_workers() == 7
    before = gc.get_freeze_count()
    kept = [[] for _ in range(100)]  # objects a worker builds at start-up
    try:
        serving.post_worker_init(None)
        assert gc.get_freeze_count() >= before + 100  # out of the full collections' way
    finally:
        gc.unfreeze()
    assert kept


def test_a_started_worker_builds_the_pre_fill_classifier_in_the_background(redis_url, rules_path, tmp_path, caplog):
    import gc
    import time
    from types import SimpleNamespace

    from app import create_app
    from runtime import serving

    app = create_app({"REDIS_URL": redis_url, "RULES_PATH": str(rules_path), "TWILIO_AUTH_TOKEN": "t",
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", "SECRET_KEY": "s", "TWILIO_OFFER_LISTENER": "0"})
    classify = app.extensions["twilio"]["flow"].classify
    assert classify._cache[2] is None  # nothing built while the app was made (tests make hundreds)

    def broken():
        raise RuntimeError("warm-up failed")

    app.extensions["warm_up"].insert(0, broken)
    try:
        serving.post_worker_init(SimpleNamespace(wsgi=app))  # what gunicorn calls once the worker has the app
    finally:
        gc.unfreeze()
    deadline = time.monotonic() + 30
    while classify._cache[2] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert classify._cache[2] is not None  # built before the first words are heard
    assert "warm-up" in caplog.text and "failed" in caplog.text  # a failing one is logged, the rest still run
