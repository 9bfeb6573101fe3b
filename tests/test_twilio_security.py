"""Only Twilio may drive calls: signatures, proxies, a missing token, and failures that still reach a seat."""
from __future__ import annotations

import pytest

from app import create_app
from tests.twilio_support import ACCOUNT, TOKEN, RecordingHttpClient, SignedTwilio, call_params, verbs


def make(redis_url, rules_path, **config):
    cfg = {"RULES_PATH": str(rules_path), "REDIS_URL": redis_url, "TWILIO_AUTH_TOKEN": TOKEN,
           "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_HTTP_CLIENT": RecordingHttpClient(),
           "HOTLINE_SERVICES": {"classify": None}}
    cfg.update(config)
    return create_app(cfg)


@pytest.fixture
def twilio(redis_url, rules_path):
    return SignedTwilio(make(redis_url, rules_path).test_client())


def test_a_correctly_signed_request_is_served(twilio):
    assert twilio.post("/twilio/voice", call_params("CAok")).status_code == 200


@pytest.mark.parametrize("how", ["unsigned", "forged", "tampered", "wrong_url", "other_token"])
def test_unsigned_forged_tampered_or_misaddressed_requests_are_refused(twilio, how):
    params = call_params("CAbad")
    if how == "unsigned":
        r = twilio.client.post("/twilio/voice", data=params)
    elif how == "forged":
        r = twilio.post("/twilio/voice", params, signature="bm90IGEgc2lnbmF0dXJl")
    elif how == "tampered":
        sig = twilio.validator.compute_signature("http://localhost/twilio/voice", params)
        r = twilio.post("/twilio/voice", {**params, "To": "110"}, signature=sig)
    elif how == "wrong_url":
        r = twilio.post("/twilio/voice", params, sign_url="http://localhost/twilio/status")
    else:
        r = SignedTwilio(twilio.client, token="another-account-token").post("/twilio/voice", params)
    assert r.status_code == 403


def test_behind_a_trusted_proxy_the_public_url_twilio_called_is_checked(redis_url, rules_path):
    public = "https://hotline.example.gov.cn/twilio/voice"
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hotline.example.gov.cn"}
    trusting = SignedTwilio(make(redis_url, rules_path, TWILIO_TRUST_PROXY=True).test_client())
    assert trusting.post("/twilio/voice", call_params("CAp1"), sign_url=public, headers=proxy).status_code == 200
    # the same headers are not believed unless the proxy is trusted
    plain = SignedTwilio(make(redis_url, rules_path).test_client())
    assert plain.post("/twilio/voice", call_params("CAp2"), sign_url=public, headers=proxy).status_code == 403
    # a spoofed host header does not help a forger either
    assert trusting.post("/twilio/voice", call_params("CAp3"), headers=proxy).status_code == 403


def test_without_an_auth_token_twilio_webhooks_are_refused_unless_validation_is_explicitly_off(redis_url, rules_path):
    no_token = make(redis_url, rules_path, TWILIO_AUTH_TOKEN=None).test_client()
    assert no_token.post("/twilio/voice", data=call_params("CAn1")).status_code == 503
    dev = make(redis_url, rules_path, TWILIO_AUTH_TOKEN=None, TWILIO_VALIDATE="0").test_client()
    assert dev.post("/twilio/voice", data=call_params("CAn2")).status_code == 200


def test_a_handler_that_raises_still_puts_the_caller_in_the_general_queue_and_a_seat_gets_it(
        redis_url, rules_path, monkeypatch):
    from call_routing.acd import Agent

    http = RecordingHttpClient()
    app = make(redis_url, rules_path, TWILIO_HTTP_CLIENT=http)
    twilio = SignedTwilio(app.test_client())
    flow = app.extensions["twilio"]["flow"]
    real_start = flow.start
    calls = []

    def broken(*a, **kw):
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("ticket database down")
        return real_start(*a, **kw)

    monkeypatch.setattr(flow, "start", broken)
    acd = app.extensions["acd"]
    acd.save_agent(Agent("g1", "坐席g1", {"general": 50}, endpoints=("client:g1",)))
    acd.login("g1")
    root = twilio.twiml("/twilio/voice", call_params("CAboom", "12301"))
    assert verbs(root) == ["Enqueue"] and root.find("Enqueue").text == "hold-general"
    twilio.twiml("/twilio/wait", call_params("CAboom", CallStatus="in-progress"))
    assert [d["To"] for _, d in http.posts("/Calls.json")] == ["client:g1"]


@pytest.mark.parametrize("path,part,method", [
    ("/twilio/survey", "flow", "survey"),
    ("/twilio/agent-answer?call=CAx&agent=a1", "board", "agent_answered"),
    ("/twilio/callback-agent?call=CAx&n=1&agent=a1", "callbacks", "agent_answered"),
    ("/twilio/callback-citizen?call=CAx&n=1", "callbacks", "citizen_answered")])
def test_a_leg_whose_webhook_fails_hears_a_goodbye_instead_of_no_twiml(redis_url, rules_path, monkeypatch, path,
                                                                       part, method):
    from redis.exceptions import ConnectionError as RedisDown

    app = make(redis_url, rules_path, TWILIO_HTTP_CLIENT=RecordingHttpClient())
    twilio = SignedTwilio(app.test_client())
    twilio.twiml("/twilio/voice", call_params("CAx", "12345"))

    def down(*a, **kw):
        raise RedisDown("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app.extensions["twilio"][part], method, down)
    root = twilio.twiml(path, call_params("CAx", CallStatus="in-progress", Digits="1"))
    assert verbs(root) == ["Say", "Hangup"] and "再见" in root.findtext("Say")


def test_twilio_fallback_url_queues_the_caller_for_the_general_seats(twilio):
    root = twilio.twiml("/twilio/fallback", call_params("CAfb", "12348", ErrorCode="11200",
                                                        ErrorUrl="https://hotline.example.gov.cn/twilio/voice"))
    assert verbs(root) == ["Enqueue"] and root.find("Enqueue").get("waitUrl") == "wait"
    assert root.find("Enqueue").text == "hold-general"


def test_caller_numbers_never_appear_in_full_in_the_logs(twilio, caplog):
    caplog.set_level("DEBUG")
    twilio.post("/twilio/voice", call_params("CAlog", frm="+8613812345678"))
    twilio.post("/twilio/status", call_params("CAlog", frm="+8613812345678", CallStatus="completed"))
    assert caplog.records and "13812345678" not in caplog.text


# -- parameters as they come: validated, never trusted ------------------------------------------

def test_a_callsid_with_a_newline_is_refused_and_forges_no_log_line(twilio, caplog):
    caplog.set_level("DEBUG")
    r = twilio.post("/twilio/voice", call_params("CA1\n2026-12-06 hotline.acd INFO agent a1 paid"))
    assert r.status_code == 400 and b"CallSid" in r.data
    assert not any("\n" in rec.getMessage() for rec in caplog.records)


def test_a_10_kb_caller_number_is_dropped_and_the_call_still_reaches_the_seats(redis_url, rules_path, caplog):
    app = make(redis_url, rules_path)
    twilio = SignedTwilio(app.test_client())
    root = twilio.twiml("/twilio/voice", call_params("CAlongfrom", frm="+86" + "1" * 10_000))
    assert "Enqueue" in verbs(root)  # queued as from an unknown number
    assert app.extensions["twilio"]["flow"].state("CAlongfrom").caller == ""
    assert "1" * 200 not in caplog.text
    assert any("not a plausible number" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("path, params", [
    ("/twilio/wait", {"AccountSid": ACCOUNT}),  # no CallSid
    ("/twilio/status", {"AccountSid": ACCOUNT, "CallStatus": "completed"}),
    ("/twilio/callback-status?call=CAx&n=abc", {"CallSid": "CAleg", "CallStatus": "completed"}),
])
def test_missing_or_malformed_parameters_get_a_400_and_one_log_line_without_a_traceback(twilio, caplog, path,
                                                                                       params):
    r = twilio.post(path, params, sign_url="http://localhost" + path)
    assert r.status_code == 400
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
    assert not [rec for rec in caplog.records if rec.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize("url, fetched", [
    ("https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1", True),
    ("https://evil.example.com/2010-04-01/Accounts/AC1/Recordings/RE1", False),
    ("http://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1", False),  # not over TLS
    ("https://api.twilio.com@evil.example.com/rec", False),
    ("http://169.254.169.254/latest/meta-data/", False),
    ("/etc/passwd", False),
])
def test_a_recording_is_fetched_only_from_twilio_s_media_host(redis_url, rules_path, url, fetched):
    from ivr.flow import MemoryTickets

    tickets = MemoryTickets()
    app = make(redis_url, rules_path, HOTLINE_SERVICES={"classify": None, "tickets": tickets})
    twilio = SignedTwilio(app.test_client())
    twilio.post("/twilio/voice", call_params("CArecurl"))
    params = call_params("CArecurl", RecordingStatus="completed", RecordingSid="RE1", RecordingUrl=url)
    assert twilio.post("/twilio/recording", params).status_code == 204
    ticket = app.extensions["twilio"]["flow"].state("CArecurl").ticket
    assert tickets.tickets[ticket].get("recordings", []) == ([url] if fetched else [])


def test_an_unsigned_request_cannot_forge_log_lines_or_flood_the_log(redis_url, rules_path, caplog):
    """Over a real socket, without a signature: a CallSid with a newline, a 1 MB CallSid and a
    long query string are refused (403) in one short, quoted log line each."""
    import requests

    from tests.console_support import served

    caplog.set_level("INFO")
    with served(make(redis_url, rules_path)) as base:
        for sid, query in (("CA1\n2026-12-06 hotline.acd INFO agent a1 paid", ""), ("CA" + "x" * 1_000_000, ""),
                           ("CA1", "?call=" + "y" * 6000)):
            r = requests.post(base + "/twilio/voice" + query, data={"CallSid": sid, "From": "+8613812345678"},
                              timeout=10)
            assert r.status_code == 403
    refused = [rec.getMessage() for rec in caplog.records if "refused unsigned" in rec.getMessage()]
    assert len(refused) == 3
    assert all("\n" not in m and len(m) < 500 for m in refused), [m[:300] for m in refused]
    assert "13812345678" not in caplog.text
