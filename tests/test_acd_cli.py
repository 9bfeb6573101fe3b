"""The ACD's command line and benchmark, run as an operator would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from acd_support import make_acd, seat

ROOT = Path(__file__).resolve().parent.parent


def run(args, redis_url):
    env = dict(os.environ, REDIS_URL=redis_url)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_an_operator_prints_the_kpis_of_the_queue_log_as_json(redis_url, rules):
    acd = make_acd(redis_url, rules)
    seat(acd, "a1", {"general": 5})
    acd.enqueue("general", "12345", "13800000001")
    out = run(["-m", "call_routing.acd", "kpi"], redis_url)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.splitlines()[-1])
    assert figures["total"]["offered"] == 1 and "12345" in figures["lines"]


def test_the_acd_benchmark_assigns_in_one_round_trip_without_double_assignments(redis_url):
    out = run(["-m", "bench.acd", "--calls", "300", "--clients", "2"], redis_url)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["redis_round_trips_per_assignment"] == 1.0
    assert figures["double_assignments"] == 0 and figures["double_connects"] == 0
    assert figures["assignments_per_s"] > 0 and figures["full_cycle_calls_per_s"] > 0


def test_the_ticker_process_takes_a_silent_seat_out_of_rotation(redis_url, rules):
    import time

    acd = make_acd(redis_url, rules)
    acd.clock = time.time
    seat(acd, "silent", {"general": 5})
    acd.redis.zadd(acd.keys.beats(), {"silent": time.time() - 3600})  # its console died an hour ago
    env = dict(os.environ, REDIS_URL=redis_url)
    ticker = subprocess.Popen([sys.executable, "-m", "call_routing.acd", "tick", "--every", "0.2"], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and acd.agent("silent")["state"] != "offline":
            time.sleep(0.1)
        assert acd.agent("silent")["state"] == "offline"
    finally:
        ticker.terminate()
        assert ticker.wait(10) == 0


def test_the_timer_process_waits_out_a_redis_outage_instead_of_dying(tmp_path):
    """`python -m call_routing.acd tick` started while Redis is down (or losing it) keeps
    retrying, and ticks again once a Redis answers on that address — seen from Redis's side."""
    import shutil
    import socket
    import time

    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    ticker = subprocess.Popen([sys.executable, "-m", "call_routing.acd", "tick", "--every", "0.2"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        time.sleep(2.0)
        assert ticker.poll() is None, ticker.stderr.read()  # Redis unreachable: still there
        server = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:  # the ticker's scans of the timers' sorted sets arrive at the new Redis
            try:
                stats = client.info("commandstats")
            except redis.ConnectionError:
                stats = {}
            if stats.get("cmdstat_zrangebyscore", {}).get("calls", 0) > 3:
                break
            assert time.monotonic() < deadline, "the ticker never came back to Redis"
            time.sleep(0.2)
        assert ticker.poll() is None
    finally:
        ticker.terminate()
        ticker.wait(10)
        if server is not None:
            server.terminate()
            server.wait(10)
