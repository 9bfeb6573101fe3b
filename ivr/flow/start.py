"""The start of a call (route it, open its ticket), and the call state every part of the flow uses."""
from __future__ import annotations

import contextlib
import functools

from dataclasses import asdict

import logging
import time
from typing import Callable

from call_routing.numbers import mask
from call_routing.router import decide
from ivr.flow.state import CallNotFound, CallState, CallStore, QueuePort, TicketPort, Turn

log = logging.getLogger("hotline.flow")


def one_at_a_time(method):
    """A flow step that reads, changes and writes one call's state, run under the call's lock
    (:meth:`CallStart._one_at_a_time`): words still being classified must not write their older
    copy of the call over the caller's hang-up, a key press or the end of a dial."""
    @functools.wraps(method)
    def step(self, call_id, *args, **kwargs):
        with self._one_at_a_time(call_id):
            return method(self, call_id, *args, **kwargs)
    return step



class CallStart:
    """Part of :class:`~ivr.flow.CallFlow`: its ports, the call state, and :meth:`start`."""

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

    @contextlib.contextmanager
    def _one_at_a_time(self, call_id: str):
        """A wait tick and words heard elsewhere (queue_wait and the AudioSocket server, the wait
        URL and a media stream) each read, change and write the call's state: one after the other,
        so an emergency heard is never overwritten by a tick that read the state before it."""
        held = self.calls.lock(call_id) if hasattr(self.calls, "lock") else None
        try:
            yield
        finally:
            if held is not None:
                try:
                    held.release()
                except Exception:  # held past its 5 s: another may have it now
                    log.warning("call %s: its state was held past the lock's 5 s", call_id)

    def _save(self, call: CallState, pipe=None) -> None:
        state = asdict(call)
        if pipe is not None:
            self.calls.put(call.id, state, pipe=pipe)
        else:
            self.calls.put(call.id, state)

    def _enqueue(self, call: CallState) -> None:
        """Put ``call`` in the ACD's line for its seat group (the general seats when it has none),
        at its priority."""
        self.queue.enqueue(call.id, skill=call.skill or self._rules().hotline.skill, line=call.line,
                           caller=call.caller, ticket=call.ticket, priority=call.priority)

    def _turn(self, call: CallState, action: str, steps=(), **kw) -> Turn:
        return Turn(action, list(steps), kw.pop("target", call.target), kw.pop("skill", call.skill), call.line,
                    call.ticket, call.rules_version, call.id, **kw)

    def state(self, call_id: str) -> CallState:
        return self._load(call_id)

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
