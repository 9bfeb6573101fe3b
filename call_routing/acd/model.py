"""The ACD's vocabulary, shared by its parts: seat and call states, the error it raises and the
values its methods return (:class:`Agent`, :class:`Offer`, :class:`Result`, :class:`Placement`,
:class:`Position`)."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from call_routing.numbers import digits_of

log = logging.getLogger("hotline.acd")

AGENT_STATES = ("offline", "ready", "ringing", "busy", "wrapup", "paused")
CALL_STATES = ("waiting", "ringing", "connected", "completed", "abandoned", "left", "retry", "failed", "resumed")
#: why a call leaves the queue on purpose (:meth:`ACD.leave`): not abandoned, no callback
LEAVE_REASONS = ("emergency", "fallback", "subcenter", "transfer", "admin")
SURVEY_SCORES = ("1", "2", "3")  # 满意 / 基本满意 / 不满意
MAX_PRIORITY = 9
#: pause reasons of a seat whose phone cannot ring (the PBX says so: ivr.asterisk.pbx.PhoneWatcher)
PHONE_OFFLINE, PHONE_BUSY = "phone-offline", "phone-busy"
PHONE_STATE_TTL_S = 60  # the watcher refreshes it every few seconds; a stopped watcher blocks nobody


class ACDError(Exception):
    """A request the ACD refuses, worded for the agent or front-end that made it."""


@dataclass(frozen=True)
class Agent:
    """A seat's profile. ``skills`` maps skill id to level (1–99, higher is offered first)."""

    id: str
    name: str
    skills: dict
    endpoints: tuple = ()  # Twilio client identity, SIP URI or phone number
    expert: bool = False
    languages: tuple = ("zh",)


@dataclass(frozen=True)
class Offer:
    """A call offered to an agent: ring ``agent_id`` (or, for a callback, dial both)."""

    call_id: str
    agent_id: str
    kind: str  # live | callback | transfer
    n: int  # how many times this call has been offered (callback dial idempotence)
    skill: str


@dataclass(frozen=True)
class Result:
    status: str
    info: str = ""
    offers: tuple = ()

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "queued", "completed", "abandoned", "callback", "already", "retry",
                               "failed", "after_call")


@dataclass(frozen=True)
class Placement:
    """Where :meth:`ACD.enqueue` put a call: ``skill`` queue, as a ``live`` call or a ``callback``."""

    call_id: str
    status: str
    skill: str
    kind: str
    offers: tuple = ()


@dataclass(frozen=True)
class Position:
    """What a waiting caller is told: place in line and the expected wait."""

    call_id: str
    state: str
    skill: str
    position: int  # 1 = next; 0 = being offered / connected
    waited_s: float
    estimated_wait_s: float
    callback_offer_due: bool


#: call and agent ids: what Twilio CallSids, Asterisk uniqueids and staff numbers look like
_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


def _check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ACDError(f"{what} {value!r} must be 1-128 letters, digits or _ . : @ + -")
    return value


def _text(v) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else str(v)


def caller_key(caller: str | None) -> str:
    """A stable, non-reversible key for a caller number (pending callbacks by caller)."""
    digits = digits_of(caller or "")
    if not digits:
        return ""
    return hashlib.sha256(digits.encode()).hexdigest()[:24]
