"""The entry webhook /twilio/voice: what it writes (call state, ticket draft, leg), what it
refuses (forged, unsigned, tampered, other URL, no token, oversized), that a failure still queues
the caller, and that webhooks never touch console sessions."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import redis
from twilio.request_validator import RequestValidator

def test_call_state_written_is_asdict_of_the_call(redis_url, rules):
    from ivr.flow import CallFlow, CallState, MemoryQueue, MemoryTickets, RedisCalls

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    calls = RedisCalls(r)
    flow = CallFlow(rules, MemoryQueue(), MemoryTickets(), calls)
    flow.start("CAstate1", "12345", "+8613800000000")
    saved = calls.get("CAstate1")
    assert saved == asdict(CallState(**saved))
    assert list(saved) == list(asdict(CallState(**saved)))  # same order: same JSON as before


def test_webhooks_never_open_or_set_a_console_session(make_env):
    from flask import session
    from flask.sessions import NullSession

    client, post = make_env()
    seen = []
    client.application.after_request(lambda resp: seen.append((type(session._get_current_object()), session.get("uid"))) or resp)
    resp = post("/twilio/voice", {"CallSid": "CAsess1", "From": "+8613800000000", "To": "12345"},
                headers={"Cookie": "session=not-a-valid-signed-cookie"})
    assert resp.status_code == 200 and b"<Enqueue" in resp.data
    assert "Set-Cookie" not in resp.headers
    assert seen == [(NullSession, None)]
    # the consoles still have sessions: the sign-in page sets its cookie
    page = client.post("/login", data={"username": "nobody", "password": "x"})
    assert page.status_code in (400, 401)
    assert seen[-1][0] is not NullSession


TOKEN = "test-token"


@pytest.fixture
def make_env(redis_url, rules_path, tmp_path):
    from app import create_app

    def make(**config):
        app = create_app({"REDIS_URL": redis_url, "RULES_PATH": str(rules_path), "TWILIO_AUTH_TOKEN": TOKEN,
                          "DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}", "SECRET_KEY": "s",
                          "TWILIO_OFFER_LISTENER": "0", **config})
        client = app.test_client()
        validator = RequestValidator(TOKEN)

        def post(path, params, headers=None, url=None, signature=None, **kw):
            url = url or "http://localhost" + path
            sig = validator.compute_signature(url, params) if signature is None else signature
            return client.post(path, data=params, headers={"X-Twilio-Signature": sig, **(headers or {})}, **kw)

        return client, post

    return make


NUMBERS = ["12345", "+8612301", "12348", "12333", "12360", "12315", "110", "12366", "+8612345"]


def _state(r, call_id):
    """What one call left in Redis, with the ticket number and times taken out."""
    call = json.loads(r.get(f"ivr:call:{call_id}"))
    ticket = call.pop("ticket")
    call.pop("started")
    leg = r.hgetall(f"twilio:leg:{call_id}")
    draft = json.loads(r.get(f"tickets:draft:{call_id}") or "{}")
    if draft:
        assert str(draft.pop("id")) == ticket and r.get(f"tickets:draftid:{ticket}") == call_id
        draft.pop("at")
        draft["call_id"] = draft["call_id"].replace(call_id, "X")
    call["id"] = call["id"].replace(call_id, "X")
    return ticket, (call, leg, draft, r.ttl(f"twilio:leg:{call_id}") > 0, r.ttl(f"ivr:call:{call_id}") > 0)


@pytest.mark.parametrize("to", NUMBERS)
def test_voice_answers_twiml_and_writes_call_ticket_draft_and_leg_together(make_env, redis_url, to):
    import xml.etree.ElementTree as ET

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    client, post = make_env()
    call_id = f"CAvoice{to.strip('+')}"
    params = {"CallSid": call_id, "AccountSid": "AC1", "From": "+8613800000000", "To": to,
              "CallStatus": "ringing", "Direction": "inbound"}
    resp = post("/twilio/voice?via=console", params, url="http://localhost/twilio/voice?via=console")
    assert resp.status_code == 200, resp.data
    assert resp.headers["Content-Type"].startswith("application/xml")
    root = ET.fromstring(resp.data)  # well-formed TwiML
    ticket, (call, leg, draft, leg_ttl, call_ttl) = _state(r, call_id)
    assert leg == {"base": "http://localhost", "to": to, "from": "+8613800000000"} and leg_ttl and call_ttl
    if root.find("Enqueue") is not None or root.find("Dial") is not None:
        assert ticket and draft["line"] == call["line"]  # a ticket for every call that reaches someone


@pytest.mark.parametrize("to, greeting, then", [
    ("12345", "您好，这里是12345政务服务便民热线，正在为您接通坐席。", "Enqueue"),
    ("12348", "您好，这里是12345政务服务便民热线，正在为您接通坐席。", "Enqueue"),
    ("12366", "您好，这里是12345政务服务便民热线，正在为您转接税务总局12366分中心。", "Dial"),  # the line's own
])
def test_every_line_greets_the_caller_in_one_mandarin_sentence_before_the_queue_or_transfer(make_env, to, greeting,
                                                                                             then):
    import xml.etree.ElementTree as ET

    from ivr.twilio import twiml

    client, post = make_env()
    params = {"CallSid": f"CAgreet{to}", "AccountSid": "AC1", "From": "+8613800000000", "To": to,
              "CallStatus": "ringing", "Direction": "inbound"}
    root = ET.fromstring(post("/twilio/voice", params).data)
    verbs = [el.tag for el in root]
    say = root.find("Say")
    assert say is not None and say.text == greeting, ET.tostring(root, encoding="unicode")
    assert say.get("voice") == twiml.VOICE and say.get("language", "").lower().startswith(("zh", "cmn"))
    assert then in verbs and verbs.index("Say") < verbs.index(then)  # no menu: then straight on


def test_voice_refuses_what_flask_refuses(make_env):
    client, post = make_env()
    params = {"CallSid": "CAforged", "From": "+8613800000000", "To": "12345"}
    assert post("/twilio/voice", params, signature="bm90IGEgc2lnbmF0dXJl").status_code == 403  # forged
    assert client.post("/twilio/voice", data=params).status_code == 403  # unsigned
    good = RequestValidator(TOKEN).compute_signature("http://localhost/twilio/voice", params)
    tampered = {**params, "To": "110"}
    assert post("/twilio/voice", tampered, signature=good).status_code == 403  # tampered parameter
    assert post("/twilio/voice", params, url="http://localhost/twilio/other").status_code == 403  # wrong URL
    assert post("/twilio/voice", params, url="https://localhost/twilio/voice").status_code == 403  # wrong scheme
    assert post("/twilio/voice", {"From": "+86138", "To": "12345"}).status_code in (400, 500, 200)  # no CallSid
    client2, post2 = make_env(TWILIO_AUTH_TOKEN=None)
    assert post2("/twilio/voice", params).status_code == 503


def test_voice_checks_the_public_url_and_forwarded_headers(make_env):
    params = {"CallSid": "CApub1", "From": "+8613800000000", "To": "12345"}
    _, post = make_env(TWILIO_PUBLIC_URL="https://hotline.example.gov.cn/")
    assert post("/twilio/voice", params, url="https://hotline.example.gov.cn/twilio/voice").status_code == 200
    assert post("/twilio/voice", {**params, "CallSid": "CApub2"}).status_code == 403
    _, post = make_env(TWILIO_TRUST_PROXY="1")
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hotline.example.gov.cn"}
    assert post("/twilio/voice", {**params, "CallSid": "CAfwd1"}, headers=fwd,
                url="https://hotline.example.gov.cn/twilio/voice").status_code == 200
    assert post("/twilio/voice", {**params, "CallSid": "CAfwd2"}, headers=fwd).status_code == 403


def test_voice_failure_still_queues_the_caller_for_the_general_seats(make_env, monkeypatch, caplog):
    import xml.etree.ElementTree as ET

    from ivr.twilio import webhooks as twilio_webhooks

    client, post = make_env()
    flow = client.application.extensions["twilio"]["flow"]

    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(twilio_webhooks, "_render_turn", broken)
    resp = post("/twilio/voice", {"CallSid": "CAboom", "From": "+8613812345678", "To": "+8612301"})
    assert resp.status_code == 200
    root = ET.fromstring(resp.data)
    assert root.find("Enqueue").text.startswith("hold-") and root.find("Enqueue").get("waitUrl") == "wait"
    assert flow.state("CAboom")  # the call is known to the flow
    failed = [rec for rec in caplog.records if "webhook failed" in rec.getMessage()]
    assert failed and "12345678" not in failed[0].getMessage()  # caller masked


def test_voice_leaves_oversized_bodies_to_flask_s_limits(make_env):
    client, post = make_env(MAX_CONTENT_LENGTH=200)
    params = {"CallSid": "CAbig", "From": "+8613800000000", "To": "12345", "Padding": "x" * 400}
    assert post("/twilio/voice", params).status_code == 413
    small = {"CallSid": "CAsmall", "From": "+8613800000000", "To": "12345"}
    assert post("/twilio/voice", small).status_code == 200

