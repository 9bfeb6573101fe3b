"""The live simulator's Twilio callers into the product as a newcomer runs it (``python app.py`` on a
fresh copy of the checkout) with ``TWILIO_AUTH_TOKEN``, ``TWILIO_ACCOUNT_SID`` and
``TWILIO_API_BASE`` naming the simulator: signed webhooks in, the product's REST requests answered by
the simulator's Twilio; one call answered by a simulated seat, one on a person's demo phone through
the agent API; the pre-filled tickets in the product's own database."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.fresh_checkout import fresh_checkout, newcomer_env, stop_group
from tests.test_newcomer import _free_port
from tools.simulate.live import MATTERS_BY_LINE

SAID = {s for matters in MATTERS_BY_LINE.values() for s in matters}


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    home = tmp_path_factory.mktemp("live-twilio") / "hotline"
    home.mkdir()
    fresh_checkout(home)
    env = newcomer_env(BIND=f"127.0.0.1:{_free_port()}", FASTAGI_BIND=f"127.0.0.1:{_free_port()}", ADMIN_PASSWORD="admin-pw-123",
               TWILIO_AUTH_TOKEN="demo-token-0123456789abcdef0123456", TWILIO_ACCOUNT_SID="AC" + "d" * 32,
               TWILIO_API_BASE=f"http://127.0.0.1:{_free_port()}")
    log_path = home.parent / "app.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen([".venv/bin/python", "app.py"], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = "http://" + env["BIND"]
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, "python app.py stopped:\n" + log_path.read_text()
            try:
                if urllib.request.urlopen(base + "/healthz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "python app.py did not answer /healthz in 60 s:\n" + log_path.read_text()
            time.sleep(0.3)
        assert "REST API " + env["TWILIO_API_BASE"] in log_path.read_text(), "start-up names the Twilio API it uses"
        yield {"home": home, "env": env, "base": base, "log": log_path}
    finally:
        stop_group(proc)
        log.close()


def _simulate(product, *args) -> subprocess.Popen:
    return subprocess.Popen([".venv/bin/python", "-m", "tools.simulate", "--live", "--front", "twilio", "--quiet",
                             "--gap", "0.2", "--line", "12345", *args], cwd=product["home"], env=product["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(sim: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = sim.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        sim.kill()
        out, err = sim.communicate()
        pytest.fail(f"the live simulator did not finish in {timeout} s:\n{out}\n{err}")
    assert sim.returncode == 0, f"exit {sim.returncode}:\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def _tickets(product) -> dict:
    with sqlite3.connect(product["home"] / "var" / "hotline.db") as db:
        return {row[0]: row[1:] for row in db.execute("SELECT call_id, id, transcript, transcript_status FROM tickets")}


def _api(product, path, body=None, token=None, method=None):
    req = urllib.request.Request(product["base"] + "/agent/api/" + path, method=method or ("POST" if body is not None
                                                                                          else "GET"),
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": "Bearer " + token} if token else {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _console_open(request, product, token) -> None:
    """What the agent console does while it is open, until the test ends: a heartbeat every 10 s
    (static/agent.js). Without it the ACD logs the seat out ``heartbeat_timeout_s`` (30 s) after
    its login — on a loaded machine, before this test's call has ended."""
    stop = threading.Event()

    def beat():
        while not stop.wait(10):
            try:
                _api(product, "heartbeat", {}, token)
            except OSError:
                pass  # as the console: again 10 s later

    threading.Thread(target=beat, name="console-heartbeat", daemon=True).start()
    request.addfinalizer(stop.set)


def test_a_twilio_caller_is_answered_by_a_simulated_seat(product):
    result = _finished(_simulate(product, "--calls", "1", "--agents", "1", "--patience", "30"), 45)
    assert (result["calls"], result["connected"], result["lost"], result["tickets_missing"]) == (1, 1, 0, 0), result
    calls = {call_id: row for call_id, row in _tickets(product).items() if call_id.startswith("CA")}
    assert len(calls) == 1, calls
    (ticket, transcript, status), = calls.values()
    assert status != "pending", "the caller's recording was fetched from the simulated Twilio's API host"


def test_a_twilio_caller_on_a_persons_demo_phone(product, request):
    from call_routing.acd import ACD, Agent
    from call_routing.rules_store import RulesStore
    from runtime.redis_conn import redis_client
    from runtime.redis_server import URL_FILE

    redis = redis_client((product["home"] / "var" / "redis" / URL_FILE).read_text().strip(), decode_responses=True)
    acd = ACD(redis, RulesStore(str(product["home"] / "transfer_rules.yaml")))
    skills = {s: 50 for s, skill in acd.rules.skills.items() if not skill.expert}
    acd.save_agent(Agent("xiaowang", "小王", skills, endpoints=("client:xiaowang",)), password="xiaowang-pw-1")
    token = _api(product, "login", {"agent_id": "xiaowang", "password": "xiaowang-pw-1", "state": "paused",
                                    "reason": "break"})["token"]
    _console_open(request, product, token)
    before = set(_tickets(product))
    calls_before = set(redis.keys("acd:call:*"))
    sim = _simulate(product, "--calls", "1", "--agents", "0", "--patience", "40")
    try:
        # nobody on duty yet: the caller waits, is asked after 3 s what it is about and says it
        deadline = time.monotonic() + 30  # the simulator's start-up takes seconds on a loaded machine
        while not set(redis.keys("acd:call:*")) - calls_before:
            assert sim.poll() is None, sim.communicate()
            assert time.monotonic() < deadline, "the caller never reached the line"
            time.sleep(0.2)
        time.sleep(4.5)
        _api(product, "state", {"state": "ready"}, token)
        deadline = time.monotonic() + 20
        while (call := _api(product, "demo-phone", token=token)["call"]) is None:
            assert sim.poll() is None, sim.communicate()
            assert time.monotonic() < deadline, "the demo phone never rang"
            time.sleep(0.2)
        assert call["state"] == "ringing" and "*" in call["caller"], call
        _api(product, "demo-phone/answer", {}, token)
        deadline = time.monotonic() + 15
        while True:
            call = _api(product, "demo-phone", token=token)["call"]
            if any(s["who"] == "来电人" for s in call["said"]):
                break
            assert time.monotonic() < deadline, f"the caller's words never arrived: {call}"
            time.sleep(0.2)
        assert call["state"] == "talking"
        assert any("工单" in s["text"] for s in call["said"] if s["who"] == "系统"), "the seat hears line and ticket"
        deadline = time.monotonic() + 10  # busy from the answer on (the agent-answer webhook)
        while (me := _api(product, "me", token=token))["agent"]["state"] != "busy":
            assert time.monotonic() < deadline, me
            time.sleep(0.2)
        _api(product, "demo-phone/hold", {}, token)
        _api(product, "demo-phone/hangup", {}, token)
        result = _finished(sim, 30)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
    assert (result["connected"], result["lost"], result["tickets_missing"]) == (1, 0, 0), result
    new = {k: v for k, v in _tickets(product).items() if k not in before}
    assert len(new) == 1 and next(iter(new.values()))[1] in SAID, new
    deadline = time.monotonic() + 15  # the hang-up reaches the seat through the product's status callbacks
    while (state := _api(product, "me", token=token)["agent"]["state"]) not in ("wrapup", "ready"):
        assert time.monotonic() < deadline, f"the seat is still {state} after the call ended"
        time.sleep(0.3)


def test_the_live_simulator_says_in_one_line_what_the_twilio_set_up_lacks(product):
    def run(agents="0", **env):
        sim = subprocess.run([".venv/bin/python", "-m", "tools.simulate", "--live", "--front", "twilio", "--quiet",
                              "--calls", "1", "--agents", agents, "--line", "12345", "--gap", "0.2"], cwd=product["home"],
                             env={k: v for k, v in {**product["env"], **env}.items() if v is not None},
                             capture_output=True, text=True, timeout=30)
        return sim.returncode, sim.stderr.strip().splitlines()[-1]

    code, line = run(TWILIO_AUTH_TOKEN="not-the-products-token")
    assert code == 2 and "refused the signature of /twilio/voice" in line and "TWILIO_AUTH_TOKEN" in line, line
    code, line = run(TWILIO_API_BASE=None)
    assert code == 2 and "needs TWILIO_API_BASE" in line, line
    code, line = run(TWILIO_API_BASE="http://203.0.113.5:8010")
    assert code == 2 and "test and demo set-ups only" in line, line
    elsewhere = f"http://127.0.0.1:{_free_port()}"  # the product sends its REST requests to another address
    code, line = run("1", TWILIO_API_BASE=elsewhere)
    assert code == 2 and f"no REST request reached {elsewhere}" in line and "start the product with" in line, line


def test_twilio_api_base_is_a_loopback_http_or_an_https_url():
    from ivr.twilio.calls import api_http_client, check_api_base

    assert check_api_base("http://127.0.0.1:8010/") == "http://127.0.0.1:8010"
    assert check_api_base("http://localhost:8010") == "http://localhost:8010"
    assert check_api_base("https://twilio-compatible.example.org") == "https://twilio-compatible.example.org"
    for refused in ("http://203.0.113.5:8010", "http://hotline.example.org", "ftp://127.0.0.1", "127.0.0.1:8010",
                    "http://127.0.0.1:port"):
        with pytest.raises(ValueError, match="test and demo set-ups only"):
            check_api_base(refused)
    assert api_http_client(None) is None
