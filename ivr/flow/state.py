"""The flow's ports (what it needs from the ACD, the ticket store and a call-state store), its
turns and the state of a call."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class QueueStatus:
    """Where a queued call stands. ``state``: waiting | offered | connected | callback | gone."""

    state: str
    position: int = 0  # callers ahead of this one
    estimated_wait_s: float = 0.0
    agent: str | None = None
    endpoint: str | None = None  # where to connect the caller once offered (SIP URI, number, Dial string)


class QueuePort(Protocol):
    def enqueue(self, call_id: str, *, skill: str, line: str, caller: str, ticket: str | None,
                priority: int = 0) -> None: ...  # priority 0-9: higher is served first
    def status(self, call_id: str) -> QueueStatus: ...
    def requeue(self, call_id: str, skill: str) -> None: ...  # another skill, same place in time
    def prioritise(self, call_id: str, emergency: str) -> None: ...  # 可能紧急: next free seat, supervisor alerted
    def no_answer(self, call_id: str) -> None: ...  # offered agent did not answer: head of queue
    def connected(self, call_id: str) -> None: ...
    def completed(self, call_id: str, by: str = "agent") -> None: ...  # by: who hung up (agent | caller)
    def leave(self, call_id: str, reason: str) -> None: ...  # abandoned (may call back) / emergency / fallback
    def survey(self, call_id: str, line: str, digit: str) -> None: ...  # 1/2/3 into the queue log (KPIs)
    def request_callback(self, call_id: str, number: str) -> None: ...  # keeps the place in line
    # three-way transfers (三方转接) to expert seats, reserved through the ACD in one round trip
    def reserve_expert(self, call_id: str, skill: str) -> tuple | None: ...  # (agent, endpoint) or None
    def expert_answered(self, call_id: str, agent: str) -> None: ...
    def take_back(self, call_id: str, reason: str) -> None: ...  # cancelled | no-answer | completed
    def end_three_way(self, agent: str) -> None: ...  # the agent who started it left: wrap-up


class TicketPort(Protocol):
    def open(self, *, call_id: str, line: str, caller: str, rules_version: str, mode: str) -> str: ...
    def transcript(self, ticket: str, text: str, source: str) -> None: ...
    def recording(self, ticket: str, path: str) -> None: ...  # queues transcription (rq)
    def call_recording(self, ticket: str, recording: str) -> None: ...  # whole call (质检): stored, transcribed (rq)
    def survey(self, ticket: str, score: str) -> None: ...
    def close(self, ticket: str, outcome: str) -> None: ...
    # the caller is gone: the ticket's row is written (not only drafted) when this returns — from
    # these facts when Redis lost the draft; ticket None: a new number. Returns the ticket id.
    def keep(self, ticket: str | None, *, call_id: str, line: str, caller: str | None, rules_version: str | None,
             started: float | None = None) -> str: ...


class CallStore(Protocol):
    def get(self, call_id: str) -> dict | None: ...
    def put(self, call_id: str, state: dict) -> None: ...


@dataclass
class Turn:
    """What the front-end does next: speak ``steps``, then hand off by ``action``."""

    action: str  # queue | transfer | hangup | survey
    steps: list = field(default_factory=list)
    target: str | None = None
    skill: str | None = None
    line: str | None = None
    ticket: str | None = None
    rules_version: str | None = None
    call_id: str | None = None
    listen: dict | None = None  # {"for": "speech"|"digits", "digits": "1", "timeout_s": 5, "purpose": ...}
    reason: str | None = None  # why (for logs and the dialplan: agent, emergency, subcenter, callback …)
    party: str | None = None  # three-way: the expert seat reserved in the ACD (not a dialplan variable)

    def variables(self) -> dict:
        """The dialplan contract (DESIGN.md §4) plus the call id for the next AGI step."""
        return {
            "HOTLINE_ACTION": self.action,
            "HOTLINE_TARGET": self.target or "",
            "HOTLINE_SKILL": self.skill or "",
            "HOTLINE_LINE": self.line or "",
            "HOTLINE_TICKET": self.ticket or "",
            "HOTLINE_RULES_VERSION": self.rules_version or "",
            "HOTLINE_CALL_ID": self.call_id or "",
            "HOTLINE_REASON": self.reason or "",
        }


@dataclass
class CallState:
    id: str
    dialed: str
    caller: str
    line: str
    mode: str
    rules_version: str
    started: float
    skill: str | None = None
    fallback_skill: str | None = None
    ticket: str | None = None
    state: str = "routing"  # routing | waiting | transferring | talking | survey | ended
    enqueued_at: float | None = None
    announced_at: float | None = None
    invited: bool = False
    callback_offered: bool = False
    target: str | None = None
    target_kind: str | None = None  # agent | emergency | subcenter | expert
    agent: str | None = None
    heard: str | None = None
    survey: str | None = None
    three_way: str | None = None  # a party the agent pulled in: subcenter | expert
    three_way_state: str | None = None  # ringing | joined | handed (the agent left: warm transfer)
    three_way_target: str | None = None  # where the party is rung
    expert: str | None = None  # the expert seat reserved through the ACD
    priority: int = 0  # in the queue: an emergency whose transfer failed goes ahead of everyone
    channel: str | None = None  # the caller's channel on the PBX (Asterisk), for moves from outside
    agent_channel: str | None = None  # the agent's leg on the PBX, once answered




class CallNotFound(LookupError):
    pass
