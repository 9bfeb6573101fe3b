"""The Twilio switchboard: moves call legs with Twilio's REST API when the ACD or an agent acts.

Twilio's contact-centre pattern: the Redis ACD is the real queue, ``<Enqueue>`` only holds the
caller. When the ACD offers the call to an agent (:meth:`Switchboard.on_offer`), the agent's
endpoint is rung; when the agent answers, the caller is moved out of the holding queue into a
per-call ``<Conference>`` (:mod:`ivr.twilio.agent_legs`). Transfers are then participants of
that conference (:mod:`ivr.twilio.transfers`): three-way (sub-center or expert joins, the agent
may leave = warm transfer), cold (the agent leaves as soon as the target answers), and cancel
(the target is hung up, the caller stays with the agent). Every REST call goes through
``twilio.rest.Client`` built with an injectable ``http_client`` (tests assert the exact requests).

Per-call Twilio facts (the public base URL, leg SIDs, who is in the conference) live in one
Redis hash per citizen call, ``twilio:leg:<CallSid>``; the call's life itself is the
front-end-independent :class:`ivr.flow.CallFlow`'s.
"""
from __future__ import annotations

import json
import logging
import time
from urllib.parse import urlencode

import redis
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from call_routing.acd.callbacks import AGENT_NO_ANSWER, CONNECTED, NO_ANSWER, report_callback_outcome
from call_routing.numbers import mask

from ivr.twilio import twiml
from ivr.twilio.agent_legs import AgentLegs
from ivr.flow.three_way import REFUSALS
from ivr.twilio.transfers import GONE, Transfers  # noqa: F401  (GONE: webhooks.py)

log = logging.getLogger("hotline.twilio")

LEG_TTL_S = 24 * 3600
CALL_ENDED = "感谢您的来电，再见。"


# -- TWILIO_API_BASE: a Twilio-compatible REST API instead of Twilio's (test and demo set-ups) ----
def check_api_base(base: str) -> str:
    """``base`` without its trailing ``/``, or ValueError naming what is wrong: an ``https://`` URL,
    or ``http://`` on this machine's loopback (the live simulator's Twilio, docs/simulate.md)."""
    import ipaddress
    from urllib.parse import urlsplit

    problem = f"TWILIO_API_BASE={base!r} must be an https:// URL or an http:// one on this machine " \
              "(127.0.0.1, ::1, localhost): it is for test and demo set-ups only"
    try:
        parts = urlsplit(base)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (a port that is not a number raises ValueError)
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme == "https" and host:
        return base.rstrip("/")
    if parts.scheme == "http" and host:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return base.rstrip("/")
    raise ValueError(problem)


def api_http_client(base: str | None):
    """The ``http_client`` of ``twilio.rest.Client`` for ``TWILIO_API_BASE``: every request to a
    ``*.twilio.com`` address goes to ``base`` instead (same path and query). None when unset:
    Twilio's own API."""
    if not base:
        return None
    base = check_api_base(base)
    from urllib.parse import urlsplit

    from twilio.http.http_client import TwilioHttpClient

    class ApiBaseHttpClient(TwilioHttpClient):
        def request(self, method, url, *args, **kwargs):
            parts = urlsplit(url)
            if (parts.hostname or "").endswith(".twilio.com"):
                url = base + parts.path + (f"?{parts.query}" if parts.query else "")
            return super().request(method, url, *args, **kwargs)

    return ApiBaseHttpClient()


class Legs:
    """``twilio:leg:<CallSid>``: Twilio-only facts of one citizen call."""

    def __init__(self, client, prefix: str = "twilio:"):
        self.r, self.prefix = client, prefix

    def key(self, call_id: str) -> str:
        return f"{self.prefix}leg:{call_id}"

    def open(self, call_id: str, pipe=None, **fields) -> None:
        own = pipe is None
        if own:
            pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.key(call_id), mapping={k: v for k, v in fields.items() if v is not None})
        pipe.expire(self.key(call_id), LEG_TTL_S)
        if own:
            pipe.execute()

    def get(self, call_id: str) -> dict:
        return {_s(k): _s(v) for k, v in self.r.hgetall(self.key(call_id)).items()}

    def set(self, call_id: str, **fields) -> None:
        clear = [k for k, v in fields.items() if v is None]
        pipe = self.r.pipeline(transaction=False)
        if clear:
            pipe.hdel(self.key(call_id), *clear)
        values = {k: v for k, v in fields.items() if v is not None}
        if values:
            pipe.hset(self.key(call_id), mapping=values)
            pipe.expire(self.key(call_id), LEG_TTL_S)  # a hash written back after a Redis wipe expires too
        pipe.execute()

    def once(self, call_id: str, marker: str) -> bool:
        """True the first time ``marker`` is claimed for this call (Twilio retries callbacks)."""
        return bool(self.r.hsetnx(self.key(call_id), f"once:{marker}", 1))

    def known(self, call_id: str) -> bool:
        return bool(self.r.exists(self.key(call_id)))


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)



class Switchboard(AgentLegs, Transfers):
    """REST side of the Twilio front-end. One per process; thread-safe."""

    def __init__(self, flow, acd, legs: Legs, *, account_sid: str | None, auth_token: str | None,
                 caller_id: str | None, public_url: str | None = None, http_client=None,
                 ring_timeout_s: int | None = None, transfer_timeout_s: int = 30):
        self.flow, self.acd, self.legs = flow, acd, legs
        self.account_sid, self.auth_token = account_sid, auth_token
        self.caller_id = caller_id
        self.public_url = (public_url or "").rstrip("/") or None
        self.http_client = http_client
        self.ring_timeout_s, self.transfer_timeout_s = ring_timeout_s, transfer_timeout_s
        self._client = None

    # -- plumbing ---------------------------------------------------------------------
    @property
    def client(self) -> Client:
        if self._client is None:
            if not (self.account_sid and self.auth_token):
                raise RuntimeError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed to move calls")
            self._client = Client(self.account_sid, self.auth_token, http_client=self.http_client)
        return self._client

    def url(self, call_id: str, path: str, **query) -> str:
        """Absolute callback URL (Twilio REST needs them): the call's own base, else config."""
        base = self.legs.r.hget(self.legs.key(call_id), "base")
        base = _s(base) if base else self.public_url
        if not base:
            raise RuntimeError("TWILIO_PUBLIC_URL is not set and the call has no known base URL")
        return f"{base}/twilio/{path}" + (("?" + urlencode(query)) if query else "")

    def _from(self, leg: dict) -> str:
        return self.caller_id or leg.get("to") or "12345"

    def to_survey(self, call_id: str) -> None:
        """The citizen is alone in the conference: take them to the satisfaction survey (a
        spoken goodbye when the call's state is gone: there is nothing to record a rating on)."""
        state = self._flow_state(call_id)
        if state is None:
            self._say_goodbye(call_id)
            return
        if state.state == "ended":
            return
        try:
            self.client.calls(call_id).update(url=self.url(call_id, "survey-start"), method="POST")
        except TwilioRestException as exc:
            log.info("call %s: no survey, caller already gone (%s)", call_id, exc.code)

    def _say_goodbye(self, call_id: str) -> None:
        try:
            self.client.calls(call_id).update(twiml=twiml.goodbye([{"do": "say", "text": CALL_ENDED}]))
        except TwilioRestException as exc:
            log.info("call %s: caller already gone (%s)", call_id, exc.code)

    def _running_conference(self, call_id: str) -> str | None:
        """The SID of the call's conference if Twilio says it is running (the caller is in it)."""
        found = self.client.conferences.list(friendly_name=twiml.conference_name(call_id), status="in-progress",
                                             limit=1)
        return found[0].sid if found else None

    def in_conference(self, call_id: str) -> bool:
        """:meth:`_running_conference` as a yes/no. When Twilio cannot say, answer False: leaving
        a holding caller queued is recoverable, a goodbye is not."""
        try:
            return self._running_conference(call_id) is not None
        except (TwilioException, RuntimeError, OSError) as exc:  # TwilioException: a page it would not give
            log.warning("call %s: could not ask Twilio for the call's conference (%s)", call_id, exc)
            return False

    def _conference_sid(self, call_id: str, leg: dict) -> str:
        sid = leg.get("conference_sid") or self._running_conference(call_id)
        if not sid:
            raise LookupError(REFUSALS["conference_gone"])
        if sid != leg.get("conference_sid"):
            self.legs.set(call_id, conference_sid=sid)
        return sid

    # -- the citizen hung up ----------------------------------------------------------------
    def caller_gone(self, call_id: str, known: dict | None = None) -> None:
        """Caller's status callback: update flow/ACD/ticket once; stop an agent still ringing.
        ``known``: the number dialed and the caller's (``dialed``, ``caller``: the callback's
        ``To`` and ``From``), from which the flow keeps the ticket of a call Redis lost."""
        if not self.legs.once(call_id, "caller-gone"):
            return
        leg = self.legs.get(call_id)
        self.flow.hung_up(call_id, known)  # also releases or wraps up seats of a three-way still open
        if leg.get("agent_call") and leg.get("agent_in") != "1":
            try:
                self.client.calls(leg["agent_call"]).update(status="canceled")
            except TwilioRestException as exc:
                log.info("call %s: agent leg already ended (%s)", call_id, exc.code)
        log.info("call %s from %s ended", call_id, mask(leg.get("from")))

    def _flow_state(self, call_id: str):
        from ivr.flow import CallNotFound

        try:
            return self.flow.state(call_id)
        except CallNotFound:
            return None


# -- offers made in other processes ---------------------------------------------------------------
class OfferListener:
    """Rings agents for offers made in *other* processes: the ACD ticker (``python -m
    call_routing.acd tick``), another gunicorn worker, the rq worker, the agent API elsewhere.

    One per web process, as daemon threads started lazily by the Twilio blueprint on its first
    request — after gunicorn has forked, so the threads exist in the worker that serves calls,
    whatever starts the app (``python app.py``, gunicorn, a container) and without a separate
    service that could be forgotten or die alone. Two threads:

    * ``acd.follow_offers`` (pub/sub ``acd:offers``), reconnecting after Redis errors;
    * a sweep of the ACD's ringing set every ``sweep_s``: pub/sub is at-most-once (a message
      published while this process was reconnecting is lost), so an offer to a Twilio call that
      no process has rung yet is rung from there. The same thread looks for agents' hang-ups the
      app never acted on (:meth:`Switchboard.missed_hang_ups`, and callers left alone in their
      conference: :meth:`Switchboard.lone_callers`) every ``hang_up_check_s``, in one
      process at a time (``SET twilio:hang-up-check NX PX``).

    Every web process hears every offer; :meth:`Switchboard.on_offer` claims
    ``twilio:ring:<call>:<n>`` with ``SET NX`` before ringing, so each offer rings exactly once
    across all processes (tests/test_twilio_offers.py checks it with separate processes).
    """

    def __init__(self, acd, board: "Switchboard", *, poll_s: float = 1.0, sweep_s: float = 2.0,
                 hang_up_check_s: float = 10.0):
        import threading

        self.acd, self.board = acd, board
        self.poll_s, self.sweep_s, self.hang_up_check_s = poll_s, sweep_s, hang_up_check_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pid = None
        self._threads: list = []

    @property
    def running(self) -> bool:
        import os

        return self._pid == os.getpid() and all(t.is_alive() for t in self._threads)

    def ensure_started(self) -> None:
        if self.running:
            return
        import os
        import threading

        with self._lock:
            if self.running:
                return
            self._stop = threading.Event()  # a fresh event: a forked copy must not share its parent's
            self._pid = os.getpid()
            self._threads = [threading.Thread(target=self._listen, name="twilio-offers", daemon=True),
                             threading.Thread(target=self._sweep_loop, name="twilio-offer-sweep", daemon=True)]
            for t in self._threads:
                t.start()
            log.info("listening for ACD offers made by other processes (pid %s)", self._pid)

    start = ensure_started

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        self._pid = None

    def _handle(self, offer) -> None:
        try:
            self.board.on_offer(offer)
        except Exception:
            log.exception("offer %s/%s to %s could not be handled", offer.call_id, offer.n, offer.agent_id)

    def _listen(self) -> None:
        said = 0.0
        while not self._stop.is_set():
            try:
                self.acd.follow_offers(self._handle, self._stop, self.poll_s)
            except redis.exceptions.ConnectionError as exc:  # a line a minute, not a traceback a second
                if time.monotonic() - said >= 60:
                    said = time.monotonic()
                    log.warning("offer listener: Redis unreachable (%s); retrying every second", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("offer listener failed; restarting it")
                self._stop.wait(1.0)

    def _sweep_loop(self) -> None:
        down = False
        next_check = time.monotonic() + self.hang_up_check_s
        while not self._stop.wait(self.sweep_s):
            try:
                self.sweep()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.hang_up_check_s
                    self.check_hang_ups()
                down = False
            except redis.exceptions.ConnectionError as exc:
                if not down:
                    log.warning("offer sweep: Redis unreachable (%s)", exc)
                down = True
            except Exception:
                log.exception("offer sweep failed")

    def check_hang_ups(self) -> int:
        """:meth:`Switchboard.missed_hang_ups`, unless another process did it in the last
        ``hang_up_check_s`` (one REST request per busy Twilio seat, not one per web process)."""
        legs = self.board.legs
        if not legs.r.set(f"{legs.prefix}hang-up-check", 1, nx=True, px=max(1, int(self.hang_up_check_s * 1000))):
            return 0
        return self.board.missed_hang_ups() + self.board.lone_callers()

    def sweep(self) -> int:
        """Ring offers to Twilio calls that no process has rung (a lost pub/sub message)."""
        from call_routing.acd import Offer

        r, keys = self.acd.redis, self.acd.keys
        ringing = [_s(c) for c in r.zrange(keys.ringing(), 0, -1)]
        if not ringing:
            return 0
        pipe = r.pipeline(transaction=False)
        for call_id in ringing:
            pipe.hmget(keys.call(call_id), "agent", "kind", "offers", "oskill")
            pipe.exists(self.board.legs.key(call_id))
        raw = pipe.execute()
        found = 0
        for i, call_id in enumerate(ringing):
            (agent, kind, n, skill), known = raw[2 * i], raw[2 * i + 1]
            if not known or not agent or _s(kind) not in ("live", "transfer"):
                continue
            offer = Offer(call_id, _s(agent), _s(kind), int(n or 0), _s(skill or ""))
            if r.exists(self.board._ring_key(offer)):
                continue
            found += 1
            self._handle(offer)
        return found


# -- missed-call callbacks (漏接回拨) through Twilio ----------------------------------------------
CALLBACK_AGENT_WHISPER = "回拨来电，{line}，工单{ticket}。正在为您接通市民，请稍候。"
CALLBACK_GREETING = "您好，这里是12345热线，您预约的回拨已接通，坐席将为您服务。"
CALLBACK_GONE = "回拨已取消。"
_FAILED = ("no-answer", "busy", "failed", "canceled")


class TwilioCallbackDialer:
    """The :class:`call_routing.acd.callbacks.CallbackDialer` for Twilio
    (``HOTLINE_CALLBACK_DIALER=ivr.twilio.calls:TwilioCallbackDialer``, in the rq worker).

    Agent first, then the citizen — nobody is rung into silence: ``dial`` places the agent's
    leg (``Calls.json``, ``Url=/twilio/callback-agent``); when the agent answers, that webhook
    places the citizen's leg (``Url=/twilio/callback-citizen``: a short sentence, then both in
    the conference ``hotline-<call>-cb<n>``). Status callbacks (``/twilio/callback-status``)
    report the outcome to the ACD: citizen answered → ``answer``; citizen no answer/busy/failed
    → ``callback_failed`` (retried later from the same place) and the agent's leg is hung up;
    agent no answer → ``no_answer`` (agent paused, callback offered to the next seat). Returns
    ``placed``: the outcome comes later, through those webhooks.

    Configuration from the environment: ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``,
    ``TWILIO_CALLER_ID`` (the 12345 number the citizen sees), ``TWILIO_PUBLIC_URL`` (used
    unless the missed call itself came through Twilio and its base URL is known), ``REDIS_URL``.
    """

    def __init__(self, *, account_sid: str | None = None, auth_token: str | None = None,
                 caller_id: str | None = None, public_url: str | None = None, http_client=None,
                 redis_client=None, ring_timeout_s: int = 30):
        import os

        self.account_sid = account_sid or os.environ.get("TWILIO_ACCOUNT_SID")
        self.auth_token = auth_token or os.environ.get("TWILIO_AUTH_TOKEN")
        self.caller_id = caller_id or os.environ.get("TWILIO_CALLER_ID") or "12345"
        self.public_url = (public_url or os.environ.get("TWILIO_PUBLIC_URL") or "").rstrip("/") or None
        self.http_client = http_client or api_http_client(os.environ.get("TWILIO_API_BASE"))
        if redis_client is None:
            from runtime.redis_conn import redis_client as make_client

            redis_client = make_client(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True)
        self.legs = Legs(redis_client)
        self.ring_timeout_s = ring_timeout_s
        self._client = None

    @property
    def client(self) -> Client:
        if self._client is None:
            if not (self.account_sid and self.auth_token):
                raise RuntimeError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed to place callbacks")
            self._client = Client(self.account_sid, self.auth_token, http_client=self.http_client)
        return self._client

    def dial(self, request) -> str:
        from call_routing.acd.callbacks import PLACED

        endpoint = next(iter(request.agent_endpoints), None) or f"client:{request.agent_id}"
        base = self.legs.r.hget(self.legs.key(request.call_id), "base")
        base = _s(base) if base else self.public_url
        if not base:
            raise RuntimeError("TWILIO_PUBLIC_URL is not set: Twilio could not reach the callback webhooks")
        q = {"call": request.call_id, "n": request.offer, "agent": request.agent_id}
        call = self.client.calls.create(
            to=twiml.endpoint_address(endpoint), from_=self.caller_id,
            url=f"{base}/twilio/callback-agent?{urlencode(q)}",
            status_callback=f"{base}/twilio/callback-status?{urlencode(dict(q, leg='agent'))}",
            status_callback_event=["initiated", "answered", "completed"], timeout=self.ring_timeout_s)
        self.legs.open(request.call_id, base=base, cb_n=request.offer, cb_agent=request.agent_id,
                       cb_agent_call=call.sid, cb_from=self.caller_id)
        log.info("callback %s offer %s: ringing agent %s first (%s), then %s", request.call_id, request.offer,
                 request.agent_id, call.sid, mask(request.number))
        return PLACED


class CallbackLegs:
    """The web side of Twilio callbacks: the webhooks of :class:`TwilioCallbackDialer`'s legs."""

    def __init__(self, board: "Switchboard"):
        self.board, self.acd, self.legs = board, board.acd, board.legs

    def _current(self, call_id: str, n: int) -> dict | None:
        """The ACD call when offer ``n`` of its callback is still the one ringing."""
        call = self.acd.call(call_id)
        if call is None or call["kind"] != "callback" or call["offers"] != n:
            return None
        return call

    def agent_answered(self, call_id: str, n: int, agent_id: str) -> str:
        """The agent took the callback: dial the citizen (once, even if Twilio retries)."""
        call = self._current(call_id, n)
        if call is None or call["state"] != "ringing" or call["agent"] != agent_id:
            return twiml.goodbye([{"do": "say", "text": CALLBACK_GONE}])
        leg = self.legs.get(call_id)
        if self.legs.once(call_id, f"cb-citizen:{n}"):
            base = leg.get("base") or self.board.public_url
            q = {"call": call_id, "n": n}
            citizen = self.board.client.calls.create(
                to=call["caller"], from_=leg.get("cb_from") or self.board.caller_id or "12345",
                url=f"{base}/twilio/callback-citizen?{urlencode(q)}",
                status_callback=f"{base}/twilio/callback-status?{urlencode(dict(q, leg='citizen'))}",
                status_callback_event=["initiated", "answered", "completed"], timeout=30)
            self.legs.set(call_id, cb_citizen_call=citizen.sid)
            log.info("callback %s offer %s: agent %s answered, dialing %s (%s)", call_id, n, agent_id,
                     mask(call["caller"]), citizen.sid)
        text = CALLBACK_AGENT_WHISPER.format(line=call["line"], ticket=call["ticket"] or "待建")
        return twiml.callback_bridge(call_id, n, citizen=False, greeting=[{"do": "say", "text": text}])

    def citizen_answered(self, call_id: str, n: int) -> str:
        call = self._current(call_id, n)
        if call is None or call["state"] not in ("ringing", "connected"):
            return twiml.goodbye([{"do": "say", "text": CALLBACK_GONE}])
        if call["state"] == "ringing" and self.legs.once(call_id, f"cb-answered:{n}"):
            report_callback_outcome(self.acd, call_id, CONNECTED, call["agent"])
        return twiml.callback_bridge(call_id, n, citizen=True, greeting=[{"do": "say", "text": CALLBACK_GREETING}])

    def survey_question(self, call_id: str, n: int) -> str:
        """The citizen's leg of callback ``n`` left its conference with the citizen still on the
        line — the agent hung up first: the satisfaction question, as after a call answered at
        once. Only when the two talked; a call whose state is gone gets a plain goodbye."""
        question = self._after_talk(call_id, n, lambda: self.board.flow.survey_question(call_id))
        if question is None:
            return twiml.goodbye([{"do": "say", "text": CALL_ENDED}])
        return twiml.callback_survey(call_id, n, question.steps, int(question.listen["timeout_s"]))

    def survey_answer(self, call_id: str, n: int, digit: str) -> str:
        """The key pressed after a callback: on the call's ticket and in the KPIs (once)."""
        turn = self._after_talk(call_id, n, lambda: self.board.flow.survey(call_id, digit))
        return twiml.goodbye(turn.steps if turn is not None else [{"do": "say", "text": CALL_ENDED}])

    def _after_talk(self, call_id: str, n: int, step):
        """``step()`` when the citizen and the agent of callback ``n`` talked and the call is
        still known; else None."""
        from ivr.flow import CallNotFound

        if not self.legs.get(call_id).get(f"once:cb-answered:{n}"):
            return None
        try:
            return step()
        except CallNotFound:
            return None

    def status(self, call_id: str, n: int, which: str, status: str) -> None:
        """Status callbacks of both legs (Twilio retries them: each effect happens once)."""
        call = self._current(call_id, n)
        if call is None:
            return
        leg = self.legs.get(call_id)
        if status in _FAILED and call["state"] == "ringing":
            if which == "agent" and not leg.get("cb_citizen_call"):
                if self.legs.once(call_id, f"cb-agent-missed:{n}"):
                    report_callback_outcome(self.acd, call_id, AGENT_NO_ANSWER)  # next seat; agent paused
            elif which == "citizen" and self.legs.once(call_id, f"cb-citizen-missed:{n}"):
                report_callback_outcome(self.acd, call_id, NO_ANSWER)  # retried later from the same place
                self._hang_up(leg.get("cb_agent_call"))
        elif status == "completed" and call["state"] == "connected":
            if self.legs.once(call_id, f"cb-ended:{n}"):
                self.acd.hangup(call_id, "caller" if which == "citizen" else "agent")
        elif status == "completed" and call["state"] == "ringing" and which == "agent":
            # the agent hung up before the citizen answered: stop ringing the citizen, try again later
            if self.legs.once(call_id, f"cb-citizen-missed:{n}"):
                self._hang_up(leg.get("cb_citizen_call"), "canceled")
                report_callback_outcome(self.acd, call_id, NO_ANSWER)

    def _hang_up(self, sid: str | None, status: str = "completed") -> None:
        if not sid:
            return
        try:
            self.board.client.calls(sid).update(status=status)
        except TwilioRestException as exc:
            log.info("callback leg %s already ended (%s)", sid, exc.code)


def pending_steps(raw: str | None) -> list:
    return json.loads(raw) if raw else []
