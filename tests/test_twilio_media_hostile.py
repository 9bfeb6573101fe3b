"""The media-stream server (ivr/twilio/media.py) against malformed messages over a real WebSocket,
with the real Redis of the fixtures: each is closed with 1008 and a reason, never a 1011 and a
traceback. The bounds a real call's stream runs into are in tests/test_twilio_media.py."""
from __future__ import annotations

import contextlib
import json
import logging
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.test_twilio_media import TOKEN, Deaf, media_server


def _start(sid, params, fmt):
    return json.dumps({"event": "start", "start": {"callSid": sid, "customParameters": params, "mediaFormat": fmt}})


@pytest.fixture
def server(redis_url, rules_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RULES_PATH", str(rules_path))
    with media_server(Deaf) as (srv, url):
        yield srv, url


def cases():
    from ivr.twilio.media import stream_token

    good = {"token": stream_token(TOKEN, "CAx")}
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000}
    return {
        "deep-json-first": ["[" * 4000 + "]" * 4000],
        "params-not-object": [_start("CAx", "token", fmt)],
        "format-not-object": [_start("CAx", good, "audio/x-mulaw")],
        "rate-not-number": [_start("CAx", good, {"encoding": "audio/x-mulaw", "sampleRate": "8k"})],
        "media-not-object": [_start("CAx", good, fmt), json.dumps({"event": "media", "media": [1]})],
        "deep-json-later": [_start("CAx", good, fmt), "[" * 4000 + "]" * 4000],
        "forged-log-line": [_start("CA1\n2026-12-07 hotline.acd INFO agent a1 paid", {"token": "x"}, fmt)],
    }


@pytest.mark.parametrize("case", ["deep-json-first", "params-not-object", "format-not-object", "rate-not-number",
                                  "media-not-object", "deep-json-later", "forged-log-line"])
def test_a_malformed_message_closes_the_stream_with_1008_and_no_traceback(server, case, caplog):
    srv, url = server
    srv.services.flow.start("CAx", "12345", None)  # a call in the product, its stream's token valid
    caplog.set_level(logging.WARNING, "hotline.twilio.media")
    with connect(url) as ws:
        for message in cases()[case]:
            ws.send(message)
        with pytest.raises(ConnectionClosed) as exc:
            ws.recv(timeout=5)
    assert exc.value.rcvd.code == 1008
    assert not [r for r in caplog.records if r.exc_info] and srv.stats["refused"] == 1
    assert not [r for r in caplog.records if "\n" in r.getMessage()]


def test_connections_that_never_send_a_start_take_no_stream_slot_and_at_most_max_pending_wait(redis_url, rules_path,
                                                                                              monkeypatch):
    """Both stream slots (max_streams=2) and more: strangers' connections that send nothing. A
    call's own stream is still heard at once, and beyond MAX_PENDING the oldest stranger is closed."""
    from ivr.services import build
    from ivr.twilio import media as media_mod

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RULES_PATH", str(rules_path))
    monkeypatch.setattr(media_mod, "MAX_PENDING", 4, raising=False)
    services = build({"recognizer": Deaf})
    srv = media_mod.MediaStreamServer(services, TOKEN, lambda *a: None, port=0, max_streams=2).start()
    url = f"ws://127.0.0.1:{srv.address[1]}/twilio/media"
    try:
        stack = contextlib.ExitStack()
        strangers = []
        for n in range(5):  # five silent ones, each waiting before the next comes: the first is evicted
            strangers.append(stack.enter_context(connect(url)))
            deadline = time.monotonic() + 5
            while not (len(srv.pending) == min(n + 1, 4) and srv.evicted == max(0, n - 3)):
                assert time.monotonic() < deadline, f"stranger {n + 1} never waited for its start"
                time.sleep(0.01)
        with pytest.raises(ConnectionClosed):
            strangers[0].recv(timeout=2)
        services.flow.start("CAreal", "12345", None)
        with connect(url) as ws:
            ws.send(_start("CAreal", {"token": media_mod.stream_token(TOKEN, "CAreal")},
                           {"encoding": "audio/x-mulaw", "sampleRate": 8000}))
            ws.send(json.dumps({"event": "stop"}))
            with pytest.raises(ConnectionClosed) as exc:
                ws.recv(timeout=3)
        assert exc.value.rcvd.code == 1000 and srv.stats["streams"] == 1 and srv.evicted == 2  # 5th and 6th in
        stack.close()
    finally:
        srv.stop()
