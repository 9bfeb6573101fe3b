"""The product as a user starts it: create_app() and `python app.py`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app import create_app
from runtime.redis_server import free_port
from call_routing.rules import RulesError

ROOT = Path(__file__).resolve().parent.parent


def test_create_app_reads_config_from_the_mapping_then_the_environment(monkeypatch, rules_path, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/from-env.db")
    app = create_app({"RULES_PATH": str(rules_path), "TWILIO_AUTH_TOKEN": "secret"})
    assert app.config["DATABASE_URL"] == f"sqlite:///{tmp_path}/from-env.db"
    assert app.config["TWILIO_AUTH_TOKEN"] == "secret"
    body = app.test_client().get("/healthz").get_json()
    assert body == {"status": "ok", "rules_version": app.extensions["rules"].current().version}


def test_the_app_refuses_to_start_on_invalid_rules_and_says_why(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("hotline: {number: '12345'}\n", encoding="utf-8")
    with pytest.raises(RulesError) as err:
        create_app({"RULES_PATH": str(bad)})
    assert f"{bad}:1: hotline: 缺少必填的键 name" in str(err.value)


def _ps(session_id) -> str:
    return subprocess.run(["ps", "-o", "args=", "-s", str(session_id)], capture_output=True, text=True).stdout


def _get(url, timeout=1.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def test_python_app_py_runs_web_worker_and_embedded_redis_then_stops_them_all(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "WEB_PROXY")}
    agi_port = free_port()
    env.update(BIND=f"127.0.0.1:{port}", WEB_WORKERS="1", PYTHONUNBUFFERED="1", FASTAGI_BIND=f"127.0.0.1:{agi_port}",
               DATABASE_URL=f"sqlite:///{tmp_path}/hotline.db",
               REDIS_DATA_DIR=str(tmp_path / "redis"))  # not the checkout's var/redis
    log = open(tmp_path / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                body = _get(f"http://127.0.0.1:{port}/healthz")
            except OSError:
                time.sleep(0.2)
        assert body and body["status"] == "ok", open(tmp_path / "app.log").read()
        log.seek(0)
        text = log.read()
        assert "started embedded Redis" in text
        summary = text.split("12345 gateway\n", 1)[1]  # what runs where, once
        assert f"web        http://127.0.0.1:{port}" in summary and f"/login" in summary
        assert f"FastAGI    agi://127.0.0.1:{agi_port}" in summary
        assert "  Twilio     " in summary  # on or off, and what is missing
        assert f"Redis      embedded, data in {tmp_path / 'redis'}" in summary
        assert f"keeps its data in {tmp_path / 'redis'}" in text  # seats survive a restart
        import redis

        redis_url = text.split("started embedded Redis at ")[1].split()[0]
        assert redis_url.startswith("unix://")  # local processes reach it through its Unix socket
        assert redis.Redis.from_url(redis_url).ping()
        # the worker listens at once: its pre-fill learns in the background (on a fresh checkout
        # about 75 s of one CPU from the shipped sentences), callbacks and hand-offs do not wait
        deadline = time.monotonic() + 60
        while "Listening on speech" not in text and time.monotonic() < deadline:
            time.sleep(0.2)
            log.seek(0)
            text = log.read()
        assert "Listening on speech" in text  # the rq worker is taking jobs
        running = _ps(proc.pid)
        assert "call_routing.acd tick" in running and "agi_scripts.fastagi_server" in running
        import socket

        with socket.create_connection(("127.0.0.1", agi_port), timeout=5):
            pass  # the FastAGI server accepts Asterisk's connections
        # a web worker that exits (as gunicorn recycles one) leaves the product's processes running:
        # it was forked from app.py and leaves through main()'s clean-up too
        def children():
            out = {}
            for line in subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-s", str(proc.pid)], capture_output=True,
                                       text=True).stdout.splitlines():
                pid, ppid, args = line.split(None, 2)
                if int(ppid) == proc.pid:
                    out[int(pid)] = args
            return out

        before = children()
        web_worker = [pid for pid, args in before.items() if args.rstrip().endswith("app.py")]
        assert len(web_worker) == 1, before
        os.kill(web_worker[0], signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (web_worker[0] in children() or
                                               len([a for a in children().values() if a.rstrip().endswith("app.py")]) < 1):
            time.sleep(0.2)
        deadline = time.monotonic() + 30  # a new web worker answers (once it has loaded: seconds when busy)
        while True:
            try:
                assert _get(f"http://127.0.0.1:{port}/healthz", timeout=5)["status"] == "ok"
                break
            except OSError:
                assert time.monotonic() < deadline, "no web worker answered after the recycle"
                time.sleep(0.2)
        time.sleep(1.5)  # what a wrongly stopped process would show by now
        after = children()
        for marker in ("intake.worker", "call_routing.acd tick", "agi_scripts.fastagi_server"):
            assert [p for p, a in before.items() if marker in a] == [p for p, a in after.items() if marker in a], marker
        # a killed worker and timer process are started again, and /metrics says so
        killed = {}
        for line in subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-s", str(proc.pid)], capture_output=True,
                                   text=True).stdout.splitlines():
            pid, ppid, args = line.split(None, 2)
            for name, marker in (("worker", "intake.worker"), ("timers", "call_routing.acd tick")):
                if marker in args and int(ppid) == proc.pid:  # app.py's own children, not theirs
                    killed[name] = int(pid)
        assert set(killed) == {"worker", "timers"}
        for pid in killed.values():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        metrics = ""
        while time.monotonic() < deadline:
            running = _ps(proc.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                metrics = r.read().decode()
            if ('hotline_process_restarts{process="worker"} 1.0' in metrics
                    and 'hotline_process_up{process="timers"} 1.0' in metrics
                    and "intake.worker" in running and "call_routing.acd tick" in running):
                break
            time.sleep(0.3)
        assert 'hotline_process_restarts{process="worker"} 1.0' in metrics, metrics
        assert 'hotline_process_restarts{process="timers"} 1.0' in metrics
        assert "intake.worker" in running and "call_routing.acd tick" in running
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    with pytest.raises(Exception):
        redis.Redis.from_url(redis_url, socket_connect_timeout=0.5).ping()  # no orphan Redis left behind
    out = subprocess.run(["ps", "-o", "stat=,args=", "-s", str(proc.pid)], capture_output=True, text=True)
    # nothing of the session left running (a killed child's own children may linger as zombies
    # where PID 1 does not reap orphans, as in this container; they run nothing)
    assert [line for line in out.stdout.splitlines() if not line.strip().startswith("Z")] == []


@pytest.mark.skipif(not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"),
                    reason="the buffering proxy needs nginx (apt-get install nginx-light)")
def test_slow_clients_holding_connections_do_not_stop_the_web_tier_from_answering(tmp_path):
    """Twelve clients each sending a webhook body one byte every two seconds (six blocked every
    gunicorn worker before nginx was put in front): health checks and webhooks still answer."""
    import socket

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "WEB_PROXY")}
    env.update(BIND=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1", FASTAGI_BIND="off", REDIS_DATA_DIR="off",
               DATABASE_URL=f"sqlite:///{tmp_path}/h.db")
    log = open(tmp_path / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    slow = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(f"http://127.0.0.1:{port}/healthz")["status"] == "ok":
                    break
            except (OSError, ValueError):
                time.sleep(0.2)
        log.seek(0)
        assert "through nginx" in log.read()
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /twilio/voice HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      b"application/x-www-form-urlencoded\r\nContent-Length: 400\r\n\r\nCallSid=CA")
            slow.append(s)
        answered = []
        for i in range(4):  # eight seconds of the attack
            for s in slow:
                s.sendall(b"1")
            t0 = time.monotonic()
            body = _get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            answered.append((body["status"], time.monotonic() - t0))
            time.sleep(2)
        assert [status for status, _ in answered] == ["ok"] * 4
        assert max(took for _, took in answered) < 1.0, answered
    finally:
        for s in slow:
            s.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize("setting", ["FASTAGI_BIND", "BIND"])
def test_a_port_already_in_use_stops_start_up_at_once_with_one_line_naming_it(tmp_path, setting):
    import socket

    taken = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(BIND=f"127.0.0.1:{free_port()}", FASTAGI_BIND=f"127.0.0.1:{free_port()}", REDIS_DATA_DIR="off",
               DATABASE_URL=f"sqlite:///{tmp_path}/h.db")
    env[setting] = address
    try:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert r.returncode == 1 and time.monotonic() - t0 < 15
    assert f"cannot start: {setting}={address} is already in use" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
