"""The agent console under ``/agent/``: one page that updates itself without reloading.

The page is server-rendered for a signed-in user with role ``agent``; "上岗" logs the user's ACD
seat in (``ACD.login``) and gives the page a token of the ACD agent API, so every action the page
takes goes through the same JSON API other consoles use — no second implementation:

* seat state, current call: ``GET /agent/api/me`` (polled every 1.5 s), ``POST /agent/api/state``,
  ``/heartbeat``, ``/wrapup/done``, ``/call/decline``, ``/call/transfer`` (consoles/agent_api.py);
* three-way / cold transfer, cancel, leave: ``POST /agent/api/twilio/...`` (ivr/twilio/webhooks.py);
* the call's pre-filled ticket: ``GET /agent/api/ticket`` and ``POST /agent/api/ticket/confirm``
  (this module), shown as the agent role may see it (``Ticket.view("agent")``).
"""
from __future__ import annotations

import hashlib
import secrets

from flask import Blueprint, current_app, flash, g, jsonify, redirect, render_template, request, session, url_for

from call_routing.router import conference_options
from consoles.agent_api import TOKEN_TTL_S, agent_required, heartbeat_every_ms, json_body

from . import labels, softphone
from .auth import actor, check_csrf, register_trouble, roles_required

bp = Blueprint("agent_console", __name__, url_prefix="/agent")
bp.before_request(check_csrf)
api = Blueprint("agent_ticket", __name__, url_prefix="/agent/api/ticket")
register_trouble(bp)  # Redis unreachable or a fault: a page (or JSON) in Chinese, not Werkzeug's
register_trouble(api)

TYPES = labels.TYPES
FIELD_LABELS = labels.FIELD_LABELS
EDITABLE = ("type", "line", "location", "enterprise", "unit", "subject", "summary")
MAX_FIELD_CHARS = 2000  # one ticket field as the agent corrects it (a summary is a few sentences)
LAST_TICKET_TTL_S = 2 * 3600
LOGOUT_WORDS = {"ok": "已离线", "after_call": "当前通话结束后离线", "already": "原已离线"}


def _acd():
    return current_app.extensions["acd"]


def _token_key(token: str) -> str:
    return _acd().keys.token(hashlib.sha256(token.encode()).hexdigest())


def _session_token() -> str | None:
    """The page's agent-API token, if it is still valid for this user's seat."""
    token = session.get("agent_token")
    if not token:
        return None
    owner = _acd().redis.get(_token_key(token))
    owner = owner.decode() if isinstance(owner, bytes) else owner
    if owner != g.user.agent_id:
        session.pop("agent_token", None)
        return None
    return token


def sign_out_seat(agent_id: str, reason: str) -> str | None:
    """End every agent-API token of the seat (the console's and the seat-password API's) and sign
    the seat out of the ACD (after its current call), when its person may no longer take calls:
    user disabled, role or seat changed, password reset. Returns the ACD's answer, None without a seat."""
    acd = _acd()

    def owner(key):
        value = acd.redis.get(key)
        return value.decode() if isinstance(value, bytes) else value

    doomed = [key for key in acd.redis.scan_iter(match=acd.keys.token("*"), count=1000) if owner(key) == agent_id]
    if doomed:
        acd.redis.delete(*doomed)
    if acd.agent(agent_id) is None:
        return None
    return acd.logout(agent_id, reason).status


@bp.get("/")
@roles_required("agent")
def console():
    agent = _acd().agent(g.user.agent_id) if g.user.agent_id else None
    if agent and agent["state"] == "offline" and _session_token():
        # signed out behind the page's back (heartbeat lapse, 下岗 elsewhere): back to 上岗, saying why
        _acd().redis.delete(_token_key(session.pop("agent_token")))
        if session.pop("leaving_after_call", None):
            flash("通话已结束，坐席已按您的要求下岗。", "ok")
        else:
            why = labels.OFFLINE_REASONS.get(agent.get("reason") or "", "坐席已离线")
            flash(f"{why}。请重新上岗。", "error")
    rules = current_app.extensions["rules"].current()
    lines = [(n, labels.line_text(n, rules)) for n in [rules.hotline.number, *rules.lines]]  # 12301 全国…, 12345政务…
    skills = [labels.skill_text(s, rules) for s in sorted((agent or {}).get("skills", {}),
                                                         key=lambda s: -agent["skills"][s])]
    return render_template("agent/console.html", agent=agent, token=_session_token() if agent else None,
                           lines=lines, types=TYPES, labels=FIELD_LABELS, skills=skills,
                           pause_reasons=labels.AGENT_PAUSE_CHOICES, js_labels=labels.js_labels(),
                           softphone=softphone.for_seat(current_app.extensions["softphone"], agent),
                           heartbeat_every_ms=heartbeat_every_ms(_acd().heartbeat_timeout_s))


@bp.post("/seat/login")
@roles_required("agent")
def seat_login():
    acd = _acd()
    agent_id = g.user.agent_id
    if not agent_id or acd.agent(agent_id) is None:
        flash(f"坐席 {agent_id or '（未设置）'} 尚未在排队系统中配置，请联系管理员在“坐席”页面为您新建坐席。", "error")
        return redirect(url_for("agent_console.console"))
    state = "paused" if request.form.get("state") == "paused" else "ready"
    result = acd.login(agent_id, state, "小休" if state == "paused" else "")
    if result.status not in ("ok", "already"):
        flash(f"上岗失败：{labels.ACD_REFUSALS.get(result.status, '排队系统暂不接受上岗，请稍后再试')}", "error")
        return redirect(url_for("agent_console.console"))
    token = secrets.token_urlsafe(32)
    acd.redis.set(_token_key(token), agent_id, ex=TOKEN_TTL_S)
    session["agent_token"] = token
    session.pop("leaving_after_call", None)
    current_app.extensions["console"].db.audit(actor(), "seat.login", agent_id,
                                               f"坐席 {agent_id} 上岗（{labels.AGENT_STATES[state]}）",
                                               address=request.remote_addr)
    return redirect(url_for("agent_console.console"))


@bp.post("/seat/logout")
@roles_required("agent")
def seat_logout():
    acd = _acd()
    token = session.pop("agent_token", None)
    result = None
    if g.user.agent_id and acd.agent(g.user.agent_id):
        result = acd.logout(g.user.agent_id)
        current_app.extensions["console"].db.audit(actor(), "seat.logout", g.user.agent_id,
                                                   f"坐席 {g.user.agent_id} 下岗（{LOGOUT_WORDS.get(result.status, '未完成')}）",
                                                   address=request.remote_addr)
    if result is not None and result.status == "after_call" and token:
        # still talking: the console stays with the call and its ticket until the call ends
        session["agent_token"], session["leaving_after_call"] = token, True
        flash("本通来电结束后自动下岗。请继续处理当前来电和工单。", "info")
        return redirect(url_for("agent_console.console"))
    if token:
        acd.redis.delete(_token_key(token))
    flash("已下岗。", "ok")
    return redirect(url_for("agent_console.console"))


# -- the ticket of the agent's call (bearer token of the agent API) -----------------------------
def _last_key(agent_id: str) -> str:
    return f"console:lastcall:{agent_id}"


def _my_call() -> dict | None:
    """The agent's current call, or (in wrap-up) the call they just had."""
    acd = _acd()
    agent = acd.agent(g.agent_id) or {}
    call_id = agent.get("call")
    if call_id:
        acd.redis.set(_last_key(g.agent_id), call_id, ex=LAST_TICKET_TTL_S)
    else:
        raw = acd.redis.get(_last_key(g.agent_id))
        call_id = raw.decode() if isinstance(raw, bytes) else raw
    return acd.call(call_id) if call_id else None


def _ticket_payload(call: dict) -> dict:
    store = current_app.extensions["console"].tickets
    rules = current_app.extensions["rules"].current()
    ticket = store.get(int(call["ticket"])).view("agent") if call.get("ticket") else None
    line = rules.lines.get(call["line"] or "")
    options = conference_options(rules, line) if line else ()
    transfers = [{"kind": o["kind"], "name": o["name"]} for o in options]
    transfer_state = None
    front_end = None
    tw = current_app.extensions.get("twilio")
    pbx = current_app.extensions.get("asterisk")
    if tw is not None and tw["legs"].known(call["id"]):
        front_end = "twilio"
        leg = tw["legs"].get(call["id"])
        transfer_state = {k: leg.get(k) for k in ("transfer_state", "transfer_mode", "transfer_target", "transfer_agent",
                                                  "agent_in")}
    elif pbx is not None and pbx.knows(call["id"]):
        front_end = "asterisk"
        transfer_state = pbx.state(call["id"])
    if transfer_state:  # in words: never the endpoint or the kind's code
        expert = transfer_state.get("transfer_agent")
        expert_name = (_acd().agent(expert) or {}).get("name") if expert else None
        transfer_state["text"] = labels.transfer_text(transfer_state, options, expert_name)
    line_name = (rules.line(call["line"] or "") or rules.hotline).name
    if ticket is not None:  # what the agent reads next to the fields: words and China times
        ticket["status_text"] = labels.TICKET_STATUSES.get(ticket["status"], ticket["status"])
        ticket["manual_reason_text"] = labels.manual_reason_text(ticket.get("manual_reason"))
        ticket["due_text"] = labels.when(ticket.get("due_at"))
        ticket["contact_due_text"] = labels.when(ticket.get("contact_due"))
    return {"call": {k: call[k] for k in ("id", "state", "kind", "line", "skill", "caller_masked", "entered")},
            "line_name": line_name, "ticket": ticket, "transfers": transfers,
            "expert_skill": line.expert_skill if line else None, "transfer": transfer_state, "front_end": front_end,
            "labels": FIELD_LABELS, "editable": list(EDITABLE), "types": TYPES}


@api.get("")
@agent_required
def ticket():
    call = _my_call()
    if call is None:
        return jsonify(call=None, ticket=None)
    return jsonify(_ticket_payload(call))


@api.post("/confirm")
@agent_required
def confirm():
    from intake.tickets import TicketError

    call = _my_call()
    if call is None or not call.get("ticket"):
        return jsonify(error="当前没有可确认的工单"), 409
    edits = json_body().get("edits") or {}
    if not isinstance(edits, dict):
        return jsonify(error="edits 必须是 {字段: 值} 形式的对象"), 400
    edits = {k: v for k, v in edits.items() if k in EDITABLE}
    bad = sorted(k for k, v in edits.items() if not isinstance(v, (str, bool, int, float))
                 or (isinstance(v, str) and len(v) > MAX_FIELD_CHARS))
    if bad:
        names = "、".join(FIELD_LABELS.get(k, k) for k in bad)
        return jsonify(error=f"{names}须为不超过 {MAX_FIELD_CHARS} 字的文字"), 400
    if "enterprise" in edits:
        edits["enterprise"] = edits["enterprise"] in (True, "true", "1", 1, "on")
    store = current_app.extensions["console"].tickets
    try:
        store.confirm_fields(int(call["ticket"]), g.agent_id, edits, "all",
                             rules=current_app.extensions["rules"].current())
    except TicketError as exc:
        return jsonify(error=_refusal(exc)), 409
    return jsonify(_ticket_payload(call))


def _refusal(exc) -> str:
    """The ticket store's refusal (worded for engineers) as the agent reads it."""
    text = str(exc)
    if "it is finished" in text or "it is handed_off" in text:
        return "工单已办结"
    if "no longer be edited" in text:
        return "工单已办结，不能再修改"
    if "not a hotline" in text:
        return "所选热线不在当前路由规则中，请重新选择"
    if "not confirmed" in text or "cannot be finished" in text:
        return "请先确认工单的全部内容"
    if "unknown field" in text or "no field" in text:
        return "工单没有这一项，请刷新页面后重试"
    return "操作未完成，请刷新页面后重试"


# -- 办结: the agent finishes the ticket of their call (session + CSRF, audited) -------------------
MAX_RESULT_CHARS = 2000


def _ticket_port():
    """The call flow's ticket port (``intake.jobs.CallTickets``): its ``finish`` also queues the
    signed hand-off. Built from the app's stores when no front-end made one."""
    tw = current_app.extensions.get("twilio")
    port = getattr(tw["flow"], "tickets", None) if tw else None
    if port is not None and hasattr(port, "finish"):
        return port
    port = current_app.extensions.get("console_call_tickets")
    if port is None:
        from intake.jobs import HANDOFF_QUEUE, CallTickets

        queue = None
        if current_app.config.get("REDIS_URL"):
            from rq import Queue

            from runtime.redis_conn import redis_client

            queue = Queue(HANDOFF_QUEUE, connection=redis_client(current_app.config["REDIS_URL"]))
        port = current_app.extensions["console_call_tickets"] = CallTickets(
            current_app.extensions["console"].tickets, handoff_queue=queue)
    return port


@bp.post("/ticket/finish")
@roles_required("agent")
def finish_ticket():
    """办结: only the ticket of the agent's own current (or just ended) call, once confirmed."""
    from intake.tickets import TicketError

    wants_json = request.is_json or request.accept_mimetypes.best == "application/json"
    body = json_body() if request.is_json else request.form
    result = str((body or {}).get("result") or "").strip()

    def refuse(text, code):
        if wants_json:
            return jsonify(error=text), code
        flash(text, "error")
        return redirect(url_for("agent_console.console"))

    g.agent_id = g.user.agent_id
    call = _my_call() if g.agent_id else None
    if call is None or not call.get("ticket"):
        return refuse("当前没有可办结的工单", 409)
    asked = (body or {}).get("ticket")
    if asked not in (None, "") and str(asked) != str(call["ticket"]):
        return refuse("只能办结本人当前来电的工单", 409)
    if not result:
        return refuse("办结需要填写办理结果", 400)
    if len(result) > MAX_RESULT_CHARS:
        return refuse(f"办理结果不能超过 {MAX_RESULT_CHARS} 字", 400)
    try:
        ticket = _ticket_port().finish(call["ticket"], g.agent_id, result)
    except TicketError as exc:
        return refuse(f"本工单暂不能办结（{_refusal(exc)}）", 409)
    current_app.extensions["console"].db.audit(
        actor(), "ticket.finish", f"ticket:{ticket.display_number}", f"工单 {ticket.display_number} 办结（坐席 {g.agent_id}）",
        before={"status": "confirmed"}, after={"status": ticket.status, "result": result},
        address=request.remote_addr)
    if wants_json:
        return jsonify(_ticket_payload(call))
    flash(f"工单 {ticket.display_number} 已办结，已排队派发", "ok")
    return redirect(url_for("agent_console.console"))


def init_app(app) -> None:
    softphone.init_app(app)  # SOFTPHONE_WS_URL: the seats' WebRTC softphone (consoles/softphone.py)
    app.register_blueprint(bp)
    app.register_blueprint(api)
