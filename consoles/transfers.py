"""The agent console's transfer controls, one set per front-end; the decisions are the call
flow's, the moves the front-end's switchboard's:

    /agent/api/twilio/three-way|cold|cancel|leave     :class:`ivr.twilio.calls.Switchboard` (REST API)
    /agent/api/asterisk/three-way|cancel|leave        :class:`ivr.asterisk.pbx.AsteriskSwitchboard` (AMI)

``three-way`` and ``cold`` take ``{"kind": "subcenter"|"expert"}``. Each answers 409 with the
reason when the seat has no call on that front-end or the move is refused."""
from __future__ import annotations

import functools

from flask import Blueprint, current_app, g, jsonify

from consoles.agent_api import agent_required, json_body
from ivr.asterisk.pbx import AsteriskSwitchboard, SwitchboardError
from ivr.flow import CallNotFound
from ivr.flow.three_way import REFUSALS

twilio_bp = Blueprint("twilio_agent", __name__, url_prefix="/agent/api/twilio")
asterisk_bp = Blueprint("asterisk_agent", __name__, url_prefix="/agent/api/asterisk")



def _action(board_of, knows, not_here: str):
    """A transfer control: the seat's current call, on this front-end, handed to ``fn(board,
    call_id, body)``; refusals become 409, a switchboard that cannot reach the PBX 502."""
    def wrap(fn):
        @agent_required
        @functools.wraps(fn)
        def view():
            board = board_of()
            call_id = (current_app.extensions["acd"].agent(g.agent_id) or {}).get("call")
            if not call_id or not knows(call_id):
                return jsonify(error=not_here), 409
            try:
                return jsonify(fn(board, call_id, json_body()))
            except SwitchboardError as exc:
                return jsonify(error=str(exc)), 502
            except CallNotFound:
                return jsonify(error=REFUSALS["no_such_party"]), 409
            except LookupError as exc:
                return jsonify(error=str(exc).strip("'\"")), 409
        return view
    return wrap


# -- Twilio ---------------------------------------------------------------------------------
def _twilio():
    return current_app.extensions["twilio"]


twilio_action = _action(lambda: _twilio()["board"], lambda call_id: _twilio()["legs"].known(call_id),
                        "您当前没有经 Twilio 接入的通话")


@twilio_bp.post("/three-way")
@twilio_action
def twilio_three_way(board, call_id, body):
    """三方转接: the caller, the agent and the target talk together."""
    return board.start_transfer(call_id, body.get("kind", "subcenter"), "three_way")


@twilio_bp.post("/cold")
@twilio_action
def twilio_cold(board, call_id, body):
    """Cold transfer: the agent drops out as soon as the target answers."""
    return board.start_transfer(call_id, body.get("kind", "subcenter"), "cold")


@twilio_bp.post("/cancel")
@twilio_action
def twilio_cancel(board, call_id, body):
    return board.cancel_transfer(call_id)


@twilio_bp.post("/leave")
@twilio_action
def twilio_leave(board, call_id, body):
    """Warm transfer done: the agent leaves the caller with the target."""
    return board.agent_leave(call_id)


# -- Asterisk -------------------------------------------------------------------------------
def _asterisk():
    return current_app.extensions["asterisk"]


asterisk_action = _action(_asterisk, lambda call_id: _asterisk().knows(call_id), "您当前没有经电话交换机接入的通话")


@asterisk_bp.post("/three-way")
@asterisk_action
def asterisk_three_way(board, call_id, body):
    result = board.start_three_way(call_id, str(body.get("kind", "subcenter")))
    if result["status"] == "refused":
        result["error"] = REFUSALS.get(result["reason"], REFUSALS["none_possible"])
    return result


@asterisk_bp.post("/cancel")
@asterisk_action
def asterisk_cancel(board, call_id, body):
    return board.cancel(call_id)


@asterisk_bp.post("/leave")
@asterisk_action
def asterisk_leave(board, call_id, body):
    return board.leave(call_id)


def init_app(app) -> None:
    """Both sets, after the Twilio front-end (its flow is the call flow over the shared Redis)."""
    flow = app.extensions["twilio"]["flow"]
    app.extensions["asterisk"] = AsteriskSwitchboard(flow, app.config.get("HOTLINE_AMI"))
    app.register_blueprint(twilio_bp)
    app.register_blueprint(asterisk_bp)
