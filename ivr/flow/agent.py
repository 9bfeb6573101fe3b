"""The agent's part: the call offered to an agent, answered, or not answered (back to the queue)."""
from __future__ import annotations

import logging

from ivr.flow.start import one_at_a_time
from ivr.flow.state import Turn

log = logging.getLogger("hotline.flow")
EMERGENCY_PRIORITY = 9  # queue priority of an emergency caller whose transfer failed (ACD's highest)


class AgentPart:
    """Part of :class:`~ivr.flow.CallFlow`: the transfer to an agent (or an emergency line, a sub-center)."""

    def offered(self, call_id: str, agent: str, endpoint: str | None = None) -> None:
        """Push-style front-ends (Twilio): the ACD offered the waiting call to ``agent``, whose
        endpoint is being rung now (no :meth:`wait` tick needs to notice it first). One at a time
        with words heard meanwhile (:meth:`heard` reads, classifies and writes the call back): the
        offer is never written over by their older copy of the call."""
        with self._one_at_a_time(call_id):
            call = self._load(call_id)
            if call.state == "waiting":
                call.state, call.target, call.target_kind, call.agent = "transferring", endpoint, "agent", agent
                self._save(call)

    def agent_answered(self, call_id: str, channel: str | None = None) -> None:
        """The agent answered (``channel``: their leg on the PBX, for moves from outside); one at
        a time with words heard meanwhile, as :meth:`offered`."""
        with self._one_at_a_time(call_id):
            call = self._load(call_id)
            if call.target_kind == "agent":
                self.queue.connected(call_id)
                call.agent_channel = channel or call.agent_channel
            call.state = "talking"
            self._save(call)

    @one_at_a_time
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
        # emergency ahead of everyone waiting there (an agent relays it). Queued now, not at the
        # first wait: a seat freed while the notice plays takes this caller, not the next in line.
        call.skill = call.fallback_skill or self._rules().hotline.skill
        if call.target_kind == "emergency":
            call.priority = EMERGENCY_PRIORITY
        call.state, call.target, call.target_kind = "waiting", None, None
        self._enqueue(call)
        call.enqueued_at = call.announced_at = self.clock()
        self._save(call)
        log.warning("call %s: transfer failed (%s), queued to %s", call_id, status, call.skill)
        return self._turn(call, "queue", reason="transfer_failed")
