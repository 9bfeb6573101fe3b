"""threeway: three-way transfers (三方转接) on Asterisk — the agent pulls in the line's
sub-center or expert seats; the decisions are :class:`ivr.flow.CallFlow`'s (shared with Twilio).

Called from the sample dialplan (extensions.conf.sample), ``AGI(${HOTLINE_AGI}/threeway,<call>,<what>,...)``:

========================  =================================================  ========================
what (channel)            flow                                               hands back
========================  =================================================  ========================
``start,subcenter|expert``  ``three_way``: an expert is reserved through the   ``HOTLINE_ACTION=transfer``
(agent, feature *3/*4)      ACD in one round trip, or nothing changes          + ``HOTLINE_TARGET``, or
                                                                             ``stay`` (``HOTLINE_REASON``
                                                                             ``no_expert_free`` …)
``dial`` (party leg)        ``three_way_party``: what to ring now               ``transfer`` + target, or
                                                                             ``hangup`` (cancelled)
``answered`` (party)        ``three_way_answered``: the expert seat is busy     ``stay``; ``hangup`` when
                                                                             no longer wanted
``ended,${DIALSTATUS}``     ``three_way_ended``: NOANSWER/BUSY/CHANUNAVAIL/      ``stay`` (with the agent)
(party leg's hangup          CONGESTION → back to the agent, expert paused;    or ``survey`` (the caller
handler)                    ANSWER → the party left                           is alone)
``cancel`` (agent, *9)      ``three_way_cancel``: caller stays with the agent   ``stay``, reason
                                                                             ``cancelled``: hang up the
                                                                             party leg
``agent-left`` (agent's     ``three_way_agent_left``: joined → agent wraps up;  ``stay`` / ``survey`` (was
hangup handler)             ringing → cancelled                               ringing: hang up the party)
========================  =================================================  ========================

These run on the agent's and the party's channels, never the caller's: a failure or a hangup
here never closes the citizen's call (the session has no ``call_id``), it only leaves the
three-way as it was.
"""
from __future__ import annotations

import logging

from ivr.asterisk.agi import hand_back
from ivr.flow import CallNotFound, Turn

log = logging.getLogger("hotline.agi.threeway")


def handler(session) -> None:
    call_id = session.arg(0) or session.agi.get_var("HOTLINE_CALL_ID") or ""
    what = session.arg(1).lower()
    flow = session.flow
    try:
        if what == "start":
            turn = _start(flow, call_id, session.arg(2, "subcenter").lower())
        elif what == "dial":
            turn = flow.three_way_party(call_id)
        elif what == "answered":
            turn = flow.three_way_answered(call_id)
        elif what == "ended":
            turn = flow.three_way_ended(call_id, session.arg(2, "CANCEL"))
        elif what == "cancel":
            turn = flow.three_way_cancel(call_id)
        elif what in ("agent-left", "agent_left"):
            turn = flow.three_way_agent_left(call_id)
        else:
            log.warning("call %s: unknown three-way step %r", call_id, what)
            turn = Turn("none", call_id=call_id, reason="unknown_step")
    except CallNotFound:
        turn = Turn("none", call_id=call_id, reason="no_call")
    hand_back(session.agi, turn)


def _start(flow, call_id: str, kind: str) -> Turn:
    try:
        turn = flow.three_way(call_id, kind)
    except CallNotFound:
        raise
    except LookupError as exc:  # the line has no such party
        log.info("call %s: no three-way to %s: %s", call_id, kind, exc)
        return Turn("stay", call_id=call_id, reason="no_such_party")
    if turn.action == "transfer" and not turn.target:  # an expert seat without an endpoint to ring
        log.warning("call %s: expert %s has no endpoint; three-way given back", call_id, turn.party)
        flow.three_way_cancel(call_id, "ring-failed")
        return Turn("stay", call_id=call_id, reason="no_endpoint")
    return turn
