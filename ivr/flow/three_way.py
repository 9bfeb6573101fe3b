"""Three-way transfers (三方转接): the agent pulls the line's sub-center or expert group into the call."""
from __future__ import annotations

import logging

from call_routing.router import three_way
from ivr.flow.state import CallState, Turn

log = logging.getLogger("hotline.flow")

#: why a three-way or transfer move is refused, as the agent reads it (both front-ends' consoles)
REFUSALS = {"no_expert_free": "专家坐席暂无空闲，请稍后再试", "three_way_under_way": "已有一个转接在进行中，请先取消",
            "no_agent_talking": "您当前没有通话中的来电", "no_such_party": "本线路没有可转接的对象",
            "none_possible": "现在无法转接", "expert_not_rung": "专家坐席未能呼通，来电仍由您接听",
            "call_ended": "来电已结束", "nothing_to_cancel": "没有可取消的转接",
            "agent_left": "您已离开三方通话，不能再取消转接", "not_answered": "转接对象尚未接听",
            "conference_gone": "本通来电的会议已结束"}


class ThreeWay:
    """Part of :class:`~ivr.flow.CallFlow`. Experts are reached only this way: the seat is reserved
    through the ACD in one round trip (``acd.transfer(call, skill, three_way=True)``) or nothing
    changes. The front-end rings the returned target and reports how that leg went; both
    front-ends share these decisions."""

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
