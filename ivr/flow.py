"""The life of one call, independent of the front-end (Asterisk AGI/FastAGI, Twilio).

A front-end reports what happened — the call arrived, a second passed in queue, words were
heard, a key was pressed, a transfer ended, the caller hung up — and gets back a
:class:`Turn`: steps to speak (``say``/``play``, ``listen`` for what to capture next) and a
hand-off (``queue`` = keep/put the caller in the queue, ``transfer`` = connect to
``target``, ``hangup``, ``survey``). Rendering a turn is the front-end's only job: AGI
commands in :mod:`ivr.asterisk.agi`, TwiML in the Twilio blueprint.

    flow = CallFlow(rules_store.current, services)
    turn = flow.start(call_id, dialed, caller)       # decision + ticket
    turn = flow.wait(call_id)                        # in queue, once a second or so:
                                                     # enqueues on the first call; agent
                                                     # assigned -> transfer; else position,
                                                     # invitation, callback offer
    turn = flow.heard(call_id, text)                 # emergency -> transfer; domain -> requeue
    turn = flow.pressed(call_id, digit)              # "1" after the callback offer
    flow.agent_answered(call_id)
    turn = flow.transfer_ended(call_id, status)      # answered -> survey; failed -> queue again
    turn = flow.survey(call_id, digit)               # 1/2/3 on the ticket and in the KPIs
    turn = flow.three_way(call_id, "expert")         # agent pulls in a party (expert reserved in the ACD)
    flow.three_way_answered(call_id)                 # ... which answered
    turn = flow.three_way_ended(call_id, status)     # ... whose leg ended (no answer: back to the agent)
    turn = flow.three_way_cancel(call_id)            # agent cancels: caller stays with the agent
    turn = flow.three_way_agent_left(call_id)        # agent leaves: warm transfer, agent wraps up
    flow.hung_up(call_id)                            # at any point

No menu ever stands between a caller and a human (GB/T 33358): the invitation to describe
the matter and the callback offer happen only while the caller is already queued.

The ACD, tickets and call state are reached through the small ports below
(:class:`QueuePort`, :class:`TicketPort`, :class:`CallStore`); :mod:`ivr.services`
builds them for a process. Imports no telephony library.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Callable, Protocol

from call_routing.numbers import mask
from call_routing.router import LANGUAGE, decide, emergency_heard, three_way

log = logging.getLogger("hotline.flow")

# ---------------------------------------------------------------------------------------
# What callers hear besides the rules' own prompts (all rendered by ``python -m ivr.prompts``)

INVITE = "在等待期间，您可以简要说出您要反映的事项，坐席接听时就能看到。"
CALLBACK_OFFER = "如需预约回拨，请按1，您的排队位置不变；继续等待请不要挂机。"
CALLBACK_BOOKED = "已为您预约回拨，轮到您时我们会回拨这个号码，请保持电话畅通。再见。"
SURVEY = "请对本次服务进行评价：满意请按1，基本满意请按2，不满意请按3。"
SURVEY_THANKS = "感谢您的评价，再见。"
NEXT_IN_LINE = "您是下一位，请稍候。"
POSITION_HEAD, POSITION_MID, POSITION_TAIL = "您前面还有", "位，预计等待", "分钟。"
MANY_WAITING = "当前来电较多，预计等待"
SURVEY_SCORES = MappingProxyType({"1": "satisfied", "2": "basically_satisfied", "3": "dissatisfied"})
MAX_SPOKEN_NUMBER = 99
EMERGENCY_PRIORITY = 9  # queue priority of an emergency caller whose transfer failed (ACD's highest)

_DIGITS = "零一二三四五六七八九"


def spoken_number(n: int) -> str:
    """0..99 as Chinese a caller hears in a count: 2 -> 两, 12 -> 十二, 30 -> 三十."""
    n = max(0, min(int(n), MAX_SPOKEN_NUMBER))
    if n == 2:
        return "两"
    if n < 10:
        return _DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _DIGITS[tens]) + "十" + (_DIGITS[ones] if ones else "")


def fixed_prompts() -> list[str]:
    """Every text the flow itself may speak, as the prompt renderer must prepare it."""
    texts = [INVITE, CALLBACK_OFFER, CALLBACK_BOOKED, SURVEY, SURVEY_THANKS, NEXT_IN_LINE,
             POSITION_HEAD, POSITION_MID, POSITION_TAIL, MANY_WAITING]
    texts += [spoken_number(n) for n in range(1, MAX_SPOKEN_NUMBER + 1)]
    return list(dict.fromkeys(texts))


def _say(text: str, parts=None) -> dict:
    step = {"do": "say", "text": text, "language": LANGUAGE}
    if parts:
        step["parts"] = list(parts)
    return step


def position_announcement(position: int, wait_s: float) -> dict:
    """"您前面还有3位，预计等待1分钟" as one step whose ``parts`` are pre-rendered fragments."""
    minutes = max(1, math.ceil(wait_s / 60)) if wait_s else 1
    m = spoken_number(minutes)
    if position <= 0:
        return _say(NEXT_IN_LINE)
    if position > MAX_SPOKEN_NUMBER:
        parts = (MANY_WAITING, m, POSITION_TAIL)
    else:
        parts = (POSITION_HEAD, spoken_number(position), POSITION_MID, m, POSITION_TAIL)
    return _say("".join(parts), parts)


# ---------------------------------------------------------------------------------------
# Ports: what the flow needs from the ACD, the ticket store and a call-state store


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
    def survey(self, ticket: str, score: str) -> None: ...
    def close(self, ticket: str, outcome: str) -> None: ...


class CallStore(Protocol):
    def get(self, call_id: str) -> dict | None: ...
    def put(self, call_id: str, state: dict) -> None: ...


# ---------------------------------------------------------------------------------------
# Turns and call state


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


_CALL_FIELDS = tuple(f.name for f in fields(CallState))  # all scalars: a shallow dict is asdict()


class CallNotFound(LookupError):
    pass


# ---------------------------------------------------------------------------------------
# The flow


class CallFlow:
    """One per process; thread-safe as long as its ports are."""

    def __init__(self, rules, queue: QueuePort, tickets: TicketPort, calls: CallStore,
                 classify: Callable[[str], dict | None] | None = None, clock=time.time,
                 invite_after_s: float = 3.0):
        self._rules = rules if callable(rules) else (lambda: rules)
        self.queue, self.tickets, self.calls = queue, tickets, calls
        self.classify = classify
        self.clock = clock
        self.invite_after_s = invite_after_s

    # -- state ------------------------------------------------------------------------
    def _load(self, call_id: str) -> CallState:
        raw = self.calls.get(call_id)
        if raw is None:
            raise CallNotFound(f"no call {call_id!r}")
        return CallState(**raw)

    def _save(self, call: CallState, pipe=None) -> None:
        state = {name: getattr(call, name) for name in _CALL_FIELDS}  # asdict(call), without its deep copy
        if pipe is not None:
            self.calls.put(call.id, state, pipe=pipe)
        else:
            self.calls.put(call.id, state)

    def _turn(self, call: CallState, action: str, steps=(), **kw) -> Turn:
        return Turn(action, list(steps), kw.pop("target", call.target), kw.pop("skill", call.skill), call.line,
                    call.ticket, call.rules_version, call.id, **kw)

    def state(self, call_id: str) -> CallState:
        return self._load(call_id)

    # -- call start -------------------------------------------------------------------
    def start(self, call_id: str, dialed: str, caller: str | None, at=None, pipe=None,
              channel: str | None = None) -> Turn:
        """Route a new call, open its ticket; the caller is queued by the first :meth:`wait`.

        With a Redis call store, the ticket's draft and the call state go in one pipeline (one
        round trip); a front-end may pass its own ``pipe`` to add its writes and execute it."""
        own = pipe is None and hasattr(self.calls, "pipeline")
        if own:
            pipe = self.calls.pipeline()
        rules = self._rules()
        now = self.clock()
        decision = decide(dialed, caller, at if at is not None else now, None, rules)
        call = CallState(call_id, dialed, caller or "", decision.line, decision.mode, decision.rules_version, now,
                         skill=decision.skill, channel=channel or None)
        steps = [dict(s) for s in decision.steps]
        action = "hangup"
        for s in steps:
            if s["do"] == "enqueue":
                action, call.skill = "queue", s["skill"]
            elif s["do"] == "transfer":
                action, call.target, call.fallback_skill = "transfer", s["number"], s.get("fallback_skill")
                call.target_kind = "emergency" if decision.mode == "emergency" else "subcenter"
        if action != "hangup":
            extra = {"pipe": pipe} if pipe is not None and getattr(self.tickets, "accepts_pipeline", False) else {}
            call.ticket = self.tickets.open(call_id=call_id, line=decision.line, caller=call.caller,
                                            rules_version=decision.rules_version, mode=decision.mode, **extra)
        call.state = {"queue": "waiting", "transfer": "transferring"}.get(action, "ended")
        self._save(call, pipe if pipe is not None and hasattr(self.calls, "pipeline") else None)
        if own:
            pipe.execute()
        if log.isEnabledFor(logging.INFO):  # mask() only when the line is written
            log.info("call %s from %s to %s: %s %s -> %s %s", call_id, mask(caller), decision.line, decision.mode,
                     decision.rules_version, action, call.target or call.skill or "")
        return self._turn(call, action, [s for s in steps if s["do"] in ("say", "play")],
                          reason=call.target_kind)

    # -- waiting in queue -------------------------------------------------------------
    def wait(self, call_id: str) -> Turn:
        """One tick of waiting: connect when an agent is assigned, else what to tell the caller."""
        call = self._load(call_id)
        rules = self._rules()
        now = self.clock()
        if call.state == "ended":
            return self._turn(call, "hangup")
        if call.state == "transferring" and call.target_kind == "emergency" and call.target:
            # an emergency heard by another process (the caller's speech while waiting): go now
            return self._turn(call, "transfer", self._emergency_notice(call, call.heard, rules),
                              reason="emergency")
        if call.enqueued_at is None or call.state != "waiting":
            if call.enqueued_at is None:
                self.queue.enqueue(call_id, skill=call.skill or rules.hotline.skill, line=call.line,
                                   caller=call.caller, ticket=call.ticket, priority=call.priority)
                call.enqueued_at = call.announced_at = now
            call.state = "waiting"
            self._save(call)
        status = self.queue.status(call_id)
        if status.state == "offered" and status.endpoint:
            call.state, call.target, call.target_kind, call.agent = "transferring", status.endpoint, "agent", status.agent
            self._save(call)
            return self._turn(call, "transfer", reason="agent")
        if status.state in ("callback", "gone"):
            call.state = "ended"
            self._save(call)
            return self._turn(call, "hangup", reason=status.state)
        waited = now - call.enqueued_at
        if not call.invited and waited >= self.invite_after_s:
            call.invited = True
            self._save(call)
            return self._turn(call, "queue", [_say(INVITE)], listen={"for": "speech", "max_s": 20,
                                                                       "purpose": "matter"})
        if not call.callback_offered and waited >= rules.callback_offer_after_s:
            call.callback_offered = True
            call.announced_at = now
            self._save(call)
            return self._turn(call, "queue", [position_announcement(status.position, status.estimated_wait_s),
                                               _say(CALLBACK_OFFER)],
                              listen={"for": "digits", "digits": "1", "timeout_s": 5, "purpose": "callback"})
        if now - (call.announced_at or now) >= rules.announce_every_s:
            call.announced_at = now
            self._save(call)
            return self._turn(call, "queue", [position_announcement(status.position, status.estimated_wait_s)])
        return self._turn(call, "queue")

    def heard(self, call_id: str, text: str, source: str = "speech") -> Turn:
        """Words the caller said while waiting: emergency -> transfer now; a clear domain -> requeue."""
        call = self._load(call_id)
        rules = self._rules()
        text = (text or "").strip()
        if not text:
            return self._turn(call, "queue" if call.state == "waiting" else "hangup")
        call.heard = ((call.heard + " ") if call.heard else "") + text
        if call.ticket:
            self.tickets.transcript(call.ticket, text, source)
        if call.state != "waiting":
            self._save(call)
            return self._turn(call, "queue")
        emergency = emergency_heard(rules, text)
        if emergency is not None:
            self.queue.leave(call_id, "emergency")
            call.state, call.target, call.target_kind = "transferring", emergency.number, "emergency"
            call.fallback_skill = rules.hotline.skill
            self._save(call)
            log.warning("call %s: emergency %s heard while waiting, transferring", call_id, emergency.number)
            return self._turn(call, "transfer", self._emergency_notice(call, text, rules), reason="emergency")
        if self.classify is not None:
            try:
                fields = self.classify(text) or {}
            except Exception:  # a pre-fill failure must never touch the call
                log.exception("call %s: classifying what was heard failed", call_id)
                fields = {}
            skill = fields.get("skill")
            if skill and skill != call.skill and skill in rules.skills and not rules.skills[skill].expert:
                self.queue.requeue(call_id, skill)
                log.info("call %s: heard a %s matter, moved from %s to %s", call_id, fields.get("line"),
                         call.skill, skill)
                call.skill = skill
        self._save(call)
        return self._turn(call, "queue")

    def _emergency_notice(self, call: CallState, heard: str, rules) -> list:
        """What the router says before an emergency transfer for what was heard (正在为您转接…)."""
        decision = decide(call.line, call.caller, self.clock(), heard, rules)
        return [dict(s) for s in decision.steps if s["do"] == "say"]

    def recorded(self, call_id: str, path: str) -> None:
        """A recording of the caller describing the matter: transcribed off the call (rq job)."""
        call = self._load(call_id)
        if call.ticket:
            self.tickets.recording(call.ticket, path)

    def pressed(self, call_id: str, digit: str) -> Turn:
        """A key pressed while waiting: 1 after the offer books a callback that keeps the place."""
        call = self._load(call_id)
        if digit == "1" and call.state == "waiting" and call.callback_offered and call.caller:
            self.queue.request_callback(call_id, call.caller)
            call.state = "ended"
            self._save(call)
            log.info("call %s: callback booked for %s", call_id, mask(call.caller))
            return self._turn(call, "hangup", [_say(CALLBACK_BOOKED)], reason="callback")
        return self._turn(call, "queue" if call.state == "waiting" else "hangup")

    # -- transfers --------------------------------------------------------------------
    def offered(self, call_id: str, agent: str, endpoint: str | None = None) -> None:
        """Push-style front-ends (Twilio): the ACD offered the waiting call to ``agent``, whose
        endpoint is being rung now (no :meth:`wait` tick needs to notice it first)."""
        call = self._load(call_id)
        if call.state == "waiting":
            call.state, call.target, call.target_kind, call.agent = "transferring", endpoint, "agent", agent
            self._save(call)

    def agent_answered(self, call_id: str, channel: str | None = None) -> None:
        """The agent answered (``channel``: their leg on the PBX, for moves from outside)."""
        call = self._load(call_id)
        if call.target_kind == "agent":
            self.queue.connected(call_id)
            call.agent_channel = channel or call.agent_channel
        call.state = "talking"
        self._save(call)

    def transfer_ended(self, call_id: str, status: str) -> Turn:
        """The front-end's dial ended (Asterisk DIALSTATUS / Twilio DialCallStatus).

        Answered: the conversation is over and the caller is offered the survey. Not
        answered: an agent's call goes back to the head of the queue; an emergency or
        sub-center transfer that fails lands in its fallback seat group — never silence.
        """
        call = self._load(call_id)
        answered = status.upper() in ("ANSWER", "ANSWERED", "COMPLETED")
        if answered or call.state == "talking":
            joined_expert = self._close_three_way(call)
            if call.target_kind == "agent":
                self.queue.completed(call_id)
            if joined_expert and call.agent:
                self.queue.end_three_way(call.agent)
            call.state = "survey"
            self._save(call)
            return self._survey_turn(call)
        if call.target_kind == "agent":
            self.queue.no_answer(call_id)
            call.state, call.target, call.agent = "waiting", None, None
            self._save(call)
            return self._turn(call, "queue", reason="no_answer")
        # emergency / sub-center unreachable: the caller is queued to a seat group instead, an
        # emergency ahead of everyone waiting there (an agent relays it)
        call.skill = call.fallback_skill or self._rules().hotline.skill
        if call.target_kind == "emergency":
            call.priority = EMERGENCY_PRIORITY
        call.state, call.target, call.target_kind = "waiting", None, None
        call.enqueued_at = None
        self._save(call)
        log.warning("call %s: transfer failed (%s), queued to %s", call_id, status, call.skill)
        return self._turn(call, "queue", reason="transfer_failed")

    # -- three-way transfers (三方转接) --------------------------------------------------
    # The agent pulls the line's sub-center or expert group into the conversation. Experts are
    # reached only this way: the seat is reserved through the ACD in one round trip
    # (``acd.transfer(call, skill, three_way=True)``) or nothing changes. The front-end rings the
    # returned target and reports how that leg went; both front-ends share these decisions.

    def three_way(self, call_id: str, kind: str) -> Turn:
        """Start a three-way transfer: ``transfer`` to ``target`` (``party`` = the reserved
        expert seat), or ``stay`` (no expert free, one already under way, no agent talking) and
        nothing changed. ``LookupError`` when the line has no such party."""
        call = self._load(call_id)
        option = three_way(self._rules(), call.line, kind)
        if call.three_way:
            return self._turn(call, "stay", target=None, reason="three_way_under_way")
        if call.state != "talking" or call.target_kind != "agent":
            return self._turn(call, "stay", target=None, reason="no_agent_talking")
        party = None
        target = option.get("number")
        if not target:
            got = self.queue.reserve_expert(call_id, option["skill"])
            if got is None:
                return self._turn(call, "stay", target=None, reason="no_expert_free")
            party, target = got
        call.three_way, call.three_way_state, call.three_way_target, call.expert = kind, "ringing", target, party
        self._save(call)
        log.info("call %s: three-way to %s %s %s", call_id, kind, party or "", target or "")
        return self._turn(call, "transfer", target=target, skill=option.get("skill"), reason=kind, party=party)

    def three_way_party(self, call_id: str) -> Turn:
        """Where the party's leg should ring now: ``transfer`` to the target, or ``hangup`` when
        the three-way was cancelled meanwhile."""
        call = self._load(call_id)
        if call.three_way_state != "ringing" or not call.three_way_target:
            return self._turn(call, "hangup", target=None, reason="no_three_way")
        return self._turn(call, "transfer", target=call.three_way_target, reason=call.three_way, party=call.expert)

    def three_way_answered(self, call_id: str) -> Turn:
        """The party answered: the reserved expert seat is busy on the call (``stay``); ``hangup``
        when the three-way is no longer wanted (cancelled, or the agent left while it rang)."""
        call = self._load(call_id)
        if call.three_way_state != "ringing":
            return self._turn(call, "hangup" if call.three_way_state is None else "stay", target=None,
                              reason="no_three_way")
        if call.expert:
            self.queue.expert_answered(call_id, call.expert)
        call.three_way_state = "joined"
        self._save(call)
        return self._turn(call, "stay", target=None, reason="joined", party=call.expert)

    def three_way_ended(self, call_id: str, status: str) -> Turn:
        """The party's leg ended (Asterisk DIALSTATUS / Twilio participant status).

        Agent still there: ``stay`` — the call is the agent's again (an expert who did not
        answer — NOANSWER, BUSY, CHANUNAVAIL, CONGESTION — is paused like any seat that misses
        a call). Agent gone (warm transfer) and the party hung up: ``survey`` — the caller is
        alone. Nothing under way (cancelled already): ``stay``, nothing changes."""
        call = self._load(call_id)
        state = call.three_way_state
        if state is None:
            return self._turn(call, "stay", target=None, reason="no_three_way")
        up = (status or "").upper()
        joined = state in ("joined", "handed") or up in ("ANSWER", "ANSWERED", "COMPLETED", "IN-PROGRESS")
        if state == "handed":
            self._clear_three_way(call)
            self._save(call)
            return self._turn(call, "survey", target=None, reason="party_left")
        if call.expert:
            reason = "completed" if joined else ("cancelled" if up in ("CANCEL", "CANCELED", "CANCELLED") else
                                                 "no-answer")
            self.queue.take_back(call_id, reason)
        self._clear_three_way(call)
        self._save(call)
        log.info("call %s: three-way party leg ended (%s), back with the agent", call_id, status)
        return self._turn(call, "stay", target=None, reason="party_left" if joined else "no_answer")

    def three_way_cancel(self, call_id: str, reason: str = "cancelled") -> Turn:
        """The agent cancels (or the party could not even be rung): the expert seat is free
        again (wrap-up if it had joined), the caller stays with the agent. ``stay`` with reason
        ``cancelled`` — the front-end then hangs up the party's leg."""
        call = self._load(call_id)
        if call.three_way_state in (None, "handed"):
            return self._turn(call, "stay", target=None,
                              reason="no_three_way" if call.three_way_state is None else "agent_left")
        if call.expert:
            self.queue.take_back(call_id, reason)
        self._clear_three_way(call)
        self._save(call)
        return self._turn(call, "stay", target=None, reason="cancelled")

    def three_way_agent_left(self, call_id: str) -> Turn:
        """The agent who started the three-way left the conference (or hung up).

        Party joined: warm transfer — the agent wraps up (``end_three_way``; after a sub-center
        three-way the agent's ACD call completes), the caller stays with the party: ``stay``.
        Party still ringing: nobody is left to talk to — cancelled (``survey`` for the caller;
        the front-end hangs up the party's leg). No three-way: ``none``, nothing changes."""
        call = self._load(call_id)
        state = call.three_way_state
        if state == "joined":
            if call.expert:
                if call.agent:
                    self.queue.end_three_way(call.agent)
            elif call.target_kind == "agent":
                self.queue.completed(call_id)
            call.three_way_state = "handed"
            if not call.expert:  # the ACD call is over; an expert's is now the expert's (target_kind agent)
                call.target_kind = call.three_way
            self._save(call)
            return self._turn(call, "stay", target=None, reason="handed")
        if state == "ringing":
            self.three_way_cancel(call_id)
            return self._turn(self._load(call_id), "survey", target=None, reason="agent_left")
        return self._turn(call, "none", target=None, reason="no_three_way")

    @staticmethod
    def _clear_three_way(call: CallState) -> None:
        call.three_way = call.three_way_state = call.three_way_target = call.expert = None

    def _close_three_way(self, call: CallState) -> bool:
        """The conversation is over with a three-way still open: a ringing expert is released
        (the call is the agent's again, so it completes normally). True when an expert had
        joined with the agent still in: the agent must wrap up too (after the call completes)."""
        state = call.three_way_state
        if state is None:
            return False
        if state == "ringing" and call.expert:
            self.queue.take_back(call.id, "cancelled")
        joined_expert = state == "joined" and bool(call.expert)
        self._clear_three_way(call)
        return joined_expert

    # -- end of call ------------------------------------------------------------------
    def _survey_turn(self, call: CallState) -> Turn:
        return self._turn(call, "survey", [_say(SURVEY)],
                          listen={"for": "digits", "digits": "123", "timeout_s": 8, "purpose": "survey"})

    def survey_question(self, call_id: str) -> Turn:
        """The satisfaction question (keys 1-3) asked after the agent hung up."""
        return self._survey_turn(self._load(call_id))

    def fallback(self, call_id: str) -> None:
        """The front-end failed and sends the caller to its own safe fallback: leave our queue."""
        try:
            call = self._load(call_id)
        except CallNotFound:
            return
        if call.state == "waiting" and call.enqueued_at is not None:
            self.queue.leave(call_id, "fallback")
        self._finish(call, "fallback")

    def survey(self, call_id: str, digit: str) -> Turn:
        call = self._load(call_id)
        score = SURVEY_SCORES.get(digit)
        if score and call.survey is None:
            call.survey = score
            if call.ticket:
                try:
                    self.tickets.survey(call.ticket, score)
                except Exception:  # the ticket store must never cost the caller their goodbye
                    log.exception("call %s: survey not written on ticket %s", call_id, call.ticket)
            recorder = getattr(self.queue, "survey", None)  # ports written before the survey KPI
            if recorder is not None:
                try:
                    recorder(call_id, call.line, digit)
                except Exception:  # the KPI must never cost the caller their goodbye
                    log.exception("call %s: survey not logged in the queue log", call_id)
        self._finish(call, "completed")
        return self._turn(call, "hangup", [_say(SURVEY_THANKS)] if score else [], reason="survey")

    def hung_up(self, call_id: str) -> None:
        """The caller is gone, wherever the call was. Idempotent."""
        try:
            call = self._load(call_id)
        except CallNotFound:
            return
        if call.state == "ended":
            return
        joined_expert = self._close_three_way(call)
        if call.state == "waiting" and call.enqueued_at is not None:
            self.queue.leave(call_id, "abandoned")
        elif call.state in ("transferring", "talking") and call.target_kind == "agent":
            self.queue.completed(call_id, "caller")
        if joined_expert and call.agent:
            self.queue.end_three_way(call.agent)  # the agent was still in the three-way
        self._finish(call, "abandoned" if call.state in ("waiting", "routing") else "completed")

    def _finish(self, call: CallState, outcome: str) -> None:
        call.state = "ended"
        self._save(call)
        if call.ticket:
            try:
                self.tickets.close(call.ticket, outcome)
            except Exception:  # the call is over either way; the ticket keeps its draft and transcript
                log.exception("call %s: outcome %s not written on ticket %s", call.id, outcome, call.ticket)


# ---------------------------------------------------------------------------------------
# Small in-process implementations of the ports: tests, a single FastAGI process, and a
# working system before the Redis ACD / ticket store are configured.


class MemoryCalls:
    def __init__(self):
        self._d: dict = {}
        self._lock = threading.Lock()

    def get(self, call_id):
        with self._lock:
            v = self._d.get(call_id)
            return dict(v) if v is not None else None

    def put(self, call_id, state):
        with self._lock:
            self._d[call_id] = dict(state)


_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps(state, ensure_ascii=False), built once


class RedisCalls:
    """Call state shared by every AGI process and FastAGI server: one JSON value per call."""

    def __init__(self, client, prefix: str = "ivr:call:", ttl_s: int = 6 * 3600):
        self.client, self.prefix, self.ttl_s = client, prefix, ttl_s

    def get(self, call_id):
        raw = self.client.get(self.prefix + call_id)
        return json.loads(raw) if raw else None

    def put(self, call_id, state, pipe=None):
        (pipe if pipe is not None else self.client).set(self.prefix + call_id, _JSON.encode(state),
                                                        ex=self.ttl_s)

    def pipeline(self):
        """Writes of one request in one round trip (the flow executes it)."""
        return self.client.pipeline(transaction=False)


class MemoryQueue:
    """A FIFO per skill with agents assigned by hand (:meth:`offer`). Not the ACD."""

    def __init__(self, handle_s: float = 20.0):
        self.calls: dict = {}
        self.events: list = []
        self.experts: dict = {}  # agent -> (skill, endpoint, call reserved for or None)
        self.handle_s = handle_s
        self._lock = threading.Lock()
        self._seq = 0

    def _event(self, *e):
        self.events.append(e)

    def enqueue(self, call_id, *, skill, line, caller, ticket, priority=0):
        with self._lock:
            self._seq += 1
            self.calls[call_id] = {"skill": skill, "line": line, "caller": caller, "ticket": ticket,
                                   "seq": self._seq, "state": "waiting", "agent": None, "endpoint": None}
            self._event("enter", call_id, skill)

    def offer(self, call_id, agent, endpoint):
        with self._lock:
            self.calls[call_id].update(state="offered", agent=agent, endpoint=endpoint)
            self._event("offer", call_id, agent)

    def status(self, call_id):
        with self._lock:
            c = self.calls.get(call_id)
            if c is None:
                return QueueStatus("gone")
            ahead = sum(1 for o in self.calls.values()
                        if o["skill"] == c["skill"] and o["state"] == "waiting" and o["seq"] < c["seq"])
            return QueueStatus(c["state"], ahead, (ahead + 1) * self.handle_s, c["agent"], c["endpoint"])

    def _set(self, call_id, event, **kw):
        with self._lock:
            if call_id in self.calls:
                self.calls[call_id].update(kw)
            self._event(event, call_id, *kw.values())

    def requeue(self, call_id, skill):
        self._set(call_id, "requeue", skill=skill)

    def no_answer(self, call_id):
        with self._lock:
            c = self.calls[call_id]
            c.update(state="waiting", agent=None, endpoint=None, seq=min(o["seq"] for o in self.calls.values()) - 1)
            self._event("no_answer", call_id)

    def connected(self, call_id):
        self._set(call_id, "connect", state="connected")

    def completed(self, call_id, by="agent"):
        self._set(call_id, "complete", state="completed")

    def leave(self, call_id, reason):
        with self._lock:
            self.calls.pop(call_id, None)
            self._event(reason, call_id)

    def request_callback(self, call_id, number):
        self._set(call_id, "callback", state="callback")

    def survey(self, call_id, line, digit):
        with self._lock:
            self._event("survey", call_id, digit)

    def reserve_expert(self, call_id, skill):
        """Experts by hand (:meth:`add_expert`): the first free one is taken."""
        with self._lock:
            for agent, (s, endpoint, busy) in self.experts.items():
                if s == skill and not busy:
                    self.experts[agent] = (s, endpoint, call_id)
                    self._event("three_way", call_id, agent)
                    return agent, endpoint
            return None

    def add_expert(self, agent, skill, endpoint):
        with self._lock:
            self.experts[agent] = (skill, endpoint, None)

    def expert_answered(self, call_id, agent):
        self._set(call_id, "expert_answered", expert=agent)

    def take_back(self, call_id, reason):
        with self._lock:
            for agent, (s, endpoint, busy) in self.experts.items():
                if busy == call_id:
                    self.experts[agent] = (s, endpoint, None)
            self._event("take_back", call_id, reason)

    def end_three_way(self, agent):
        with self._lock:
            self._event("end_three_way", agent)


class MemoryTickets:
    def __init__(self):
        self.tickets: dict = {}
        self._lock = threading.Lock()

    def open(self, *, call_id, line, caller, rules_version, mode):
        with self._lock:
            tid = f"T{len(self.tickets) + 1:06d}"
            self.tickets[tid] = {"call_id": call_id, "line": line, "caller": caller, "mode": mode,
                                 "rules_version": rules_version, "transcript": [], "recordings": [],
                                 "survey": None, "status": "open"}
            return tid

    def transcript(self, ticket, text, source):
        self.tickets[ticket]["transcript"].append((source, text))

    def recording(self, ticket, path):
        self.tickets[ticket]["recordings"].append(path)

    def survey(self, ticket, score):
        self.tickets[ticket]["survey"] = score

    def close(self, ticket, outcome):
        self.tickets[ticket]["status"] = outcome
