"""The demo phone: a seat takes a *simulated* caller's call in the agent console, no handset needed.

The live simulator (``python -m tools.simulate --live``) plays the phone network for its callers.
When the product connects one of them to a seat whose phone is not one of the simulator's own
agents, the simulator rings that seat's demo phone instead of a handset: a small record in the
product's Redis that the agent console shows (振铃 → 接听 → 通话/保持 → 挂断), with what the
caller "says" arriving as text. The seat's buttons go back the same way, as commands the
simulator carries out on the call (answer, hold, resume, transfer to the line's sub-center or the
12345 expert seats, hang up). A Twilio call's transfer is the product's own (a cold transfer through
the switchboard, as the console's transfer control); the simulated Twilio plays the party.

Routes (agent bearer token, as the rest of :mod:`consoles.agent_api`)::

    GET  /agent/api/demo-phone            {"call": {...}} or {"call": null}
    POST /agent/api/demo-phone/<action>   answer | hold | resume | hangup | transfer ({"kind"})

Keys: ``hotline:demophone:<seat>`` (JSON, expires after an hour without news) and
``hotline:demophone:<seat>:commands`` (a list, oldest first). Nothing here touches a real call:
a real handset or softphone is rung by the PBX as before.
"""
from __future__ import annotations

import json
import time

from flask import Blueprint, current_app, g, jsonify

from consoles.agent_api import agent_required, json_body

ACTIONS = ("answer", "hold", "resume", "hangup", "transfer")
TRANSFER_KINDS = ("subcenter", "expert")
TTL_S = 3600
MAX_SAID = 50  # lines of the caller's words kept on the phone's screen

bp = Blueprint("demo_phone", __name__, url_prefix="/agent/api/demo-phone")


class DemoPhone:
    """One seat's demo phone in Redis: the simulator writes the call, the console sends commands."""

    def __init__(self, redis_client, seat: str):
        self.redis, self.seat = redis_client, seat
        self.key = f"hotline:demophone:{seat}"
        self.commands_key = self.key + ":commands"

    # -- the network's side (the simulator) ------------------------------------------------
    def ring(self, call_id: str, line: str, line_name: str, caller_masked: str, ticket: str = "",
             front: str = "asterisk") -> None:
        self.redis.delete(self.commands_key)
        self._save({"id": call_id, "line": line, "line_name": line_name, "caller": caller_masked,
                    "ticket": ticket, "state": "ringing", "since": time.time(), "said": [], "front": front})

    def update(self, **changes) -> None:
        call = self.call()
        if call is not None:
            call.update(changes, since=time.time() if "state" in changes else call["since"])
            self._save(call)

    def say(self, who: str, text: str) -> None:
        """A line of the conversation as text (who: 来电人 or 系统)."""
        call = self.call()
        if call is not None:
            call["said"] = (call["said"] + [{"who": who, "text": text[:500], "at": time.time()}])[-MAX_SAID:]
            self._save(call)

    def next_command(self) -> dict | None:
        raw = self.redis.lpop(self.commands_key)
        return json.loads(raw) if raw else None

    def hang_up(self) -> None:
        self.redis.delete(self.key, self.commands_key)

    # -- the seat's side (the console) -----------------------------------------------------
    def call(self) -> dict | None:
        raw = self.redis.get(self.key)
        return json.loads(raw) if raw else None

    def command(self, action: str, **args) -> None:
        self.redis.rpush(self.commands_key, json.dumps({"action": action, **args}))
        self.redis.expire(self.commands_key, TTL_S)

    def _save(self, call: dict) -> None:
        self.redis.set(self.key, json.dumps(call, ensure_ascii=False), ex=TTL_S)


def _phone() -> DemoPhone:
    return DemoPhone(current_app.extensions["acd"].redis, g.agent_id)


@bp.get("")
@agent_required
def show():
    return jsonify(call=_phone().call())


@bp.post("/<action>")
@agent_required
def act(action: str):
    if action not in ACTIONS:
        return jsonify(error=f"演示电话没有这个操作：{action[:20]}（可用：接听、保持、恢复、转接、挂断）"), 404
    phone = _phone()
    call = phone.call()
    if call is None:
        return jsonify(error="演示电话上没有来电"), 409
    args = {}
    if action == "transfer":
        kind = json_body().get("kind")
        if kind not in TRANSFER_KINDS:
            return jsonify(error="请选择转接对象：分中心或专家坐席"), 400
        args["kind"] = kind
    allowed = {"ringing": ("answer", "hangup"), "talking": ("hold", "hangup", "transfer"),
               "held": ("resume", "hangup", "transfer")}.get(call["state"], ())
    if action not in allowed:
        return jsonify(error="现在不能这样操作：来电" + {"ringing": "正在振铃", "talking": "正在通话",
                                                   "held": "正在保持"}.get(call["state"], "已结束")), 409
    if action == "transfer" and call.get("front") == "twilio":
        return _twilio_transfer(phone, call, args["kind"])
    phone.command(action, **args)
    return jsonify(status="sent")


def _twilio_transfer(phone: DemoPhone, call: dict, kind: str):
    """A Twilio call is moved by the product itself: a cold transfer (the seat leaves as soon as
    the line's sub-center or expert answers), as the console's transfer control would."""
    from ivr.flow import CallNotFound

    current = (current_app.extensions["acd"].agent(g.agent_id) or {}).get("call")
    if current != call["id"]:
        return jsonify(error="演示电话上的来电不是您当前的通话"), 409
    try:
        current_app.extensions["twilio"]["board"].start_transfer(current, kind, "cold")
    except CallNotFound:
        return jsonify(error="来电已结束"), 409
    except LookupError as exc:
        return jsonify(error=str(exc).strip("'\"")), 409
    phone.say("系统", "正在转接" + ("分中心" if kind == "subcenter" else "专家坐席") + "，对方接听后您将退出通话")
    return jsonify(status="sent")


def init_app(app) -> None:
    app.register_blueprint(bp)
