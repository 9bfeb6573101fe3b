"""Callbacks: the outbound call that gives a caller back their place in line.

When a callback entry reaches the head of its queue and a seat is free, the ACD reserves the
agent (state ``ringing``) and starts :func:`place_callback` in an rq job. The job dials through a
front-end specific :class:`CallbackDialer` (Twilio, Asterisk — later issues) and reports the
outcome back to the ACD. Each offer of a callback is dialed at most once: the job claims
``dialed:<call>:<offer>`` with SET NX before dialing, so a retried or duplicated job, or a second
worker, never rings the citizen twice.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

from call_routing.numbers import mask

log = logging.getLogger("hotline.acd.callbacks")

RQ_QUEUE = "hotline"
#: "package.module:factory" building the dialer inside rq workers (factory() -> CallbackDialer)
DIALER_ENV = "HOTLINE_CALLBACK_DIALER"

CONNECTED = "connected"  # both legs answered and bridged
NO_ANSWER = "no_answer"  # the citizen did not answer: retried later from the same place
AGENT_NO_ANSWER = "agent_no_answer"  # the agent did not answer: re-offered, agent auto-paused
PLACED = "placed"  # asynchronous dialer: the front-end reports the outcome itself later


@dataclass(frozen=True)
class CallbackRequest:
    """Everything a dialer needs: whom to call, which agent to connect, and the ticket."""

    call_id: str
    offer: int
    number: str
    agent_id: str
    agent_endpoints: tuple
    line: str
    skill: str
    ticket: str | None


class CallbackDialer(Protocol):
    """Places the outbound call of a callback. Connect the agent first, then the citizen, so
    that no citizen is rung and left in silence. Returns one of the outcomes above."""

    def dial(self, request: CallbackRequest) -> str: ...


@dataclass
class RecordingDialer:
    """A dialer for tests and demos: records every request and answers with ``outcome``."""

    outcome: str = CONNECTED
    calls: list = field(default_factory=list)

    def dial(self, request: CallbackRequest) -> str:
        self.calls.append(request)
        return self.outcome


def place_callback(acd, call_id: str, offer: int, dialer: CallbackDialer) -> str:
    """Dial one callback offer exactly once and report the outcome; returns what happened."""
    claim = acd.redis.set(acd.keys.dialed(f"{call_id}:{offer}"), "1", nx=True, ex=7 * 86400)
    if not claim:
        return "already_dialed"
    call = acd.call(call_id)
    if call is None or call["state"] != "ringing" or call["kind"] != "callback" or call["offers"] != offer:
        return "stale"
    agent = acd.agent(call["agent"]) or {}
    request = CallbackRequest(call_id, offer, call["caller"], call["agent"], tuple(agent.get("endpoints", ())),
                              call["line"], call["skill"], call["ticket"])
    log.info("callback %s offer %s: dialing %s for agent %s", call_id, offer, mask(call["caller"]), call["agent"])
    outcome = dialer.dial(request)
    report_callback_outcome(acd, call_id, outcome, call["agent"])
    return outcome


def report_callback_outcome(acd, call_id: str, outcome: str, agent_id: str = "") -> None:
    """What a callback's legs came to, told to the ACD — the one mapping every dialer uses
    (synchronous dialers through :func:`place_callback`, Twilio and Asterisk when their legs
    report back): connected uses up the place in line; the citizen not answering keeps it
    for a later try; the agent not answering re-offers it to the next seat."""
    if outcome == CONNECTED:
        acd.answer(call_id, agent_id)
    elif outcome == NO_ANSWER:
        acd.callback_failed(call_id)
    elif outcome == AGENT_NO_ANSWER:
        acd.no_answer(call_id)


def load_dialer(spec: str | None = None) -> CallbackDialer:
    spec = spec or os.environ.get(DIALER_ENV)
    if not spec:
        raise RuntimeError(f"no callback dialer configured: set {DIALER_ENV}=package.module:factory")
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)()


def place_callback_job(call_id: str, offer: int, prefix: str = "acd") -> str:
    """The rq job: builds the ACD from REDIS_URL/RULES_PATH and the dialer from the environment."""
    from call_routing.rules import load_rules

    from .core import ACD

    acd = ACD.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                       load_rules(os.environ.get("RULES_PATH") or None), prefix=prefix)
    try:
        return place_callback(acd, call_id, offer, load_dialer())
    finally:
        acd.redis.close()


def enqueue_callback_job(acd, offer) -> None:
    """Start :func:`place_callback_job` for an offer on the rq ``hotline`` queue."""
    from rq import Queue

    Queue(RQ_QUEUE, connection=_rq_connection(acd)).enqueue(
        place_callback_job, offer.call_id, offer.n, acd.keys.prefix, job_id=callback_job_id(offer.call_id, offer.n))


def callback_job_id(call_id: str, n: int) -> str:
    """rq job ids allow only letters, digits, ``_`` and ``-``: an Asterisk UNIQUEID
    (``1700000000.42``) has a dot, so anything else is hex-escaped (still one id per offer)."""
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-") else f"_{ord(ch):x}_" for ch in call_id)
    return f"acd-callback-{safe}-{n}"


def _rq_connection(acd):
    """The ACD's Redis without response decoding (rq stores pickled jobs), built once per ACD."""
    conn = getattr(acd, "_rq_connection", None)
    if conn is None:
        from redis import ConnectionPool, Redis

        pool = acd.redis.connection_pool
        kwargs = dict(pool.connection_kwargs, decode_responses=False)
        conn = acd._rq_connection = Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class,
                                                                          **kwargs))
    return conn
