"""rq jobs with a real worker process (``python -m intake.worker``) on the real Redis fixture.

Covers: pre-fill of text heard on the call, corrupt and model-less recordings (ticket still
filed, flagged for manual entry), a worker killed with SIGKILL mid-job (the job is retried
by the next worker), a clean shutdown, a job failing on every attempt, and the signed
hand-off to a real local HTTP server with retries and backoff.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from intake import jobs
from intake.tickets import TicketStore

ROOT = Path(__file__).resolve().parent.parent
CALLER = "13812345678"
SECRET = "shared-secret-for-tests"


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path}/tickets.db"


@pytest.fixture
def store(db_url):
    s = TicketStore(db_url)
    yield s
    s.close()


@pytest.fixture
def env(redis_url, db_url, monkeypatch):
    """The worker's environment; retries without delay unless a test says otherwise."""
    monkeypatch.setenv("SPEECH_RETRY_S", "0,0")
    monkeypatch.setenv("HANDOFF_RETRY_S", "0,0")
    e = {k: v for k, v in os.environ.items() if k not in ("VOSK_MODEL_PATH", "DATABASE_SCHEMA")}
    e.update(REDIS_URL=redis_url, DATABASE_URL=db_url, PYTHONPATH=str(ROOT), LOG_LEVEL="INFO")
    return e


@pytest.fixture
def queue(redis_url):
    conn = redis.Redis.from_url(redis_url)
    yield Queue(jobs.SPEECH_QUEUE, connection=conn)
    conn.close()


class Workers:
    """Worker processes started by a test, each in its own process group; all stopped at the end."""

    def __init__(self, env, tmp_path):
        self.env, self.tmp_path, self.procs = env, tmp_path, []

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "intake.worker", "--url", self.env["REDIS_URL"], *args],
                                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.log = log
        self.procs.append(proc)
        return proc

    def run_burst(self, *args: str, timeout: float = 20) -> str:
        proc = self.start("--burst", *args)
        assert proc.wait(timeout) == 0, self.output(proc)
        return self.output(proc)

    @staticmethod
    def output(proc) -> str:
        proc.log.seek(0)
        return proc.log.read()

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            proc.log.close()


@pytest.fixture
def workers(env, tmp_path):
    w = Workers(env, tmp_path)
    yield w
    w.stop_all()


def wait_for(predicate, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def worker_ready(connection, proc) -> bool:
    return any(w.pid == proc.pid for w in __import__("rq").Worker.all(connection=connection))


def write_wav(path: Path, seconds: float = 1.0, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return path


# ---------------------------------------------------------------------------------------


def test_words_heard_on_the_call_prefill_the_ticket_the_agent_will_see(store, queue, workers):
    t = store.open_ticket("call-1", "12345", CALLER, rules_version="v1")
    jobs.enqueue_text(queue, "call-1", "我想问一下公积金贷款最多能贷多少", confidence=0.9)
    jobs.enqueue_text(queue, "call-1", "我们是双职工")
    workers.run_burst()
    t = store.get(t.id)
    assert t.transcript == "我想问一下公积金贷款最多能贷多少 我们是双职工"
    assert (t.value("line"), t.value("type"), t.value("skill")) == ("12329", "consultation", "housing_fund")
    assert t.fields["line"]["source"] == "machine" and t.status == "open"


def test_a_corrupt_recording_still_yields_a_ticket_flagged_for_manual_entry(store, queue, workers, tmp_path):
    corrupt = tmp_path / "call-1.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    store.open_ticket("call-1", "12366", CALLER)
    job = jobs.enqueue_recording(queue, "call-1", str(corrupt), entry_line="12366")
    jobs.enqueue_recording(queue, "call-2", str(tmp_path / "missing.wav"))
    workers.run_burst()
    t = store.by_call("call-1")
    assert t.status == "manual_entry" and t.transcript_status == "unreadable"
    assert "truncated WAV" in t.manual_reason and t.recording == str(corrupt)
    assert Job.fetch(job.id, connection=queue.connection).get_status() == "finished"  # no pointless retries
    missing = store.by_call("call-2")  # never opened by a front-end: the job files it anyway
    assert missing.status == "manual_entry" and "No such file" in missing.manual_reason


def test_a_mu_law_wav_from_the_pbx_is_not_mistaken_for_a_corrupt_recording(tmp_path):
    import numpy as np

    from intake.speech import encode_ulaw

    samples = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 8000).astype(np.int16)
    data = encode_ulaw(samples)
    fmt = (b"fmt " + (18).to_bytes(4, "little") + (7).to_bytes(2, "little") + (1).to_bytes(2, "little")
           + (8000).to_bytes(4, "little") + (8000).to_bytes(4, "little") + (1).to_bytes(2, "little")
           + (8).to_bytes(2, "little") + (0).to_bytes(2, "little"))
    body = b"WAVE" + fmt + b"data" + len(data).to_bytes(4, "little") + data
    path = tmp_path / "call-ulaw.wav"
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    assert jobs.recording_problem(str(path)) is None


def test_a_recording_with_no_speech_model_is_kept_with_a_clear_no_transcript_status(store, queue, workers, tmp_path):
    wav = write_wav(tmp_path / "call-1.wav")
    store.open_ticket("call-1", "12345", CALLER)
    jobs.enqueue_recording(queue, "call-1", str(wav))
    out = workers.run_burst()
    t = store.by_call("call-1")
    assert t.status == "manual_entry" and t.transcript_status == "no_model"
    assert t.recording == str(wav) and "no transcript" in t.manual_reason
    assert out.count("VOSK_MODEL_PATH is not set") == 1  # said once, at startup


def test_a_job_killed_with_its_worker_is_retried_by_the_next_worker(store, queue, workers, db_url):
    t = store.open_ticket("call-1", "12345", CALLER)
    first = workers.start()
    wait_for(lambda: worker_ready(queue.connection, first), what="the worker to register")
    # hold the database so the job is stuck half-way, as on a stalled disk or a slow database
    db = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=5)
    db.execute("BEGIN EXCLUSIVE")
    job = jobs.enqueue_text(queue, "call-1", "楼道里有人给电动车充电，电线拉得到处都是")
    wait_for(lambda: job.get_status(refresh=True) == "started", what="the job to start")
    time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(5)
    db.execute("ROLLBACK")
    db.close()
    assert job.id in StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)  # rq still thinks it runs
    out = workers.run_burst()
    assert "is gone" in out
    job.refresh()
    assert job.get_status() == "finished" and job.retries_left == 1
    t = store.get(t.id)
    assert (t.value("line"), t.value("type")) == ("96119", "report")


def test_a_worker_asked_to_stop_finishes_the_job_in_hand_then_exits_cleanly(store, queue, workers, db_url):
    t = store.open_ticket("call-1", "12345", CALLER)
    proc = workers.start()
    wait_for(lambda: worker_ready(queue.connection, proc), what="the worker to register")
    db = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=5)
    db.execute("BEGIN EXCLUSIVE")
    job = jobs.enqueue_text(queue, "call-1", "护照快到期了，换发新护照要预约吗")
    wait_for(lambda: job.get_status(refresh=True) == "started", what="the job to start")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    db.execute("ROLLBACK")
    db.close()
    assert proc.wait(15) == 0
    assert "worker stopped" in workers.output(proc)
    assert job.get_status(refresh=True) == "finished"
    assert store.get(t.id).value("line") == "12367"


def test_a_job_that_fails_on_every_attempt_leaves_the_ticket_flagged_for_manual_entry(store, queue, workers):
    store.open_ticket("call-1", "12345", CALLER)
    job = jobs.enqueue_text(queue, "call-1", {"not": "text"})  # a front-end bug: not a string
    workers.run_burst()
    job.refresh()
    assert job.get_status() == "failed" and job.retries_left == 0
    t = store.by_call("call-1")
    assert t.status == "manual_entry" and "speech job failed" in t.manual_reason


# ---------------------------------------------------------------------------------------
# Hand-off


class CitySystem:
    """A local HTTP server standing in for the city's ticket system."""

    def __init__(self, answers):
        self.answers = list(answers)  # (status, body) per request; the last one repeats
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((time.monotonic(), dict(self.headers), body))
                status, answer = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/requests.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def city():
    made = []

    def make(*answers):
        c = CitySystem(answers)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def finished_ticket(store, rules_version="v1"):
    store.open_ticket("call-9", "12345", CALLER, rules_version=rules_version, recording="rec/call-9.wav")
    t = store.attach_transcript("call-9", text="阳光小区暖气一直不热", prefill={
        "type": "help", "line": "12345", "skill": "general", "department": "12345政务服务便民热线",
        "emergency": None, "enterprise": False, "location": "阳光小区", "unit": None, "subject": "暖气",
        "numbers": {"phones": [], "id_cards": [], "amounts": []}})
    store.confirm_fields(t.id, "agent007")
    return store.finish(t.id, "agent007", "供热公司已排气，室温恢复到20度")


def test_a_finished_ticket_reaches_the_city_system_signed_after_retries_with_backoff(
        store, redis_url, workers, env, city, monkeypatch):
    monkeypatch.setenv("HANDOFF_RETRY_S", "2,2")
    system = city((503, {"error": "busy"}), (201, [{"service_request_id": "BJ-2025-000123"}]))
    env.update(HANDOFF_URL=system.url, HANDOFF_SECRET=SECRET)
    t = finished_ticket(store)
    conn = redis.Redis.from_url(redis_url)
    job = jobs.enqueue_handoff(Queue(jobs.HANDOFF_QUEUE, connection=conn), t.id)
    workers.start()  # not burst: the scheduler brings the retry back after its backoff
    wait_for(lambda: store.get(t.id).status == "handed_off", what="the hand-off")
    # rq marks the job finished just after the job function returns: wait for that, too
    wait_for(lambda: job.get_status(refresh=True) == "finished", what="the hand-off job to finish")
    (t1, _, _), (t2, headers, body) = system.requests
    assert t2 - t1 >= 1.0  # backed off before retrying (rq schedules to the whole second)
    assert jobs.verify_signature(SECRET, headers[jobs.TIMESTAMP_HEADER], body, headers[jobs.SIGNATURE_HEADER])
    assert not jobs.verify_signature("another-secret", headers[jobs.TIMESTAMP_HEADER], body,
                                     headers[jobs.SIGNATURE_HEADER])
    assert headers["Idempotency-Key"] == f"ticket-{t.id}"
    sent = json.loads(body)
    assert sent["service_request_id"] == str(t.id) and sent["status"] == "closed"
    assert sent["service_code"] == "12345" and sent["address_string"] == "阳光小区"
    assert sent["status_notes"] == "供热公司已排气，室温恢复到20度" and sent["phone"] == CALLER
    assert sent["attributes"]["request_type"] == "help" and sent["requested_datetime"].endswith("+08:00")
    t = store.get(t.id)
    assert t.handoff_ref == "BJ-2025-000123" and t.handoff_error is None
    conn.close()


def test_a_ticket_the_city_system_refuses_is_not_resent_and_shows_why(store, redis_url, workers, env, city):
    system = city((400, {"error": "service_code unknown"}))
    env.update(HANDOFF_URL=system.url, HANDOFF_SECRET=SECRET)
    t = finished_ticket(store)
    conn = redis.Redis.from_url(redis_url)
    jobs.enqueue_handoff(Queue(jobs.HANDOFF_QUEUE, connection=conn), t.id)
    workers.run_burst()
    assert len(system.requests) == 1
    t = store.get(t.id)
    assert t.status == "finished" and "HTTP 400" in t.handoff_error and "service_code unknown" in t.handoff_error
    conn.close()


class RecordingServer:
    """Twilio's media URLs, served on 127.0.0.1: WAV behind basic auth, 404 for the rest."""

    def __init__(self, wav_bytes: bytes, user: str, password: str):
        import base64

        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.paths = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.paths.append(self.path)
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                elif self.path.endswith("/RE0001.wav"):
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/x-wav")
                    self.send_header("Content-Length", str(len(wav_bytes)))
                    self.end_headers()
                    self.wfile.write(wav_bytes)
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/2010-04-01/Accounts/AC1/Recordings"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_twilio_recording_url_is_fetched_with_the_account_credentials_before_transcription(
        store, queue, workers, env, tmp_path):
    wav = write_wav(tmp_path / "source.wav")
    media = RecordingServer(wav.read_bytes(), "AC1", "twilio-token")
    try:
        env.update(TWILIO_ACCOUNT_SID="AC1", TWILIO_AUTH_TOKEN="twilio-token", HOTLINE_RECORDINGS=str(tmp_path / "rec"))
        store.open_ticket("CA100", "12345", CALLER)
        jobs.enqueue_recording(queue, "CA100", f"{media.url}/RE0001")  # as Twilio's callback gives it
        jobs.enqueue_recording(queue, "CA101", f"{media.url}/RE0404")
        workers.run_burst()
    finally:
        media.close()
    assert "/2010-04-01/Accounts/AC1/Recordings/RE0001.wav" in media.paths  # asked for WAV
    t = store.by_call("CA100")
    assert t.transcript_status == "no_model"  # fetched and readable: only the model is missing here
    local = Path(t.recording)
    assert local.parent == tmp_path / "rec" and local.read_bytes() == wav.read_bytes()
    gone = store.by_call("CA101")
    assert gone.status == "manual_entry" and "HTTP 404" in gone.manual_reason  # still a ticket, flagged


def test_the_callers_rating_and_the_call_end_reach_the_ticket_through_the_worker_not_the_webhook(
        store, redis_url, workers, env):
    conn = redis.Redis.from_url(redis_url)
    port = jobs.CallTickets(store, Queue(jobs.SPEECH_QUEUE, connection=conn), Queue(jobs.HANDOFF_QUEUE, connection=conn))
    t = store.open_ticket("call-rate", "12345", CALLER)
    port.survey(str(t.id), "satisfied")  # what the /twilio/survey webhook does: no database write
    port.close(str(t.id), "completed")
    assert (store.get(t.id).survey, store.get(t.id).call_outcome) == (None, None)
    assert Queue(jobs.HANDOFF_QUEUE, connection=conn).count == 2
    workers.run_burst()
    t = store.get(t.id)
    assert (t.survey, t.call_outcome) == ("satisfied", "completed")
    conn.close()


def test_the_workers_pre_fill_follows_an_admins_rules_edit_and_ignores_an_invalid_one(tmp_path, rules_path):
    import shutil
    import time

    from intake import jobs

    shutil.copy(rules_path, tmp_path / "transfer_rules.yaml")
    shutil.copy(rules_path.parent / "emergency_keywords.yaml", tmp_path / "emergency_keywords.yaml")
    path = tmp_path / "transfer_rules.yaml"
    matter = "我想申请法律援助，请律师帮我打官司"
    first = jobs.prefiller(str(path)).fill(matter)
    assert (first.line, first.skill) == ("12348", "legal")
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("    mode: dual\n    skill: legal", "    mode: dual\n    skill: general", 1),
                    encoding="utf-8")
    time.sleep(1.1)  # the rules file is checked at most once a second
    assert jobs.prefiller(str(path)).fill(matter).skill == "general"  # the running worker, no restart
    path.write_text(text.replace("    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal", 1),
                    encoding="utf-8")
    time.sleep(1.1)
    assert jobs.prefiller(str(path)).fill(matter).skill == "general"  # an invalid edit changes nothing
