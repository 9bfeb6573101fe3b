"""Faults under load: every one ends with zero lost calls and zero lost tickets.

The calls are :mod:`tools.simulate`'s (signed Twilio webhooks over HTTP, FastAGI sessions over
TCP, agents through the agent API), each fault injected while calls are flowing. All traffic
stays on 127.0.0.1; every wait is bounded.

Not here because it already has its own test: an rq worker killed during a transcription
(job handed back and retried by the next worker, ticket complete) —
``tests/test_jobs.py::test_a_job_killed_with_its_worker_is_retried_by_the_next_worker``; a
ticket writer killed mid-write — ``tests/test_tickets_deferred.py``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from agi_peer import Peer, agi_env, converse

from tools.simulate import Simulation

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "agi_scripts" / "extensions.conf.sample"


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.CRITICAL)  # the faults log loudly by design; the assertions say what matters
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def simulate(calls, front="both", agents=3, seed=1, hooks=(), before=None, **kw) -> tuple[Simulation, dict]:
    with Simulation(calls, front, agents, seed, progress=False, call_timeout_s=kw.pop("call_timeout_s", 90),
                    **kw) as sim:
        if before:
            before(sim)
        sim.hooks.extend(hooks)
        result = sim.run()
    return sim, result


def assert_nobody_lost(sim: Simulation, result: dict) -> None:
    lost = [(r.id, r.front, r.detail) for r in sim.records.values() if r.outcome is None]
    assert result["lost"] == 0 and not lost, lost
    assert result["tickets_missing"] == 0, sim.missing_tickets
    assert result["server_errors"] == 0, sim.stats.errors[:10]
    assert result["silence"] == 0, [(r.id, r.detail) for r in sim.records.values() if r.silence]
    assert sum(result[k] for k in ("connected", "abandoned", "callback", "emergency", "fallback", "announced")) \
        == result["calls"]


@contextlib.contextmanager
def product_log(tmp_path):
    """What the product logs meanwhile, kept in a file: ``said(call_id, ...)`` gives its lines
    about those calls (for a failure's message: what the product did with the call)."""
    path = tmp_path / "product.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))
    product = logging.getLogger("hotline")
    level = product.level
    product.setLevel(logging.INFO)
    product.addHandler(handler)

    def said(*call_ids):
        lines = path.read_text(encoding="utf-8").splitlines()
        return "\n".join(line[:300] for line in lines if any(c in line for c in (*call_ids, "[fault]")))

    try:
        yield said
    finally:
        product.removeHandler(handler)
        product.setLevel(level)
        handler.close()


# -- Redis killed and restarted mid-queue -------------------------------------------------------

def test_redis_killed_and_restarted_mid_queue_loses_no_caller_and_no_ticket(tmp_path):
    marks = {}

    def kill_and_restart(sim):
        time.sleep(3)
        server = sim.redis_server
        server.process.kill()
        server.process.wait(5)
        marks["killed"] = time.monotonic()
        logging.getLogger("hotline.test").warning("[fault] Redis killed")
        time.sleep(2)
        server.start()  # same port, empty (no persistence): state must rebuild itself
        marks["restarted"] = time.monotonic()
        logging.getLogger("hotline.test").warning("[fault] Redis restarted empty")

    with product_log(tmp_path) as said:
        sim, result = simulate(30, "both", 3, seed=3, hooks=[kill_and_restart])
    # no Twilio caller is left alone in the conference by an agent who hung up during the outage
    silent = [(r.id, r.detail) for r in sim.records.values() if r.silence]
    assert not silent, (silent, said(*(call_id for call_id, _ in silent)))
    lost = [(r.id, r.front, r.detail) for r in sim.records.values() if r.outcome is None]
    assert not lost, lost
    assert result["tickets_missing"] == 0, sim.missing_tickets
    assert result["server_errors"] == 0, sim.stats.errors[:10]
    assert "restarted" in marks
    # during the outage the AGI calls took the dialplan's degraded route (app_queue general seats)
    assert result["fallback"] > 0
    # Twilio callers were never left in silence: every webhook answered TwiML or 204, and they
    # reached a seat once Redis was back (their calls registered again through the wait URL)
    after = [r for r in sim.records.values() if r.ended and r.ended > marks["restarted"] and r.outcome == "connected"]
    assert after, "no call connected after the restart: state did not recover"
    assert any(r.front == "twilio" for r in after)


# -- a web worker killed during a webhook ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_web_worker_killed_during_a_webhook_leaves_the_fallback_url_to_queue_the_caller(redis_url, rules_path,
                                                                                         tmp_path):
    import http.client
    from urllib.parse import urlencode

    from twilio.request_validator import RequestValidator

    from intake.tickets import TicketDrafts, TicketStore
    from intake import jobs
    from tests.twilio_support import ACCOUNT, TOKEN, call_params

    import redis as redis_lib

    port = _free_port()
    db = f"sqlite:///{tmp_path / 'tickets.db'}"
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=db, RULES_PATH=str(rules_path), TWILIO_AUTH_TOKEN=TOKEN,
               TWILIO_OFFER_LISTENER="0", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    env.pop("TWILIO_ACCOUNT_SID", None)  # no REST calls at all: nothing leaves 127.0.0.1
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "--timeout", "120",
                             "--graceful-timeout", "1", "tests.fault_wsgi:application"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    validator = RequestValidator(TOKEN)

    def post(path, params, headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            sig = validator.compute_signature(f"http://127.0.0.1:{port}{path}", params)
            conn.request("POST", path, urlencode(params), {"Content-Type": "application/x-www-form-urlencoded",
                                                           "X-Twilio-Signature": sig, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("gunicorn did not start")
        workers = _children(proc.pid)
        assert len(workers) == 1
        params = call_params("CAkilled1", "12348", "+8613812345678")
        outcome = {}

        def hanging_voice():
            try:
                outcome["voice"] = post("/twilio/voice", params, {"X-Test-Hang": "1"}, timeout=20)
            except (OSError, http.client.HTTPException) as exc:  # the worker died under the request
                outcome["voice"] = exc

        t = threading.Thread(target=hanging_voice)
        t.start()
        time.sleep(1.0)
        os.kill(workers[0], signal.SIGKILL)
        t.join(25)
        assert not isinstance(outcome.get("voice"), tuple) or outcome["voice"][0] >= 500
        # Twilio: error 11200 on the Voice URL -> the number's Fallback URL, same call
        deadline = time.monotonic() + 30
        status = body = None
        while time.monotonic() < deadline:  # until gunicorn's new worker answers
            try:
                status, body = post("/twilio/fallback", {**params, "ErrorCode": "11200",
                                                         "ErrorUrl": f"http://127.0.0.1:{port}/twilio/voice"})
                break
            except (OSError, http.client.HTTPException):
                time.sleep(0.3)
        assert status == 200, (status, body)
        root = ET.fromstring(body)
        assert [c.tag for c in root] == ["Enqueue"] and root.find("Enqueue").text == "hold-general"
        status, body = post("/twilio/wait", {**params, "CallStatus": "in-progress"})
        assert status == 200 and ET.fromstring(body).tag == "Response"
        r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
        call = r.hgetall("acd:call:CAkilled1") or {}
        from call_routing.acd import ACD
        from call_routing.rules import load_rules

        state = ACD(r, load_rules(rules_path)).call("CAkilled1")
        assert state is not None and state["state"] in ("waiting", "ringing"), (state, call)
        # ... and the caller has a ticket: numbered on the way in, written by the ticket writer
        store = TicketStore(db, drafts=TicketDrafts(r))
        jobs.write_pending_tickets(store, TicketDrafts(r))
        ticket = store.by_call("CAkilled1")
        assert ticket is not None and ticket.entry_line in ("12348", "12345")
        store.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- FastAGI server down ----------------------------------------------------------------------------

def _context(name: str) -> list[str]:
    lines, inside = [], False
    for raw in SAMPLE.read_text("utf-8").splitlines():
        line = raw.split(";", 1)[0].rstrip()
        if re.match(r"^\[[\w-]+\]", line):
            inside = line.startswith(f"[{name}]")
            continue
        if inside and line.strip():
            lines.append(line.strip())
    return lines


def run_hotline_agi(chan: dict, agi_result: dict) -> dict:
    """[hotline-agi] of the sample dialplan, interpreted: clear, AGI(), then its GotoIf checks."""
    for line in _context("hotline-agi"):
        m = re.search(r"Set\((\w+)=(.*)\)$", line)
        if m and "AGI(" not in line:
            chan[m.group(1)] = m.group(2)
            continue
        if "AGI(" in line:
            chan.update(agi_result)
            continue
        m = re.search(r'GotoIf\(\$\["\$\{(\w+)\}" (!=|=) "(.*?)"\]\?fail\)', line)
        if m:
            value = chan.get(m.group(1), "")
            if (value != m.group(3)) if m.group(2) == "!=" else (value == m.group(3)):
                break  # -> fail
            continue
        if line.endswith("Return()"):
            return chan
    # fail: the sample's n(fail) lines
    fail = _context("hotline-agi")[[i for i, x in enumerate(_context("hotline-agi")) if "(fail)" in x][0]:]
    for line in fail:
        m = re.search(r"Set\((\w+)=(.*)\)$", line)
        if m:
            chan[m.group(1)] = m.group(2)
    return chan


@pytest.mark.parametrize("failure, agi_result", [
    ("server down (connection refused)", {"AGISTATUS": "FAILURE"}),
    ("handler crashed", {"AGISTATUS": "SUCCESS", "HOTLINE_FALLBACK": "error"}),
    ("session closed without a hand-off", {"AGISTATUS": "SUCCESS"}),
])
def test_the_sample_dialplan_sends_every_agi_failure_to_the_fallback_seats(failure, agi_result):
    chan = run_hotline_agi({"HOTLINE_ACTION": "queue"}, agi_result)  # a stale action from an earlier AGI
    assert chan["HOTLINE_ACTION"] == "fallback", failure
    assert " ".join(_context("hotline-action")).count("exten => fallback,1,Goto(hotline-fallback,s,1)") == 1
    fallback = " ".join(_context("hotline-fallback"))
    assert "Queue(${HOTLINE_FALLBACK_QUEUE}" in fallback and "AGI(" not in fallback


def test_the_sample_dialplan_follows_a_successful_hand_off():
    chan = run_hotline_agi({}, {"AGISTATUS": "SUCCESS", "HOTLINE_ACTION": "queue"})
    assert chan["HOTLINE_ACTION"] == "queue"
    # a command failed after the hand-off (a missing prompt file: Asterisk reports FAILURE)
    chan = run_hotline_agi({}, {"AGISTATUS": "FAILURE", "HOTLINE_ACTION": "queue"})
    assert chan["HOTLINE_ACTION"] == "queue"


def test_fastagi_server_down_every_call_takes_the_dialplan_fallback_and_none_is_lost():
    def stop_fastagi(sim):
        sim.agi_server.stop(1)
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            sim.agi_address = s.getsockname()

    sim, result = simulate(12, "agi", 2, seed=5, before=stop_fastagi)
    assert_nobody_lost(sim, result)
    assert result["fallback"] == 12
    assert all("AGI fallback" in r.detail for r in sim.records.values())


def test_the_route_call_script_with_its_backend_unreachable_hands_the_call_to_the_fallback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    env = dict(os.environ, REDIS_URL=dead, DATABASE_URL=f"sqlite:///{tmp_path / 't.db'}",
               HOTLINE_PROMPTS=str(tmp_path), HOTLINE_RECORDINGS=str(tmp_path), PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "agi_scripts" / "route_call.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        peer = converse(proc.stdout, proc.stdin, agi_env("12345", uniqueid="1700000099.1"), Peer())
        proc.stdin.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - started < 30
    chan = run_hotline_agi({}, {"AGISTATUS": "SUCCESS", **peer.variables})
    assert peer.variables.get("HOTLINE_FALLBACK") in ("error", "unavailable")
    assert chan["HOTLINE_ACTION"] == "fallback"


# -- an agent that never answers ---------------------------------------------------------------------

def test_an_agent_who_never_answers_is_skipped_and_every_caller_still_reaches_someone():
    sim, result = simulate(16, "both", 3, seed=7, lazy_agents=1, abandon_share=0.0, callback_share=0.0)
    assert_nobody_lost(sim, result)
    lazy = sim.agents["sim000"]
    assert lazy.missed >= 1 and lazy.calls == 0
    assert all(r.agent != "sim000" for r in sim.records.values())
    assert result["connected"] + result["emergency"] + result["announced"] == 16


# -- the rules file replaced by an invalid one mid-load -------------------------------------------------

def test_an_invalid_rules_file_written_mid_load_never_replaces_the_rules_in_service():
    seen = {}

    def break_rules(sim):
        seen["before"] = sim.rules().version
        time.sleep(1.5)
        Path(sim.rules_path).write_text("lines:\n  12301: {mode: teleport\n", "utf-8")  # broken YAML and schema
        time.sleep(2.5)  # stores poll the file about once a second
        seen["web"] = sim.app.extensions["rules"].current().version
        seen["agi"] = sim.agi_services.rules.current().version
        seen["problems"] = sim.app.extensions["rules"].problems if hasattr(sim.app.extensions["rules"], "problems") \
            else None

    sim, result = simulate(24, "both", 6, seed=9, hooks=[break_rules], callback_share=0)  # callbacks: their own tests
    assert_nobody_lost(sim, result)
    assert seen["web"] == seen["before"] and seen["agi"] == seen["before"]
    assert result["fallback"] == 0  # nobody needed the degraded route: the old rules kept serving
