"""The product's gunicorn worker (ivr/batch_worker.py) under real gunicorn: call starts that wait
together are served as a batch whose Redis writes reach Redis in one go, every answer leaves only
after its call's writes are in Redis, and any other request is served on its own, in turn."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import redis

from bench.webhooks import TOKEN, _serve, _workers, signed_requests
from call_routing.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(redis_url, tmp_path):
    """``app:create_app()`` under gunicorn with the product's settings (ivr/serving.py), one worker."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
           "PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path}/hotline.db", "SECRET_KEY": "test-secret"}
    env.pop("WEB_BATCH", None)
    proc = _serve("app:create_app()", port, 1, env)
    try:
        yield port, _workers(proc)[0]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def _exchange(port, raw: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(raw)
    return s


def _answer(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


def _reads(r) -> int:
    return int(r.info("stats")["total_reads_processed"])


def _waiting_together(port, worker, raws):
    """Connections opened and requests sent while the worker is stopped: all wait at once."""
    os.kill(worker, signal.SIGSTOP)
    try:
        socks = [_exchange(port, raw) for raw in raws]
        time.sleep(0.2)
    finally:
        os.kill(worker, signal.SIGCONT)
    return socks


def test_call_starts_waiting_together_reach_redis_in_one_write_each_answered_after_its_writes(server, redis_url):
    port, worker = server
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    first = signed_requests("127.0.0.1", port, 1, "w1")[0]
    assert b"<Enqueue" in _answer(_exchange(port, first))  # the worker is up (its listener started)
    calls = signed_requests("127.0.0.1", port, 8, "b")
    before = _reads(r)
    socks = _waiting_together(port, worker, calls)
    answers = [_answer(s) for s in socks]
    # 8 call starts, their writes read by Redis in one go (+ this INFO, + maybe a background
    # thread's command); served one at a time, Redis would have read 8 times
    assert _reads(r) - before <= 3
    for raw, answer in zip(calls, answers):
        assert answer.startswith(b"HTTP/1.1 200") and (b"<Enqueue" in answer or b"<Dial" in answer), answer[:300]
        call_id = raw.split(b"CallSid=")[1].split(b"&")[0].decode()
        ticket = answer.split(b"Ticket=")[1].split(b"<")[0] if b"Ticket=" in answer else None
        assert r.exists(f"tickets:draft:{call_id}")  # every call's ticket draft, state and leg are there
        assert ticket is None or r.get(f"tickets:draftid:{ticket.decode()}") == call_id


def test_any_other_request_is_served_alone_in_its_turn(server, redis_url):
    port, worker = server
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert b"<Enqueue" in _answer(_exchange(port, signed_requests("127.0.0.1", port, 1, "w2")[0]))
    calls = signed_requests("127.0.0.1", port, 4, "m")
    page = b"GET /no-such-page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    forged = calls[3].replace(b"X-Twilio-Signature: ", b"X-Twilio-Signature: forged")
    socks = _waiting_together(port, worker, [calls[0], calls[1], page, calls[2], forged])
    answers = [_answer(s) for s in socks]
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 404 NOT FOUND",
                                                         b"HTTP/1.1 200 OK", b"HTTP/1.1 403 FORBIDDEN"]
    for raw in calls[:3]:
        call_id = raw.split(b"CallSid=")[1].split(b"&")[0].decode()
        assert r.exists(f"tickets:draft:{call_id}")
    forged_id = calls[3].split(b"CallSid=")[1].split(b"&")[0].decode()
    assert not r.exists(f"tickets:draft:{forged_id}")  # a forged call start writes nothing
