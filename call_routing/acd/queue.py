"""The ACD's queues: a call's arrival, its place and estimated wait, a callback that keeps the
place, a move to another group, and how the call leaves (hang-up, on purpose, the survey)."""
from __future__ import annotations

import uuid

from call_routing.numbers import mask

from .model import LEAVE_REASONS, MAX_PRIORITY, SURVEY_SCORES, ACDError, Placement, Position, Result, _check_id, \
    _text, caller_key, log

DEFAULT_HANDLE_S = 180.0  # estimated handle time before a group has any history


class QueueMixin:
    """The queue half of :class:`call_routing.acd.core.ACD`: calls waiting per skill."""

    def enqueue(self, skill: str, line: str, caller: str | None = None, *, priority: int = 0,
                ticket: str | None = None, call_id: str | None = None, transfer: bool = False,
                now: float | None = None) -> Placement:
        """Queue a call for ``skill`` (from the router's enqueue step) and offer it if a seat is free.

        Closed groups send the call to their overflow/general group or to a callback; an open
        group with nobody logged in overflows at once and warns the supervisor. Expert groups
        take calls only by transfer (``transfer=True``).
        """
        rules = self.rules
        target = rules.skills.get(skill)
        if target is None:
            raise ACDError(f"no skill {skill!r} in rules {rules.version}")
        if target.expert and not transfer:
            raise ACDError(f"{skill} is an expert group: expert seats are reached only by transfer")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ACDError(f"priority must be 0 to {MAX_PRIORITY}")
        now = self.clock() if now is None else now
        call_id = _check_id("call id", call_id) if call_id is not None else uuid.uuid4().hex
        key = caller_key(caller)
        chain, unstaffed = self._plan(skill, now, has_number=bool(key))
        score = (MAX_PRIORITY - priority) * 10 ** 13 + int(now * 1000)
        masked = mask(caller)
        result = self._run("enqueue", call_id, score, repr(float(now)), line, caller or "", masked,
                           priority, ticket or "", "transfer" if transfer else "live", unstaffed,
                           key, skill, *chain, now=now)
        if result.status == "exists":
            raise ACDError(f"call {call_id} is already known to the ACD ({result.info})")
        queued_skill, _, kind = result.info.partition(" ")
        log.debug("call %s from %s on %s queued for %s as %s", call_id, masked, line, queued_skill, kind)
        return Placement(call_id, result.status, queued_skill, kind, result.offers)

    def hangup(self, call_id: str, ended_by: str = "caller") -> Result:
        """The call ended. Waiting/ringing: abandoned (with a missed-call callback keeping its
        place when it waited ``abandon_callback_after_s``). Connected: completed, agent wraps up."""
        after = "" if self.abandon_callback_after_s is None else self.abandon_callback_after_s
        return self._run("hangup", call_id, after, ended_by)

    def leave(self, call_id: str, reason: str) -> Result:
        """The caller leaves the queue on purpose — transferred to an emergency line, sent to the
        front-end's fallback seats, …: logged as ``leave`` with ``reason``; never abandoned, never
        a missed-call callback, not in 呼损率. A ringing agent is released (keeps its place).
        Status ``ok``, or ``bad_state`` when the call is not waiting/ringing (already gone)."""
        if reason not in LEAVE_REASONS:
            raise ACDError(f"leave reason must be one of {', '.join(LEAVE_REASONS)}")
        return self._run("leave", call_id, reason)

    def survey(self, call_id: str, score: str, line: str = "") -> Result:
        """The caller's satisfaction key after the call (1 满意, 2 基本满意, 3 不满意), into the
        queue log once per call (``already`` after that). ``line`` is used for calls the ACD
        never queued (sub-center, emergency)."""
        score = str(score)
        if score not in SURVEY_SCORES:
            raise ACDError(f"survey score must be one of {', '.join(SURVEY_SCORES)}")
        return self._run("survey", call_id, score, line or "")

    def request_callback(self, call_id: str) -> Result:
        """A waiting caller accepts a callback: they may hang up, their place is kept."""
        return self._run("request_callback", call_id)

    def callback_failed(self, call_id: str) -> Result:
        """The citizen did not answer a callback: retried later from the same place, up to
        ``callback_attempts`` times; the agent is ready again."""
        return self._run("callback_failed", call_id, self.callback_attempts, self.callback_retry_s)

    def requeue(self, call_id: str, new_skill: str) -> Result:
        """A waiting call moves to another skill keeping its waiting time (its place by arrival)."""
        skill = self.rules.skills.get(new_skill)
        if skill is None:
            raise ACDError(f"no skill {new_skill!r} in rules {self.rules.version}")
        if skill.expert:
            raise ACDError(f"{new_skill} is an expert group: expert seats are reached only by transfer")
        has_number = bool(_text(self.redis.hget(self.keys.call(call_id), "caller")))
        chain, unstaffed = self._plan(new_skill, self.clock(), has_number)
        return self._run("move", call_id, "requeue", "", unstaffed, *chain)

    def prioritise(self, call_id: str, emergency: str, priority: int = MAX_PRIORITY) -> Result:
        """A waiting call that may be an emergency (可能紧急: ``emergency`` is the line it may be,
        110/119/120/122) goes ahead of every call of a lower priority and to the next free seat;
        a ``possible_emergency`` alert tells the supervisors. Status ``ok``, else ``bad_state``
        (no longer waiting or ringing)."""
        if not 0 <= priority <= MAX_PRIORITY:
            raise ACDError(f"priority must be 0 to {MAX_PRIORITY}")
        return self._run("prioritise", call_id, priority, MAX_PRIORITY - priority, emergency)

    def set_ticket(self, call_id: str, ticket: str) -> bool:
        """Record the ticket id of a call (the speech pipeline fills it while the caller waits)."""
        key = self.keys.call(call_id)
        if not self.redis.exists(key):
            return False
        self.redis.hset(key, "ticket", ticket)
        return True

    def call(self, call_id: str) -> dict | None:
        data = self.redis.hgetall(self.keys.call(call_id))
        if not data:
            return None
        d = {_text(a): _text(b) for a, b in data.items()}
        return {"id": call_id, "state": d.get("state"), "kind": d.get("kind"), "skill": d.get("skill"),
                "queues": [q for q in d.get("queues", "").split(",") if q], "line": d.get("line"),
                "caller": d.get("caller") or None, "caller_masked": d.get("masked"),
                "priority": int(d.get("prio") or 0), "ticket": d.get("ticket") or None,
                "agent": d.get("agent") or None, "entered": float(d.get("entered") or 0),
                "offers": int(d.get("offers") or 0), "attempts": int(d.get("attempts") or 0),
                "urgent": d.get("urgent") or None}

    def position(self, call_id: str, *, caller_there: bool = False) -> Position | None:
        """Place in line (best over the queues the call is in) and an estimated wait from the
        group's recent handle times: position × average handle time ÷ seats logged in.

        ``caller_there``: asked by the front-end holding the caller (its waiting loop), which
        proves the caller is still on the line; a live caller nobody asks about for
        ``lost_after_s`` is taken as lost by :meth:`tick`."""
        call = self.call(call_id)
        if call is None:
            return None
        now = self.clock()
        waited = max(0.0, now - call["entered"])
        due = call["kind"] == "live" and waited >= self.rules.callback_offer_after_s
        if call["state"] != "waiting":
            return Position(call_id, call["state"], call["skill"], 0, waited, 0.0, False)
        k = self.keys
        pipe = self.redis.pipeline()
        for q in call["queues"]:
            pipe.zrank(k.queue(q), call_id)
            pipe.scard(k.staffed(q))
            pipe.lrange(k.handle(q), 0, 19)
        if caller_there:
            pipe.zadd(k.seen(), {call_id: now}, xx=True)  # only a caller still in the index (waiting live)
            pipe.hsetnx(k.call(call_id), "polled", "1")  # its front-end is one that asks (see no_answer)
        raw = pipe.execute()
        best = None
        for i, q in enumerate(call["queues"]):
            rank, staffed, handles = raw[3 * i: 3 * i + 3]
            if rank is None:
                continue
            times = [float(_text(h)) for h in handles]
            aht = sum(times) / len(times) if times else DEFAULT_HANDLE_S
            ewt = (rank + 1) * aht / max(1, staffed)
            if best is None or (rank + 1, ewt) < best[:2]:
                best = (rank + 1, ewt, q)
        if best is None:
            return Position(call_id, call["state"], call["skill"], 0, waited, 0.0, due)
        return Position(call_id, "waiting", best[2], best[0], waited, round(best[1], 1), due)
