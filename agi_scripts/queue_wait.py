"""queue_wait: the caller waits in the Redis ACD, hearing hold music and what the flow says.

``AGI(agi://127.0.0.1:4573/queue_wait,${HOTLINE_CALL_ID})``. Ticks about once a second:
agent assigned -> ``HOTLINE_ACTION=transfer`` with the agent's endpoint in
``HOTLINE_TARGET``; position/wait announcements; the invitation to describe the matter
(EAGI: audio from fd 3 streamed to the recognizer, or kept as a WAV for the rq job;
FastAGI: heard live by the AudioSocket server while the loop goes on ticking, with MixMonitor
keeping a WAV, else RECORD FILE + job); the callback offer (key 1). A session lasts at most
``HOTLINE_WAIT_SESSION_S`` seconds and then hands back ``queue``: the dialplan loops, so no
AGI session (or FastAGI thread) is held for a whole long wait.
"""
from __future__ import annotations

import logging
import os
import re
import wave

from ivr.asterisk.agi import EAGI_RATE, Hangup, hand_back, play_steps

log = logging.getLogger("hotline.agi")
MAX_SESSION_S = float(os.environ.get("HOTLINE_WAIT_SESSION_S", "60"))
TICK_S = 1.0
LISTEN_MAX_S = 20
RECORD_MAX_S = 15
QUIET_S = 2  # live listening to the matter ends this long after the caller's last words
HEARD_MAX_CHARS = 500


def file_name(call_id: str) -> str:
    """The call id as a plain file name: a UNIQUEID or ``HOTLINE_CALL_ID`` with ``/`` or ``..``
    must never write a recording outside ``HOTLINE_RECORDINGS``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", call_id or "").lstrip(".") or "call"


def call_recording_name(call_id: str) -> str:
    """The full-call recording's name, without extension (MixMonitor adds ``.part.wav``, then ``.wav``)."""
    return f"{file_name(call_id)}-call"


def handler(session) -> None:
    session.call_id_from_args()
    listen_live(session, session.arg(1))
    wait(session)


def listen_live(session, address: str) -> None:
    """FastAGI: the caller's voice to the product's AudioSocket server while they wait.

    ``address`` is the dialplan's ``HOTLINE_AUDIOSOCKET`` (host:port, passed as the second
    argument; empty: off). Once per call (a new one if the stream died), Asterisk originates an
    AudioSocket channel that spies on this one (``[hotline-listen]``): agi_scripts/audiosocket.py."""
    from .audiosocket import dial_string

    ids = _stream_ids(session)
    if not address or session.audio is not None or ids is None:
        return  # off, EAGI (heard on fd 3 instead), or no shared Redis for the stream's id
    uid = ids.issue(session.call_id)
    if uid is not None:
        channel = session.agi.env.get("agi_channel", "")
        session.agi.execute("EXEC", "Originate", session.agi._quote(dial_string(address, uid, channel)))


def _stream_ids(session):
    """The AudioSocket stream ids (:class:`~agi_scripts.audiosocket.Ids`) on the call flow's
    Redis; None when the flow keeps its calls elsewhere (no stream can find them)."""
    from .audiosocket import Ids

    client = getattr(session.flow.calls, "client", None)
    return None if client is None else Ids(client)


def heard_live(session) -> bool:
    """FastAGI: whether the AudioSocket server hears this caller right now."""
    ids = _stream_ids(session)
    try:
        return ids is not None and ids.live(session.call_id)
    except Exception:  # Redis unreachable: record the matter as without live speech
        return False


def _matter_path(session) -> str:
    """Where the caller's description is kept, without ``.wav`` (the folder made: Asterisk makes none)."""
    os.makedirs(session.services.recordings_dir, exist_ok=True)
    return os.path.join(session.services.recordings_dir, file_name(session.call_id))


def listen_to_matter(session) -> None:
    """The caller describes the matter while the AudioSocket server hears them: no RECORD FILE
    holding the channel for up to 15 s, so a seat freed or an emergency heard meanwhile is
    acted on at the next tick. The hold music stays off until ``QUIET_S`` after the caller's
    last words (the live recogniser's utterances on the flow), ``#``, or ``RECORD_MAX_S``;
    MixMonitor keeps what was said for the ticket (the agent can listen to it), as RECORD FILE did."""
    agi, flow, call_id = session.agi, session.flow, session.call_id
    path = _matter_path(session)
    agi.music(False)
    agi.execute("EXEC", "MixMonitor", agi._quote(f"{path}.part.wav,i(HOTLINE_MATTER),mv {path}.part.wav {path}.wav"))
    heard, said_at = flow.state(call_id).heard, None
    end = flow.clock() + RECORD_MAX_S
    try:
        while flow.clock() < end:
            call = flow.state(call_id)
            if call.state != "waiting":
                break  # moved (an emergency heard), or the caller gone
            if call.heard != heard:  # an utterance ended: the caller may go on after a pause
                heard, said_at = call.heard, flow.clock()
            elif said_at is not None and flow.clock() - said_at >= QUIET_S:
                break  # the matter said, then quiet (as RECORD FILE's silence)
            if flow.queue.status(call_id).state != "waiting":
                break  # a seat is offered (or the call left the queue): the loop carries it out now
            if agi.wait_digit(int(TICK_S * 1000)) == "#":
                break
    finally:
        if not agi.hung_up:
            agi.execute("EXEC", "StopMixMonitor", agi._quote(agi.get_var("HOTLINE_MATTER")))
        _keep_matter(flow, call_id, path + ".wav")  # also when the caller hung up while speaking
    agi.music(True)


def _keep_matter(flow, call_id: str, wav: str) -> None:
    """The description RECORD FILE or MixMonitor kept, to the ticket (its job transcribes it):
    never a recording without its ticket. MixMonitor writes ``NAME.part.wav`` and renames it
    once closed: at StopMixMonitor, or only when the channel is gone after a hang-up (after
    this session ends), so the job waits for the rename (``intake.jobs``)."""
    partial = wav[: -len(".wav")] + ".part.wav"
    if not (os.path.exists(wav) or os.path.exists(partial)):
        log.warning("call %s: no recording of the description was kept (%s)", call_id, wav)
        return
    try:
        flow.recorded(call_id, wav)
    except Exception:  # e.g. Redis unreachable: the file stays in the recordings folder
        log.exception("call %s: the description's recording %s could not be given to its ticket", call_id, wav)


def _leave(session, turn) -> None:
    session.agi.music(False)
    hand_back(session.agi, turn)
    acd = getattr(session.flow.queue, "acd", None)
    if turn.action == "transfer" and turn.reason == "agent" and acd is not None:
        # how long the dialplan rings the agent: the ACD's ring timeout from the rules' queue:
        # settings (this channel's value shadows the [globals] default)
        session.agi.set_var("HOTLINE_AGENT_RING_S", str(int(acd.ring_timeout_s)))
    if turn.action == "transfer" and turn.reason == "agent" and session.flow.records_calls():
        # 质检: [hotline-transfer] records the conversation from the agent's answer (MixMonitor)
        os.makedirs(session.services.recordings_dir, exist_ok=True)
        session.agi.set_var("HOTLINE_RECORD", os.path.join(session.services.recordings_dir,
                                                           call_recording_name(session.call_id)))
    play_steps(session.agi, turn.steps, session.services.prompt_dir)


class _Listener:
    """The caller describing the matter over EAGI: to the recognizer, else to a WAV file."""

    def __init__(self, session, max_s: float = LISTEN_MAX_S):
        self.session = session
        factory = getattr(session.services, "recognizer", None)
        self.recognizer = factory() if factory else None
        self.left = int(max_s * EAGI_RATE) * 2
        self.path = None
        self.wav = None
        if self.recognizer is None:
            os.makedirs(session.services.recordings_dir, exist_ok=True)
            self.path = os.path.join(session.services.recordings_dir, f"{file_name(session.call_id)}.wav")
            self.wav = wave.open(self.path, "wb")
            self.wav.setnchannels(1)
            self.wav.setsampwidth(2)
            self.wav.setframerate(EAGI_RATE)

    def feed(self, pcm: bytes):
        """(done, text): text is what was heard once the caller stopped (None for a recording)."""
        pcm = pcm[: max(0, self.left)]
        self.left -= len(pcm)
        if self.recognizer is not None:
            text = self.recognizer.accept(pcm) if pcm else None
            if text:
                return True, text
            if self.left <= 0:
                return True, self.recognizer.final()
            return False, None
        self.wav.writeframes(pcm)
        if self.left <= 0:
            self.close()
            return True, None
        return False, None

    def close(self) -> None:
        if self.recognizer is not None and hasattr(self.recognizer, "close"):
            self.recognizer.close()  # gives its pooled Vosk recognizer back
        if self.wav is not None:
            self.wav.close()
            self.wav = None
            self.session.flow.recorded(self.session.call_id, self.path)


def wait(session, max_s: float | None = None) -> None:
    agi, flow, call_id = session.agi, session.flow, session.call_id
    prompt_dir = session.services.prompt_dir
    deadline = flow.clock() + (max_s or MAX_SESSION_S)
    listener = None
    agi.music(True)
    try:
        while True:
            turn = flow.wait(call_id)
            if turn.action != "queue":
                return _leave(session, turn)
            listen = turn.listen or {}
            digit = ""
            if turn.steps:
                agi.music(False)
                digit = play_steps(agi, turn.steps, prompt_dir, listen.get("digits", "") if
                                   listen.get("for") == "digits" else "")
                agi.music(True)
            if listen.get("purpose") == "callback":
                digit = digit or agi.wait_digit(int(listen["timeout_s"] * 1000))
                if digit:
                    turn = flow.pressed(call_id, digit)
                    if turn.action != "queue":
                        return _leave(session, turn)
                continue
            if listen.get("purpose") == "matter":
                if session.audio is not None:
                    listener = _Listener(session)
                elif heard_live(session):
                    listen_to_matter(session)
                else:
                    agi.music(False)
                    path = _matter_path(session)
                    try:
                        recorded = agi.record(path, RECORD_MAX_S * 1000, silence_s=2, beep=True)
                    except Hangup:  # gone while describing it: what was said goes to the ticket all the same
                        _keep_matter(flow, call_id, path + ".wav")
                        raise
                    # words already as text: the live simulator's callers (a PBX with its own
                    # recogniser may set it too); acted on now, like speech heard over EAGI, and
                    # before the recording's job, which then never flags a heard ticket for manual entry
                    heard = agi.get_var("HOTLINE_HEARD")[:HEARD_MAX_CHARS]
                    turn = None
                    if heard:
                        agi.set_var("HOTLINE_HEARD", "")
                        turn = flow.heard(call_id, heard)
                    if recorded:
                        flow.recorded(call_id, path + ".wav")
                    if turn is not None and turn.action != "queue":
                        return _leave(session, turn)
                    agi.music(True)
                continue
            if flow.clock() >= deadline:
                hand_back(agi, turn)  # still queued: the dialplan comes straight back
                return
            if session.audio is not None:
                pcm = session.audio.read(TICK_S)
                if session.audio.closed:
                    raise Hangup("EAGI audio closed")
                agi.test_hangup()
                if listener is not None:
                    done, text = listener.feed(pcm)
                    if done:
                        listener.close()
                        listener = None
                        if text:
                            turn = flow.heard(call_id, text)
                            if turn.action != "queue":
                                return _leave(session, turn)
            else:
                digit = agi.wait_digit(int(TICK_S * 1000))
                if digit:
                    turn = flow.pressed(call_id, digit)
                    if turn.action != "queue":
                        return _leave(session, turn)
    finally:
        if listener is not None:
            listener.close()
