"""transfer: what happened to a Dial, and three-way transfers (三方转接).

``AGI(agi://127.0.0.1:4573/transfer,${HOTLINE_CALL_ID},${DIALSTATUS})`` after a Dial:
ANSWER -> ``HOTLINE_ACTION=survey``; an agent who did not answer -> ``queue`` (back to the
head of the queue); an emergency or sub-center that could not be reached -> ``queue`` to its
fallback seat group. ``...,answered`` from the agent leg's answer Gosub marks the call
connected in the ACD; ``...,hangup`` from the ``h`` extension closes the call; ``...,fallback``
from the ``h`` extension of ``[hotline-fallback]`` (the call ended at the dialplan's own
general seats after our AGI failed) releases it from the ACD — served, not lost: no missed-call
callback, and one the ACD had booked meanwhile (the caller looked lost) is cancelled.
These two end-of-call reports keep trying for :data:`END_REPORT_RETRY_S` while Redis cannot be
reached (restarting, a Sentinel failover): the caller is gone, so the wait costs nobody anything,
and a report given up leaves them in the ACD's line until its lost-caller sweep
(``queue.lost_after_s``) takes them. They also have the ticket's row written if it is still only
a draft in Redis; when Redis restarted empty and the flow no longer knows the call, from what the
channel holds (:func:`channel_facts`: the ticket number, line and rules version ``route_call``
set, and the caller), so that a Redis lost with its data never loses a ticket — also when the
report is given up because Redis is still unreachable (:meth:`CallFlow.ended_unreachable`).
``...,recorded`` from the hangup handler of a call recorded for quality review stores the
recording with the ticket (the worker waits for MixMonitor to finish it).
``...,threeway,subcenter|expert`` is the older spelling of ``threeway,<call>,start,<kind>``
(:mod:`agi_scripts.threeway`).
"""
from __future__ import annotations

from ivr.asterisk.agi import hand_back
from ivr.services import report_end

#: how long the ``h`` extension's report of a call's end keeps trying while Redis is down
END_REPORT_RETRY_S = 8.0


def handler(session) -> None:
    if session.arg(1).lower() == "threeway":  # the agent's channel, not the caller's: no call_id here
        from .threeway import handler as threeway

        session.args = [session.arg(0), "start", session.arg(2, "subcenter")]
        return threeway(session)
    call_id = session.call_id_from_args()
    what = session.arg(1).lower()
    flow = session.flow
    if what == "hangup":  # from the h extension: the caller left during a Dial or between AGIs
        return _report_end(flow.hung_up, call_id, session)
    if what == "fallback":  # the h extension of [hotline-fallback]
        return _report_end(flow.fallback, call_id, session, "fallback")
    if what == "recorded":  # the hangup handler of a call recorded by MixMonitor ([hotline-record])
        from .queue_wait import call_recording_name

        flow.call_recorded(call_id, call_recording_name(call_id) + ".wav")
        return
    if what == "answered":  # on the agent's leg: its channel lets the console move the call later
        flow.agent_answered(call_id, channel=session.agi.env.get("agi_channel"))
        return
    hand_back(session.agi, flow.transfer_ended(call_id, what or "unknown"))


def channel_facts(session) -> dict:
    """What the caller's channel holds of its call and ticket: the contract variables
    ``route_call`` set (read only when the flow lost the call: three GET VARIABLEs, which
    Asterisk answers in the ``h`` extension too) and the caller's number."""
    agi = session.agi
    caller = agi.env.get("agi_callerid", "")
    return {"ticket": agi.get_var("HOTLINE_TICKET"), "line": agi.get_var("HOTLINE_LINE"),
            "rules_version": agi.get_var("HOTLINE_RULES_VERSION"),
            "caller": None if caller.lower() in ("", "unknown", "anonymous") else caller}


def _report_end(report, call_id: str, session, outcome: str | None = None) -> None:
    """``report`` with what the channel holds, retried while Redis is unreachable (:func:`report_end`)."""
    report_end(session.flow, report, call_id, lambda: channel_facts(session), outcome, END_REPORT_RETRY_S)
