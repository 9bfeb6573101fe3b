"""The Twilio front-end: webhooks under ``/twilio/`` answered with TwiML, and the agent's
transfer controls under ``/agent/api/twilio/``.

A call's life is :class:`ivr.flow.CallFlow`'s (shared with Asterisk); this module only turns
Twilio requests into flow events and turns into TwiML (:mod:`ivr.twilio.twiml`), and lets the
:class:`~ivr.twilio.calls.Switchboard` move legs with the REST API. Every path Twilio calls is
flat under ``/twilio/`` so that relative URLs in TwiML resolve to it.

    voice           entry (number's Voice URL)        fallback    number's Fallback URL
    status          number's Status Callback URL      wait        <Enqueue> waitUrl
    heard/pressed   <Gather> in the wait              queue-exit  <Enqueue> action
    emergency       the call moved out of <Enqueue> when ivr.twilio.media heard an emergency
    dial-ended      emergency / sub-center <Dial>     recording   intake recording status
    call-recording  the conference's recording of the whole call (质检)
    agent-answer    agent leg answered                agent-status  agent leg status
    conference-events / conference-ended / survey-start / survey / transfer-status /
    callback-agent / callback-citizen / callback-survey / callback-status

Security: every request must carry a valid ``X-Twilio-Signature`` for the URL Twilio called
(behind a proxy: ``TWILIO_PUBLIC_URL``, or ``X-Forwarded-Proto/Host`` when
``TWILIO_TRUST_PROXY``); otherwise 403. Without ``TWILIO_AUTH_TOKEN`` nothing under
``/twilio/`` is served (503) unless ``TWILIO_VALIDATE`` is explicitly off (development).
Failure: an exception in a call webhook still answers TwiML that queues the caller for the
general seats; ``fallback`` does the same when Twilio could not reach ``voice`` at all.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import BadRequest
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from call_routing.numbers import mask
from intake.callback_jobs import rq_dispatch

from ivr.twilio import twiml
from ivr.flow import CallNotFound
from ivr.twilio.calls import CALL_ENDED, GONE, CallbackLegs, Legs, OfferListener, Switchboard, api_http_client

log = logging.getLogger("hotline.twilio")

bp = Blueprint("twilio", __name__, url_prefix="/twilio")
HOLD_MUSIC_PATH = "/media/hold-music.wav"

SETTINGS = {  # config key: default (also read from the environment)
    "TWILIO_ACCOUNT_SID": None,
    "TWILIO_VALIDATE": True,  # False only for local development without Twilio
    "TWILIO_TRUST_PROXY": False,  # honour X-Forwarded-Proto / X-Forwarded-Host
    "TWILIO_PUBLIC_URL": None,  # e.g. https://hotline.example.gov.cn — wins over everything
    "TWILIO_CALLER_ID": None,  # the number agent / transfer legs are placed from
    "TWILIO_HOLD_MUSIC": None,  # URL of a hold clip (~10 s); default: a short pause per round
    "TWILIO_WAIT_TICK_S": 5,  # how often a waiting caller's wait URL is asked again
    "TWILIO_QUEUE_SHARDS": 1,  # holding queues per skill (a Twilio queue holds ≤ 5,000 calls)
    "TWILIO_OFFER_LISTENER": True,  # ring agents for offers made in other processes (ticker, workers)
    # where a RecordingUrl may point: host[:port] (https), or http://host[:port]; comma-separated
    "TWILIO_RECORDING_HOSTS": "api.twilio.com",
    # wss://…/twilio/media: waiting callers' voice streamed live to ivr.twilio.media; unset: not streamed
    "TWILIO_MEDIA_STREAM_URL": None,
    # a Twilio-compatible REST API instead of https://api.twilio.com: test and demo set-ups only
    # (python -m tools.simulate --live --front twilio); https, or http on this machine's loopback
    "TWILIO_API_BASE": None,
}
_FALSE = ("0", "false", "no", "off")


def _flag(value) -> bool:
    return not (value is False or (isinstance(value, str) and value.strip().lower() in _FALSE))


def init_app(app, services=None) -> None:
    """Register the blueprints; build the flow (shared with Asterisk) and the switchboard."""
    for key, default in SETTINGS.items():
        if app.config.get(key) is None:
            app.config[key] = os.environ.get(key, default)
    if services is None:
        from call_routing.acd import ACD

        from ivr.services import AcdQueue, build

        acd = app.extensions.get("acd")
        if acd is None:
            from runtime.redis_conn import redis_client

            acd = app.extensions["acd"] = ACD(redis_client(app.config["REDIS_URL"], decode_responses=True),
                                              app.extensions["rules"], dispatch_callback=rq_dispatch)
        queue = AcdQueue(acd)
        services = build({"REDIS_URL": app.config["REDIS_URL"], "rules_store": app.extensions["rules"],
                          "queue": queue, **app.config.get("HOTLINE_SERVICES", {})})
    else:
        acd = services.flow.queue.acd
    app.extensions.setdefault("warm_up", []).append(services.warm)  # run once a worker has started (runtime/serving.py)
    legs = Legs(acd.redis)
    board = Switchboard(services.flow, acd, legs, account_sid=app.config["TWILIO_ACCOUNT_SID"],
                        auth_token=app.config["TWILIO_AUTH_TOKEN"], caller_id=app.config["TWILIO_CALLER_ID"],
                        public_url=app.config["TWILIO_PUBLIC_URL"],
                        http_client=app.config.get("TWILIO_HTTP_CLIENT") or api_http_client(app.config["TWILIO_API_BASE"]))
    acd.on_offer.append(board.on_offer)
    validate = _flag(app.config["TWILIO_VALIDATE"])
    token = app.config.get("TWILIO_AUTH_TOKEN")
    if validate and not token:
        log.info("TWILIO_AUTH_TOKEN is not set: /twilio/ webhooks are refused (set it, or TWILIO_VALIDATE=0 "
                  "for development only)")
    elif not validate:
        log.warning("Twilio signature validation is OFF: development only, never on a public address")
    app.extensions["twilio"] = {
        "flow": services.flow, "board": board, "legs": legs, "callbacks": CallbackLegs(board),
        "listener": OfferListener(acd, board), "listen": _flag(app.config["TWILIO_OFFER_LISTENER"]),
        "rules": app.extensions["rules"],
        "validate": validate, "validator": RequestValidator(token) if token else None,
        "trust_proxy": _flag(app.config["TWILIO_TRUST_PROXY"]) if app.config["TWILIO_TRUST_PROXY"] else False,
        "public_url": (app.config["TWILIO_PUBLIC_URL"] or "").rstrip("/") or None,
        # the project's own hold music unless the site names its clip (served below, no signature:
        # Twilio fetches media with a plain GET)
        "hold_music": app.config["TWILIO_HOLD_MUSIC"] or HOLD_MUSIC_PATH, "tick_s": int(app.config["TWILIO_WAIT_TICK_S"]),
        "shards": int(app.config["TWILIO_QUEUE_SHARDS"]),
        "recording_hosts": ",".join(filter(None, (app.config["TWILIO_RECORDING_HOSTS"],
                                                  _api_host(app.config["TWILIO_API_BASE"])))),
        "stream_url": app.config["TWILIO_MEDIA_STREAM_URL"] or None, "token": token,
    }
    app.register_blueprint(bp)
    app.add_url_rule(HOLD_MUSIC_PATH, "twilio_hold_music", hold_music)


def _api_host(api_base: str | None) -> str:
    """``TWILIO_API_BASE``'s host as ``TWILIO_RECORDING_HOSTS`` writes it: recordings live on
    the API's host, as on api.twilio.com."""
    if not api_base:
        return ""
    parts = urlsplit(api_base)
    return f"http://{parts.netloc}" if parts.scheme == "http" else parts.netloc


def _tw() -> dict:
    return current_app.extensions["twilio"]


# -- security ------------------------------------------------------------------------------
def _base_url() -> str:
    """scheme://host[/script_root] of the URL Twilio called."""
    tw = _tw()
    if tw["public_url"]:
        return tw["public_url"]
    scheme, host = request.scheme, request.host
    if tw["trust_proxy"]:
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
    return f"{scheme}://{host}{request.script_root}"


def _called_url() -> str:
    qs = request.query_string.decode("latin-1")
    return _base_url() + request.path + (f"?{qs}" if qs else "")


@bp.before_request
def _check_signature():
    tw = _tw()
    if tw["listen"] and not tw["listener"].running:  # first request of this (forked) worker
        tw["listener"].ensure_started()
    if not tw["validate"]:
        return None
    if tw["validator"] is None:
        return Response("Twilio webhooks are disabled: TWILIO_AUTH_TOKEN is not configured\n", 503)
    signature = request.headers.get("X-Twilio-Signature", "")
    url = _called_url()
    params = request.form if request.method == "POST" else {}
    if not signature or not tw["validator"].validate(url, params, signature):
        # what a stranger sent, quoted and cut short: no forged log lines, no megabyte of log per request
        log.warning("refused unsigned or forged Twilio request to %.200r from %s (call %.70r)", url,
                    request.remote_addr, request.form.get("CallSid", "-"))
        return Response("invalid Twilio signature\n", 403)
    return None


# -- answering ------------------------------------------------------------------------------
def _xml(body: str) -> Response:
    return Response(body, mimetype="application/xml")


def _general_queue(call_id: str | None) -> str:
    """The safe answer: the caller waits for the general seats (the wait URL registers them)."""
    rules = _tw()["rules"].current()
    skill = rules.hotline.skill
    if call_id:
        try:
            _ensure_call(call_id, rules.hotline.number)
        except Exception:
            log.exception("call %s: could not register the call; the wait URL will retry", call_id)
    r = VoiceResponse()
    twiml.enqueue(r, skill, call_id or "unknown", shards=_tw()["shards"], record=False)
    return str(r)


def _caller_gone(call_id: str) -> None:
    """The citizen's call ended. What Twilio sends with it — the number dialed and the caller's —
    lets the flow keep the ticket of a call whose state and draft Redis lost (restarted empty).
    With Redis unreachable the report fails (Twilio does not send it again): the ticket is
    written from those facts all the same, before the webhook answers as for any failure."""
    from ivr.services import report_end

    known = {"dialed": request.form.get("To", ""), "caller": request.form.get("From")}
    report_end(_tw()["flow"], _tw()["board"].caller_gone, call_id, known)


def _ensure_call(call_id: str, dialed: str | None = None) -> None:
    """Make the flow know a call that reached us only through a failure path."""
    flow = _tw()["flow"]
    try:
        flow.state(call_id)
    except CallNotFound:
        rules = _tw()["rules"].current()
        flow.start(call_id, dialed or rules.hotline.number, request.form.get("From"))
    if not _tw()["legs"].known(call_id):  # without it no agent leg can be rung for this caller
        _tw()["legs"].open(call_id, base=_base_url(), to=request.form.get("To", ""), **{"from": request.form.get("From", "")})


# -- what Twilio sends ---------------------------------------------------------------------------
_CALL_SID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NUMBER_FIELDS = ("From", "To", "Caller", "Called")
MAX_NUMBER_CHARS = 128  # E.164 is 16; SIP URIs with parameters stay well under this


def _check_parameters() -> str | None:
    """What is wrong with the request's call identity, or None. A number field that is not a
    plausible number (too long, control characters) is dropped — the call goes on as from an
    unknown number — rather than kept as the ticket's caller or written to the logs."""
    for sid in (request.form.get("CallSid"), request.args.get("call")):
        if sid is not None and not _CALL_SID.fullmatch(sid):
            return "CallSid is not a call id (letters, digits, '_', '.', '-'; at most 64)"
    bad = [k for k in _NUMBER_FIELDS if k in request.form and (len(request.form[k]) > MAX_NUMBER_CHARS
                                                                 or not request.form[k].isprintable())]
    if bad:
        log.warning("Twilio %s for call %s: %s not a plausible number: ignored", request.path,
                    request.form.get("CallSid"), ", ".join(bad))
        request.form = ImmutableMultiDict([(k, v) for k, v in request.form.items(multi=True) if k not in bad])
    return None


def _offer_number() -> int:
    raw = request.args.get("n", "0")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6):
        raise BadRequest("parameter n must be a whole number")
    return int(raw)


def recording_url_allowed(url: str, hosts: str) -> bool:
    """``RecordingUrl`` points at one of ``hosts`` (``host[:port]`` over https, or
    ``http://host[:port]``): the worker downloads it, so no other address is ever fetched."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return False
    for entry in (h.strip().lower() for h in hosts.split(",") if h.strip()):
        scheme, _, host = entry.rpartition("://")
        if parts.netloc.lower() == host and parts.scheme == (scheme or "https"):
            return True
    return False


def call_webhook(kind: str):
    """A webhook whose failure must still leave the caller on the way to a seat.

    ``kind``: ``call`` (a TwiML document for the call: failure = general queue), ``wait``
    (inside <Enqueue>: failure = keep holding), ``leg`` (the TwiML of a leg at its end or of
    a leg placed by the app — survey answer, agent and callback legs: failure = a spoken
    goodbye, never a call left without TwiML), ``event`` (status callbacks: failure = 204
    after logging; Twilio retries)."""
    def wrap(view):
        @functools.wraps(view)
        def handler(*args, **kwargs):
            problem = _check_parameters()
            if problem:
                log.warning("Twilio %s refused: %s", request.path, problem)
                return Response(problem + "\n", 400)
            call_id = request.form.get("CallSid") or request.args.get("call")
            try:
                return view(*args, **kwargs)
            except BadRequest as exc:  # a parameter missing or malformed: one line, no traceback
                log.warning("Twilio %s for call %s: %s", request.path, call_id, exc.description)
                if kind in ("call", "event") or not call_id:
                    return Response(f"{exc.description}\n", 400)
                if kind == "wait":
                    return _xml(twiml.wait([], None, hold_music=_tw()["hold_music"], tick_s=_tw()["tick_s"]))
                return _xml(twiml.goodbye([{"do": "say", "text": CALL_ENDED}]))
            except Exception:
                log.exception("Twilio %s webhook failed for call %s from %s", request.path, call_id,
                              mask(request.form.get("From")))
                if kind == "call":
                    return _xml(_general_queue(call_id))
                if kind == "wait":
                    return _xml(twiml.wait([], None, hold_music=_tw()["hold_music"], tick_s=_tw()["tick_s"]))
                if kind == "leg":
                    return _xml(twiml.goodbye([{"do": "say", "text": CALL_ENDED}]))
                return Response(status=204)
        return handler
    return wrap


def _render_turn(turn, call_id: str) -> str:
    """A flow turn in an ordinary (not waiting) call context, rendered by ``twilio.twiml``."""
    r = VoiceResponse()
    twiml.speak(r, turn.steps)
    if turn.action == "queue":
        twiml.enqueue(r, turn.skill, call_id, shards=_tw()["shards"], stream=_stream(call_id))
    elif turn.action == "transfer":
        twiml.dial(r, turn.target, action="dial-ended", ticket=turn.ticket)
    elif turn.action == "survey":
        return twiml.survey(turn.steps)
    else:
        r.hangup()
    return str(r)


def _stream(call_id: str) -> tuple[str, str] | None:
    """(wss URL, the call's token) when waiting callers are heard live (TWILIO_MEDIA_STREAM_URL)."""
    tw = _tw()
    if not (tw["stream_url"] and tw["token"]):
        return None
    return tw["stream_url"], twiml.stream_token(tw["token"], call_id)


def remember_emergency(legs, call_id: str, turn) -> None:
    """An emergency heard while waiting: what to say before dialing it, for ``emergency`` or
    ``queue-exit`` (whichever takes the call out of ``<Enqueue>``)."""
    legs.set(call_id, pending="transfer")
    legs.r.set(f"twilio:pending:{call_id}", _steps_json(turn.steps), ex=3600)


def _emergency_dial(call_id: str) -> str:
    state = _tw()["flow"].state(call_id)
    r = VoiceResponse()
    twiml.speak(r, _steps_load(_tw()["legs"].r.get(f"twilio:pending:{call_id}")))
    twiml.dial(r, state.target, action="dial-ended", ticket=state.ticket)
    return str(r)


def _start_call() -> str:
    """``/voice``: route the call, open its ticket, remember the leg; the TwiML to answer.
    The ticket draft, the call state and the leg go to Redis in one pipeline (one round trip)."""
    f, legs = request.form, _tw()["legs"]
    call_id = f["CallSid"]
    pipe = legs.r.pipeline(transaction=False)
    turn = _tw()["flow"].start(call_id, f.get("To", ""), f.get("From"), pipe=pipe)
    legs.open(call_id, pipe=pipe, base=_base_url(), to=f.get("To", ""), **{"from": f.get("From", "")})
    pipe.execute()
    return _render_turn(turn, call_id)


@bp.post("/voice")
@call_webhook("call")
def voice():
    return _xml(_start_call())


@bp.post("/fallback")
@call_webhook("call")
def fallback():
    """Twilio could not use ``voice`` (error or 15 s timeout): general seats, no questions."""
    log.error("Twilio fallback for call %s from %s: %s %s", request.form.get("CallSid"),
              mask(request.form.get("From")), request.form.get("ErrorCode"), request.form.get("ErrorUrl"))
    return _xml(_general_queue(request.form.get("CallSid")))


@bp.post("/wait")
@call_webhook("wait")
def wait():
    call_id = request.form["CallSid"]
    flow, tw = _tw()["flow"], _tw()
    try:
        if not tw["legs"].known(call_id):  # reached the queue through a failure path, or Redis restarted
            raise CallNotFound(call_id)     # empty under it: register the call (and its leg) now
        turn = flow.wait(call_id)
    except CallNotFound:
        if tw["board"].in_conference(call_id):
            # a wait request sent before an agent's answer moved the caller into their conference,
            # answered after Redis lost the call's facts: Twilio discards this answer, and queueing
            # the call again would ring a second agent for a caller already talking to one
            log.warning("call %s: a late wait request for a caller already in their conference; not queued again",
                        call_id)
            return _xml(twiml.wait([], None, hold_music=tw["hold_music"], tick_s=tw["tick_s"]))
        _ensure_call(call_id)
        turn = flow.wait(call_id)
    if turn.action == "hangup":
        return _xml(twiml.goodbye(turn.steps))
    # "transfer" to an agent: the switchboard is already ringing them; keep holding
    return _xml(twiml.wait(turn.steps if turn.action == "queue" else [], turn.listen,
                           hold_music=tw["hold_music"], tick_s=tw["tick_s"]))


@bp.post("/heard")
@call_webhook("wait")
def heard():
    call_id = request.form["CallSid"]
    turn = _tw()["flow"].heard(call_id, request.form.get("SpeechResult", ""), "twilio-speech")
    if turn.action == "transfer":  # emergency: out of the queue, queue-exit dials it
        remember_emergency(_tw()["legs"], call_id, turn)
        return _xml(twiml.leave())
    return _xml(twiml.empty())


@bp.post("/pressed")
@call_webhook("wait")
def pressed():
    turn = _tw()["flow"].pressed(request.form["CallSid"], request.form.get("Digits", ""))
    if turn.action == "hangup":
        return _xml(twiml.goodbye(turn.steps))
    return _xml(twiml.empty())


@bp.post("/queue-exit")
@call_webhook("call")
def queue_exit():
    """<Enqueue> action: why the caller left the holding queue."""
    call_id, result = request.form["CallSid"], request.form.get("QueueResult", "")
    if result == "leave":
        return _xml(_emergency_dial(call_id))
    if result == "hangup":
        _caller_gone(call_id)
        return _xml(twiml.empty())
    if result in ("queue-full", "system-error", "error"):
        log.error("call %s: Twilio holding queue said %s; holding in the next queue", call_id, result)
        state = _tw()["flow"].state(call_id)
        r = VoiceResponse()
        r.enqueue(f"overflow-{state.skill}", wait_url="wait", action="queue-exit")
        return _xml(str(r))
    return _xml(twiml.empty())  # bridged / redirected: moved to the conference


@bp.post("/emergency")
@call_webhook("call")
def emergency():
    """The call redirected here (REST) by the media-stream server: an emergency was heard."""
    call_id = request.form["CallSid"]
    state = _tw()["flow"].state(call_id)
    if state.state != "transferring" or state.target_kind != "emergency":  # never a call without TwiML
        log.warning("call %s: moved to emergency with none pending; back in line", call_id)
        r = VoiceResponse()
        twiml.enqueue(r, state.skill or _tw()["rules"].current().hotline.skill, call_id, shards=_tw()["shards"],
                      record=False)
        return _xml(str(r))
    return _xml(_emergency_dial(call_id))


@bp.post("/dial-ended")
@call_webhook("call")
def dial_ended():
    """Emergency or sub-center <Dial> ended: answered → survey; failed → the fallback seats."""
    call_id = request.form["CallSid"]
    if request.form.get("CallStatus") in GONE:
        _caller_gone(call_id)
        return _xml(twiml.empty())
    turn = _tw()["flow"].transfer_ended(call_id, request.form.get("DialCallStatus", "failed"))
    return _xml(_render_turn(turn, call_id))


@bp.post("/recording")
@call_webhook("event")
def recording():
    """What the caller said while waiting: to the ticket (transcribed by an rq job)."""
    f = request.form
    call_id = f.get("CallSid")
    if f.get("RecordingStatus") == "completed" and f.get("RecordingUrl"):
        if not recording_url_allowed(f["RecordingUrl"], _tw()["recording_hosts"]):
            log.warning("call %s: RecordingUrl on a host not in TWILIO_RECORDING_HOSTS: not fetched", call_id)
            return Response(status=204)
        if _tw()["legs"].once(call_id, f"recording:{f.get('RecordingSid')}"):
            _tw()["flow"].recorded(call_id, f["RecordingUrl"])
    return Response(status=204)


@bp.post("/call-recording")
@call_webhook("event")
def call_recording():
    """The conference's recording of the whole conversation (质检, ``?call=`` the citizen's call):
    stored with the ticket and transcribed into its history (rq job)."""
    f, call_id = request.form, request.args.get("call", "")
    if call_id and f.get("RecordingStatus") == "completed" and f.get("RecordingUrl"):
        if not recording_url_allowed(f["RecordingUrl"], _tw()["recording_hosts"]):
            log.warning("call %s: RecordingUrl on a host not in TWILIO_RECORDING_HOSTS: not fetched", call_id)
            return Response(status=204)
        if _tw()["legs"].once(call_id, f"call-recording:{f.get('RecordingSid')}"):
            _tw()["flow"].call_recorded(call_id, f["RecordingUrl"])
    return Response(status=204)


@bp.post("/status")
@call_webhook("event")
def status():
    """The number's status callback: the citizen's call ended (any reason). Idempotent."""
    if request.form.get("CallStatus") in GONE:
        _caller_gone(request.form["CallSid"])
    return Response(status=204)


@bp.post("/agent-answer")
@call_webhook("leg")
def agent_answer():
    body = _tw()["board"].agent_answered(request.args["call"], request.args.get("agent", ""),
                                         request.form.get("CallSid", ""))
    return _xml(body)


@bp.post("/agent-status")
@call_webhook("event")
def agent_status():
    f = request.form
    _tw()["board"].agent_leg_ended(request.args["call"], f.get("CallStatus", ""), f.get("CallSid"))
    return Response(status=204)


@bp.post("/transfer-status")
@call_webhook("event")
def transfer_status():
    _tw()["board"].transfer_status(request.args["call"], request.form.get("CallStatus", ""))
    return Response(status=204)


@bp.post("/callback-agent")
@call_webhook("leg")
def callback_agent():
    """A callback's agent leg answered (:class:`~ivr.twilio.calls.TwilioCallbackDialer`)."""
    return _xml(_tw()["callbacks"].agent_answered(request.args["call"], _offer_number(),
                                                  request.args.get("agent", "")))


@bp.post("/callback-citizen")
@call_webhook("leg")
def callback_citizen():
    """The citizen answered the callback: a short sentence, then the conference with the agent."""
    return _xml(_tw()["callbacks"].citizen_answered(request.args["call"], _offer_number()))


@bp.post("/callback-survey")
@call_webhook("leg")
def callback_survey():
    """The citizen's <Dial> of a callback ended (``step`` absent), or the survey key (``step=rate``)."""
    call_id, n = request.args["call"], _offer_number()
    callbacks = _tw()["callbacks"]
    if request.args.get("step") == "rate":
        return _xml(callbacks.survey_answer(call_id, n, request.form.get("Digits", "")))
    if request.form.get("CallStatus") in GONE:  # the citizen hung up: nobody to ask
        return _xml(twiml.empty())
    return _xml(callbacks.survey_question(call_id, n))


@bp.post("/callback-status")
@call_webhook("event")
def callback_status():
    _tw()["callbacks"].status(request.args["call"], _offer_number(), request.args.get("leg", ""),
                              request.form.get("CallStatus", ""))
    return Response(status=204)


@bp.post("/conference-events")
@call_webhook("event")
def conference_events():
    f = request.form
    name = f.get("FriendlyName", "")
    if name.startswith("hotline-") and f.get("ConferenceSid"):
        _tw()["legs"].set(name[len("hotline-"):], conference_sid=f["ConferenceSid"])
    return Response(status=204)


@bp.post("/conference-ended")
@call_webhook("call")
def conference_ended():
    """The caller's <Dial><Conference> ended: the caller hung up, or the conference was ended."""
    call_id = request.form["CallSid"]
    if request.form.get("CallStatus") in GONE:
        _caller_gone(call_id)
        return _xml(twiml.empty())
    return survey_start()


@bp.post("/survey-start")
@call_webhook("call")
def survey_start():
    turn = _tw()["flow"].transfer_ended(request.form["CallSid"], "completed")
    return _xml(_render_turn(turn, request.form["CallSid"]))


@bp.post("/survey")
@call_webhook("leg")
def survey():
    turn = _tw()["flow"].survey(request.form["CallSid"], request.form.get("Digits", ""))
    return _xml(twiml.goodbye(turn.steps))


def _steps_json(steps) -> str:
    import json

    return json.dumps([dict(s) for s in steps], ensure_ascii=False)


def _steps_load(raw) -> list:
    import json

    return json.loads(raw) if raw else []


def hold_music():
    """The project's hold music (generated, licence-free: :func:`ivr.prompts.render_hold_music`),
    a 10-s clip Twilio plays round after round while the caller waits."""
    import tempfile
    from pathlib import Path

    from flask import send_file

    from ivr.prompts import render_hold_music

    path = render_hold_music(Path(tempfile.gettempdir()) / "hotline-media", seconds=10.0)
    return send_file(path, mimetype="audio/wav", max_age=86400)
