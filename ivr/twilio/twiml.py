"""Steps and turns of :mod:`ivr.flow` rendered as TwiML (``twilio.twiml.voice_response``).

Pure functions, no I/O: the Twilio blueprint (:mod:`ivr.twilio.webhooks`) decides what to say
and where to go; this module only writes it down. URLs are relative to ``/twilio/`` so Twilio
resolves them against the URL it called (and signs them the same way).

Twilio constraints kept here: the TwiML run while a caller waits in ``<Enqueue>`` (its
``waitUrl``) may only use Play, Say, Pause, Gather, Redirect, Leave and Hangup — no Record,
no Dial — so the matter the caller describes is captured by a ``<Start><Recording>`` begun
before ``<Enqueue>`` and by a speech ``<Gather>`` inside the wait.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import zlib
from urllib.parse import urlencode

from twilio.twiml import GenericNode
from twilio.twiml.voice_response import VoiceResponse

LANGUAGE = "zh-CN"
# <Say> in Mandarin needs a voice that speaks it: Twilio's default voice ("man") is not one, and an
# invalid voice/language pair may fail the <Say>. Default: Amazon Polly's 知语 (Twilio's "Polly.Zhiyu",
# language cmn-CN); TWILIO_VOICE / TWILIO_VOICE_LANGUAGE name another (e.g. Google.cmn-CN-Standard-A).
VOICE = os.environ.get("TWILIO_VOICE", "Polly.Zhiyu")
VOICE_LANGUAGE = os.environ.get("TWILIO_VOICE_LANGUAGE", "cmn-CN")
INTAKE_RECORDING = "intake"  # name of the recording of what the caller says while waiting


def hold_queue_name(skill: str, call_id: str, shards: int = 1) -> str:
    """The Twilio queue a caller holds in. The Redis ACD is the real queue; a Twilio queue
    holds at most 5,000 calls, so big groups are spread over ``shards`` holding queues."""
    if shards <= 1:
        return f"hold-{skill}"
    return f"hold-{skill}-{zlib.crc32(call_id.encode()) % shards}"


def conference_name(call_id: str) -> str:
    """One conference per citizen call: agent, experts and sub-centers join and leave it."""
    return f"hotline-{call_id}"


def dial_target(target: str, ticket: str | None = None) -> tuple[str, str]:
    """("sip"|"client"|"number", address) for a transfer or agent endpoint.

    SIP targets get the ticket id as a custom header (``X-Hotline-Ticket``), so the sub-center
    or expert seat opens the same ticket.
    """
    t = target.strip()
    low = t.lower()
    if low.startswith(("sip:", "sips:")):
        if ticket:
            t += ("&" if "?" in t else "?") + f"X-Hotline-Ticket={ticket}"
        return "sip", t
    if low.startswith("client:"):
        return "client", t.split(":", 1)[1]
    digits = t.lstrip("+").replace("-", "").replace(" ", "")
    if digits.isdigit():
        return "number", t
    return "client", t  # a bare Twilio Client identity


def endpoint_address(target: str, ticket: str | None = None) -> str:
    """The ``To`` of a REST call or participant for the same target."""
    kind, address = dial_target(target, ticket)
    return f"client:{address}" if kind == "client" else address


def speak(response: VoiceResponse, steps) -> None:
    """``say`` / ``play`` steps (the router's and the flow's) as ``<Say>`` / ``<Play>``."""
    _speak_into(response, steps)


def _speak_into(node, steps) -> None:
    for step in steps:
        if step["do"] == "play":
            node.play(step["file"])
        elif step["do"] == "say":
            language = step.get("language") or LANGUAGE
            if VOICE and language.lower().startswith(("zh", "cmn")):
                node.say(step["text"], voice=VOICE, language=VOICE_LANGUAGE)
            else:
                node.say(step["text"], language=language)


def stream_token(auth_token: str, call_sid: str) -> str:
    """The media stream's token for this call (HMAC-SHA256 of the CallSid under the auth token):
    only the holder of the auth token can make it, and it opens that call's stream only."""
    return hmac.new(auth_token.encode(), call_sid.encode(), hashlib.sha256).hexdigest()


def enqueue(response: VoiceResponse, skill: str, call_id: str, *, shards: int = 1, record: bool = True,
            stream: tuple[str, str] | None = None) -> None:
    """Hold the caller (hold audio and announcements come from ``wait``), recording what they say;
    with ``stream`` (wss URL, token) their voice also goes live to the media-stream server."""
    if record:
        response.start().recording(name=INTAKE_RECORDING, track="inbound", channels="mono",
                                   recording_status_callback="recording",
                                   recording_status_callback_event="completed")
    if stream:
        url, token = stream
        response.start().stream(url=url, track="inbound_track").parameter(name="token", value=token)
    response.enqueue(hold_queue_name(skill, call_id, shards), wait_url="wait", wait_url_method="POST",
                     action="queue-exit", method="POST")


def dial(response: VoiceResponse, target: str, *, action: str, ticket: str | None = None,
         timeout: int = 30) -> None:
    """``<Dial>`` an emergency line, a sub-center or any endpoint; ``action`` learns how it ended."""
    kind, address = dial_target(target, ticket)
    d = response.dial(action=action, method="POST", timeout=timeout)
    if kind == "sip":
        d.sip(address)
    elif kind == "client":
        d.client(address)
    else:
        d.number(address)


def wait(steps, listen: dict | None, *, hold_music: str | None, tick_s: int) -> str:
    """One round of waiting in ``<Enqueue>``: what to say (inside a ``<Gather>`` when the flow
    listens for speech or a key), then hold audio; Twilio asks ``wait`` again when it ends."""
    r = VoiceResponse()
    if listen and listen.get("for") == "speech":
        g = r.gather(input="speech", language=LANGUAGE, action="heard", method="POST", speech_timeout="auto",
                     timeout=int(listen.get("timeout_s", 5)), action_on_empty_result=False)
        _speak_into(g, steps)
    elif listen and listen.get("for") == "digits" and hold_music:
        # the key can be pressed while the hold music plays: no silent wait for it (≤ 1 s after)
        g = r.gather(input="dtmf", num_digits=1, action="pressed", method="POST", timeout=1)
        _speak_into(g, steps)
        g.play(hold_music)
        return str(r)
    elif listen and listen.get("for") == "digits":
        g = r.gather(input="dtmf", num_digits=1, action="pressed", method="POST",
                     timeout=int(listen.get("timeout_s", 5)))
        _speak_into(g, steps)
    else:
        speak(r, steps)
    if hold_music:
        r.play(hold_music)
    else:
        r.pause(length=tick_s)
    return str(r)


def leave() -> str:
    """Out of the holding queue; the ``<Enqueue>`` action (``queue-exit``) says what comes next."""
    r = VoiceResponse()
    r.leave()
    return str(r)


def conference(call_id: str, *, caller: bool, stop_recording: bool = False, greeting=(), record: bool = False) -> str:
    """Join the per-call conference: the citizen ends it by leaving; agents and transfer targets
    come and go (warm transfer) without ending it. ``record`` (the citizen's join, 质检): the
    conference is recorded from its start (the agent's answer); ``call-recording`` gets the file."""
    r = VoiceResponse()
    if stop_recording:
        stop = r.stop()
        node = GenericNode("Recording", None)
        node.attrs["name"] = INTAKE_RECORDING
        stop.append(node)
    speak(r, greeting)
    d = r.dial(action="conference-ended" if caller else None, method="POST" if caller else None)
    d.conference(conference_name(call_id), beep=False, start_conference_on_enter=True,
                 end_conference_on_exit=caller, participant_label="caller" if caller else "agent",
                 status_callback="conference-events" if caller else None,
                 status_callback_event="start end join leave" if caller else None,
                 wait_url="" if not caller else None,
                 **({"record": "record-from-start", "recording_status_callback_event": "completed",
                     "recording_status_callback": f"call-recording?{urlencode({'call': call_id})}"}
                    if caller and record else {}))
    return str(r)


def survey(steps, timeout_s: int = 8) -> str:
    """The satisfaction survey (按1满意，2基本满意，3不满意), one key."""
    r = VoiceResponse()
    g = r.gather(input="dtmf", num_digits=1, action="survey", method="POST", timeout=timeout_s)
    _speak_into(g, steps)
    r.hangup()
    return str(r)


def callback_survey(call_id: str, offer: int, steps, timeout_s: int = 8) -> str:
    """The survey after a callback: as :func:`survey`, the key sent to ``callback-survey`` with
    the call it rates (the citizen's leg of a callback is not the call's own CallSid)."""
    r = VoiceResponse()
    g = r.gather(input="dtmf", num_digits=1, method="POST", timeout=timeout_s,
                 action=f"callback-survey?{urlencode({'call': call_id, 'n': offer, 'step': 'rate'})}")
    _speak_into(g, steps)
    r.hangup()
    return str(r)


def goodbye(steps=()) -> str:
    r = VoiceResponse()
    speak(r, steps)
    r.hangup()
    return str(r)


def empty() -> str:
    return str(VoiceResponse())


def callback_bridge(call_id: str, offer: int, *, citizen: bool, greeting=()) -> str:
    """A callback's two legs meet in their own conference (``hotline-<call>-cb<n>``): the agent
    waits there (silence, no hold music) until the citizen answers; either side hanging up ends it.
    The agent hanging up first leaves the citizen on the line for the survey."""
    r = VoiceResponse()
    speak(r, greeting)
    # the citizen's <Dial> ends when the agent hangs up: its action asks the satisfaction question
    d = r.dial(action=f"callback-survey?{urlencode({'call': call_id, 'n': offer})}" if citizen else None,
               method="POST" if citizen else None)
    d.conference(f"{conference_name(call_id)}-cb{offer}", beep=False, start_conference_on_enter=citizen,
                 end_conference_on_exit=True, participant_label="caller" if citizen else "agent",
                 wait_url="")
    return str(r)
