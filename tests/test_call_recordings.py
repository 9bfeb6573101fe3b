"""Full-call recording for quality review (质检), Twilio side and the consoles: the rules turn it on
and set how long a recording is kept; the citizen's conference is recorded from the agent's
answer; Twilio's signed recording callback brings the file to the ticket through a real rq worker
(downloaded from a real local HTTP server); a supervisor listens on the ticket page (byte ranges:
the player seeks), each listening session one entry in the audit log; the worker's periodic sweep
deletes a recording past its keep date and the ticket says 录音已过保存期. (The Asterisk side, MixMonitor on the real PBX: test_pbx_recording.py.)
"""
from __future__ import annotations

import io
import math
import os
import re
import sqlite3
import struct
import subprocess
import sys
import threading
import wave
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from rq import Queue

from call_routing.acd import Agent
from call_routing.rules import RulesError, load_rules
from intake import jobs
from tests.console_support import copy_rules, make_console_app, sign_in
from tests.test_consoles_agent import answer, call_waiting, seat_token
from tests.test_consoles_chinese import assert_human, not_for_people, page_text, visible

ROOT = Path(__file__).resolve().parent.parent


def with_recording(rules_path: Path, setting: str) -> None:
    """``hotline.recording`` set to ``setting`` in a copy of the shipped rules."""
    text = rules_path.read_text("utf-8")
    text, n = re.subn(r"  recording: \{[^}]*\}", f"  recording: {setting}", text)
    assert n == 1
    rules_path.write_text(text, "utf-8")


def tone_wav(seconds: float = 2.0) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 8000 * 2 * math.pi * 440)))
                               for i in range(int(8000 * seconds))))
    return out.getvalue()


def test_the_rules_turn_full_call_recording_on_with_a_keep_period_and_refuse_bad_values(tmp_path):
    rules_path = copy_rules(tmp_path)
    assert load_rules(rules_path).recording.full_call is False  # shipped: off, 180 days
    assert load_rules(rules_path).recording.keep_days == 180
    with_recording(rules_path, "{full_call: true, keep_days: 30}")
    policy = load_rules(rules_path).recording
    assert policy.full_call is True and policy.keep_days == 30
    with_recording(rules_path, "{full_call: sometimes, keep_days: 0, keep: 5}")
    with pytest.raises(RulesError) as bad:
        load_rules(rules_path)
    said = "\n".join(str(p) for p in bad.value.problems)
    assert "hotline.recording.full_call: 「sometimes」应为 true 或 false" in said
    assert "hotline.recording.keep_days: 「0」应为 1 到 3650 之间的整数（天）" in said
    assert "hotline.recording.keep: 未知的键 keep（可用：full_call, keep_days）" in said


@pytest.fixture
def media():
    """Twilio's media host: serves the conference recording (``RecordingUrl`` + ``.wav``)."""
    body = tone_wav()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/RE0001.wav":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "audio/x-wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url, httpd.body = f"http://127.0.0.1:{httpd.server_port}", body
    yield httpd
    httpd.shutdown()
    thread.join(5)


@pytest.fixture
def app(tmp_path, redis_url, media):
    recordings = tmp_path / "recordings"
    app = make_console_app(tmp_path, redis_url, TWILIO_RECORDING_HOSTS=f"http://127.0.0.1:{media.server_port}",
                           HOTLINE_RECORDINGS=str(recordings))
    app.recordings = recordings
    flow = app.extensions["twilio"]["flow"]
    flow.tickets.speech_queue = Queue(jobs.SPEECH_QUEUE, connection=redis.Redis.from_url(redis_url))  # to the worker
    app.extensions["acd"].save_agent(Agent("a1", "张坐席", {"legal": 50, "general": 10}, endpoints=("client:a1",)))
    return app


def run_worker(app, redis_url, tmp_path) -> str:
    """``python -m intake.worker --burst`` on the app's database, rules and recordings folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("VOSK_MODEL_PATH", "DATABASE_SCHEMA")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=app.config["DATABASE_URL"], RULES_PATH=app.config["RULES_PATH"],
               HOTLINE_RECORDINGS=str(app.recordings), PYTHONPATH=str(ROOT), SPEECH_RETRY_S="0")
    done = subprocess.run([sys.executable, "-m", "intake.worker", "--url", redis_url, "--burst", "--log-level", "INFO"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_twilio_call_is_recorded_whole_kept_on_its_ticket_listened_to_under_audit_and_deleted_when_due(
        app, redis_url, media, tmp_path):
    with_recording(Path(app.config["RULES_PATH"]), "{full_call: true, keep_days: 30}")
    app.extensions["rules"].reload()
    agent = app.test_client()
    auth = seat_token(app, agent)
    tw = call_waiting(app, sid="CAwhole1")
    assert agent.post("/agent/api/state", json={"state": "ready"}, headers=auth).status_code == 200
    answer(app, tw, sid="CAwhole1")
    # the citizen was moved into the conference, recorded from its start (the agent's answer)
    moved = [d for u, d in app.test_http.posts("/Calls/CAwhole1.json") if "Twiml" in d]
    conference = ET.fromstring(moved[-1]["Twiml"]).find("Dial/Conference")
    assert conference.get("record") == "record-from-start"
    assert conference.get("recordingStatusCallback") == "call-recording?call=CAwhole1"
    # the conversation ends; Twilio posts the finished recording (signed, like every webhook)
    recording = {"AccountSid": "AC" + "0" * 32, "ConferenceSid": "CF" + "1" * 32, "RecordingSid": "RE0001",
                 "RecordingUrl": f"{media.url}/RE0001", "RecordingStatus": "completed", "RecordingDuration": "2"}
    forged = tw.post("/twilio/call-recording?call=CAwhole1", recording, signature="bad")
    assert forged.status_code == 403
    for _ in range(2):  # Twilio retries: stored once
        assert tw.post("/twilio/call-recording?call=CAwhole1", recording).status_code == 204
    elsewhere = dict(recording, RecordingSid="RE0002", RecordingUrl="http://203.0.113.9/RE0002")
    assert tw.post("/twilio/call-recording?call=CAwhole1", elsewhere).status_code == 204  # not fetched
    run_worker(app, redis_url, tmp_path)

    store = app.extensions["console"].tickets
    ticket = store.by_call("CAwhole1")
    [rec] = store.call_recordings(ticket.id)
    assert rec.source == "twilio" and round(rec.seconds) == 2 and not rec.expired
    assert (app.recordings / rec.file).read_bytes() == media.body
    assert 29.9 < (rec.keep_until - rec.stored_at).total_seconds() / 86400 < 30.1
    # the supervisor's ticket page: a player, the length, the keep date; the history says what happened
    supervisor = app.test_client()
    sign_in(supervisor, "super")
    page = supervisor.get(f"/admin/tickets/{ticket.id}").get_data(as_text=True)
    text = visible(page)
    assert_human(text)
    assert "通话录音" in text and "时长 2秒" in text and "保存至" in text
    assert "保存全程录音" in text and "保存 30 天" in text
    assert "全程录音转写" in text and "未配置语音识别" in text  # no speech model in this worker
    assert not not_for_people(page_text(page), app.extensions["rules"].current())
    src = re.search(r'<audio controls preload="none" src="([^"]+)"', page).group(1)
    assert src == f"/admin/tickets/{ticket.id}/recordings/{rec.id}.wav"
    # the player gets the whole file or the byte ranges it asks for (a seek), never cached
    body = media.body
    heard = supervisor.get(src)
    assert heard.status_code == 200 and heard.mimetype == "audio/wav" and heard.data == body
    assert heard.headers["Accept-Ranges"] == "bytes" and "no-store" in heard.headers["Cache-Control"]
    seek = supervisor.get(src, headers={"Range": "bytes=16044-17043"})  # 1 s in: 8000 samples of 2 bytes
    assert seek.status_code == 206 and seek.data == body[16044:17044]
    assert seek.headers["Content-Range"] == f"bytes 16044-17043/{len(body)}"
    rest = supervisor.get(src, headers={"Range": "bytes=30000-"})
    assert rest.status_code == 206 and rest.data == body[30000:]
    tail = supervisor.get(src, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.data == body[-100:]
    beyond = supervisor.get(src, headers={"Range": f"bytes={len(body)}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(body)}"
    assert "请求的录音片段超出了录音的长度" in visible(beyond.get_data(as_text=True))
    # agents cannot listen, not even to a range; a recording of another ticket is not found
    assert agent.get(src).status_code == 403
    assert agent.get(src, headers={"Range": "bytes=0-99"}).status_code == 403
    assert supervisor.get(f"/admin/tickets/{ticket.id + 1}/recordings/{rec.id}.wav").status_code == 404
    # the audit log: one entry for the supervisor's listening (five requests), one for a second
    # supervisor whose very first request is a range in the middle — never a range without one
    consoles = app.extensions["console"].db
    consoles.add_user("super2", "super2-pass-123", "supervisor", display_name="赵质检")
    other = app.test_client()
    sign_in(other, "super2", "super2-pass-123")
    assert [e.actor for e in consoles.audit_entries(50, "recording.listen")] == ["super"]
    piece = other.get(src, headers={"Range": "bytes=20000-20999"})
    assert piece.status_code == 206 and piece.data == body[20000:21000]
    assert other.get(src, headers={"Range": "bytes=0-"}).data == body
    listens = consoles.audit_entries(50, "recording.listen")
    assert [e.actor for e in listens] == ["super2", "super"]
    assert {e.target for e in listens} == {f"ticket:{ticket.display_number}"}
    # half an hour after the supervisor's listen began, listening again is a new session
    with sqlite3.connect(app.config["DATABASE_URL"][len("sqlite:///"):]) as conn:
        conn.execute("update console_recording_listens set at = datetime(at, '-31 minutes') where actor = 'super'")
    assert supervisor.get(src, headers={"Range": "bytes=44-"}).data == body[44:]
    assert supervisor.get(src).status_code == 200
    assert [e.actor for e in consoles.audit_entries(50, "recording.listen")] == ["super", "super2", "super"]
    admin = app.test_client()
    sign_in(admin, "admin")
    audit = visible(admin.get("/admin/audit").get_data(as_text=True))
    assert audit.count("收听通话录音") == 3 and f"收听工单 {ticket.display_number} 的通话录音" in audit
    assert "30 分钟内再次收听不另记" in audit
    assert_human(audit)
    assert not not_for_people(page_text(admin.get("/admin/audit").get_data(as_text=True)),
                              app.extensions["rules"].current())

    # 31 days on: the worker's periodic sweep deletes the file; the page says so, the route refuses
    with sqlite3.connect(app.config["DATABASE_URL"][len("sqlite:///"):]) as db:
        db.execute("update call_recordings set keep_until = '2020-01-01 00:00:00.000000' where id = ?", (rec.id,))
    run_worker(app, redis_url, tmp_path)
    assert not (app.recordings / rec.file).exists()
    assert store.call_recordings(ticket.id)[0].expired
    text = visible(supervisor.get(f"/admin/tickets/{ticket.id}").get_data(as_text=True))
    assert "录音已过保存期" in text and "<audio" not in supervisor.get(f"/admin/tickets/{ticket.id}").get_data(as_text=True)
    assert "录音文件已删除" in text
    assert_human(text)
    for asked in ({}, {"Range": "bytes=0-99"}, {"Range": "bytes=16044-"}):
        gone = supervisor.get(src, headers=asked)
        assert gone.status_code == 410 and "录音已过保存期" in visible(gone.get_data(as_text=True))
    assert len(consoles.audit_entries(50, "recording.listen")) == 3  # nothing heard, nothing audited


def test_with_recording_off_the_conference_is_not_recorded(app):
    agent = app.test_client()
    auth = seat_token(app, agent)
    tw = call_waiting(app, sid="CAplain1")
    agent.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    answer(app, tw, sid="CAplain1")
    moved = [d for u, d in app.test_http.posts("/Calls/CAplain1.json") if "Twiml" in d]
    conference = ET.fromstring(moved[-1]["Twiml"]).find("Dial/Conference")
    assert conference is not None and conference.get("record") is None
    page = visible(_supervisor_page(app, "CAplain1"))
    assert "本通话未录制全程录音" in page


def _supervisor_page(app, call_id: str) -> str:
    client = app.test_client()
    sign_in(client, "super")
    ticket = app.extensions["console"].tickets.by_call(call_id)
    return client.get(f"/admin/tickets/{ticket.id}").get_data(as_text=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def web_processes(request, tmp_path):
    """The consoles' store of four web processes on one database (a SQLite file, or a fresh
    PostgreSQL schema when one is reachable)."""
    from consoles.db import ConsoleStore
    from tests.ticket_db import fresh_schema, postgres_reachable, postgres_url

    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'console.db'}", None
    else:
        why = postgres_reachable()
        if why:
            pytest.skip(why)
        url, schema = postgres_url(), fresh_schema()
    stores = [ConsoleStore(url, schema=schema) for _ in range(4)]
    yield stores
    if schema:
        with stores[0].engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    for store in stores:
        store.close()


def test_a_players_requests_served_at_once_by_several_web_processes_are_one_listen_in_the_audit_log(web_processes):
    """A player asks for several ranges at once and each may reach another web process: one entry
    per person, also when their listening session is renewed at the same moment."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from consoles.admin import LISTEN_SESSION
    from consoles.db import RecordingListen

    def together(who: list[str]) -> list:
        barrier, got = threading.Barrier(len(who)), []

        def listen(i):
            barrier.wait()
            got.append(web_processes[i % len(web_processes)].audit_listen(
                who[i], 7, "ticket:20261206-0001", "收听工单 20261206-0001 的通话录音", window=LISTEN_SESSION))

        threads = [threading.Thread(target=listen, args=(i,)) for i in range(len(who))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return sorted(e.actor for e in got if e is not None)

    assert together(["super"] * 6 + ["super2"] * 2) == ["super", "super2"]
    assert together(["super"] * 4) == []  # the same session
    with web_processes[0].engine.begin() as conn:  # 31 minutes on
        conn.execute(update(RecordingListen).values(at=datetime.now(timezone.utc) - timedelta(minutes=31)))
    assert together(["super"] * 6 + ["super2"] * 2) == ["super", "super2"]
    entries = web_processes[1].audit_entries(50, "recording.listen")
    assert sorted(e.actor for e in entries) == ["super", "super", "super2", "super2"]
