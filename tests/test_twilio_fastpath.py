"""The /twilio/voice hot path keeps its behaviour: one-command Redis writes equal the pipeline's,
the fast signature equals Twilio's, webhooks never touch console sessions, the call state
written is ``asdict`` of the call."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict

import pytest
import redis
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from ivr.redis_batch import OneTrip, one_trip, pack_command


def _fill(p, i):
    p.hset(f"d:{i}", mapping={"id": i, "caller": "+8613800000000", "line": "12345", "text": "中文"})
    p.expire(f"d:{i}", 3600)
    p.set(f"id:{i}", f"CA{i}", ex=3600)
    p.rpush("pending", f"CA{i}")
    p.set(f"call:{i}", json.dumps({"a": 1.5, "b": None}, ensure_ascii=False), ex=600)
    p.hset(f"leg:{i}", "k", "v")
    p.expire(f"leg:{i}", 60)


def _dump(r, i):
    return (r.hgetall(f"d:{i}"), r.ttl(f"d:{i}"), r.get(f"id:{i}"), r.ttl(f"id:{i}"), r.get(f"call:{i}"),
            r.ttl(f"call:{i}"), r.hgetall(f"leg:{i}"), r.ttl(f"leg:{i}"))


def test_one_trip_writes_what_a_pipeline_writes(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    pipe = r.pipeline(transaction=False)
    _fill(pipe, 1)
    pipe.execute()
    trip = one_trip(r)
    assert isinstance(trip, OneTrip)
    _fill(trip, 2)
    assert len(trip) == 7
    assert trip.execute() == 7 and len(trip) == 0
    a, b = _dump(r, 1), _dump(r, 2)
    assert a[0] == {**b[0], "id": "1"} and b[0]["id"] == "2" and b[0]["text"] == "中文"
    assert a[2] == "CA1" and b[2] == "CA2" and a[4] == b[4] and a[6] == b[6] == {"k": "v"}
    for ttl_a, ttl_b in zip(a[1::2], b[1::2]):
        assert abs(ttl_a - ttl_b) <= 1 and ttl_b > 0
    assert r.lrange("pending", 0, -1) == ["CA1", "CA2"]
    assert OneTrip(r).execute() == 0  # nothing queued: no round trip


def test_one_trip_survives_a_dropped_connection(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    trip = OneTrip(r, own_connection=True)
    trip.set("k1", "v1")
    assert trip.execute() == 1 and r.get("k1") == "v1"
    # every connection of the client's pool is killed (a Redis restart): one retry on a new one
    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_type="normal", skipme=True)
    trip = OneTrip(r, own_connection=True)
    trip.set("k2", "v2", ex=30)
    assert trip.execute() == 1 and r.get("k2") == "v2" and 0 < r.ttl("k2") <= 30


def test_one_trip_fails_loudly(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.set("str", "x")
    trip = OneTrip(r, own_connection=True)
    trip.rpush("str", "a")  # WRONGTYPE
    trip.set("after", "1")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        trip.execute()
    assert r.get("after") == "1"  # the others ran, as in a pipeline
    trip.set("next", "2")
    assert trip.execute() == 1 and r.get("next") == "2"  # the connection stayed in step
    with pytest.raises(redis.exceptions.DataError):
        pack_command(("SET", "k", True))
    with pytest.raises(ValueError):
        OneTrip(r).hset("h")


def test_one_trip_sent_now_and_its_replies_read_later(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    trip = OneTrip(r, own_connection=True)
    trip.set("later1", "v", ex=30)
    trip.rpush("later-list", "a")
    sent = trip.send()
    assert len(trip) == 0
    deadline = time.monotonic() + 5
    while r.get("later1") != "v" and time.monotonic() < deadline:
        pass  # Redis runs the commands without anyone reading their replies
    assert r.get("later1") == "v" and r.lrange("later-list", 0, -1) == ["a"]
    assert sent.wait() == 2 and sent.wait() == 0  # read once
    # replies never read by their sender are read before the thread's next command on that connection
    unread = OneTrip(r, own_connection=True)
    unread.set("str2", "x")
    unread.rpush("str2", "boom")  # its WRONGTYPE reply is read, logged, and not mistaken for the next one's
    unread.send()
    nxt = OneTrip(r, own_connection=True)
    nxt.set("after-unread", "1")
    assert nxt.execute() == 1 and r.get("after-unread") == "1"
    # the connection dies between the write and the read (Redis restarted): sent once more
    trip.set("later2", "w")
    sent = trip.send()
    redis.Redis.from_url(redis_url).client_kill_filter(_type="normal", skipme=True)
    assert sent.wait() == 1 and r.get("later2") == "w"
    # an error is raised where the replies are read, with every reply read
    trip.rpush("later1", "x")
    trip.set("later3", "1")
    sent = trip.send()
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        sent.wait()
    trip.set("later4", "1")
    assert trip.execute() == 1 and r.get("later4") == "1"


def test_one_trip_gives_up_on_a_redis_that_does_not_answer_within_the_client_s_timeout(redis_url):
    """The worker's own connection keeps the client's socket timeout (set in the kernel, not by
    Python polling before each send and receive): a Redis that stops answering costs a webhook
    that timeout, once per try, and never hangs the worker."""
    r = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.4)
    trip = OneTrip(r, own_connection=True)
    trip.set("pause-before", "1")
    assert trip.execute() == 1
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(3000, all=False)  # write commands wait 3 s
    try:
        trip.set("paused", "1")
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            trip.execute()
        took = time.monotonic() - started
    finally:
        admin.client_unpause()
    assert 0.7 <= took < 2.5  # two tries of 0.4 s each, not the 3 s pause
    trip.set("after-pause", "1")
    assert trip.execute() == 1 and r.get("after-pause") == "1"


def test_held_writes_go_to_redis_together_in_order_and_each_reads_its_own_replies(redis_url):
    """The batch worker's group commit (ivr/batch_worker.py): the writes of several call starts
    are held, then written at once; nothing of them reaches Redis before; each wait() gets its
    own replies (its own error), in whatever order the waits come."""
    from ivr import redis_batch

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.set("str", "x")
    sent = []
    redis_batch.hold_writes()
    try:
        for i in range(3):
            trip = OneTrip(r, own_connection=True)
            trip.set(f"held{i}", str(i), ex=30)
            if i == 1:
                trip.rpush("str", "boom")  # WRONGTYPE: this call's error, no one else's
            trip.rpush("held-order", i)
            sent.append(trip.send())
        time.sleep(0.05)
        assert r.exists("held0", "held1", "held2") == 0  # held back
    finally:
        redis_batch.release_writes()  # one write for all three
    assert r.lrange("held-order", 0, -1) == ["0", "1", "2"]
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        sent[1].wait()  # reads the first one's replies on the way, then its own
    assert sent[0].wait() == 0 and sent[2].wait() == 2  # read already / its own
    assert [r.get(f"held{i}") for i in range(3)] == ["0", "1", "2"]
    # a wait() on a write still held sends the batch first (the webhook's own failure path)
    redis_batch.hold_writes()
    try:
        trip = OneTrip(r, own_connection=True)
        trip.set("held-then-waited", "1")
        assert trip.send().wait() == 1 and r.get("held-then-waited") == "1"
    finally:
        redis_batch.release_writes()
    # Redis restarted while the batch was held: all of it goes, in order, on a new connection
    redis_batch.hold_writes()
    sent = []
    for i in range(3):
        trip = OneTrip(r, own_connection=True)
        trip.rpush("after-restart", i)
        sent.append(trip.send())
    redis.Redis.from_url(redis_url).client_kill_filter(_type="normal", skipme=True)
    redis_batch.release_writes()
    assert [s.wait() for s in sent] == [1, 1, 1]
    assert r.lrange("after-restart", 0, -1) == ["0", "1", "2"]


def test_pack_command_is_redis_py_s_encoding():
    conn = redis.connection.Connection()
    for args in [("SET", "k", "v", "EX", 60), ("HSET", "h", "a", 1, "b", 2.5, "c", "中文", b"\x00raw", -3),
                 ("EVALSHA", "0" * 40, 0), ("PING",), ("SET", "中文键", "值", "EX", 5), ("RPUSH", "l", 1.5, b"b", "x")]:
        assert pack_command(args) == b"".join(conn.pack_command(*args)), args


class _NotRedis:
    def pipeline(self, transaction=True):
        return ("pipeline", transaction)


def test_other_clients_get_their_own_pipeline():
    assert one_trip(_NotRedis()) == ("pipeline", False)


def test_fast_signature_is_twilio_s():
    from ivr.twilio_webhooks import _Validator

    v = _Validator("token-x")
    ref = RequestValidator("token-x")
    cases = [MultiDict([("CallSid", "CA1"), ("To", "+8612345"), ("From", "+86 138"), ("b", "2"), ("b", "1"),
                        ("b", "2"), ("SpeechResult", "路灯坏了 ok")]),
             MultiDict(), {"To": "12345", "From": "x"}, None]
    for params in cases:
        for url in ("http://127.0.0.1:8000/twilio/voice", "https://h.example.cn/twilio/wait?call=CA1&n=2"):
            assert v.signature(url, params) == ref.compute_signature(url, params)
            sig = ref.compute_signature(url, params)
            assert v.validate(url, params or {}, sig)
            assert not v.validate(url, params or {}, sig[:-2] + "xx")


def test_call_state_written_is_asdict_of_the_call(redis_url, rules):
    from ivr.flow import CallFlow, CallState, MemoryQueue, MemoryTickets, RedisCalls

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    calls = RedisCalls(r)
    flow = CallFlow(rules, MemoryQueue(), MemoryTickets(), calls)
    flow.start("CAstate1", "12345", "+8613800000000")
    saved = calls.get("CAstate1")
    assert saved == asdict(CallState(**saved))
    assert list(saved) == list(asdict(CallState(**saved)))  # same order: same JSON as before


@pytest.mark.parametrize("fast", [True, False])
def test_webhooks_never_open_or_set_a_console_session(make_env, fast):
    from flask import session
    from flask.sessions import NullSession

    client, post = make_env(TWILIO_FAST_VOICE=fast)
    seen = []
    client.application.after_request(lambda resp: seen.append((type(session._get_current_object()), session.get("uid"))) or resp)
    resp = post("/twilio/voice", {"CallSid": "CAsess1", "From": "+8613800000000", "To": "12345"},
                headers={"Cookie": "session=not-a-valid-signed-cookie"})
    assert resp.status_code == 200 and b"<Enqueue" in resp.data
    assert "Set-Cookie" not in resp.headers
    # the fast path answers below Flask: no session, no hooks at all; Flask's path: the null session
    assert seen == ([] if fast else [(NullSession, None)])
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


# -- the fast path answers exactly what Flask's view answers ------------------------------------
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
def test_fast_voice_answers_and_writes_what_flask_s_view_does(make_env, redis_url, to):
    import xml.etree.ElementTree as ET

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    answers = {}
    for fast in (True, False):
        client, post = make_env(TWILIO_FAST_VOICE=fast)
        call_id = f"CA{'fast' if fast else 'slow'}{to.strip('+')}"
        params = {"CallSid": call_id, "AccountSid": "AC1", "From": "+8613800000000", "To": to,
                  "CallStatus": "ringing", "Direction": "inbound"}
        resp = post("/twilio/voice?via=console", params, url="http://localhost/twilio/voice?via=console")
        assert resp.status_code == 200, resp.data
        ET.fromstring(resp.data)  # well-formed TwiML
        ticket, state = _state(r, call_id)
        assert int(resp.headers["Content-Length"]) == len(resp.data)
        body = resp.data.replace(f"={ticket}<".encode(), b"=T<") if ticket else resp.data
        answers[fast] = (body, resp.headers["Content-Type"], sorted(k for k, _ in resp.headers), state)
    assert answers[True] == answers[False]


@pytest.mark.parametrize("fast", [True, False])
def test_fast_voice_refuses_what_flask_refuses(make_env, fast):
    client, post = make_env(TWILIO_FAST_VOICE=fast)
    params = {"CallSid": "CAforged", "From": "+8613800000000", "To": "12345"}
    assert post("/twilio/voice", params, signature="bm90IGEgc2lnbmF0dXJl").status_code == 403  # forged
    assert client.post("/twilio/voice", data=params).status_code == 403  # unsigned
    good = RequestValidator(TOKEN).compute_signature("http://localhost/twilio/voice", params)
    tampered = {**params, "To": "110"}
    assert post("/twilio/voice", tampered, signature=good).status_code == 403  # tampered parameter
    assert post("/twilio/voice", params, url="http://localhost/twilio/other").status_code == 403  # wrong URL
    assert post("/twilio/voice", params, url="https://localhost/twilio/voice").status_code == 403  # wrong scheme
    assert post("/twilio/voice", {"From": "+86138", "To": "12345"}).status_code in (400, 500, 200)  # no CallSid
    client2, post2 = make_env(TWILIO_FAST_VOICE=fast, TWILIO_AUTH_TOKEN=None)
    assert post2("/twilio/voice", params).status_code == 503


def test_fast_voice_checks_the_public_url_and_forwarded_headers(make_env):
    params = {"CallSid": "CApub1", "From": "+8613800000000", "To": "12345"}
    _, post = make_env(TWILIO_PUBLIC_URL="https://hotline.example.gov.cn/")
    assert post("/twilio/voice", params, url="https://hotline.example.gov.cn/twilio/voice").status_code == 200
    assert post("/twilio/voice", {**params, "CallSid": "CApub2"}).status_code == 403
    _, post = make_env(TWILIO_TRUST_PROXY="1")
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hotline.example.gov.cn"}
    assert post("/twilio/voice", {**params, "CallSid": "CAfwd1"}, headers=fwd,
                url="https://hotline.example.gov.cn/twilio/voice").status_code == 200
    assert post("/twilio/voice", {**params, "CallSid": "CAfwd2"}, headers=fwd).status_code == 403


def test_fast_voice_failure_still_queues_the_caller_for_the_general_seats(make_env, monkeypatch, caplog):
    import xml.etree.ElementTree as ET

    from ivr import twilio_webhooks

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


def test_fast_voice_answers_first_and_reads_redis_s_replies_once_the_answer_is_out(make_env, monkeypatch, caplog):
    from werkzeug.test import EnvironBuilder

    from ivr import redis_batch

    client, _ = make_env()
    app = client.application
    flow = app.extensions["twilio"]["flow"]
    pool = app.extensions["twilio"]["legs"].r.connection_pool

    def request(call_id):
        params = {"CallSid": call_id, "From": "+8613812345678", "To": "12345"}
        sig = RequestValidator(TOKEN).compute_signature("http://localhost/twilio/voice", params)
        return EnvironBuilder(path="/twilio/voice", method="POST", data=params,
                              headers={"X-Twilio-Signature": sig}).get_environ()

    statuses = []
    body = app(request("CAlazy1"), lambda status, headers: statuses.append(status))
    assert len(redis_batch._LOCALS[pool].fifo) == 1  # the answer is ready, Redis's replies not read yet
    assert b"<Enqueue" in b"".join(body) and statuses == ["200 OK"]
    body.close()  # the server has sent the answer: now they are read
    assert not redis_batch._LOCALS[pool].fifo and flow.state("CAlazy1").ticket
    # a server that never calls close(): the next calls still go through, the connection in step
    for call_id in ("CAlazy2", "CAlazy3"):
        assert b"<Enqueue" in b"".join(app(request(call_id), lambda status, headers: None))
    assert flow.state("CAlazy2").ticket and flow.state("CAlazy3").ticket
    # Redis fails between the write and the read: logged with the call, the answer stands
    caplog.set_level(logging.ERROR)

    def lost(self, retry=True):
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(redis_batch.Sent, "wait", lost)
    body = app(request("CAlazy4"), lambda status, headers: statuses.append(status))
    assert b"<Enqueue" in b"".join(body) and statuses[-1] == "200 OK"
    body.close()
    assert any("CAlazy4" in rec.getMessage() and "not confirmed" in rec.getMessage() for rec in caplog.records)
    assert not any("12345678" in rec.getMessage() for rec in caplog.records)  # caller numbers stay masked


# -- cached TwiML is the TwiML twilio.twiml renders ----------------------------------------------
def test_cached_turn_twiml_equals_fresh_twiml_for_every_line_of_the_rules(rules):
    import xml.etree.ElementTree as ET

    from ivr import twilio_webhooks as tw
    from ivr.flow import CallFlow, MemoryCalls, MemoryQueue, MemoryTickets

    class NumberedTickets(MemoryTickets):
        def open(self, **kw):
            super().open(**kw)
            return str(52000 + len(self.tickets))

    flow = CallFlow(rules, MemoryQueue(), NumberedTickets(), MemoryCalls())
    numbers = {line.number for line in rules.lines.values()} | {"12345", "110", "120", "99999"}
    actions = set()
    tw._TWIML_CACHE.clear()
    for shards in (1, 4):
        for i, number in enumerate(sorted(numbers) * 2):  # the second round is served from the cache
            call_id = f"CA{shards}x{i}"
            turn = flow.start(call_id, number, "+8613800000000")
            actions.add(turn.action)
            cached = tw._render_turn(turn, call_id, {"shards": shards})
            fresh = tw._fresh_turn_twiml(turn, call_id, shards)
            assert cached == fresh, (number, turn.action)
            ET.fromstring(cached)
            if turn.action == "transfer" and turn.ticket and "sip:" in turn.target:
                assert f"X-Hotline-Ticket={turn.ticket}<" in cached
    assert {"queue", "transfer"} <= actions
    assert tw._TWIML_CACHE


def test_fast_voice_leaves_oversized_bodies_to_flask_s_limits(make_env):
    client, post = make_env(MAX_CONTENT_LENGTH=200)
    params = {"CallSid": "CAbig", "From": "+8613800000000", "To": "12345", "Padding": "x" * 400}
    assert post("/twilio/voice", params).status_code == 413
    small = {"CallSid": "CAsmall", "From": "+8613800000000", "To": "12345"}
    assert post("/twilio/voice", small).status_code == 200
