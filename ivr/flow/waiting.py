"""Waiting in queue: position, invitation, callback offer, words heard (an emergency), keys pressed."""
from __future__ import annotations

import logging

from call_routing.numbers import mask
from call_routing.router import decide, emergency_heard
from ivr.flow.agent import EMERGENCY_PRIORITY
from ivr.flow.start import one_at_a_time
from ivr.flow.state import CallState, Turn
from ivr.flow.words import CALLBACK_BOOKED, CALLBACK_OFFER, INVITE, _say, position_announcement

log = logging.getLogger("hotline.flow")


class Waiting:
    """Part of :class:`~ivr.flow.CallFlow`: the caller in queue, until an agent is offered the call."""

    def wait(self, call_id: str) -> Turn:
        """One tick of waiting: connect when an agent is assigned, else what to tell the caller."""
        with self._one_at_a_time(call_id):
            return self._wait(call_id)

    def heard(self, call_id: str, text: str, source: str = "speech") -> Turn:
        """Words the caller said while waiting: emergency -> transfer now; a possible emergency ->
        ahead of the queue with a supervisor alert; a clear domain -> requeue."""
        text = (text or "").strip()
        fields = None
        if text and self.classify is not None and emergency_heard(self._rules(), text) is None:
            # the pre-fill (slow under load) outside the call's lock: a tick, an offer or the
            # caller's hang-up meanwhile never waits for it; its answer is applied under the lock
            fields = self._classify(call_id, text)
        with self._one_at_a_time(call_id):
            return self._heard(call_id, text, source, fields)

    def _classify(self, call_id: str, text: str) -> dict:
        try:
            return self.classify(text) or {}
        except Exception:  # a pre-fill failure must never touch the call
            log.exception("call %s: classifying what was heard failed", call_id)
            return {}

    def _wait(self, call_id: str) -> Turn:
        call = self._load(call_id)
        rules = self._rules()
        now = self.clock()
        if call.state == "ended":
            return self._turn(call, "hangup")
        if call.state == "talking":
            # a late tick (Twilio's wait request sent just before the agent's answer): the
            # conversation goes on; Twilio discards this answer
            return self._turn(call, "queue")
        if call.state == "transferring" and call.target_kind == "emergency" and call.target:
            # an emergency heard by another process (the caller's speech while waiting): go now
            return self._turn(call, "transfer", self._emergency_notice(call, call.heard, rules),
                              reason="emergency")
        if call.enqueued_at is None or call.state != "waiting":
            first = call.enqueued_at is None
            if first:
                call.enqueued_at = call.announced_at = now
            call.state = "waiting"
            # written before the ACD is told: a front-end process that dies in between leaves a call
            # the flow knows as queued, which the dialplan's end report takes out of the ACD's line
            # (the other order left a caller served by the fallback seats in line as lost)
            self._save(call)
            if first:
                self._enqueue(call)
        status = self.queue.status(call_id)
        if status.state == "unknown":  # the ACD lost the call (its Redis restarted empty): in line again
            log.warning("call %s: the queue had lost it; queued again", call_id)
            self._enqueue(call)
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

    def _heard(self, call_id: str, text: str, source: str = "speech", fields: dict | None = None) -> Turn:
        call = self._load(call_id)
        rules = self._rules()
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
            if fields is None:
                fields = self._classify(call_id, text)
            skill = fields.get("skill")
            if fields.get("emergency_possible"):
                # 可能紧急: a seat hears the caller first — next free seat, supervisor alerted
                if not call.priority:
                    self.queue.prioritise(call_id, fields["emergency_possible"])
                    call.priority = EMERGENCY_PRIORITY
                    log.warning("call %s: possible emergency %s heard while waiting, ahead of the queue",
                                call_id, fields["emergency_possible"])
            elif skill and skill != call.skill and skill in rules.skills and not rules.skills[skill].expert:
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

    @one_at_a_time
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
