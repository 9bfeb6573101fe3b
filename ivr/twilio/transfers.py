"""Transfers of a Twilio call: parties of the call's conference — three-way (the sub-center or an
expert joins; the agent may leave = warm transfer), cold (the agent leaves as soon as the target
answers), cancel (the target is hung up, the caller stays with the agent)."""
from __future__ import annotations

import logging

from ivr.flow.three_way import REFUSALS
from ivr.twilio import twiml

log = logging.getLogger("hotline.twilio")
GONE = ("completed", "busy", "failed", "no-answer", "canceled")


class Transfers:
    """Part of :class:`~ivr.twilio.calls.Switchboard`: transfers and three-way conferences."""

    def start_transfer(self, call_id: str, kind: str, mode: str) -> dict:
        """Three-way (``mode='three_way'``) or cold transfer to the line's sub-center / experts.

        The decisions are the flow's (:meth:`ivr.flow.CallFlow.three_way` and friends, shared with
        Asterisk): experts are reserved through the ACD (``acd.transfer(call, expert_skill,
        three_way=True)``, the only way into an expert group): the seat offered in that same round
        trip joins the conference; no free seat → ``LookupError`` and nothing changed. The agent
        stays out of rotation while in the conference (paused ``three-way``) and wraps up when they
        leave."""
        leg = self.legs.get(call_id)
        if leg.get("agent_in") != "1":
            raise LookupError(REFUSALS["no_agent_talking"])
        if leg.get("transfer_call") or leg.get("transfer_state"):
            raise LookupError(REFUSALS["three_way_under_way"])
        if kind == "expert":
            return self._start_expert(call_id, leg, mode)
        turn = self.flow.three_way(call_id, kind)
        if turn.action != "transfer":
            raise LookupError(REFUSALS.get(turn.reason, REFUSALS["none_possible"]))
        try:
            participant = self._add_participant(call_id, leg, turn.target, turn.ticket)
        except Exception:
            self.flow.three_way_cancel(call_id, "ring-failed")
            raise
        self.legs.set(call_id, transfer_call=participant.call_sid, transfer_mode=mode, transfer_state="ringing",
                      transfer_target=turn.target)
        log.info("call %s: %s transfer to %s %s", call_id, mode, kind, turn.target)
        return {"call": call_id, "mode": mode, "kind": kind, "target": turn.target, "ticket": turn.ticket}

    def _add_participant(self, call_id: str, leg: dict, target: str, ticket: str | None, **query):
        return self.client.conferences(self._conference_sid(call_id, leg)).participants.create(
            from_=self._from(leg), to=twiml.endpoint_address(target, ticket), label="transfer",
            status_callback=self.url(call_id, "transfer-status", call=call_id, **query),
            status_callback_event=["answered", "completed"], timeout=self.transfer_timeout_s,
            early_media=True, beep="false", end_conference_on_exit=False)

    def _start_expert(self, call_id: str, leg: dict, mode: str) -> dict:
        state = self._flow_state(call_id)
        if state is None:
            raise LookupError(REFUSALS["call_ended"])
        conference = self._conference_sid(call_id, leg)  # before reserving: no seat held for nothing
        # other processes' offer listeners see "reserving" and leave this offer to us
        self.legs.set(call_id, transfer_state="reserving", transfer_mode=mode)
        try:
            turn = self.flow.three_way(call_id, "expert")  # the ACD reserves the seat (or nothing changes)
        except Exception:
            self.legs.set(call_id, transfer_state=None, transfer_mode=None)
            raise
        if turn.action != "transfer" or not turn.party:
            self.legs.set(call_id, transfer_state=None, transfer_mode=None)
            raise LookupError(REFUSALS.get(turn.reason, REFUSALS["no_expert_free"]))
        expert = turn.party
        target = turn.target or f"client:{expert}"
        n = (self.acd.call(call_id) or {}).get("offers") or 0
        self.legs.r.set(f"{self.legs.prefix}ring:{call_id}:{n}", 1, ex=3600)  # rung here, by nobody else
        try:
            participant = self._add_participant(call_id, dict(leg, conference_sid=conference), target, state.ticket,
                                                expert=expert)
        except Exception:
            log.exception("call %s: could not ring expert %s; the call stays with the agent", call_id, expert)
            self.legs.set(call_id, transfer_state=None, transfer_mode=None)
            self.flow.three_way_cancel(call_id, "ring-failed")
            raise LookupError(REFUSALS["expert_not_rung"]) from None
        self.legs.set(call_id, transfer_call=participant.call_sid, transfer_state="ringing",
                      transfer_target=target, transfer_agent=expert)
        log.info("call %s: %s transfer to expert %s (%s)", call_id, mode, expert, target)
        return {"call": call_id, "mode": mode, "kind": "expert", "target": target, "ticket": state.ticket,
                "expert": expert}

    def transfer_status(self, call_id: str, status: str) -> None:
        leg = self.legs.get(call_id)
        tcall = leg.get("transfer_call")
        if not tcall:
            return
        if status in ("in-progress", "answered"):
            if not self.legs.once(call_id, f"transfer-answered:{tcall}"):
                return
            self.legs.set(call_id, transfer_state="joined")
            self.flow.three_way_answered(call_id)  # a reserved expert seat is now busy on the call
            if leg.get("transfer_mode") == "cold":
                self.agent_leave(call_id)
        elif status in GONE:
            if not self.legs.once(call_id, f"transfer-ended:{tcall}"):
                return
            self._clear_transfer(call_id)
            joined = leg.get("transfer_state") == "joined"
            # did not answer, or left: the call is the agent's again (or, agent gone, over)
            self.flow.three_way_ended(call_id, "completed" if joined else status)
            if joined and leg.get("agent_in") != "1":
                self.to_survey(call_id)  # the target took over and has now hung up

    def _clear_transfer(self, call_id: str) -> None:
        self.legs.set(call_id, transfer_call=None, transfer_state=None, transfer_mode=None, transfer_target=None,
                      transfer_agent=None)

    def cancel_transfer(self, call_id: str) -> dict:
        """Hang up the transfer target (ringing or joined); the caller stays with the agent."""
        leg = self.legs.get(call_id)
        tcall = leg.get("transfer_call")
        if not tcall:
            raise LookupError(REFUSALS["nothing_to_cancel"])
        if leg.get("agent_in") != "1":
            raise LookupError(REFUSALS["agent_left"])
        status = "canceled" if leg.get("transfer_state") == "ringing" else "completed"
        self.client.calls(tcall).update(status=status)
        self.legs.once(call_id, f"transfer-ended:{tcall}")
        self._clear_transfer(call_id)
        self.flow.three_way_cancel(call_id)  # an expert seat is free again
        return {"call": call_id, "cancelled": tcall}

    def agent_leave(self, call_id: str) -> dict:
        """The agent leaves a three-way call (warm transfer): the target stays with the caller."""
        leg = self.legs.get(call_id)
        if leg.get("transfer_state") != "joined":
            raise LookupError(REFUSALS["not_answered"])
        self.client.conferences(self._conference_sid(call_id, leg)).participants(leg["agent_call"]).delete()
        self.legs.set(call_id, agent_in="0")
        self.legs.once(call_id, f"agent-left:{leg['agent_call']}")
        self._agent_done(call_id, leg)
        return {"call": call_id, "left": leg.get("agent")}

    def _agent_done(self, call_id: str, leg: dict) -> None:
        """The agent's part of the call is over: wrap-up. After an expert three-way the call
        itself is the expert's in the ACD; the agent only leaves the conference."""
        if self.flow.three_way_agent_left(call_id).action == "none":  # no three-way known to the flow
            self.flow.queue.completed(call_id)
