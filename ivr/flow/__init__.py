"""The life of one call, independent of the front-end (Asterisk AGI/FastAGI, Twilio).

A front-end reports what happened — the call arrived, a second passed in queue, words were
heard, a key was pressed, a transfer ended, the caller hung up — and gets back a
:class:`Turn`: steps to speak (``say``/``play``, ``listen`` for what to capture next) and a
hand-off (``queue`` = keep/put the caller in the queue, ``transfer`` = connect to
``target``, ``hangup``, ``survey``). Rendering a turn is the front-end's only job: AGI
commands in :mod:`ivr.asterisk.agi`, TwiML in the Twilio blueprint.

    flow = CallFlow(rules_store.current, services)
    turn = flow.start(call_id, dialed, caller)       # decision + ticket
    turn = flow.wait(call_id)                        # in queue, once a second or so:
                                                     # enqueues on the first call; agent
                                                     # assigned -> transfer; else position,
                                                     # invitation, callback offer
    turn = flow.heard(call_id, text)                 # emergency -> transfer; domain -> requeue
    turn = flow.pressed(call_id, digit)              # "1" after the callback offer
    flow.agent_answered(call_id)
    turn = flow.transfer_ended(call_id, status)      # answered -> survey; failed -> queue again
    turn = flow.survey(call_id, digit)               # 1/2/3 on the ticket and in the KPIs
    turn = flow.three_way(call_id, "expert")         # agent pulls in a party (expert reserved in the ACD)
    flow.three_way_answered(call_id)                 # ... which answered
    turn = flow.three_way_ended(call_id, status)     # ... whose leg ended (no answer: back to the agent)
    turn = flow.three_way_cancel(call_id)            # agent cancels: caller stays with the agent
    turn = flow.three_way_agent_left(call_id)        # agent leaves: warm transfer, agent wraps up
    flow.hung_up(call_id, known)                     # at any point; the ticket's row is written by
                                                     # then (from `known`, the front-end's facts,
                                                     # when Redis lost the call and its draft)

No menu ever stands between a caller and a human (GB/T 33358): the invitation to describe
the matter and the callback offer happen only while the caller is already queued.

The ACD, tickets and call state are reached through small ports (:class:`QueuePort`,
:class:`TicketPort`, :class:`CallStore` in :mod:`.state`; in-process ones in :mod:`.stores`);
:mod:`ivr.services` builds them for a process. Imports no telephony library. The flow is told
along the call: :mod:`.start`, :mod:`.waiting`, :mod:`.agent`, :mod:`.three_way`, :mod:`.end`;
what callers hear is in :mod:`.words`.
"""
from ivr.flow.agent import EMERGENCY_PRIORITY, AgentPart  # noqa: F401
from ivr.flow.end import CallEnd
from ivr.flow.start import CallStart
from ivr.flow.state import (CallNotFound, CallState, CallStore, QueuePort, QueueStatus, TicketPort,  # noqa: F401
                            Turn)
from ivr.flow.stores import MemoryCalls, MemoryQueue, MemoryTickets, RedisCalls  # noqa: F401
from ivr.flow.three_way import ThreeWay
from ivr.flow.waiting import Waiting
from ivr.flow.words import (CALLBACK_BOOKED, CALLBACK_OFFER, INVITE, MANY_WAITING, MAX_SPOKEN_NUMBER,  # noqa: F401
                            NEXT_IN_LINE, POSITION_HEAD, POSITION_MID, POSITION_TAIL, SURVEY, SURVEY_SCORES,
                            SURVEY_THANKS, fixed_prompts, position_announcement, spoken_number)


class CallFlow(CallStart, Waiting, AgentPart, ThreeWay, CallEnd):
    """One per process; thread-safe as long as its ports are."""
