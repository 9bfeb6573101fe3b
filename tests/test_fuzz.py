"""Bad input, property-based (hypothesis, a bounded number of examples so CI stays fast):
webhook parameters, AGI environment lines and replies, rules files, recordings, request sizes.

The promise: no server error, no traceback to the caller, the caller always gets TwiML (or a
status) that keeps them on the way to a seat, and the rules check reports problems instead of
raising.
"""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.twilio_support import ACCOUNT, TOKEN, RecordingHttpClient, SignedTwilio

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# -- Twilio webhook parameters ------------------------------------------------------------------

CALL_PATHS = ["/twilio/voice", "/twilio/fallback", "/twilio/queue-exit", "/twilio/dial-ended", "/twilio/survey-start",
              "/twilio/conference-ended"]
WAIT_PATHS = ["/twilio/wait", "/twilio/heard", "/twilio/pressed"]
EVENT_PATHS = ["/twilio/status", "/twilio/recording", "/twilio/conference-events", "/twilio/survey",
               "/twilio/agent-answer?call=CAx&agent=a1", "/twilio/agent-status?call=CAx", "/twilio/transfer-status?call=CAx",
               "/twilio/callback-agent?call=CAx&n=1&agent=a1", "/twilio/callback-citizen?call=CAx&n=zz",
               "/twilio/callback-status?call=CAx&n=1&leg=agent", "/twilio/callback-survey?call=CAx&n=1",
               "/twilio/callback-survey?call=CAx&n=zz&step=rate"]
NASTY = st.one_of(st.text(max_size=60), st.sampled_from(["", "\x00", "../../etc/passwd", "12345", "+8612301", "110",
                                                         "sip:12360@x", "%00", "<Say>", "😀" * 20, "1" * 500,
                                                         "completed", "leave", "hangup", "-1", "9" * 40]))
KEYS = ["CallSid", "To", "From", "CallStatus", "Digits", "SpeechResult", "QueueResult", "DialCallStatus",
        "RecordingUrl", "RecordingStatus", "RecordingSid", "FriendlyName", "ConferenceSid", "ErrorCode", "QueueTime"]
PARAMS = st.dictionaries(st.sampled_from(KEYS), NASTY, max_size=8)


@pytest.fixture(scope="module")
def twilio_app(redis_server_url, rules_path):
    import redis

    from app import create_app
    from ivr.flow import MemoryTickets

    redis.Redis.from_url(redis_server_url).flushdb()
    app = create_app({"RULES_PATH": str(rules_path), "REDIS_URL": redis_server_url, "TWILIO_AUTH_TOKEN": TOKEN,
                      "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_HTTP_CLIENT": RecordingHttpClient(),
                      "HOTLINE_SERVICES": {"tickets": MemoryTickets(), "classify": None}})
    return app


from ivr.twilio.webhooks import _CALL_SID  # noqa: E402


def _check_answer(path, resp):
    body = resp.get_data(as_text=True)
    assert resp.status_code < 500, (path, resp.status_code, body[:300])
    assert "Traceback" not in body and 'File "' not in body
    if resp.status_code == 200 and body.strip():
        root = ET.fromstring(body) if resp.mimetype.endswith("xml") else None
        if root is not None:
            assert root.tag == "Response"
            # whatever is said is said by a voice that speaks Mandarin (Twilio's default "man" does not)
            assert all(say.get("voice") == "Polly.Zhiyu" for say in root.iter("Say")), body
    return body


@FUZZ
@given(path=st.sampled_from(CALL_PATHS), params=PARAMS, sid=st.text(min_size=1, max_size=40))
def test_call_webhooks_answer_twiml_that_keeps_the_caller_whatever_the_parameters(twilio_app, path, params, sid):
    twilio = SignedTwilio(twilio_app.test_client())
    params = {**params, "CallSid": params.get("CallSid") or sid, "AccountSid": ACCOUNT}
    resp = twilio.post(path, params)
    body = _check_answer(path, resp)
    if not _CALL_SID.fullmatch(params["CallSid"]):  # not a call id Twilio could send: refused, named
        assert resp.status_code == 400 and "CallSid" in body
        return
    if path in ("/twilio/voice", "/twilio/fallback"):
        assert resp.status_code == 200
        root = ET.fromstring(body)
        verbs = [c.tag for c in root]
        # never silence: the caller is queued, transferred, told something, or (retired number) hears why
        assert {"Enqueue", "Dial", "Say", "Play"} & set(verbs), body


@FUZZ
@given(path=st.sampled_from(WAIT_PATHS + EVENT_PATHS), params=PARAMS)
def test_waiting_and_status_webhooks_never_fail_whatever_the_parameters(twilio_app, path, params):
    twilio = SignedTwilio(twilio_app.test_client())
    resp = twilio.post(path, {**params, "AccountSid": ACCOUNT})
    _check_answer(path, resp)
    if path in WAIT_PATHS:
        assert resp.status_code in (200, 400)


@FUZZ
@given(body=st.binary(max_size=2000), ctype=st.sampled_from(["application/x-www-form-urlencoded", "text/plain",
                                                              "multipart/form-data; boundary=x", "application/json"]))
def test_raw_garbage_bodies_are_refused_cleanly(twilio_app, body, ctype):
    client = twilio_app.test_client()
    for path in ("/twilio/voice", "/twilio/wait", "/agent/api/login", "/login"):
        resp = client.post(path, data=body, headers={"Content-Type": ctype, "X-Twilio-Signature": "x"})
        _check_answer(path, resp)


def test_request_bodies_over_the_limit_get_413_not_a_server_error(twilio_app):
    assert twilio_app.config["MAX_CONTENT_LENGTH"] <= 8 * 1024 * 1024
    client = twilio_app.test_client()
    huge = b"CallSid=CA1&SpeechResult=" + b"x" * (twilio_app.config["MAX_CONTENT_LENGTH"] + 1)
    for path in ("/twilio/voice", "/twilio/heard", "/agent/api/login", "/login", "/admin/rules/yaml"):
        resp = client.post(path, data=huge, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                     "X-Twilio-Signature": "x"})
        assert resp.status_code in (400, 401, 403, 404, 413, 429), (path, resp.status_code)  # 429: the fuzzing before failed many logins
    signed = SignedTwilio(client)
    resp = signed.post("/twilio/voice", {"CallSid": "CAbig", "SpeechResult": "x" * 3_000_000})
    assert resp.status_code == 413


# -- AGI environment lines and replies --------------------------------------------------------------

ENV_LINE = st.one_of(
    st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(["agi_network_script", "agi_uniqueid", "agi_callerid", "agi_dnid",
                                                          "agi_extension", "agi_arg_1", "agi_enhanced", "agi_request"]),
              st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=80)),
    st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=120),
    st.just("x" * 5000))
REPLY = st.one_of(st.sampled_from(["200 result=0", "200 result=1", "200 result=-1", "HANGUP", "511 dead", "520-Invalid",
                                   "520 End of proper usage.", "200 result=", "200", "", "200 result=49 endpos=1",
                                   "200 result=1 (\x00)", "510 Invalid or unknown command"]),
                  st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40))


@pytest.fixture(scope="module")
def fastagi(redis_server_url, tmp_path_factory):
    from agi_scripts.fastagi_server import FastAGIServer
    from ivr.flow import MemoryTickets
    from ivr.services import build

    tmp = tmp_path_factory.mktemp("agi")
    services = build({"REDIS_URL": redis_server_url, "tickets": MemoryTickets(), "classify": None,
                      "HOTLINE_RECORDINGS": str(tmp / "rec"), "HOTLINE_PROMPTS": str(tmp / "prompts"),
                      "invite_after_s": 0})
    server = FastAGIServer(services, "127.0.0.1", 0, workers=16, command_timeout=1.0).start()
    yield server
    server.stop(2)


def _session(address, env_lines, replies, script="route_call"):
    with socket.create_connection(address, timeout=5) as sock:
        sock.settimeout(5)
        head = "".join(f"{line}\n" for line in env_lines)
        sock.sendall((f"agi_network: yes\nagi_network_script: {script}\n" + head + "\n").encode("utf-8", "replace"))
        f = sock.makefile("rb")
        commands = []
        for reply in replies:
            try:
                line = f.readline()
            except (socket.timeout, OSError):
                break
            if not line:
                break
            commands.append(line.decode("utf-8", "replace").strip())
            try:
                sock.sendall(reply.encode("utf-8", "replace") + b"\n")
            except OSError:
                break
        return commands


@FUZZ
@given(env=st.lists(ENV_LINE, max_size=12), replies=st.lists(REPLY, max_size=12),
       script=st.sampled_from(["route_call", "queue_wait", "transfer", "survey", "nope", "../x"]))
def test_the_fastagi_server_survives_any_environment_and_any_reply(fastagi, env, replies, script):
    before = dict(fastagi.stats)
    _session(fastagi.address, env, replies, script)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and fastagi.stats["sessions"] == before["sessions"]:
        time.sleep(0.01)
    assert fastagi._thread.is_alive()


def test_after_the_fuzzing_the_fastagi_server_still_routes_a_normal_call(fastagi):
    from agi_peer import Peer, agi_env, fastagi_session

    peer = fastagi_session(fastagi.address, agi_env("12348", uniqueid="1700000500.7", network=True), Peer())
    assert peer.variables.get("HOTLINE_ACTION") == "queue" and peer.variables.get("HOTLINE_SKILL") == "legal"
    assert sum(fastagi.stats[k] for k in ("ok", "hangup", "timeout", "error", "refused")) <= fastagi.stats["sessions"]


# -- rules files --------------------------------------------------------------------------------------

SHIPPED = (ROOT / "transfer_rules.yaml").read_text("utf-8")
KEYWORDS = (ROOT / "emergency_keywords.yaml").read_text("utf-8")


@st.composite
def mutated(draw, text):
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        op = draw(st.sampled_from(["delete", "dup", "replace", "insert", "indent", "truncate"]))
        if not lines:
            break
        if op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "replace":
            lines[i] = draw(st.text(max_size=40))
        elif op == "insert":
            lines.insert(i, draw(st.sampled_from(["  - !!python/object/apply:os.system ['true']", "&a x", "*a",
                                                  "mode: [", "? complex", "\t", "key: {", "%YAML 9.9", "---",
                                                  "number: 1e999", "until: 2026-13-45", "skill: null"])))
        elif op == "indent":
            lines[i] = "   " + lines[i]
        else:
            lines = lines[:i]
    return "\n".join(lines)


@FUZZ
@given(rules=st.one_of(mutated(SHIPPED), st.text(max_size=300)), keywords=st.one_of(st.just(KEYWORDS), mutated(KEYWORDS),
                                                                                      st.text(max_size=100)))
def test_the_rules_check_reports_problems_and_never_raises(tmp_path_factory, rules, keywords):
    from call_routing.rules import check_rules

    d = tmp_path_factory.mktemp("rules")
    (d / "transfer_rules.yaml").write_text(rules, "utf-8", errors="surrogatepass")
    (d / "emergency_keywords.yaml").write_text(keywords, "utf-8", errors="surrogatepass")
    result = check_rules(d / "transfer_rules.yaml")
    rules, problems = result if isinstance(result, tuple) else (None, result)
    assert isinstance(problems, list) and (rules is not None or problems)
    for p in problems:
        assert str(p).strip()


# -- recordings -----------------------------------------------------------------------------------------

def _wav(rate=8000, channels=1, width=2, seconds=0.3, data=None) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data if data is not None else b"\x01\x00" * int(rate * seconds * channels * width / 2))
    return buf.getvalue()


RECORDINGS = st.one_of(
    st.just(b""), st.binary(max_size=400),
    st.builds(lambda n: _wav()[:n], st.integers(0, 60)),  # truncated header
    st.builds(lambda r, c: _wav(rate=r, channels=c), st.sampled_from([8000, 11025, 16000, 44100, 48000, 1, 0x7FFFFFFF]),
              st.sampled_from([1, 2])),
    st.builds(lambda w: _wav(width=w), st.sampled_from([1, 2, 3, 4])),
    st.builds(lambda n: _wav()[:44] + struct.pack("<I", 0xFFFFFFF0) + b"\x00" * n, st.integers(0, 100)),  # huge size
    st.builds(lambda n: b"RIFF" + struct.pack("<I", n) + b"WAVE" + b"\x00" * 16, st.integers(0, 2 ** 32 - 1)))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=RECORDINGS, ext=st.sampled_from([".wav", ".ulaw", ".sln", ".gsm", ""]))
def test_bad_recordings_are_reported_unreadable_never_raised(tmp_path_factory, data, ext):
    from intake.speech import transcribe_file

    path = tmp_path_factory.mktemp("rec") / f"r{ext}"
    path.write_bytes(data)
    t = transcribe_file(path)
    assert t.status in ("ok", "empty", "no_model", "unreadable", "too_long", "no_speech", "error") or t.status, t
    assert isinstance(t.to_dict(), dict)


def test_a_huge_recording_is_refused_by_its_length_not_read_into_memory(tmp_path):
    from intake.speech import transcribe_file

    path = tmp_path / "huge.wav"
    with open(path, "wb") as f:  # a 2-hour 8 kHz header over a sparse file
        f.write(_wav(seconds=0)[:40] + struct.pack("<I", 8000 * 2 * 7200))
        f.truncate(44 + 8000 * 2 * 7200)
    t = transcribe_file(path)
    assert t.status == "unreadable" and t.reason


@pytest.mark.parametrize("data", [b"", b"RIFF", _wav()[:30], _wav(rate=44100, channels=2), b"\xff" * 1000])
def test_the_transcription_job_files_a_ticket_for_any_recording(tmp_path, monkeypatch, data, redis_url):
    from intake import jobs

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 't.db'}")
    monkeypatch.delenv("VOSK_MODEL_PATH", raising=False)
    jobs.close_resources()
    try:
        path = tmp_path / "r.wav"
        path.write_bytes(data)
        out = jobs.transcribe_recording("CAfuzzjob", str(path), "12345")
        assert out["ticket"]
        t = jobs.ticket_store().by_call("CAfuzzjob")
        assert t is not None and t.transcript_status in ("unreadable", "no_model", "empty", "ok", "no_speech")
    finally:
        jobs.close_resources()
