"""The web consoles: sign-in (``/login``), admin and supervisor pages (``/admin/``), the agent
console (``/agent/``) and Prometheus ``/metrics``. See docs/consoles.md.

``init_app(app)`` is called by ``create_app`` after the ACD agent API and the Twilio
blueprints, whose ACD (``app.extensions["acd"]``) it reuses.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import Response, g, redirect, render_template, request, url_for

from .labels import ERROR_WORDS

log = logging.getLogger("hotline.consoles")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Console:
    db: object  # consoles.db.ConsoleStore
    tickets: object  # intake.tickets.TicketStore
    editor: object  # consoles.rules_admin.RulesEditor
    dashboard: object  # consoles.dashboard.Dashboard


def _secret_key(app) -> str:
    """SECRET_KEY from config/environment, else one kept in var/secret_key so that every worker
    process (and a restart) signs sessions with the same key."""
    key = app.config.get("SECRET_KEY") or os.environ.get("SECRET_KEY")
    if key:
        return key
    path = Path(app.config.get("SECRET_KEY_FILE") or ROOT / "var" / "secret_key")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # the web workers start together: each writes a whole key aside and links it in place;
        # the first link wins and nobody ever reads a file still being written (an empty key
        # would refuse every session another worker signed: "CSRF 校验失败" at sign-in)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} holds no key: delete it (a new one is made at start; everyone signs in again)")
    return key


def bootstrap_admin(db, password: str | None = None) -> str | None:
    """The first admin: with ``ADMIN_PASSWORD`` set, user ``admin`` gets it; otherwise a one-time
    password is generated, printed once, and must be changed at first sign-in. Returns the
    generated password (None when nothing was created)."""
    from .db import ConsoleError, generate_password

    if db.count_users():
        return None
    generated = not password
    password = password or generate_password()
    try:
        db.add_user("admin", password, "admin", display_name="管理员", must_change_password=generated)
    except ConsoleError:  # another worker created it a moment ago
        return None
    db.audit("system", "user.create", "admin", "首次启动：创建管理员 admin", after={"username": "admin", "role": "admin"})
    if generated:
        banner = (f"\n{'=' * 72}\n  首次启动：已创建管理员账号 admin，一次性密码：{password}\n"
                  f"  First start: admin account 'admin', one-time password: {password}\n"
                  f"  Sign in at /login; you must choose a new password at first sign-in.\n{'=' * 72}\n")
        print(banner, flush=True)
        log.warning("created the first admin account 'admin' with a one-time password (printed on stdout)")
        return password
    log.warning("created the first admin account 'admin' with ADMIN_PASSWORD")
    return None


def bootstrap_from_env() -> str | None:
    """``python app.py`` at start: the first admin in ``DATABASE_URL`` (see :func:`bootstrap_admin`)."""
    from .db import ConsoleStore

    db = ConsoleStore(os.environ.get("DATABASE_URL") or None)
    try:
        return bootstrap_admin(db, os.environ.get("ADMIN_PASSWORD"))
    finally:
        db.close()


def _loopback(address: str | None) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _bearer_ok(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def init_app(app) -> None:
    import redis

    from intake.tickets import TicketStore

    from . import admin, agent_console, auth, seats  # noqa: F401  (seats: its routes on the admin blueprint)
    from .dashboard import Dashboard, HotlineCollector
    from .db import ConsoleStore
    from .rules_admin import RulesEditor
    from .rules_sync import announcer

    app.secret_key = _secret_key(app)
    acd = app.extensions["acd"]
    url = app.config["DATABASE_URL"]
    db = ConsoleStore(url, schema=app.config.get("DATABASE_SCHEMA"))
    tickets = app.config.get("CONSOLE_TICKETS") or TicketStore(url, schema=app.config.get("DATABASE_SCHEMA"))
    client = acd.redis if isinstance(acd.redis, redis.Redis) else None
    editor = RulesEditor(app.extensions["rules"], db, announce=announcer(client) if client is not None else None)
    dashboard = Dashboard(acd, tickets)
    app.extensions["console"] = Console(db, tickets, editor, dashboard)
    if app.config.get("ADMIN_BOOTSTRAP"):  # ``python app.py`` does it once, before the workers start
        bootstrap_admin(db, app.config.get("ADMIN_PASSWORD") or os.environ.get("ADMIN_PASSWORD"))

    auth.init_app(app)
    app.register_blueprint(admin.bp)
    agent_console.init_app(app)

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HotlineCollector(dashboard, app.extensions["rules"]))

    @app.get("/metrics")
    def metrics():
        """Prometheus: with ``METRICS_TOKEN`` set, for its bearer; without one, for this machine only."""
        token = app.config.get("METRICS_TOKEN") or os.environ.get("METRICS_TOKEN")
        if token and not _bearer_ok(request.headers.get("Authorization", ""), token):
            return Response("metrics need Authorization: Bearer <METRICS_TOKEN>\n", 401, mimetype="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        if not token and not _loopback(request.remote_addr):
            return Response("metrics are served to this machine only; set METRICS_TOKEN to scrape from elsewhere\n",
                            403, mimetype="text/plain")
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/")
    def home():
        """The front door: a person signed in goes to their console, anyone else to sign in."""
        user = g.get("user")
        return redirect(url_for(auth.HOME[user.role]) if user is not None else url_for("auth.login"))

    @app.errorhandler(400)
    @app.errorhandler(401)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(409)
    @app.errorhandler(410)
    @app.errorhandler(405)
    @app.errorhandler(413)
    @app.errorhandler(416)
    def console_error(exc):
        # the consoles' pages, and any address that matched no page (a person typed or followed
        # it); Twilio's webhooks and the metrics keep their own answers
        unmatched = request.blueprint is None and not request.path.startswith(("/twilio/", "/metrics", "/healthz"))
        if request.blueprint not in ("auth", "admin", "agent_console", "agent_ticket") and not unmatched:
            return exc
        if exc.description == type(exc).description:  # werkzeug's own English words: ours instead
            exc.description = ERROR_WORDS.get(exc.code, exc.description)
        if request.path.startswith(("/agent/api/", "/admin/api/")) or request.is_json:
            return {"error": exc.description}, exc.code
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]  # 416: Content-Range
        return render_template("error.html", error=exc), exc.code, headers
