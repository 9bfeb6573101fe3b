"""The end of a call: the satisfaction survey, the caller hanging up, the front-end's fallback."""
from __future__ import annotations

import logging

from call_routing.router import decide
from ivr.flow.start import one_at_a_time
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

    @one_at_a_time
    def fallback(self, call_id: str, known=None) -> None:
        """The front-end failed and sends the caller to its own safe fallback: leave our queue.
        ``known``: as for :meth:`hung_up` (the ``h`` extension of the dialplan's fallback)."""
        try:
            call = self._load(call_id)
        except CallNotFound:
            self._lost_call_ended(call_id, known, "fallback")
            return
        if call.state == "ended":  # reported again (the dialplan's h extension after our own end)
            if known is not None:
                self._keep_ticket(call)
            return
        if call.state == "waiting" and call.enqueued_at is not None:
            self.queue.leave(call_id, "fallback")
        self._finish(call, "fallback")
        if known is not None:  # the report of a call that is over (not the AGI giving the caller up)
            self._keep_ticket(call)

    @one_at_a_time
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

    @one_at_a_time
    def hung_up(self, call_id: str, known=None) -> None:
        """The caller is gone, wherever the call was. Idempotent.

        The ticket's row is in the database afterwards (:meth:`_keep_ticket`): until then it may be
        only a draft in Redis, and a Redis that restarts empty would take it along. ``known``: what
        the front-end itself holds of the call (a dict, or a callable returning one, asked only when
        the flow no longer knows the call): ``ticket``, ``line``, ``rules_version`` (Asterisk's
        channel variables) or ``dialed`` (Twilio's ``To``), and ``caller``."""
        try:
            call = self._load(call_id)
        except CallNotFound:
            self._lost_call_ended(call_id, known, None)
            return
        if call.state == "ended":
            self._keep_ticket(call)
            return
        joined_expert = self._close_three_way(call)
        if call.state == "waiting" and call.enqueued_at is not None:
            self.queue.leave(call_id, "abandoned")
        elif call.state in ("transferring", "talking") and call.target_kind == "agent":
            self.queue.completed(call_id, "caller")
        if joined_expert and call.agent:
            self.queue.end_three_way(call.agent)  # the agent was still in the three-way
        self._finish(call, "abandoned" if call.state in ("waiting", "routing") else "completed")
        self._keep_ticket(call)

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

    def _keep_ticket(self, call: CallState, time_known: bool = True) -> str | None:
        """The caller is gone: have the ticket's row written now if the writer has not yet
        (``TicketPort.keep``; usually one read of a row already there). Returns the ticket id.
        ``time_known`` False: a call rebuilt after Redis lost it (its start time is not known)."""
        if not call.ticket and time_known:
            return call.ticket
        try:
            return self.tickets.keep(call.ticket, call_id=call.id, line=call.line, caller=call.caller or None,
                        rules_version=call.rules_version or None, started=call.started if time_known else None)
        except Exception:  # the draft stays for the ticket writer
            log.exception("call %s: ticket %s not written at the call's end", call.id, call.ticket)
            return call.ticket

    def ended_unreachable(self, call_id: str, known, outcome: str | None = None) -> None:
        """The end of a call reported while the call store cannot be reached (Redis down — and it
        may come back empty): the ticket's row is written now from what the front-end holds, as
        for a call Redis lost, touching nothing in Redis. Should Redis come back with its data,
        the draft finds that row by call id (a new number is then the ticket's, the first an
        alias). The front-end's last resort once its report has failed."""
        self._lost_call_ended(call_id, known, outcome, save=False)

    def _lost_call_ended(self, call_id: str, known, outcome: str | None, save: bool = True) -> None:
        """A call the flow no longer knows ended: Redis restarted empty under it, taking the call
        state and the ticket's draft. The ticket is written from what the front-end still holds
        (``known``): the number, line and rules version on the Asterisk channel; for a Twilio call,
        whose number was in Redis only, the number dialed, routed again, under a new number — as
        the wait URL does for a caller still holding. The intake time is the end's (approximate,
        the history says so). The call's state is written again (``save``), ended, so its later
        reports (a recording) find the ticket. ``outcome``: what is known of the end
        (``fallback``), or None."""
        try:
            facts = known() if callable(known) else known
        except Exception:  # e.g. the channel no longer answers: nothing to rebuild from
            log.exception("call %s: ended unknown to the flow, and what the front-end holds could not be read",
                          call_id)
            return
        if not facts:
            return
        ticket, line, version, mode = facts.get("ticket") or None, facts.get("line"), facts.get("rules_version"), ""
        if not (ticket and line):
            dialed = facts.get("dialed") or line
            if not dialed:
                return
            decision = decide(dialed, facts.get("caller"), self.clock(), None, self._rules())
            if not any(s["do"] in ("enqueue", "transfer") for s in decision.steps):
                return  # as in start(): a number that only announces opened no ticket
            line, version, mode = decision.line, decision.rules_version, decision.mode
        call = CallState(call_id, facts.get("dialed") or line, facts.get("caller") or "", line, mode, version or "",
                         self.clock(), ticket=ticket, state="ended")
        call.ticket = self._keep_ticket(call, time_known=False)
        log.warning("call %s ended unknown to the flow (Redis lost its state): ticket %s kept from the end report",
                    call_id, call.ticket)
        if not call.ticket:
            return
        if save:
            self._save(call)
        if outcome:
            try:
                self.tickets.close(call.ticket, outcome)
            except Exception:
                log.exception("call %s: outcome %s not written on ticket %s", call_id, outcome, call.ticket)
