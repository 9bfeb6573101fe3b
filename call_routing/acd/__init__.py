"""ACD: 7×24 agent seats and call queues on Redis, with callbacks that keep the caller's place.

Public API (see docs/acd.md): :class:`ACD` (enqueue, answer, no_answer, hangup, position,
request_callback, callback_failed, requeue, transfer, set_ticket, login/ready/pause/logout,
heartbeat, wrapup_done, tick, kpis), :class:`Agent`, :class:`Offer`, and the callback dialer
interface in :mod:`call_routing.acd.callbacks`.
"""
from .callbacks import CallbackDialer, CallbackRequest, RecordingDialer, place_callback
from .core import ACD, ACDError, Agent, Offer, Placement, Position, Result
from .keys import KEYS, Keys

__all__ = ["ACD", "ACDError", "Agent", "Offer", "Placement", "Position", "Result", "CallbackDialer",
           "CallbackRequest", "RecordingDialer", "place_callback", "KEYS", "Keys"]
