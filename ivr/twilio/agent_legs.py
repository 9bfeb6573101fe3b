"""The agent's leg of a Twilio call: rung for the ACD's offer, answered (the caller is moved into
the call's conference), ended (the caller goes on to the survey, or back to the queue)."""
from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError
from twilio.base.exceptions import TwilioException, TwilioRestException

from ivr.twilio import twiml
from ivr.twilio.transfers import GONE

log = logging.getLogger("hotline.twilio")


class AgentLegs:
    """Part of :class:`~ivr.twilio.calls.Switchboard`: ringing agents for offers, and their legs."""

    def _ring_key(self, offer) -> str:
        return f"{self.legs.prefix}ring:{offer.call_id}:{offer.n}"

    def on_offer(self, offer) -> None:
        """ACD hook and offer-listener handler: ring the offered agent for a Twilio call (others
        belong to Asterisk). Every process may see the same offer (its own hook, the pub/sub
        listener of each web process, the ringing-set sweep): ``SET ring:<call>:<n> NX`` lets
        exactly one of them ring, once per offer."""
        if offer.kind not in ("live", "transfer") or not self.legs.known(offer.call_id):
            return
        if offer.kind == "transfer" and self.legs.r.hget(self.legs.key(offer.call_id), "transfer_state"):
            return  # an expert reserved for a three-way: the switchboard that reserved it rings it
        if not self.legs.r.set(self._ring_key(offer), 1, nx=True, ex=3600):
            return
        try:
            self.ring_agent(offer.call_id, offer.agent_id)
        except Exception:
            log.exception("call %s: could not ring agent %s; the call goes back to its place",
                          offer.call_id, offer.agent_id)
            self.acd.no_answer(offer.call_id, "ring-failed")

    def ring_agent(self, call_id: str, agent_id: str) -> str:
        agent = self.acd.agent(agent_id) or {}
        endpoints = agent.get("endpoints") or [f"client:{agent_id}"]
        leg = self.legs.get(call_id)
        self.flow.offered(call_id, agent_id, endpoints[0])
        call = self.client.calls.create(
            to=twiml.endpoint_address(endpoints[0]), from_=self._from(leg),
            url=self.url(call_id, "agent-answer", call=call_id, agent=agent_id),
            status_callback=self.url(call_id, "agent-status", call=call_id, agent=agent_id),
            timeout=self.ring_timeout_s or int(self.acd.ring_timeout_s))  # the rules' queue: setting
        self.legs.set(call_id, agent=agent_id, agent_call=call.sid, agent_in="0")
        log.info("call %s: ringing agent %s (%s)", call_id, agent_id, call.sid)
        return call.sid

    def agent_answered(self, call_id: str, agent_id: str, agent_call: str) -> str:
        """The agent picked up: move the caller into the conference; TwiML for the agent."""
        state = self._flow_state(call_id)
        leg = self.legs.get(call_id)
        if state is None or state.state == "ended" or leg.get("agent_call") not in (None, agent_call):
            return twiml.goodbye([{"do": "say", "text": "来电已结束。"}])
        try:
            self.client.calls(call_id).update(twiml=twiml.conference(call_id, caller=True, stop_recording=True,
                                                                     record=self.flow.records_calls()))
        except TwilioRestException as exc:  # the citizen hung up while the agent was ringing
            log.warning("call %s: caller gone before agent %s answered (%s)", call_id, agent_id, exc.code)
            self.flow.hung_up(call_id)
            return twiml.goodbye([{"do": "say", "text": "来电已挂断。"}])
        try:
            self.flow.agent_answered(call_id)
            self.legs.set(call_id, agent_in="1")
        except Exception:  # e.g. Redis died just now: the caller is already in the conference, so
            # the agent joins them all the same; their hang-up is recognised by asking Twilio
            log.exception("call %s: agent %s answered but the call state could not be updated", call_id, agent_id)
        greeting = [{"do": "say", "text": f"{state.line}来电，工单{state.ticket}。" if state.ticket else f"{state.line}来电。"}]
        return twiml.conference(call_id, caller=False, greeting=greeting)

    def agent_leg_ended(self, call_id: str, status: str, leg_sid: str | None = None) -> None:
        """Status callback of an agent's leg ``leg_sid`` (retried by Twilio: idempotent)."""
        try:
            leg = self.legs.get(call_id)
        except RedisError:  # Redis down: Twilio will not call again, so act on what is known
            leg = {}
        if leg_sid and leg.get("agent_call") and leg_sid != leg["agent_call"]:
            # an earlier agent's leg (a late no-answer, or one rung before Redis lost the call's
            # facts): the call has another agent now, whose own leg says when they leave
            log.info("call %s: earlier agent leg %s %s; the call's agent is now on %s", call_id, leg_sid, status,
                     leg["agent_call"])
            return
        if status == "completed" and not leg.get("agent_call"):
            # the call's Twilio facts are gone (Redis down, or restarted empty; a webhook since,
            # e.g. the conference's participant-join, may have written a field or two back) but the
            # agent talked and hung up: the caller must not be left alone in a silent conference. Only
            # a caller Twilio says is in the call's conference is moved on: one still holding in
            # <Enqueue> (the agent answered after the wipe and was told "来电已结束") keeps
            # polling the wait URL, which registers the call again — a goodbye would lose them.
            if self.in_conference(call_id):
                self._release_alone_caller(call_id)
            else:
                log.info("call %s: agent leg ended with the call's facts gone; the caller is not in its "
                         "conference, so stays queued", call_id)
            return
        if leg.get("agent_in") == "1":
            if not self.legs.once(call_id, f"agent-left:{leg.get('agent_call')}"):
                return
            self.legs.set(call_id, agent_in="0")
            if leg.get("transfer_state") == "joined":
                self._agent_done(call_id, leg)  # hung up instead of "leave": same as leaving
            else:
                if leg.get("transfer_call") or leg.get("transfer_state"):
                    # the party still ringing: nobody is left to talk to (the flow cancels it)
                    self.flow.three_way_agent_left(call_id)
                    self._clear_transfer(call_id)
                self._release_alone_caller(call_id)  # Redis gone meanwhile: a goodbye, never silence
            return
        if status == "completed" and leg.get("agent_call") and self.in_conference(call_id):
            # the agent talked in the conference but their answer was never recorded (the call
            # state could not be written then): they have hung up, the caller is alone in it
            if self.legs.once(call_id, f"agent-left:{leg['agent_call']}"):
                log.warning("call %s: agent leg ended unrecorded while the caller is in the conference", call_id)
                self._release_alone_caller(call_id)
            return
        if status in ("no-answer", "busy", "failed", "canceled") and leg.get("agent_call"):
            if not self.legs.once(call_id, f"agent-missed:{leg['agent_call']}"):
                return
            self.legs.set(call_id, agent=None, agent_call=None, agent_in=None)
            state = self._flow_state(call_id)
            if state is not None and state.state == "transferring":
                self.flow.transfer_ended(call_id, "NOANSWER")  # head of the queue, next agent

    def missed_hang_ups(self) -> int:
        """Agents whose hang-up the app never acted on. Twilio sends the agent leg's status
        callback once: when it could not be acted on (Redis unreachable, the web process gone),
        the caller would stay alone in a silent conference. So, for every seat the ACD has busy
        on a Twilio call whose agent joined the conference, Twilio is asked about the agent's
        leg (``GET Calls/<agent leg>.json``); a leg that has ended is handled as its callback
        would have been (:meth:`agent_leg_ended`, claimed once: the caller goes on to the
        survey). Returns how many were found."""
        r, keys = self.acd.redis, self.acd.keys
        seats = list(r.smembers(keys.agents()))
        pipe = r.pipeline(transaction=False)
        for agent_id in seats:
            pipe.hmget(keys.agent(_text(agent_id)), "state", "call")
        calls = sorted({_text(call) for state, call in pipe.execute() if _text(state) == "busy" and call})
        found = 0
        for call_id in calls:
            leg = self.legs.get(call_id)
            if leg.get("agent_in") != "1" or not leg.get("agent_call"):
                continue  # not a Twilio call, or its agent is not (or no longer) in the conference
            try:
                status = self.client.calls(leg["agent_call"]).fetch().status
            except TwilioRestException as exc:
                log.warning("call %s: could not ask Twilio about agent leg %s (%s)", call_id, leg["agent_call"],
                            exc.code)
                continue
            if status in GONE:
                log.warning("call %s: agent leg %s %s without a status callback acted on", call_id,
                            leg["agent_call"], status)
                self.agent_leg_ended(call_id, status)
                found += 1
        return found

    ALONE_AFTER_S = 8.0  # a caller seen alone twice this far apart has been forgotten
    ALONE_CHECKS_AT_MOST = 50  # participant lists asked for in one check (REST requests)

    def lone_callers(self) -> int:
        """Callers alone in their conference whom nothing else would move on. The agent's
        hang-up reaches the app as the leg's status callback, and :meth:`missed_hang_ups` asks
        Twilio about every agent the ACD has busy; but when Redis restarted empty *and* the
        callback was not acted on (the web process down at that moment), neither knows the call
        any more, and the caller would sit in a silent conference until they hang up. So Twilio
        is asked for its running hotline conferences (``GET Conferences?Status=in-progress``,
        one request a page); each one whose call the app does not know to have an agent in it
        is asked for its participants, and a caller found alone there twice, at least
        ``ALONE_AFTER_S`` apart (an agent who just answered joins a moment after the caller is
        moved in), goes on: the survey when the call is known, else a spoken goodbye. Returns
        how many were released."""
        if not (self.account_sid and self.auth_token):
            return 0  # no Twilio account configured: no conference of ours can exist
        asked = released = 0
        try:
            running = self.client.conferences.list(status="in-progress", page_size=200)
        except (TwilioException, OSError) as exc:  # a page Twilio would not give: asked again next time
            log.warning("could not ask Twilio for its running conferences (%s)", exc)
            return 0
        for conference in running:
            name = conference.friendly_name or ""
            call_id = name[len("hotline-"):] if name.startswith("hotline-") else ""
            if not call_id or "-" in call_id:  # not a citizen call's: a callback's (hotline-<call>-cb<n>)
                continue  # ends when either of its two legs leaves (twiml.callback_bridge)
            if self.legs.get(call_id).get("agent_in") == "1":
                continue  # an agent the app knows is talking: their leg is watched (missed_hang_ups)
            if asked >= self.ALONE_CHECKS_AT_MOST:
                break
            asked += 1
            try:
                others = [p for p in conference.participants.list(limit=20) if p.call_sid != call_id]
            except (TwilioException, OSError) as exc:  # ended meanwhile, or Twilio in trouble
                log.info("call %s: could not ask Twilio who is in its conference (%s)", call_id, exc)
                continue
            alone_s = self._alone_for(call_id, alone=not others)
            if alone_s is None:
                continue
            log.warning("call %s: the caller has been alone in the conference for %.0f s with nothing to move "
                        "them on (an agent's hang-up not acted on); taking them on", call_id, alone_s)
            state = self._flow_state(call_id)
            if state is None or state.state == "ended":
                self._say_goodbye(call_id)
            else:
                self._release_alone_caller(call_id)
            released += 1
        return released

    def _alone_for(self, call_id: str, alone: bool) -> float | None:
        """How long the caller has been seen alone, once that is ``ALONE_AFTER_S`` or more (the
        sighting is then forgotten); None before, or when they are not alone (``twilio:alone:``
        keeps the first sighting, in Redis: the check runs in any web process)."""
        key = f"{self.legs.prefix}alone:{call_id}"
        if not alone:
            self.legs.r.delete(key)
            return None
        now = time.time()
        if self.legs.r.set(key, now, nx=True, ex=600):
            return None  # first seen alone: look again next time
        alone_s = now - float(self.legs.r.get(key) or now)
        if alone_s < self.ALONE_AFTER_S:
            return None
        self.legs.r.delete(key)
        return alone_s

    def _release_alone_caller(self, call_id: str) -> None:
        """The agent has gone and the caller is alone in the conference: the survey when the
        call is known, else a spoken goodbye (its state is gone: nothing to record a rating on)."""
        try:
            self.to_survey(call_id)
        except RedisError:
            self._say_goodbye(call_id)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v or "")
