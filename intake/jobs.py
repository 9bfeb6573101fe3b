"""rq jobs: recording → transcript → pre-fill → the call's ticket; finished ticket → city system.

Jobs carry ids and paths only — never a caller's number: the ticket, opened when the call
started, holds it. Configuration comes from the worker's environment (``DATABASE_URL``,
``RULES_PATH``, ``VOSK_MODEL_PATH``, ``HANDOFF_URL``, ``HANDOFF_SECRET``) so that no secret is
ever written into Redis.

Failure handling:

* every job is enqueued with retries and backoff (``Retry``) and a timeout;
* a worker killed mid-job leaves the job in rq's started registry; ``intake.worker`` re-queues
  it as soon as it sees the worker is dead (rq itself would only after the heartbeat expires);
* a recording that cannot be read yields a ticket flagged for manual entry at once (no
  retry can make a corrupt file readable); a job that still fails on its last attempt flags
  the ticket too (``on_failure``), so a caller's request is never lost.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from call_routing.rules import CHINA_TZ, Rules
from runtime.redis_conn import redis_client, sentinels_from_env

log = logging.getLogger("hotline.jobs")

SPEECH_QUEUE = "speech"
HANDOFF_QUEUE = "handoff"
SPEECH_TIMEOUT_S = 300
HANDOFF_TIMEOUT_S = 60
SPEECH_RETRY_S = (5, 30, 120)
HANDOFF_RETRY_S = (10, 60, 300, 900, 3600)
SIGNATURE_HEADER = "X-Hotline-Signature"
TIMESTAMP_HEADER = "X-Hotline-Timestamp"


# ---------------------------------------------------------------------------------------
# Per-process resources: loaded once by the worker, shared by every job it runs

_lock = threading.Lock()
_stores: dict = {}
_prefillers: dict = {}


def ticket_store(url: str | None = None):
    """The process's ticket store; it finds drafts of tickets not yet written at REDIS_URL."""
    from intake.tickets import TicketStore, database_url

    url = database_url(url)
    schema = os.environ.get("DATABASE_SCHEMA") or None
    with _lock:
        store = _stores.get((url, schema))
        if store is None:
            store = _stores[(url, schema)] = TicketStore(url, schema=schema)
        return store


def prefill_classifier(rules_path: str | None = None):
    """This process's :class:`~ivr.prefill.PrefillClassifier`, on the current rules: the worker
    lives for weeks, admins edit the rules meanwhile. The rules file is watched as the web app
    watches it (:class:`~call_routing.rules_store.RulesStore`: checked at most once a second, an
    invalid edit never replaces valid rules); the pre-filler is rebuilt when the rules change."""
    from call_routing.rules_store import RulesStore

    from ivr.prefill import PrefillClassifier

    path = rules_path or os.environ.get("RULES_PATH") or None
    with _lock:
        classifier = _prefillers.get(path)
        if classifier is None:
            classifier = _prefillers[path] = PrefillClassifier(RulesStore(path).current)
    return classifier


def prefiller(rules_path: str | None = None):
    """This process's pre-filler on the current rules (waits for the first one to learn)."""
    return prefill_classifier(rules_path).filler()


def current_rules(rules_path: str | None = None):
    """The rules the worker's jobs follow now, without waiting for the pre-fill to learn."""
    return prefill_classifier(rules_path).rules()


def close_resources() -> None:
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
        _prefillers.clear()


def retry_intervals(env: str, default: tuple[int, ...]) -> list[int]:
    """Backoff in seconds, e.g. ``SPEECH_RETRY_S=5,30,120`` (one retry per entry)."""
    raw = os.environ.get(env)
    if not raw:
        return list(default)
    return [int(x) for x in raw.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------
# Speech → ticket


def recording_problem(path: str) -> str | None:
    """Why a recording cannot be transcribed at all, or None when it looks like audio.

    The header check is speech's own (WAV PCM/μ-law/A-law, raw .ulaw/.sln…), so a recording
    the recognizer can read is never flagged here, with or without a model.
    """
    from intake.speech import UnreadableAudio, probe_audio

    try:
        probe_audio(path)
    except UnreadableAudio as exc:
        return str(exc)
    return None


def _prefill_for(filler, entry_line: str | None):
    def fill(transcript: str, created_at: datetime) -> dict:
        return filler.fill(transcript, created_at, dialed=entry_line).to_dict()
    return fill


class RecordingGone(Exception):
    """The recording's URL answered with a final refusal (404, 403…): retrying will not help."""


MAX_RECORDING_BYTES = 64 * 1024 * 1024


def recordings_dir() -> Path:
    return Path(os.environ.get("HOTLINE_RECORDINGS") or Path(__file__).resolve().parent.parent / "var" / "recordings")


def fetch_recording(call_id: str, url: str, timeout: float = 30.0) -> str:
    """A local copy of a recording Twilio (or another front-end) left at ``url``.

    Twilio's ``RecordingUrl`` has no extension: ``.wav`` asks for 16-bit PCM. With
    ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN`` set, the request carries HTTP basic auth
    (needed when the account enforces authentication on media URLs). Network errors and
    5xx raise ``OSError`` so rq retries with backoff; 4xx raises :class:`RecordingGone`.
    """
    import base64
    import hashlib
    import re
    import urllib.error
    import urllib.request

    target = url if url.lower().split("?")[0].endswith((".wav", ".mp3")) else url.split("?")[0] + ".wav"
    request = urllib.request.Request(target, headers={"User-Agent": "hotline-gateway"})
    sid, token = os.environ.get("TWILIO_ACCOUNT_SID"), os.environ.get("TWILIO_AUTH_TOKEN")
    if sid and token:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode())
    folder = recordings_dir()
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", call_id)[:80] or "call"
    path = folder / f"{safe}-{hashlib.sha1(url.encode()).hexdigest()[:10]}.wav"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer, open(f"{path}.part", "wb") as out:
            size = 0
            while chunk := answer.read(65536):
                size += len(chunk)
                if size > MAX_RECORDING_BYTES:
                    raise RecordingGone(f"recording larger than {MAX_RECORDING_BYTES // 1048576} MB")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        Path(f"{path}.part").unlink(missing_ok=True)
        if exc.code >= 500 or exc.code in (408, 429):
            raise OSError(f"recording download answered HTTP {exc.code}") from None
        raise RecordingGone(f"recording download refused: HTTP {exc.code}") from None
    except RecordingGone:
        Path(f"{path}.part").unlink(missing_ok=True)
        raise
    os.replace(f"{path}.part", path)
    return str(path)


def transcribe_recording(call_id: str, recording: str, entry_line: str | None = None) -> dict:
    """Transcribe the caller's recording and pre-fill the call's ticket.

    ``recording`` is a local path (Asterisk) or an http(s) URL (Twilio's ``RecordingUrl``),
    fetched first; a recording that cannot be fetched still leaves a ticket, flagged.
    """
    store = ticket_store()
    filler = prefiller()
    version = filler.rules.version
    problem = None
    if recording.lower().startswith(("http://", "https://")):
        try:
            recording = fetch_recording(call_id, recording)
        except RecordingGone as exc:
            problem = str(exc)
    if not problem and _part_of(Path(recording)).exists():
        # the description MixMonitor still writes: the caller hung up while saying it, and the
        # file is renamed only once the channel is gone; by then at the latest, else flagged below
        with contextlib.suppress(RecordingNotReady):
            _finished_recording(Path(recording), CALL_RECORDING_WAIT_S)
    problem = problem or recording_problem(recording)
    if problem:
        t = store.attach_transcript(call_id, text=None, status="unreadable", recording=recording, reason=problem,
                                    entry_line=entry_line, rules_version=version)
        return {"ticket": t.id, "status": t.status, "transcript_status": t.transcript_status, "reason": problem}
    try:
        from intake import speech  # imported here: workers without Vosk still file tickets
    except ImportError:
        speech = None
    if speech is None or not speech.model_available():
        t = store.attach_transcript(call_id, text=None, status="no_model", recording=recording,
                                    entry_line=entry_line, rules_version=version)
        return {"ticket": t.id, "status": t.status, "transcript_status": "no_model"}
    result = speech.transcribe_file(recording)
    status = result.status if result.status in ("ok", "no_model", "unreadable") else "failed"
    t = store.attach_transcript(call_id, text=result.text, confidence=result.confidence, status=status,
                                prefill=_prefill_for(filler, entry_line), recording=recording,
                                entry_line=entry_line, rules_version=version)
    log.info("call %s: recording transcribed (%s), ticket %s %s", call_id, status, t.id, t.status)
    return {"ticket": t.id, "status": t.status, "transcript_status": t.transcript_status}


class RecordingNotReady(OSError):
    """The PBX is still writing the recording: rq tries again later."""


#: how long a job waits for the PBX to finish a full-call recording before handing it back to rq
CALL_RECORDING_WAIT_S = 20.0
#: the longest conversation transcribed (a caller's matter alone is limited to speech.MAX_FILE_SECONDS)
CALL_RECORDING_MAX_S = 4 * 3600.0
#: a full-call recording shorter than this holds no conversation (the agent never answered)
MIN_CALL_RECORDING_S = 0.5


def _part_of(path: Path) -> Path:
    """Where MixMonitor writes ``NAME.wav`` until it is complete (then renamed)."""
    return path.with_name(path.stem + ".part.wav")


def _finished_recording(path: Path, wait_s: float) -> Path | None:
    """The PBX's recording ``path`` once complete (MixMonitor writes ``NAME.part.wav`` and
    renames it ``NAME.wav`` when the call is over); None when nothing was recorded."""
    partial = _part_of(path)
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if time.monotonic() >= deadline:
            if partial.exists():
                raise RecordingNotReady(f"{partial.name} is still being written")
            return None
        time.sleep(0.2)
    return path


def _wav_seconds(path: Path) -> float | None:
    import wave

    try:
        with wave.open(str(path)) as w:
            return w.getnframes() / float(w.getframerate())
    except (OSError, EOFError, wave.Error):
        return None


def store_call_recording(call_id: str, recording: str, wait_s: float | None = None) -> dict:
    """The whole conversation (质检) onto the call's ticket, kept for the rules' ``keep_days``,
    then transcribed into the ticket's history (never its pre-fill: the agent filled that in).

    ``recording``: the file name Asterisk's MixMonitor wrote in the recordings folder (waited
    for until complete), or Twilio's ``RecordingUrl`` (downloaded into that folder first)."""
    from intake.ticket_recordings import recording_file

    store = ticket_store()
    policy = current_rules().recording
    if recording.lower().startswith(("http://", "https://")):
        path, source = Path(fetch_recording(call_id, recording)), "twilio"
    else:
        path = _finished_recording(recording_file(recordings_dir(), recording),
                                   CALL_RECORDING_WAIT_S if wait_s is None else wait_s)
        source = "asterisk"
        if path is None:
            log.info("call %s: no full-call recording was written (never bridged to an agent)", call_id)
            return {"call": call_id, "stored": False}
    seconds = _wav_seconds(path)
    if seconds is not None and seconds < MIN_CALL_RECORDING_S:
        path.unlink(missing_ok=True)
        return {"call": call_id, "stored": False}
    recording_file(recordings_dir(), path.name)  # inside the folder, whatever fetched it
    rec = store.add_call_recording(call_id, file=path.name, ref=path.name, source=source,
                                   keep_days=policy.keep_days, seconds=seconds)
    if rec.transcript_status == "pending":
        try:
            from intake import speech  # workers without Vosk still keep the recording
        except ImportError:
            speech = None
        if speech is None or not speech.model_available():
            rec = store.call_recording_transcribed(rec.id, None, "no_model")
        else:
            result = speech.transcribe_file(str(path), max_seconds=CALL_RECORDING_MAX_S)
            status = result.status if result.status in ("ok", "no_model", "unreadable") else "failed"
            rec = store.call_recording_transcribed(rec.id, result.text, status, result.confidence)
    log.info("call %s: full-call recording %s stored on ticket %s (%s)", call_id, rec.id, rec.ticket_id,
             rec.transcript_status)
    return {"call": call_id, "stored": True, "recording": rec.id, "ticket": rec.ticket_id,
            "transcript_status": rec.transcript_status}


#: how often the worker looks for full-call recordings past their keep date
RECORDING_SWEEP_S = 600.0


def sweep_call_recordings() -> int:
    """Recordings past their keep date: files deleted, the tickets say so. Never raises."""
    try:
        return ticket_store().expire_call_recordings(recordings_dir())
    except Exception:
        log.exception("recordings past their keep date: will try again at the next sweep")
        return 0


def recording_sweeper_loop(stop, every_s: float = RECORDING_SWEEP_S) -> None:
    """``python -m intake.worker`` runs this in a thread, so a slow database never holds up a job."""
    while not stop.is_set():
        sweep_call_recordings()
        stop.wait(every_s)


def prefill_transcript(call_id: str, text: str, confidence: float | None = None, entry_line: str | None = None,
                       source: str = "speech", append: bool = True) -> dict:
    """Text already recognised (a streaming recognizer on the live call) → the call's ticket."""
    store = ticket_store()
    filler = prefiller()
    fill = _prefill_for(filler, entry_line)
    if append:
        t = store.append_transcript(call_id, text, source=source, confidence=confidence, prefill=fill)
    else:
        t = store.attach_transcript(call_id, text=text, confidence=confidence, status="ok", prefill=fill,
                                    entry_line=entry_line, rules_version=filler.rules.version)
    return {"ticket": t.id, "status": t.status, "line": t.value("line"), "type": t.value("type")}


def flag_when_out_of_retries(job, connection, exc_type, exc_value, tb) -> None:
    """rq failure callback: once no retry is left, the ticket goes to manual entry."""
    if job.retries_left:
        return
    call_id = job.kwargs.get("call_id") or (job.args[0] if job.args else None)
    if not call_id:
        return
    try:
        ticket_store().flag_manual_entry(call_id, f"speech job failed: {exc_type.__name__}: {exc_value}",
                                         recording=job.kwargs.get("recording"))
    except Exception:  # the job's own failure is already recorded by rq
        log.exception("call %s: could not flag the ticket for manual entry", call_id)


# ---------------------------------------------------------------------------------------
# Hand-off to the city's ticket system


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``timestamp + "." + body``)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: int = 300,
                     now: float | None = None) -> bool:
    """What the receiving system checks: the signature, and that the request is recent."""
    try:
        age = abs((now or time.time()) - int(timestamp))
    except (TypeError, ValueError):
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def open311_request(ticket, rules: Rules | None = None) -> dict:
    """A finished ticket in Open311 GeoReport v2 field names; the rest under ``attributes``."""
    iso = lambda d: d.astimezone(CHINA_TZ).isoformat(timespec="seconds") if d else None  # noqa: E731
    line = ticket.value("line") or ticket.entry_line
    line_info = rules.line(line) if rules else None
    return {
        "service_request_id": str(ticket.id),
        "status": "closed",
        "status_notes": ticket.result,
        "service_code": line,
        "service_name": line_info.name if line_info else None,
        "agency_responsible": ticket.value("department"),
        "description": ticket.value("summary") or ticket.transcript,
        "requested_datetime": iso(ticket.created_at),
        "updated_datetime": iso(ticket.finished_at),
        "expected_datetime": iso(ticket.due_at),
        "address_string": ticket.value("location"),
        "lat": None,
        "long": None,
        "phone": ticket.caller,  # the city system makes the return visit (回访)
        "media_url": ticket.recording,
        "attributes": {
            "call_id": ticket.call_id, "entry_line": ticket.entry_line, "request_type": ticket.value("type"),
            "skill": ticket.value("skill"), "emergency": ticket.value("emergency"),
            "enterprise": bool(ticket.value("enterprise")), "unit": ticket.value("unit"),
            "numbers": ticket.value("numbers"), "linked_to": ticket.linked_to, "supervision": ticket.supervision,
            "extension_days": ticket.extension_days, "transcript_status": ticket.transcript_status,
            "transcript_confidence": ticket.transcript_confidence, "rules_version": ticket.rules_version,
            "call_outcome": ticket.call_outcome, "survey": ticket.survey,
            "fields_source": {n: e.get("source") for n, e in ticket.fields.items()},
        },
    }


def hand_off(ticket_id: int) -> dict:
    """POST a finished ticket to ``HANDOFF_URL``, signed with ``HANDOFF_SECRET``."""
    import requests

    url, secret = os.environ.get("HANDOFF_URL"), os.environ.get("HANDOFF_SECRET")
    if not url or not secret:
        raise RuntimeError("HANDOFF_URL and HANDOFF_SECRET must be set in the worker's environment")
    store = ticket_store()
    ticket = store.get(ticket_id)
    if ticket.status == "handed_off":
        return {"ticket": ticket_id, "status": "handed_off", "ref": ticket.handoff_ref}
    body = json.dumps(open311_request(ticket, current_rules()), ensure_ascii=False,
                      separators=(",", ":")).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json; charset=utf-8", TIMESTAMP_HEADER: stamp,
               SIGNATURE_HEADER: sign(secret, stamp, body), "Idempotency-Key": f"ticket-{ticket_id}"}
    try:
        response = requests.post(url, data=body, headers=headers, timeout=(5, 20))
    except requests.RequestException as exc:
        store.record_handoff_error(ticket_id, f"{type(exc).__name__}: {exc}")
        raise
    if response.status_code >= 500 or response.status_code in (408, 429):
        store.record_handoff_error(ticket_id, f"HTTP {response.status_code}")
        raise RuntimeError(f"city ticket system answered HTTP {response.status_code}; will retry")
    if response.status_code >= 400:
        # refused as malformed or unauthorised: the same request would be refused again, so no
        # retry; the error stays on the ticket for a supervisor to see and re-send
        error = f"HTTP {response.status_code}: {response.text[:300]}"
        store.record_handoff_error(ticket_id, error)
        log.error("ticket %s refused by the city ticket system: %s", ticket_id, error)
        return {"ticket": ticket_id, "status": "rejected", "error": error}
    ref = None
    try:
        answer = response.json()
        answer = answer[0] if isinstance(answer, list) and answer else answer
        ref = answer.get("service_request_id") if isinstance(answer, dict) else None
    except ValueError:
        pass
    store.mark_handed_off(ticket_id, str(ref) if ref is not None else None)
    log.info("ticket %s handed off to the city system (ref %s)", ticket_id, ref)
    return {"ticket": ticket_id, "status": "handed_off", "ref": ref}


# ---------------------------------------------------------------------------------------
# Enqueueing


def _retry(env: str, default: tuple[int, ...]):
    from rq import Retry

    intervals = retry_intervals(env, default)
    return Retry(max=len(intervals), interval=intervals) if intervals else None


def enqueue_recording(queue, call_id: str, recording: str, entry_line: str | None = None):
    from rq import Callback

    return queue.enqueue("intake.jobs.transcribe_recording", call_id=call_id, recording=recording,
                         entry_line=entry_line, job_timeout=SPEECH_TIMEOUT_S,
                         retry=_retry("SPEECH_RETRY_S", SPEECH_RETRY_S),
                         on_failure=Callback(flag_when_out_of_retries), description=f"transcribe call {call_id}")


def enqueue_call_recording(queue, call_id: str, recording: str):
    return queue.enqueue("intake.jobs.store_call_recording", call_id=call_id, recording=recording,
                         job_timeout=SPEECH_TIMEOUT_S, retry=_retry("SPEECH_RETRY_S", SPEECH_RETRY_S),
                         description=f"full-call recording of call {call_id}")


def enqueue_text(queue, call_id: str, text: str, confidence: float | None = None, entry_line: str | None = None,
                 source: str = "speech", append: bool = True):
    from rq import Callback

    return queue.enqueue("intake.jobs.prefill_transcript", call_id=call_id, text=text, confidence=confidence,
                         entry_line=entry_line, source=source, append=append, job_timeout=SPEECH_TIMEOUT_S,
                         retry=_retry("SPEECH_RETRY_S", SPEECH_RETRY_S),
                         on_failure=Callback(flag_when_out_of_retries), description=f"pre-fill call {call_id}")


def record_call_end(ticket_id: int, outcome: str = "", survey: str | None = None) -> dict:
    """How the call ended and the caller's rating, onto the ticket (created from its draft when
    the writer has not written it yet). A job, so that the webhook answering the caller's
    last key press never waits for the database (under load, SQLite's write lock made
    ``/twilio/survey`` the slowest webhook: p99 ≈ 10 s in the 1,000-call simulation)."""
    t = ticket_store().record_call_end(int(ticket_id), outcome, survey=survey)
    return {"ticket": t.id, "outcome": t.call_outcome, "survey": t.survey}


def enqueue_call_end(queue, ticket_id: int, outcome: str = "", survey: str | None = None):
    return queue.enqueue("intake.jobs.record_call_end", ticket_id=int(ticket_id), outcome=outcome, survey=survey,
                         job_timeout=HANDOFF_TIMEOUT_S, retry=_retry("HANDOFF_RETRY_S", HANDOFF_RETRY_S),
                         description=f"call end of ticket {ticket_id}")  # the hand-off queue's retries


def enqueue_handoff(queue, ticket_id: int):
    return queue.enqueue("intake.jobs.hand_off", ticket_id=ticket_id, job_timeout=HANDOFF_TIMEOUT_S,
                         retry=_retry("HANDOFF_RETRY_S", HANDOFF_RETRY_S), description=f"hand off ticket {ticket_id}")


# ---------------------------------------------------------------------------------------
# The ticket writer: drafts left by the call path become rows


WRITE_BATCH = 200


def write_pending_tickets(store=None, drafts=None, *, block_s: float = 0.0, limit: int | None = None) -> int:
    """Create the rows of tickets the call path numbered and drafted (:class:`intake.tickets.TicketDrafts`).

    Each call id is moved from ``tickets:pending`` to ``tickets:writing`` (LMOVE), written
    (create-or-find: already written by a job or the console → nothing to do) and only then
    removed, so a worker killed mid-way loses nothing (:func:`requeue_unwritten` at start).
    ``block_s`` > 0 waits that long for the first draft. Returns how many were written."""
    from intake.tickets import TicketDrafts

    store = store or ticket_store()
    drafts = drafts or store.drafts or TicketDrafts.from_env()
    if drafts is None:
        return 0
    r = drafts.r
    done = 0
    while limit is None or done < limit:
        if block_s and done == 0:
            call_id = r.blmove(drafts.pending, drafts.writing, block_s, "LEFT", "RIGHT")
        else:
            call_id = r.lmove(drafts.pending, drafts.writing, "LEFT", "RIGHT")
        if call_id is None:
            break
        call_id = call_id.decode() if isinstance(call_id, bytes) else call_id
        store.by_call(call_id)  # create-or-find from the draft
        r.lrem(drafts.writing, 1, call_id)
        done += 1
    return done


def requeue_unwritten(drafts) -> int:
    """Drafts a killed writer was writing go back to the pending list (writing twice is harmless)."""
    n = 0
    while drafts.r.lmove(drafts.writing, drafts.pending, "RIGHT", "LEFT") is not None:
        n += 1
    return n


def ticket_writer_loop(stop, store=None, drafts=None) -> None:
    """``python -m intake.worker`` runs this in a thread: rows appear within milliseconds of the call."""
    while not stop.is_set():
        try:
            write_pending_tickets(store, drafts, block_s=1.0, limit=WRITE_BATCH)
        except Exception:
            log.exception("ticket writer: retrying in 1 s")
            stop.wait(1.0)


# ---------------------------------------------------------------------------------------
# The port the call flow talks to (ivr.flow.TicketPort)


@dataclass
class CallTickets:
    """Tickets for calls in progress: numbered at call start, filled by jobs, closed at hang-up.

    With a Redis connection (``drafts``) the call path never touches the database: ``open``
    takes a number from the store's hi/lo block (:meth:`TicketStore.allocate_id`) and writes
    a draft in the pipeline the flow gives it (one round trip with the call's own state); the
    ticket writer creates the row, and every consumer creates it from the draft if it comes
    first. Transcripts and recordings go through rq. Without Redis, the row is written at once
    and text is pre-filled in-process.
    """

    store: object
    speech_queue: object = None
    handoff_queue: object = None
    drafts: object = None  # intake.tickets.TicketDrafts: tickets opened without the database

    #: the flow may hand ``open`` a Redis pipeline to carry the draft (see CallFlow.start)
    accepts_pipeline = True

    @classmethod
    def from_config(cls, config: dict | None = None) -> "CallTickets":
        cfg = {k: os.environ.get(k) for k in ("DATABASE_URL", "REDIS_URL")}
        cfg.update({k: v for k, v in (config or {}).items() if v})
        store = ticket_store(cfg.get("DATABASE_URL"))
        speech_q = handoff_q = drafts = None
        if cfg.get("REDIS_URL") or sentinels_from_env():
            from rq import Queue

            from intake.tickets import TicketDrafts

            conn = redis_client(cfg.get("REDIS_URL"))
            speech_q, handoff_q = Queue(SPEECH_QUEUE, connection=conn), Queue(HANDOFF_QUEUE, connection=conn)
            drafts = TicketDrafts(redis_client(cfg.get("REDIS_URL"), decode_responses=True, socket_timeout=3,
                                               socket_connect_timeout=2))
            if store.drafts is None:
                store._drafts = drafts
        return cls(store, speech_q, handoff_q, drafts)

    def open(self, *, call_id: str, line: str, caller: str, rules_version: str, mode: str | None = None,
             pipe=None) -> str:
        if self.drafts is None:
            return str(self.store.open_ticket(call_id, line, caller, rules_version=rules_version).id)
        ticket_id = self.store.allocate_id()
        own = pipe is None
        if own:
            pipe = self.drafts.r.pipeline(transaction=False)
        self.drafts.put(pipe, ticket_id=ticket_id, call_id=call_id, line=line, caller=caller,
                        rules_version=rules_version, at=self.store.clock())
        if own:
            pipe.execute()
        return str(ticket_id)

    def _call_of(self, ticket: str) -> tuple[str, str]:
        """(call id, entry line) of a ticket, from its draft when the row is not needed."""
        if self.drafts is not None:
            d = self.drafts.by_id(int(ticket))
            if d is not None:
                return d["call_id"], d["entry_line"]
        t = self.store.get(int(ticket))
        return t.call_id, t.entry_line

    def transcript(self, ticket: str, text: str, source: str = "speech") -> None:
        call_id, line = self._call_of(ticket)
        if self.speech_queue is not None:
            enqueue_text(self.speech_queue, call_id, text, entry_line=line, source=source)
        else:
            self.store.append_transcript(call_id, text, source=source, prefill=_prefill_for(prefiller(), line))

    def recording(self, ticket: str, path: str) -> None:
        call_id, line = self._call_of(ticket)
        if self.speech_queue is not None:
            enqueue_recording(self.speech_queue, call_id, path, entry_line=line)
        else:
            self.store.flag_manual_entry(call_id, "no speech workers (REDIS_URL not set)", recording=path,
                                         transcript_status="no_model")

    def call_recording(self, ticket: str, recording: str) -> None:
        call_id, _ = self._call_of(ticket)
        if self.speech_queue is None:
            log.warning("ticket %s: no speech workers (REDIS_URL not set): full-call recording not stored", ticket)
            return
        enqueue_call_recording(self.speech_queue, call_id, recording)

    def survey(self, ticket: str, score: str) -> None:
        self._call_end(ticket, "", score)

    def close(self, ticket: str, outcome: str) -> None:
        self._call_end(ticket, outcome, None)

    def keep(self, ticket: str | None, *, call_id: str, line: str, caller: str | None, rules_version: str | None,
             started: float | None = None) -> str:
        """The caller is gone: the ticket's row is in the database when this returns — written
        here if the ticket writer has not written it yet (from the draft; from these facts, which
        the call's end report carries, when Redis restarted empty and lost the draft). Nobody
        waits on the line any more, and usually it is one read of a row already written. A draft
        and a job live in Redis only: this is what keeps the ticket of a call whose draft and
        end-of-call job were both lost with it. ``started``: when the call arrived (epoch
        seconds), None when no longer known. ``ticket`` None: the number was lost too (a new one).
        Returns the ticket's id."""
        at = datetime.fromtimestamp(started, CHINA_TZ) if started is not None else None
        t = self.store.keep_ticket(int(ticket) if ticket else None, call_id=call_id, entry_line=line, caller=caller,
                                   rules_version=rules_version, at=at)
        return str(t.id)

    def _call_end(self, ticket: str, outcome: str, survey: str | None) -> None:
        """Through the worker when there is one (the webhook never waits for the database); if
        the job cannot be queued, written here — a rating is never dropped."""
        if self.handoff_queue is not None:
            try:
                enqueue_call_end(self.handoff_queue, int(ticket), outcome, survey)
                return
            except Exception:
                log.exception("ticket %s: call end not queued; writing it now", ticket)
        self.store.record_call_end(int(ticket), outcome, survey=survey)

    def finish(self, ticket: str, agent: str, result: str):
        """The agent console's "done": finish the ticket and queue its hand-off."""
        t = self.store.finish(int(ticket), agent, result)
        if self.handoff_queue is not None:
            enqueue_handoff(self.handoff_queue, t.id)
        return t
