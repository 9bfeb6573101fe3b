"""Security of the whole product: replayed Twilio requests, every endpoint without credentials,
path traversal in prompt and recording names, YAML that would run code, secrets and caller
numbers in the logs.

Forged, tampered and misaddressed Twilio signatures are in tests/test_twilio_security.py; YAML
tags in the rules file in tests/test_rules.py; console roles and CSRF in
tests/test_consoles_auth.py. This file does not repeat them.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.console_support import PASSWORDS, make_console_app, served, sign_in
from tests.twilio_support import SignedTwilio, call_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(tmp_path, redis_url):
    return make_console_app(tmp_path, redis_url, METRICS_TOKEN="metrics-token-secret-42")


# -- replayed Twilio requests ---------------------------------------------------------------------
# Twilio's signature covers the URL and the parameters but no timestamp, so a captured request
# stays valid for ever. What protects the product is that every state-changing webhook is
# idempotent on CallSid (and on the leg / recording SID): a replay changes nothing.

def _queue_entry(acd, call_id):
    call = acd.call(call_id)
    return call["state"], call.get("entered"), call.get("offers")


def test_a_replayed_voice_request_keeps_the_callers_place_in_line(app):
    twilio = SignedTwilio(app.test_client())
    acd = app.extensions["acd"]
    flow = app.extensions["twilio"]["flow"]
    params = call_params("CAreplay1", "12348")
    first = twilio.post("/twilio/voice", params)
    assert first.status_code == 200
    twilio.post("/twilio/wait", call_params("CAreplay1", CallStatus="in-progress"))
    before, state_before = _queue_entry(acd, "CAreplay1"), flow.state("CAreplay1")
    replay = twilio.post("/twilio/voice", params)  # the same signed request, captured and sent again
    assert replay.status_code == 200
    twilio.post("/twilio/wait", call_params("CAreplay1", CallStatus="in-progress"))
    assert _queue_entry(acd, "CAreplay1") == before  # same place in line, not queued twice
    assert flow.state("CAreplay1").state == "waiting" and state_before.state == "waiting"
    entries = [e for e in acd.events() if e.get("call") == "CAreplay1" and e["e"] == "enter"]
    assert len(entries) == 1


def test_replayed_status_callbacks_and_keys_change_nothing_after_the_first(app):
    twilio = SignedTwilio(app.test_client())
    acd = app.extensions["acd"]
    twilio.post("/twilio/voice", call_params("CAreplay2"))
    twilio.post("/twilio/wait", call_params("CAreplay2", CallStatus="in-progress"))
    gone = call_params("CAreplay2", CallStatus="completed")
    for _ in range(3):
        assert twilio.post("/twilio/status", gone).status_code == 204
    # a replayed key press or speech result for a call that has ended starts nothing
    r = twilio.post("/twilio/pressed", call_params("CAreplay2", Digits="1"))
    assert r.status_code == 200 and b"<Hangup" in r.data
    r = twilio.post("/twilio/heard", call_params("CAreplay2", SpeechResult="楼下着火了"))
    assert r.status_code == 200 and b"<Leave" not in r.data
    names = [e["e"] for e in acd.events() if e.get("call") == "CAreplay2"]
    assert names.count("abandon") == 1 and "callback" not in names and "leave" not in names


def test_a_replayed_agent_answer_for_an_old_ring_is_told_the_call_is_over(app):
    from call_routing.acd import Agent

    acd = app.extensions["acd"]
    acd.save_agent(Agent("a9", "坐席a9", {"general": 50}, endpoints=("client:a9",)))
    acd.login("a9")
    twilio = SignedTwilio(app.test_client())
    twilio.post("/twilio/voice", call_params("CAreplay3"))
    twilio.post("/twilio/wait", call_params("CAreplay3", CallStatus="in-progress"))
    leg = app.extensions["twilio"]["legs"].get("CAreplay3")["agent_call"]
    answer = {"CallSid": leg, "CallStatus": "in-progress"}
    assert b"<Conference" in twilio.post("/twilio/agent-answer?call=CAreplay3&agent=a9", answer).data
    twilio.post("/twilio/status", call_params("CAreplay3", CallStatus="completed"))
    replay = twilio.post("/twilio/agent-answer?call=CAreplay3&agent=a9", answer)
    assert replay.status_code == 200 and b"<Conference" not in replay.data and b"<Hangup" in replay.data


# -- endpoints without credentials ------------------------------------------------------------------

# public by design: sign-in, health, static files, and the hold music Twilio fetches with a plain GET
PUBLIC = {"/login", "/healthz", "/static/<path:filename>", "/agent/api/login", "/logout", "/media/hold-music.wav"}


def _concrete(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "1" if m.group(1) in ("id", "n", "draft_id", "version") else "x",
                  rule)


def test_every_endpoint_refuses_a_stranger_without_credentials(app):
    """Every route in the app, GET and POST, without session, bearer token or Twilio signature:
    never 200/201/204, never a server error."""
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC:
            continue
        url = _concrete(rule.rule)
        for method in sorted(rule.methods & {"GET", "POST", "PUT", "DELETE"}):
            r = client.open(url, method=method, data={"x": "1"})
            checked += 1
            assert r.status_code < 500, (method, url, r.status_code)
            assert r.status_code in (301, 302, 303, 400, 401, 403, 404, 405, 503), (method, url, r.status_code)
            if r.status_code in (302, 303):
                assert "/login" in r.headers["Location"], (method, url, r.headers["Location"])
    assert checked > 30


@pytest.mark.parametrize("body", ["[1]", '"agent"', "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000],
                         ids=["list", "string", "deep-list", "deep-object"])
def test_a_json_body_that_is_not_an_object_or_nests_too_deep_gets_a_400_saying_so(app, body, caplog):
    """Over a real socket, to the agent API's sign-in (no credentials needed to reach it) and to
    a signed-in seat's state: a 400 naming the problem, no traceback (each was a 500)."""
    import requests

    from call_routing.acd import Agent
    from consoles.agent_api import _token_key

    acd = app.extensions["acd"]
    acd.save_agent(Agent("a1", "张坐席", {"general": 10}))
    with app.app_context():
        acd.redis.set(_token_key("seat-token"), "a1", ex=60)  # a seat's token, as /agent/api/login keeps it
    with served(app) as base:
        r = requests.post(base + "/agent/api/login", data=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 400 and "JSON" in r.json()["error"]
        r = requests.post(base + "/agent/api/state", data=body, timeout=10,
                          headers={"Content-Type": "application/json", "Authorization": "Bearer seat-token"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_digits_from_other_scripts_in_a_page_number_or_seat_level_are_a_clear_refusal_not_a_500(app):
    """Over a real socket: ``²`` passes str.isdigit() but not int() — the ticket list's page and a
    seat's group level answered 500; now the form's own problem message."""
    import requests

    from tests.console_support import form_csrf

    with served(app) as base:
        def signed_in(user):
            s = requests.Session()
            s.post(base + "/login", timeout=10, data={"username": user, "password": PASSWORDS[user],
                                                      "csrf_token": form_csrf(s.get(base + "/login", timeout=10).text)})
            return s

        sup = signed_in("super")
        for query in ("page=²", "caller=١٢٣٤"):
            r = sup.get(base + "/admin/tickets?" + query, timeout=10)
            assert r.status_code == 400 and ("页码" in r.text or "来电号码" in r.text), query
        admin = signed_in("admin")
        skill = next(iter(app.extensions["rules"].current().skills))
        r = admin.post(base + "/admin/seats/new", timeout=10, data={
            "csrf_token": form_csrf(admin.get(base + "/admin/seats/new", timeout=10).text), "id": "s9", "name": "x",
            f"on-{skill}": "1", f"level-{skill}": "²"})
        assert r.status_code == 422 and "须为1到99的整数" in r.text


def test_metrics_need_their_token_and_admin_pages_need_an_admin(app):
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer metrics-token-secret-42"}).status_code == 200
    sign_in(client, "agent1")
    assert client.get("/admin/rules").status_code in (302, 403)
    assert client.get("/admin/users").status_code in (302, 403)


# -- path traversal in prompt and recording names -------------------------------------------------

@pytest.mark.parametrize("audio", ["../../etc/passwd", "/etc/passwd", "sub/../../x.wav", "..\\..\\x.wav"])
def test_a_prompt_file_outside_the_prompts_folder_is_refused_by_the_rules_check(tmp_path, audio):
    from call_routing.rules import check_rules
    from tests.console_support import copy_rules

    path = copy_rules(tmp_path)
    text = path.read_text("utf-8")
    text, n = re.subn(r"(\n(\s+)prompt: ([^\n]+))", lambda m: f"{m.group(1)}\n{m.group(2)}audio: '{audio}'", text,
                      count=1)
    assert n == 1
    path.write_text(text, "utf-8")
    _, problems = check_rules(path)
    assert any("audio" in str(p) for p in problems), problems


def test_a_call_id_with_path_characters_never_writes_a_recording_outside_the_recordings_folder(tmp_path, redis_url):
    """Asterisk's UNIQUEID (or a HOTLINE_CALL_ID argument) names the recording file: anything
    that is not a plain name is made one, so ``../`` cannot leave HOTLINE_RECORDINGS."""
    from agi_peer import Peer, agi_env, fastagi_session

    from agi_scripts.fastagi_server import FastAGIServer
    from ivr.flow import MemoryTickets
    from ivr.services import build

    rec_dir = tmp_path / "rec"
    # in-process queue (no Redis): the Redis ACD refuses such ids by itself, a memory queue does not
    services = build({"REDIS_URL": None, "tickets": MemoryTickets(), "classify": None, "invite_after_s": 0,
                      "HOTLINE_RECORDINGS": str(rec_dir), "HOTLINE_PROMPTS": str(tmp_path / "prompts")})
    evil = "../../../tmp/hotline-evil"
    with FastAGIServer(services, "127.0.0.1", 0, workers=4) as server:
        first = fastagi_session(server.address, agi_env("12345", uniqueid=evil, network=True), Peer())
        # such a UNIQUEID is not taken as the call's id at all: the call gets a plain one
        (call_id,) = [c.split(" ", 3)[3].strip('"') for c in first.commands
                      if c.startswith("SET VARIABLE HOTLINE_CALL_ID")]
        assert call_id and "/" not in call_id and "." not in call_id.strip(".")[:1]
        peer = fastagi_session(server.address, agi_env("12345", uniqueid=evil, script="queue_wait",
                                                       args=(call_id,), network=True),
                               Peer(hangup_form="-1", hangup_when=lambda cmd, n: n > 12))
    records = [c for c in peer.commands if c.startswith("RECORD FILE")]
    assert records, peer.commands
    for cmd in records:
        target = Path(cmd.split(" ")[2].strip('"'))
        resolved = (target if target.is_absolute() else Path.cwd() / target).resolve()
        assert rec_dir.resolve() in resolved.parents, cmd


# -- YAML that would run code ------------------------------------------------------------------------

def test_no_yaml_file_is_ever_loaded_with_a_loader_that_builds_objects():
    unsafe = re.compile(r"yaml\.(unsafe_load|full_load|load_all|load)\s*\(|Loader\s*=\s*yaml\.(Loader|FullLoader|"
                        r"UnsafeLoader)|yaml\.Loader\b")
    offenders = []
    for path in ROOT.rglob("*.py"):
        if any(part in (".venv", "node_modules", ".git") for part in path.parts) or path.name == Path(__file__).name:
            continue
        for n, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
            if unsafe.search(line) and "SafeLoader" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_an_emergency_keyword_file_with_a_python_tag_is_refused_not_run(tmp_path):
    from call_routing.rules import check_rules
    from tests.console_support import copy_rules

    path = copy_rules(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "emergency_keywords.yaml").write_text(
        f"'119':\n  - !!python/object/apply:os.system ['touch {marker}']\n", "utf-8")
    _, problems = check_rules(path)
    assert problems and not marker.exists()


# -- secrets and caller numbers in the logs ----------------------------------------------------------

def test_secrets_never_reach_the_logs(app, caplog, monkeypatch, tmp_path):
    from tests.twilio_support import TOKEN

    caplog.set_level(logging.DEBUG)
    secret = "handoff-secret-XYZ-987"
    monkeypatch.setenv("HANDOFF_SECRET", secret)
    monkeypatch.setenv("HANDOFF_URL", "http://127.0.0.1:9/never")
    client = app.test_client()
    twilio = SignedTwilio(client)
    twilio.post("/twilio/voice", call_params("CAsecret1"))
    SignedTwilio(client, token="wrong-token").post("/twilio/voice", call_params("CAsecret2"))  # refused, logged
    sign_in(client, "admin")
    sign_in(app.test_client(), "admin", "wrong-password-for-admin")
    client.post("/agent/api/login", json={"agent_id": "a1", "password": "agent-wrong-pw-555"})
    client.get("/metrics", headers={"Authorization": "Bearer metrics-token-secret-42"})
    from intake import jobs

    monkeypatch.setenv("DATABASE_URL", app.config["DATABASE_URL"])
    jobs.close_resources()
    try:
        store = jobs.ticket_store(app.config["DATABASE_URL"])
        t = store.open_ticket("CAsecret-handoff", "12345", "+8613812345678")
        with pytest.raises(Exception):
            jobs.hand_off(t.id)
    finally:
        jobs.close_resources()
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    for value in (TOKEN, secret, PASSWORDS["admin"], "wrong-password-for-admin", "agent-wrong-pw-555",
                  "metrics-token-secret-42", "test-secret-key"):
        assert value not in text, value


def test_no_caller_number_appears_in_full_in_the_logs_of_a_whole_simulated_run(caplog):
    from tools.simulate import Simulation

    caplog.set_level(logging.DEBUG)
    with Simulation(12, "both", 2, 21, progress=False, callback_share=0.3) as sim:
        result = sim.run()
        numbers = {sim.caller_number(r) for r in sim.records.values()}
    assert result["lost"] == 0
    text = caplog.text
    assert len(text) > 1000
    for number in numbers:
        national = number[-11:]
        assert national not in text, f"{national} logged in full"
