"""The agent console's transfer controls for calls that came through Asterisk (the ones from
Twilio are ``/agent/api/twilio/…``): ``POST /agent/api/asterisk/three-way`` (``{"kind":
"subcenter"|"expert"}``), ``…/cancel``, ``…/leave``. The decisions are the flow's, the moves
:class:`ivr.asterisk.pbx.AsteriskSwitchboard`'s (AMI, ``HOTLINE_AMI``)."""
from __future__ import annotations

import functools

from flask import Blueprint, current_app, g, jsonify, request

from consoles.agent_api import agent_required
from ivr.flow import CallNotFound
from ivr.asterisk.pbx import AsteriskSwitchboard, SwitchboardError

bp = Blueprint("asterisk_agent", __name__, url_prefix="/agent/api/asterisk")

REFUSED = {"no_expert_free": "专家座席暂无空闲，请稍后再试", "three_way_under_way": "已有一个转接在进行中",
           "no_agent_talking": "您当前没有通话中的来电", "no_such_party": "本线路没有可转接的对象"}


def _action(fn):
    @agent_required
    @functools.wraps(fn)
    def view():
        board = current_app.extensions["asterisk"]
        call_id = (current_app.extensions["acd"].agent(g.agent_id) or {}).get("call")
        if not call_id or not board.knows(call_id):
            return jsonify(error="您当前没有经电话交换机接入的通话"), 409
        try:
            return jsonify(fn(board, call_id, request.get_json(silent=True) or {}))
        except SwitchboardError as exc:
            return jsonify(error=str(exc)), 502
        except (CallNotFound, LookupError):
            return jsonify(error="本线路没有可转接的对象"), 409
    return view


@bp.post("/three-way")
@_action
def three_way(board, call_id, body):
    result = board.start_three_way(call_id, str(body.get("kind", "subcenter")))
    if result["status"] == "refused":
        result["error"] = REFUSED.get(result["reason"], "现在无法转接")
    return result


@bp.post("/cancel")
@_action
def cancel(board, call_id, body):
    return board.cancel(call_id)


@bp.post("/leave")
@_action
def leave(board, call_id, body):
    return board.leave(call_id)


def init_app(app) -> None:
    flow = app.extensions["twilio"]["flow"]  # the call flow over the shared Redis (any front-end's calls)
    app.extensions["asterisk"] = AsteriskSwitchboard(flow, app.config.get("HOTLINE_AMI"))
    app.register_blueprint(bp)
