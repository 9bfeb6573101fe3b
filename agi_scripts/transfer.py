"""transfer: what happened to a Dial, and three-way transfers (三方转接).

``AGI(agi://127.0.0.1:4573/transfer,${HOTLINE_CALL_ID},${DIALSTATUS})`` after a Dial:
ANSWER -> ``HOTLINE_ACTION=survey``; an agent who did not answer -> ``queue`` (back to the
head of the queue); an emergency or sub-center that could not be reached -> ``queue`` to its
fallback seat group. ``...,answered`` from the agent leg's answer Gosub marks the call
connected in the ACD; ``...,hangup`` from the ``h`` extension closes the call; ``...,fallback``
from the ``h`` extension of ``[hotline-fallback]`` (the call ended at the dialplan's own
general seats after our AGI failed) releases it from the ACD — served, not lost: no missed-call
callback, and one the ACD had booked meanwhile (the caller looked lost) is cancelled.
``...,recorded`` from the hangup handler of a call recorded for quality review stores the
recording with the ticket (the worker waits for MixMonitor to finish it).
``...,threeway,subcenter|expert`` is the older spelling of ``threeway,<call>,start,<kind>``
(:mod:`agi_scripts.threeway`).
"""
from __future__ import annotations

from ivr.asterisk.agi import hand_back


def handler(session) -> None:
    if session.arg(1).lower() == "threeway":  # the agent's channel, not the caller's: no call_id here
        from .threeway import handler as threeway

        session.args = [session.arg(0), "start", session.arg(2, "subcenter")]
        return threeway(session)
    call_id = session.call_id_from_args()
    what = session.arg(1).lower()
    flow = session.flow
    if what == "hangup":  # from the h extension: the caller left during a Dial or between AGIs
        flow.hung_up(call_id)
        return
    if what == "fallback":  # the h extension of [hotline-fallback]
        flow.fallback(call_id)
        return
    if what == "recorded":  # the hangup handler of a call recorded by MixMonitor ([hotline-record])
        from .queue_wait import call_recording_name

        flow.call_recorded(call_id, call_recording_name(call_id) + ".wav")
        return
    if what == "answered":  # on the agent's leg: its channel lets the console move the call later
        flow.agent_answered(call_id, channel=session.agi.env.get("agi_channel"))
        return
    hand_back(session.agi, flow.transfer_ended(call_id, what or "unknown"))
