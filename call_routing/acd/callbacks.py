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
