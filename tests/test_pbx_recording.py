"""Full-call recording for quality review (质检) on a real Asterisk 22: with ``hotline.recording``
on, queue_wait names the recording, [hotline-transfer] starts MixMonitor on the caller's channel
(only while bridged: from the agent's answer), the file is renamed complete when the call ends, the
hangup handler tells the product, and the worker stores it on the ticket. A supervisor listens on
the ticket page, seeking (a byte range); the audit log has the listen, once.

What happened on the PBX is read from Asterisk (AMI events, the file MixMonitor wrote); what the
product did, from its database and its web pages.
"""
from __future__ import annotations

import time
import wave

import numpy as np
import pytest

from bench.asterisk_lab import wait_until
from tests.test_consoles_chinese import assert_human, visible
from tests.test_pbx_speech import speech_clip

pytestmark = pytest.mark.pbx

OFF, ON = "recording: {full_call: false, keep_days: 180}", "recording: {full_call: true, keep_days: 30}"


@pytest.fixture
def recording_on(pbx):
    """The world's rules with full-call recording on (every process notices within a second)."""
    world = pbx
    before = world.rules_path.read_text("utf-8")
    assert OFF in before
    world.rules_path.write_text(before.replace(OFF, ON), "utf-8")
    time.sleep(1.5)
    yield world
    world.rules_path.write_text(before, "utf-8")
    time.sleep(1.5)


@pytest.fixture
def console(pbx):
    from app import create_app

    world = pbx
    app = create_app({"REDIS_URL": world.redis_url, "RULES_PATH": str(world.rules_path),
                      "DATABASE_URL": world.product.env["DATABASE_URL"],
                      "HOTLINE_RECORDINGS": world.product.env["HOTLINE_RECORDINGS"],
                      "TESTING": True, "SECRET_KEY": "test"})
    db = app.extensions["console"].db
    for name, role in (("qa-super", "supervisor"), ("qa-admin", "admin")):
        if db.user(name) is None:
            db.add_user(name, "pass-" + name, role, display_name="质检" + role)
    return app


def signed_in(app, name):
    from tests.console_support import csrf_of

    client = app.test_client()
    r = client.post("/login", data={"username": name, "password": "pass-" + name, "csrf_token": csrf_of(client)})
    assert r.status_code == 302
    return client


def test_a_call_answered_by_an_agent_is_recorded_whole_kept_on_its_ticket_and_its_listen_audited(
        recording_on, console):
    from intake.tickets import TicketStore

    world = recording_on
    world.seat("7060", {"general": 50})
    call = world.call("12345")
    call_id = call.call_id()
    call.bridged_with("Local/7060@lab-agent", timeout=30)
    answered = time.time()
    record = call.wait_var("HOTLINE_RECORD")
    assert record.startswith(world.product.env["HOTLINE_RECORDINGS"])
    assert call.ran("MixMonitor", f"{record}.part.wav,b,mv {record}.part.wav {record}.wav")
    # the citizen speaks to the agent, then hangs up
    world.ami.action("DBPut", Family="lab", Key="speech", Val=speech_clip(world))
    world.ami.action("Redirect", Channel=call.citizen(), Context="lab-speaker", Exten="s", Priority=1)
    wait_until(lambda: any(e.get("Event") == "Newexten" and e.get("AppData") == "spoken"
                           for e in world.events_since(call.mark)), 20, 0.05, "the caller to finish speaking")
    talked = time.time() - answered
    call.hangup()
    # the file Asterisk wrote, complete (renamed once MixMonitor closed it)
    wait_until(lambda: __import__("os").path.exists(record + ".wav"), 15, 0.1, "the finished recording")
    with wave.open(record + ".wav") as w:
        seconds = w.getnframes() / w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert abs(seconds - talked) < 2.0, (seconds, talked)  # from the answer to the hang-up, no waiting
    assert np.abs(pcm).max() > 1000  # the caller's voice is in it
    # on the ticket (the worker stored it)
    store = TicketStore(world.product.env["DATABASE_URL"])
    try:
        ticket = store.by_call(call_id)
        [rec] = wait_until(lambda: store.call_recordings(ticket.id), 30, 0.2, "the recording on the ticket")
        assert rec.source == "asterisk" and rec.file == record.rsplit("/", 1)[1] + ".wav"
        assert abs(rec.seconds - seconds) < 0.1 and round((rec.keep_until - rec.stored_at).days) == 30
        rec = wait_until(lambda: (r := store.call_recording(rec.id)).transcript_status != "pending" and r, 30, 0.2,
                         "the worker's transcript")
    finally:
        store.close()
    # a supervisor listens on the ticket page; the admin's audit log has the listen
    supervisor = signed_in(console, "qa-super")
    page = supervisor.get(f"/admin/tickets/{ticket.id}").get_data(as_text=True)
    assert "通话录音" in visible(page) and "全程录音转写" in visible(page)
    assert_human(visible(page))
    src = f"/admin/tickets/{ticket.id}/recordings/{rec.id}.wav"
    assert f'src="{src}"' in page
    whole = open(record + ".wav", "rb").read()
    heard = supervisor.get(src)
    assert heard.status_code == 200 and heard.mimetype == "audio/wav" and heard.data == whole
    seek = supervisor.get(src, headers={"Range": f"bytes={len(whole) // 2}-"})  # the player seeks halfway
    assert seek.status_code == 206 and seek.data == whole[len(whole) // 2:]
    assert seek.headers["Content-Range"] == f"bytes {len(whole) // 2}-{len(whole) - 1}/{len(whole)}"
    listens = [e for e in console.extensions["console"].db.audit_entries(200, "recording.listen")
               if e.target == f"ticket:{ticket.display_number}"]
    assert [e.actor for e in listens] == ["qa-super"]  # one listening session, one entry
    audit = visible(signed_in(console, "qa-admin").get("/admin/audit").get_data(as_text=True))
    assert f"收听工单 {ticket.display_number} 的通话录音" in audit and "收听通话录音" in audit


def test_with_recording_off_nothing_is_recorded(pbx):
    world = pbx
    world.seat("7061", {"general": 50})
    call = world.call("12345")
    call.bridged_with("Local/7061@lab-agent", timeout=30)
    assert not call.ran("MixMonitor") and not call.var("HOTLINE_RECORD")
