"""Builds the :class:`~ivr.flow.CallFlow` of a process from its configuration.

``REDIS_URL`` set: the Redis ACD (:mod:`call_routing.acd`) and call state in Redis, shared by
every AGI script, FastAGI server and web worker. Unset: in-process stand-ins (one FastAGI
server, demos, tests) — said once in the log. Tickets use :mod:`intake.tickets` when it is
installed, and what was heard is classified by :mod:`ivr.prefill` for domain re-queueing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from call_routing.rules_store import RulesStore

from call_routing.acd.core import LEAVE_REASONS
from intake.callback_jobs import rq_dispatch
from runtime.redis_conn import redis_client, sentinels_from_env

from .prefill import PrefillClassifier
from .flow import CallFlow, MemoryCalls, MemoryQueue, MemoryTickets, QueueStatus, RedisCalls

log = logging.getLogger("hotline.services")


def report_end(flow, report, call_id: str, known, outcome: str | None = None, retry_s: float = 0.0) -> None:
    """A front-end's report that the caller is gone, ``report(call_id, known)`` (the flow's
    ``hung_up`` or ``fallback``, or the Twilio switchboard's ``caller_gone``), for both
    front-ends. While Redis cannot be reached it is tried again every half second for
    ``retry_s``; given up, the ticket is written all the same from what the front-end holds
    (``known``: :meth:`~ivr.flow.CallFlow.ended_unreachable` — Redis may come back empty) and the
    error raised, for the front-end to answer as for any failure. ``outcome``: what the report
    says of the end (``fallback``), for that ticket."""
    import time

    from redis.exceptions import ConnectionError as RedisDown, TimeoutError as RedisTimeout

    deadline = time.monotonic() + retry_s
    while True:
        try:
            return report(call_id, known)
        except (RedisDown, RedisTimeout):
            if time.monotonic() >= deadline:
                flow.ended_unreachable(call_id, known, outcome)
                raise
            log.warning("call %s ended while Redis is unreachable: telling the call flow again in 0.5 s", call_id)
            time.sleep(0.5)


class AcdQueue:
    """:class:`~ivr.flow.QueuePort` over the Redis ACD."""

    def __init__(self, acd):
        self.acd = acd

    def enqueue(self, call_id, *, skill, line, caller, ticket, priority=0):
        from call_routing.acd import ACDError

        rules = self.acd.rules
        if skill not in rules.skills:
            # routed by rules an admin has since edited, the group removed meanwhile: the general
            # seats answer (a caller is never refused a queue for an edit made while they listened)
            log.warning("call %s: seat group %s is no longer in the rules (%s): queued for %s", call_id, skill,
                        rules.version, rules.hotline.skill)
            skill = rules.hotline.skill
        try:
            self.acd.enqueue(skill, line, caller, ticket=ticket, call_id=call_id, priority=priority)
        except ACDError:
            call = self.acd.call(call_id)
            if call is None or call["state"] not in ("waiting", "ringing", "connected"):
                raise
            # already in line (a replayed entry webhook, a call registered again): keep its place
            log.warning("call %s is already queued (%s): keeping its place", call_id, call["state"])

    def status(self, call_id):
        call = self.acd.call(call_id)
        if call is None:  # never queued, or lost with a Redis that restarted without its data
            return QueueStatus("unknown")
        if call["state"] in ("completed", "abandoned", "failed", "left", "resumed"):
            return QueueStatus("gone")
        if call["kind"] == "callback":
            return QueueStatus("callback")
        if call["state"] == "ringing":
            self.acd.offer_seen(call_id, call["offers"])  # the caller's own loop rings the seat (Asterisk)
            agent = self.acd.agent(call["agent"]) or {}
            endpoints = agent.get("endpoints") or []
            return QueueStatus("offered", 0, 0.0, call["agent"], endpoints[0] if endpoints else None)
        if call["state"] == "connected":
            return QueueStatus("connected", 0, 0.0, call["agent"])
        pos = self.acd.position(call_id, caller_there=True)  # the caller's own waiting loop asks
        if pos is None:
            return QueueStatus("gone")
        return QueueStatus("waiting", max(0, pos.position - 1), pos.estimated_wait_s)

    def requeue(self, call_id, skill):
        self.acd.requeue(call_id, skill)

    def prioritise(self, call_id, emergency):
        self.acd.prioritise(call_id, emergency)

    def no_answer(self, call_id):
        self.acd.no_answer(call_id)

    def connected(self, call_id):
        self.acd.answer(call_id)

    def completed(self, call_id, by="agent"):
        self.acd.hangup(call_id, by)

    def leave(self, call_id, reason):
        """``abandoned``: the caller hung up (a missed-call callback may keep their place);
        anything else (``emergency``, ``fallback``, …) leaves on purpose: no callback, not lost."""
        if reason == "abandoned":
            self.acd.hangup(call_id, "caller")
        else:
            self.acd.leave(call_id, reason if reason in LEAVE_REASONS else "transfer")

    def survey(self, call_id, line, digit):
        self.acd.survey(call_id, digit, line)

    def request_callback(self, call_id, number):
        self.acd.request_callback(call_id)

    # -- three-way transfers: expert seats only through the ACD (reserved atomically) -------------
    def reserve_expert(self, call_id, skill):
        """``acd.transfer(call, skill, three_way=True)``: the seat offered in that same round trip
        as ``(agent, endpoint or None)``; ``no_seat`` (nothing changed) → None."""
        result = self.acd.transfer(call_id, skill, three_way=True)
        offer = next((o for o in result.offers if o.call_id == call_id), None)
        if result.status != "ok":
            return None
        if offer is None:  # the free seat went to a call already waiting there: give this one back
            self.acd.take_back(call_id, "cancelled")
            return None
        endpoints = (self.acd.agent(offer.agent_id) or {}).get("endpoints") or []
        return offer.agent_id, (endpoints[0] if endpoints else None)

    def expert_answered(self, call_id, agent):
        self.acd.answer(call_id, agent)

    def take_back(self, call_id, reason):
        self.acd.take_back(call_id, reason)

    def end_three_way(self, agent):
        self.acd.end_three_way(agent)


@dataclass
class Services:
    flow: CallFlow
    rules: RulesStore
    prompt_dir: str
    recordings_dir: str
    recognizer: object = None  # callable() -> streaming recognizer, when speech is installed

    def warm(self) -> None:
        """The pre-fill learned (or loaded from the machine's cache: seconds) now, before the
        first caller's words; every server calls it as it starts."""
        warm = getattr(self.flow.classify, "warm", None)
        if warm is not None:
            warm()


def _tickets(cfg: dict | None = None):
    if os.environ.get("HOTLINE_TICKETS") == "memory":  # development, and benchmarks of routing alone
        return MemoryTickets()
    from intake.jobs import CallTickets

    # the same Redis as the call state: ticket drafts travel in the flow's pipeline
    return CallTickets.from_config({"REDIS_URL": (cfg or {}).get("REDIS_URL")})


def _recognizer(spec: str | None = None):
    """``HOTLINE_RECOGNIZER=package.module:factory`` names another streaming recognizer."""
    if spec:
        import importlib

        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)
    if not os.environ.get("VOSK_MODEL_PATH"):
        return None  # no model: what waiting callers say is recorded and transcribed by a job
    try:
        from intake.speech import model_available
    except Exception:  # not installed: recorded instead
        log.warning("VOSK_MODEL_PATH is set but intake.speech cannot be imported: recording instead")
        return None
    if not model_available():
        return None  # intake.speech has logged why; waiting callers are recorded instead
    return SpeechStream


class SpeechStream:
    """One call's streaming recognition (:class:`intake.speech.StreamRecognizer`, 8 kHz PCM from
    EAGI) behind the two calls the queue-wait loop makes: ``accept`` and ``final``."""

    CHUNK = 1600  # 100 ms at 8 kHz 16-bit: the recognizer takes 20-100 ms pieces

    def __init__(self):
        from intake.speech import StreamRecognizer

        self.stream = StreamRecognizer(8000, "pcm16")

    def accept(self, pcm: bytes) -> str | None:
        """Audio in; the text of an utterance the moment the caller stops speaking."""
        for i in range(0, len(pcm), self.CHUNK):
            event = self.stream.feed(pcm[i:i + self.CHUNK])
            if event is not None and event.kind == "final" and event.text:
                return event.text
        return None

    def final(self) -> str:
        transcript = self.stream.finish()
        return transcript.text if transcript.ok else ""

    def close(self) -> None:
        self.stream.close()


class LiveListener:
    """One waiting caller's live audio (Asterisk AudioSocket, Twilio Media Streams) through the
    process's streaming recogniser into the flow: each utterance is :meth:`CallFlow.heard` the
    moment the caller stops speaking — an emergency is transferred, the ticket gets the words.

    ``feed`` takes 8 kHz 16-bit PCM and returns the flow's turn when words were heard (None
    otherwise); ``listening`` says whether the call still waits (in line or its agent ringing):
    once it talks to an agent, is transferred or ended, the front-end stops the stream."""

    MAX_CHARS = 500  # one utterance; the recogniser's text of a long monologue is cut here

    def __init__(self, services: "Services", call_id: str, source: str):
        if services.recognizer is None:
            raise RuntimeError("no streaming recogniser in this process (set VOSK_MODEL_PATH)")
        self.flow, self.call_id, self.source = services.flow, call_id, source
        self.recognizer = services.recognizer()
        self.audio_s = 0.0
        self.heard: list[str] = []

    def feed(self, pcm: bytes):
        self.audio_s += len(pcm) / 16000
        text = self.recognizer.accept(pcm) if pcm else None
        if not text:
            return None
        self.heard.append(text)
        return self.flow.heard(self.call_id, text[:self.MAX_CHARS], self.source)

    def listening(self) -> bool:
        from .flow import CallNotFound

        try:
            call = self.flow.state(self.call_id)
        except CallNotFound:
            return False
        return call.state == "waiting" or (call.state == "transferring" and call.target_kind == "agent")

    def close(self) -> None:
        """The stream ended (hang-up, call answered): the recogniser goes back to the pool."""
        close = getattr(self.recognizer, "close", None)
        if close is not None:
            close()


def _default_recordings() -> str:
    """The same folder the rq worker and the web app use without ``HOTLINE_RECORDINGS``: Asterisk
    must record where they look for the files."""
    from intake.jobs import recordings_dir

    return str(recordings_dir())


def build(config: dict | None = None) -> Services:
    cfg = {k: os.environ.get(k) for k in ("REDIS_URL", "RULES_PATH", "HOTLINE_PROMPTS", "HOTLINE_RECORDINGS",
                                          "HOTLINE_RECOGNIZER")}
    if os.environ.get("HOTLINE_INVITE_AFTER_S"):
        cfg["invite_after_s"] = os.environ["HOTLINE_INVITE_AFTER_S"]
    cfg.update({k: v for k, v in (config or {}).items()})
    store = cfg.get("rules_store") or RulesStore(cfg.get("RULES_PATH") or None)
    if cfg.get("REDIS_URL") or sentinels_from_env():
        from call_routing.acd import ACD

        # short socket timeouts: a stuck Redis must end in the dialplan fallback, not in silence.
        # One pool for every thread of the process (FastAGI: up to 512 sessions at once): redis-py's
        # default pool refuses the 101st concurrent command; this one waits up to 3 s for a connection.
        client = redis_client(
            cfg.get("REDIS_URL"), decode_responses=True, socket_timeout=3, socket_connect_timeout=2,
            wait_for_connection=3,
            max_connections=int(cfg.get("HOTLINE_REDIS_CONNECTIONS") or os.environ.get("HOTLINE_REDIS_CONNECTIONS")
                                or 256))
        queue, calls = AcdQueue(ACD(client, store, dispatch_callback=rq_dispatch)), RedisCalls(client)
    else:
        log.warning("REDIS_URL is not set: queue and call state live in this process only")
        queue, calls = MemoryQueue(), MemoryCalls()
    queue = cfg.get("queue") or queue
    tickets = cfg.get("tickets") or _tickets(cfg)
    classify = cfg.get("classify", PrefillClassifier(store.current))
    flow = CallFlow(store.current, queue, tickets, cfg.get("calls") or calls, classify=classify,
                    invite_after_s=float(cfg.get("invite_after_s", 3.0)))
    return Services(flow, store, cfg.get("HOTLINE_PROMPTS") or "/var/lib/asterisk/sounds/hotline",
                    cfg.get("HOTLINE_RECORDINGS") or _default_recordings(),
                    cfg.get("recognizer", _recognizer(cfg.get("HOTLINE_RECOGNIZER"))))
