"""Sign-in, sessions, roles and CSRF for the console pages.

* ``/login`` (GET form, POST), ``/logout`` (POST), ``/account/password`` (change own password).
* Sessions are Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when ``SESSION_COOKIE_SECURE``),
  12 hours, renewed while in use; the user row is re-read at every request, so a disabled user or
  a changed password ends existing sessions at once. The cookie is sent only when the session
  changes (sign-in, password, the hourly renewal), not with every response: the browser keeps the
  cookie that came last, so the answer to a request sent before 退出 (the dashboard asks every
  5 s) would put the signed-out session back — and the next person's sign-in form, made for
  another session, would fail its CSRF check.
* Guessing is throttled, counted over the last ``LOGIN_WINDOW_MIN`` (15) minutes from the
  audit log's ``login.failed`` entries (shared by every process): sign-in is refused (429, the
  password not even checked) after ``LOGIN_MAX_FAILURES_PER_USER`` (5) failures for one user
  name from one address, ``LOGIN_MAX_FAILURES_PER_USER_ANYWHERE`` (50) for one user name from
  all addresses (both since its last success), or ``LOGIN_MAX_FAILURES_PER_ADDRESS`` (100) from
  one address for any names. Per address and name, so that a stranger's five guesses do not
  lock an agent out of their seat; high per address, as a call centre signs in from behind one
  NAT address at every shift change. Each refusal is audited as ``login.throttled``; app config
  changes the numbers.
* CSRF: one random token per session, required on every POST of the console blueprints as form
  field ``csrf_token`` or header ``X-CSRF-Token`` (compared in constant time). JSON APIs with a
  bearer token (``/agent/api/``) need none: no browser sends that header by itself.
"""
from __future__ import annotations

import hmac
import os
import secrets
import time
from datetime import datetime, timedelta, timezone
from functools import wraps
from urllib.parse import urlparse

from flask import (Blueprint, abort, current_app, g, redirect, render_template, request, session, url_for)
from flask.sessions import SecureCookieSessionInterface

from .db import ROLE_NAMES, ConsoleError

bp = Blueprint("auth", __name__)
SESSION_HOURS = 12
SESSION_RENEW_S = 3600  # a signed-in session's cookie is sent again (its 12 hours renewed) at most this often
LOGIN_MAX_FAILURES_PER_USER = 5
LOGIN_MAX_FAILURES_PER_USER_ANYWHERE = 50
LOGIN_MAX_FAILURES_PER_ADDRESS = 100
LOGIN_WINDOW_MIN = 15
HOME = {"admin": "admin.home", "supervisor": "admin.home", "agent": "agent_console.console"}


def console():
    return current_app.extensions["console"]


# -- CSRF ------------------------------------------------------------------------------------
def _keyed(purpose: str, value: str) -> str:
    """An HMAC of ``value`` under the app's secret key: what the cookie may carry instead of a
    secret (Flask's session cookie is signed, not encrypted: anyone holding it can read it)."""
    key = str(current_app.secret_key or "").encode()
    return hmac.new(key, f"{purpose}:{value}".encode(), "sha256").hexdigest()[:32]


def csrf_token() -> str:
    """The session's CSRF token, derived from a random session id kept in the cookie."""
    sid = session.get("sid")
    if not sid:
        sid = session["sid"] = secrets.token_urlsafe(24)
    return _keyed("csrf", sid)


def check_csrf() -> None:
    """before_request of every console blueprint: a POST without the session's token is refused."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = csrf_token() if session.get("sid") else ""
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, description="表单已过期或来源不明（CSRF 校验失败）。请刷新页面后重试。")
    return None


bp.before_request(check_csrf)


# -- sessions only where people sign in ----------------------------------------------------------
#: paths machines call, never with a console session: no cookie is read, verified or written there
SESSIONLESS_PREFIXES = ("/twilio/",)


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except under :data:`SESSIONLESS_PREFIXES` (Twilio's
    webhooks): there the session is Flask's empty null session, so no cookie is parsed or
    verified, none is set, and the request pays nothing for the consoles' sign-in."""

    def open_session(self, app, request):
        if request.path.startswith(SESSIONLESS_PREFIXES):
            return self.make_null_session(app)
        return super().open_session(app, request)

    def save_session(self, app, session, response):
        if self.is_null_session(session):
            return None
        return super().save_session(app, session, response)


# -- who is signed in -----------------------------------------------------------------------
def load_user() -> None:
    """app.before_request: ``g.user`` is the signed-in user (fresh from the database) or None."""
    g.user = None
    if request.path.startswith(SESSIONLESS_PREFIXES):
        return
    uid = session.get("uid")
    if uid is None:
        return
    user = console().db.user_by_id(uid)
    if user is None or not user.active or session.get("pwv") != _password_version(user):
        session.clear()
        return
    g.user = user
    now = int(time.time())
    if now - int(session.get("renewed") or 0) >= SESSION_RENEW_S:
        session["renewed"] = now  # changed: the cookie goes out again, valid 12 hours from now


def _password_version(user) -> str:
    """Changes when the password does (signing in again is then required); reveals nothing of it."""
    return _keyed("password", user.password_hash)[:16]


def _wants_json() -> bool:
    return request.path.startswith(("/agent/api/", "/admin/api/")) or request.accept_mimetypes.best == "application/json"


def roles_required(*roles):
    """Only signed-in users with one of ``roles``: others get the sign-in page (or 401/403)."""
    def deco(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = g.get("user")
            if user is None:
                if request.method == "GET" and not _wants_json():
                    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
                abort(401, description="请先登录")
            if user.role not in roles:
                abort(403, description=f"您的角色（{ROLE_NAMES.get(user.role, user.role)}）无权访问此页面")
            if user.must_change_password and request.endpoint not in ("auth.password", "auth.logout"):
                return redirect(url_for("auth.password"))
            return view(*args, **kwargs)
        return wrapper
    return deco


def actor() -> str:
    return g.user.username if g.get("user") else "anonymous"


def _safe_next(target: str | None) -> str | None:
    if not target:
        return None
    parts = urlparse(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


# -- pages -------------------------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    status = 200
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        if _throttled(username):
            console().db.audit(username or "-", "login.throttled", username, "登录尝试过多，已暂停该账号或地址的登录",
                               address=request.remote_addr)
            minutes = login_window_s(current_app.config) // 60
            return render_template("login.html", error=f"登录失败次数过多，请{minutes}分钟后再试。"), 429
        user = console().db.authenticate(username, password)
        if user is None:
            console().db.audit(username or "-", "login.failed", username, "登录失败：用户名或密码错误",
                               address=request.remote_addr)
            error, status = "用户名或密码错误，或账号已停用。", 401
        else:
            session.clear()
            session.permanent = True
            session["uid"] = user.id
            session["pwv"] = _password_version(user)
            session["renewed"] = int(time.time())
            csrf_token()
            console().db.audit(user.username, "login", user.username, f"{ROLE_NAMES[user.role]}登录",
                               address=request.remote_addr)
            if user.must_change_password:
                return redirect(url_for("auth.password"))
            wanted = _safe_next(request.args.get("next"))
            return redirect(wanted or url_for(HOME[user.role]))
    return render_template("login.html", error=error), status


def login_window_s(cfg) -> int:
    """How long failed sign-ins count (``LOGIN_WINDOW_MIN``), in seconds."""
    return int(cfg.get("LOGIN_WINDOW_MIN", LOGIN_WINDOW_MIN) * 60)


def too_many_failures(cfg, here: int, anywhere: int, address: int) -> bool:
    """The one throttling policy of every sign-in (console and agent API): failures for the name
    from this address, for the name from anywhere, from this address for any name."""
    return (here >= cfg.get("LOGIN_MAX_FAILURES_PER_USER", LOGIN_MAX_FAILURES_PER_USER)
            or anywhere >= cfg.get("LOGIN_MAX_FAILURES_PER_USER_ANYWHERE", LOGIN_MAX_FAILURES_PER_USER_ANYWHERE)
            or address >= cfg.get("LOGIN_MAX_FAILURES_PER_ADDRESS", LOGIN_MAX_FAILURES_PER_ADDRESS))


def _throttled(username: str) -> bool:
    cfg = current_app.config
    since = datetime.now(timezone.utc) - timedelta(seconds=login_window_s(cfg))
    return too_many_failures(cfg, *console().db.failed_sign_ins(username, request.remote_addr, since))


@bp.post("/logout")
def logout():
    if g.get("user") is not None:
        console().db.audit(g.user.username, "logout", g.user.username, "退出登录", address=request.remote_addr)
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@roles_required("admin", "supervisor", "agent")
def password():
    error = done = None
    if request.method == "POST":
        user = g.user
        new = request.form.get("new_password", "")
        if not console().db.authenticate(user.username, request.form.get("old_password", "")):
            error = "原密码不正确"
        elif new != request.form.get("new_password2", ""):
            error = "两次输入的新密码不一致"
        else:
            try:
                console().db.update_user(user.username, password=new, must_change_password=False)
            except ConsoleError as exc:
                error = str(exc)
            else:
                console().db.audit(user.username, "user.password", user.username, "修改了自己的密码",
                                   address=request.remote_addr)
                fresh = console().db.user(user.username)
                session["pwv"] = _password_version(fresh)
                g.user = fresh
                done = "密码已修改"
    return render_template("password.html", error=error, done=done), 400 if error else 200


def init_app(app) -> None:
    app.permanent_session_lifetime = timedelta(hours=SESSION_HOURS)
    # the cookie only when the session changed (load_user renews it hourly), not on every response
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    # Flask's defaults name these keys already (SameSite None): set them, unless configured
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    if not app.config.get("SESSION_COOKIE_SAMESITE"):
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    secure = app.config.get("SESSION_COOKIE_SECURE") or os.environ.get("SESSION_COOKIE_SECURE", "")
    app.config["SESSION_COOKIE_SECURE"] = secure is True or str(secure).strip().lower() in ("1", "true", "yes", "on")
    app.session_interface = ConsoleSessionInterface()
    app.before_request(load_user)
    app.jinja_env.globals.update(csrf_token=csrf_token, role_names=ROLE_NAMES)
    app.register_blueprint(bp)


# -- when the server itself fails: words, never Werkzeug's English page ------------------------------
REDIS_DOWN = "排队系统（Redis）暂时无法连接，实时数据无法显示。系统正在重试，请稍后刷新页面。"
SERVER_FAULT = "服务器内部错误，请稍后重试；如仍出现，请联系管理员（错误已记入日志）。"


class _Trouble:
    def __init__(self, code: int, description: str):
        self.code, self.description = code, description


def server_trouble(exc):
    """A console page or JSON answer when the ACD's Redis is unreachable (503) or anything else
    failed (500): the error page in Chinese. Registered on the console blueprints
    (:func:`register_trouble`); Flask has already logged a 500's traceback."""
    import logging

    import redis

    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        logging.getLogger(__name__).error("console %s: Redis unreachable (%s)", request.path, exc)
        trouble = _Trouble(503, REDIS_DOWN)
    else:
        trouble = _Trouble(500, SERVER_FAULT)
    if request.path.startswith(("/agent/api/", "/admin/api/")) or request.is_json:
        return {"error": trouble.description}, trouble.code
    return render_template("error.html", error=trouble), trouble.code


def register_trouble(blueprint) -> None:
    """Before the blueprint is registered (Flask copies its handlers then)."""
    import redis

    for kind in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, 500):
        blueprint.register_error_handler(kind, server_trouble)
