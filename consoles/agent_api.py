"""The agent console's JSON API, under ``/agent/api/``: one bearer token per logged-in agent.

``POST /agent/api/login`` with ``{"agent_id", "password"}`` returns a token (random, stored in
Redis only as its SHA-256, valid for one 12-hour shift); every other call sends
``Authorization: Bearer <token>``. Routes: ``GET me`` (state and current call with its ticket),
``POST state`` (``ready`` | ``paused`` + reason), ``POST heartbeat``, ``POST wrapup/done``,
``POST call/decline``, ``POST call/transfer`` (``{"skill"}``), ``POST logout``.

Password guessing on ``login`` is throttled with the consoles' numbers (``consoles/auth.py``:
per agent and address, per agent, per address, within ``LOGIN_WINDOW_MIN``), counted in Redis
(``<prefix>:loginfail:…``, expiring with the window): 429 without checking the password.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from functools import wraps

import redis
from flask import Blueprint, current_app, g, jsonify, request

from call_routing.acd import ACD, ACDError
from intake.callback_jobs import rq_dispatch
from runtime.redis_conn import redis_client

TOKEN_TTL_S = 12 * 3600
log = logging.getLogger("hotline.agent_api")
bp = Blueprint("agent_api", __name__, url_prefix="/agent/api")


def init_app(app) -> None:
    """Register the API with an ACD on ``REDIS_URL`` (or ``app.extensions['acd']`` if set)."""
    if "acd" not in app.extensions:
        client = redis_client(app.config["REDIS_URL"], decode_responses=True)
        app.extensions["acd"] = ACD(client, app.extensions["rules"], dispatch_callback=rq_dispatch)
    app.register_blueprint(bp)


@bp.errorhandler(redis.exceptions.ConnectionError)
@bp.errorhandler(redis.exceptions.TimeoutError)
def _redis_down(exc):
    """The ACD's Redis is unreachable: a clear 503 the console retries, not a 500 traceback."""
    log.error("agent API: Redis unreachable (%s)", exc)
    return jsonify(error="排队系统暂时无法连接，正在重试"), 503


def _acd() -> ACD:
    return current_app.extensions["acd"]


def _token_key(token: str) -> str:
    return _acd().keys.token(hashlib.sha256(token.encode()).hexdigest())


def _error(status: int, message: str):
    return jsonify(error=message), status


def json_body() -> dict:
    """The request's JSON object: ``{}`` without a JSON body (as before); a JSON body that is not
    an object, or nests past what the parser takes, is a 400 saying so (was a 500 traceback)."""
    from flask import abort, make_response

    try:
        body = request.get_json(silent=True)
    except RecursionError:
        abort(make_response(_error(400, "请求体的 JSON 嵌套过深（request body: JSON nested too deep）")))
    if body is None:
        return {}
    if not isinstance(body, dict):
        abort(make_response(_error(400, f"请求体必须是 JSON 对象 {{…}}，收到的是 {type(body).__name__}"
                                        f"（request body must be a JSON object）")))
    return body


def agent_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _error(401, "请先上岗（缺少 Authorization: Bearer 令牌）")
        agent_id = _acd().redis.get(_token_key(header[7:].strip()))
        if not agent_id:
            return _error(401, "登录已失效，请刷新页面重新上岗")
        g.agent_id = agent_id.decode() if isinstance(agent_id, bytes) else agent_id
        g.token = header[7:].strip()
        return view(*args, **kwargs)
    return wrapper


MAX_REASON_CHARS = 32  # a pause reason (小休, 培训, …) as the seat board and every dashboard show it


def _pause_reason(body: dict, default: str) -> str:
    """The pause reason sent, or a 400 naming the limit: it is kept on the seat and sent to every
    supervisor's dashboard every few seconds."""
    from flask import abort, make_response

    reason = str(body.get("reason") or default)
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        abort(make_response(_error(400, f"小休原因最多 {MAX_REASON_CHARS} 个字，且不含控制字符")))
    return reason


def _result(result, **extra):
    if not result.ok:
        from .labels import ACD_REFUSALS

        return _error(409, f"现在不能这样操作：{ACD_REFUSALS.get(result.status, '请稍后再试')}")
    return jsonify(status=result.status, **extra)


def _me():
    acd = _acd()
    agent = acd.agent(g.agent_id)
    call = acd.call(agent["call"]) if agent and agent["call"] else None
    if call is not None:
        call = {"id": call["id"], "state": call["state"], "kind": call["kind"], "line": call["line"],
                "skill": call["skill"], "caller": call["caller_masked"], "ticket": call["ticket"],
                "priority": call["priority"], "entered": call["entered"]}
    return {"agent": {k: agent[k] for k in ("id", "name", "state", "reason", "since", "skills")}, "call": call}


def _fail_keys(agent_id: str) -> tuple[str, str, str]:
    """Failed-login counters in the order :func:`consoles.auth.too_many_failures` takes them."""
    p, address = _acd().keys.prefix, request.remote_addr or "-"
    return f"{p}:loginfail:at:{agent_id}:{address}", f"{p}:loginfail:agent:{agent_id}", f"{p}:loginfail:addr:{address}"


@bp.post("/login")
def login():
    body = json_body()
    agent_id, password = str(body.get("agent_id", ""))[:64], str(body.get("password", ""))
    acd = _acd()
    from consoles.auth import login_window_s, too_many_failures

    keys, window_s = _fail_keys(agent_id), login_window_s(current_app.config)
    if too_many_failures(current_app.config, *(int(n or 0) for n in acd.redis.mget(keys))):
        log.warning("agent login %r from %s refused: too many failed attempts", agent_id, request.remote_addr)
        return _error(429, f"too many failed logins: try again in {window_s // 60} minutes")
    if not agent_id or not acd.check_password(agent_id, password):
        pipe = acd.redis.pipeline(transaction=False)
        for key in keys:  # the window starts at the first failure (SET NX EX: Redis 6.2 has no EXPIRE NX)
            pipe.set(key, 0, ex=window_s, nx=True)
            pipe.incr(key)
        pipe.execute()
        log.info("agent login %r from %s failed", agent_id, request.remote_addr)
        return _error(401, "unknown agent or wrong password")
    acd.redis.delete(*keys[:2])  # counted since the agent's last success
    state = body.get("state", "ready")
    if state not in ("ready", "paused"):
        return _error(400, "state must be ready or paused")
    result = acd.login(agent_id, state, _pause_reason(body, ""))
    if result.status not in ("ok", "already"):
        return _error(409, f"cannot log in ({result.status})")
    token = secrets.token_urlsafe(32)
    acd.redis.set(_token_key(token), agent_id, ex=TOKEN_TTL_S)
    g.agent_id = agent_id
    return jsonify(token=token, expires_in=TOKEN_TTL_S, **_me())


@bp.get("/me")
@agent_required
def me():
    """The seat and its call, and the queues of the seat's groups (callers waiting, longest wait)."""
    from .room import queue_figures

    acd = _acd()
    out = _me()
    skills = acd.rules.skills
    mine = sorted((s for s in out["agent"]["skills"] if s in skills), key=lambda s: -out["agent"]["skills"][s])
    out["queues"] = queue_figures(acd, [skills[s] for s in mine])
    return jsonify(**out)


@bp.post("/state")
@agent_required
def state():
    body = json_body()
    acd = _acd()
    wanted = body.get("state")
    try:
        if wanted == "ready":
            return _result(acd.ready(g.agent_id), **_me())
        if wanted == "paused":
            return _result(acd.pause(g.agent_id, _pause_reason(body, "break")), **_me())
    except ACDError as exc:
        return _error(400, str(exc))
    return _error(400, "状态只能是就绪（ready）或小休（paused）；下岗请用 POST /agent/api/logout")


def heartbeat_every_ms(timeout_s: float) -> int:
    """How often a console beats: a third of the ACD's timeout (two beats may be lost), at least
    every 10 s, at most every 3 s."""
    return int(max(3000, min(10000, timeout_s * 1000 / 3)))


@bp.post("/heartbeat")
@agent_required
def heartbeat():
    acd = _acd()
    if not acd.heartbeat(g.agent_id):
        return _error(409, "坐席未上岗，请重新上岗")
    # the pace of now's rules: an admin who shortens the timeout is followed by consoles already open
    return jsonify(status="ok", every_ms=heartbeat_every_ms(acd.heartbeat_timeout_s))


@bp.post("/wrapup/done")
@agent_required
def wrapup_done():
    return _result(_acd().wrapup_done(g.agent_id), **_me())


@bp.post("/call/decline")
@agent_required
def decline():
    acd = _acd()
    agent = acd.agent(g.agent_id)
    if agent["state"] != "ringing" or not agent["call"]:
        return _error(409, "当前没有振铃的来电")
    return _result(acd.no_answer(agent["call"], "declined"), **_me())


@bp.post("/call/transfer")
@agent_required
def transfer():
    acd = _acd()
    body = json_body()
    agent = acd.agent(g.agent_id)
    if agent["state"] != "busy" or not agent["call"]:
        return _error(409, "当前没有可转接的通话")
    skill = str(body.get("skill", ""))
    if skill not in acd.rules.skills:  # e.g. a rules edit removed the group since the page showed it
        return _error(400, "要转入的坐席组已不在当前规则中，请刷新页面后再选")
    try:
        return _result(acd.transfer(agent["call"], skill), **_me())
    except ACDError as exc:
        log.warning("agent %s: transfer to %r refused: %s", g.agent_id, skill, exc)
        return _error(400, "转接未能完成，请刷新页面后再试")


@bp.post("/logout")
@agent_required
def logout():
    acd = _acd()
    result = acd.logout(g.agent_id)
    acd.redis.delete(_token_key(g.token))
    return jsonify(status=result.status)
