"""The end of a call: the satisfaction survey, the caller hanging up, the front-end's fallback."""
from __future__ import annotations

import logging

from ivr.flow.state import CallNotFound, CallState, Turn
from ivr.flow.words import SURVEY, SURVEY_SCORES, SURVEY_THANKS, _say

log = logging.getLogger("hotline.flow")


class CallEnd:
    """Part of :class:`~ivr.flow.CallFlow`: the conversation is over, or the caller is gone."""

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

    def records_calls(self) -> bool:
        """Whether the whole conversation is recorded for quality review (质检): the rules'
        ``hotline.recording.full_call``. The front-end records from the agent's answer."""
        return bool(self._rules().recording.full_call)

    def call_recorded(self, call_id: str, recording: str) -> None:
        """The recording of the whole conversation (a file name in the recordings folder, or a
        URL): stored with the ticket and transcribed into its history by the worker (rq job)."""
        try:
            call = self._load(call_id)
        except CallNotFound:
            log.warning("call %s: full-call recording for a call no longer known: not stored", call_id)
            return
        store = getattr(self.tickets, "call_recording", None)  # ports written before 质检
        if call.ticket and store is not None:
            store(call.ticket, recording)

    def _finish(self, call: CallState, outcome: str) -> None:
        call.state = "ended"
        self._save(call)
        if call.ticket:
            try:
                self.tickets.close(call.ticket, outcome)
            except Exception:  # the call is over either way; the ticket keeps its draft and transcript
                log.exception("call %s: outcome %s not written on ticket %s", call.id, outcome, call.ticket)
