"""Composition root of the 12345 gateway: ``create_app()`` and ``python app.py``.

``create_app(config)`` builds the Flask app from a mapping, then the environment
(``RULES_PATH``, ``REDIS_URL``, ``DATABASE_URL``, ``TWILIO_AUTH_TOKEN``, ``VOSK_MODEL_PATH``,
``PROXY_HOPS``: the number of reverse proxies in front whose ``X-Forwarded-For`` gives the
client's address for the audit log and sign-in throttling; default 0, the socket's peer;
``DATABASE_SCHEMA``: the PostgreSQL schema of the tables, read by every store).
``python app.py`` runs the whole product on one machine (its background processes supervised:
restarted with backoff when they die, :mod:`runtime.supervisor`): an embedded Redis when
``REDIS_URL`` is not set (its data in ``REDIS_DATA_DIR``, default ``var/redis``, ``off`` for
none), the rq worker (``python -m intake.worker``), the ACD timers
(``python -m call_routing.acd tick``), the FastAGI server for
Asterisk (``FASTAGI_BIND``, default 127.0.0.1:4573, ``off`` to skip) and the web app under
gunicorn (``BIND``, default 0.0.0.0:8000).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from flask import Flask, jsonify
from werkzeug.routing import IntegerConverter

from call_routing.rules import DEFAULT_RULES_PATH, load_rules
from call_routing.rules_store import RulesStore

ROOT = Path(__file__).resolve().parent
CONFIG_KEYS = ("RULES_PATH", "REDIS_URL", "DATABASE_URL", "TWILIO_AUTH_TOKEN", "VOSK_MODEL_PATH", "PROXY_HOPS",
               "HOTLINE_AMI")
log = logging.getLogger("hotline.app")


class RowId(IntegerConverter):
    """``<int:…>`` in every route: a database row id, at most 2**63 - 1 (a larger one is a plain
    404, not an OverflowError from the database)."""

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.url_map.converters["int"] = RowId
    app.config.update(
        RULES_PATH=str(DEFAULT_RULES_PATH),
        REDIS_URL="redis://127.0.0.1:6379/0",
        DATABASE_URL=f"sqlite:///{ROOT / 'var' / 'hotline.db'}",
        TWILIO_AUTH_TOKEN=None,
        VOSK_MODEL_PATH=None,
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,  # Twilio posts a few KB, the rules editor < 1 MB: 413 above
    )
    for key in CONFIG_KEYS:
        if os.environ.get(key):
            app.config[key] = os.environ[key]
    app.config.update(config or {})
    # An invalid rules file stops start-up with the admin-readable problems (RulesError).
    # Later edits are picked up within a second; an invalid edit never replaces them.
    app.extensions["rules"] = RulesStore(app.config["RULES_PATH"])

    from consoles import agent_api  # the agent console's JSON API (ACD seats), under /agent/api/

    agent_api.init_app(app)

    from consoles import demo_phone  # simulated callers answered in the agent console (tools.simulate --live)

    demo_phone.init_app(app)

    from ivr.twilio import webhooks as twilio_webhooks  # Twilio webhooks under /twilio/ (docs/twilio.md)

    twilio_webhooks.init_app(app)

    from consoles import transfers  # the agent's transfer controls for Twilio and Asterisk calls (AMI: HOTLINE_AMI)

    transfers.init_app(app)

    import consoles  # sign-in /login, admin and supervisor pages /admin/, agent console /agent/, /metrics

    consoles.init_app(app)

    try:
        hops = int(app.config.get("PROXY_HOPS") or 0)
    except ValueError:
        raise ValueError(f"PROXY_HOPS must be a whole number of proxies, not {app.config['PROXY_HOPS']!r}") from None
    if hops > 0:  # the client's address, as the proxies say, for the audit log and sign-in throttling
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=0)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", rules_version=app.extensions["rules"].current().version)

    return app


def _process_report(redis_url: str):
    """The supervisor's report, to Redis: every process of the product reads it from there."""
    import json
    import time

    from runtime.redis_conn import redis_client
    from runtime.supervisor import STATE_KEY, STATE_TTL_S, node_name

    client = redis_client(redis_url, socket_timeout=2, socket_connect_timeout=2)
    node = node_name()  # several nodes share the hash: each process under its node's name

    def report(states: dict) -> None:
        now = time.time()
        pipe = client.pipeline()
        pipe.hset(STATE_KEY, mapping={f"{name}@{node}": json.dumps(dict(st, reported=now))
                                      for name, st in states.items()})
        pipe.expire(STATE_KEY, STATE_TTL_S)
        pipe.execute()
    return report


def _summary(web: str, proxied: bool, fastagi: str, redis_url: str, embedded) -> str:
    """What runs where, printed once at start-up."""
    from sqlalchemy.engine import make_url

    host, _, port = web.rpartition(":")
    shown = "THIS-MACHINE" if host in ("0.0.0.0", "::", "[::]", "") else host
    db = os.environ.get("DATABASE_URL") or f"sqlite:///{ROOT / 'var' / 'hotline.db'}"
    redis_line = (f"embedded, data in {embedded.data_dir}" if embedded and embedded.data_dir
                  else "embedded, keeps nothing (REDIS_DATA_DIR=off)" if embedded else redis_url.split("@")[-1])
    return "\n".join([
        "", "12345 gateway",
        f"  web        http://{web}" + (" (nginx in front, gunicorn behind it)" if proxied else ""),
        f"  sign in    http://{shown}:{port}/login   (users: python -m consoles.users; docs/consoles.md)",
        f"  FastAGI    {'agi://' + fastagi if fastagi != 'off' else 'off (FASTAGI_BIND)'}   (Asterisk: docs/asterisk.md)",
        "  Twilio     " + (("webhooks /twilio/voice (signed with TWILIO_AUTH_TOKEN)" + (
            "" if os.environ.get("TWILIO_ACCOUNT_SID") else "; TWILIO_ACCOUNT_SID not set: agents cannot be rung") + (
            f"; REST API {os.environ['TWILIO_API_BASE']} (TWILIO_API_BASE, test/demo only)"
            if os.environ.get("TWILIO_API_BASE") else ""))
                         if os.environ.get("TWILIO_AUTH_TOKEN")
                         else "off: TWILIO_AUTH_TOKEN not set, /twilio/ webhooks refused (docs/twilio.md)"),
        f"  Redis      {redis_line}",
        f"  database   {make_url(db).render_as_string(hide_password=True)}"
        + (f"   (schema {os.environ['DATABASE_SCHEMA']})" if os.environ.get("DATABASE_SCHEMA") else ""),
        "  background worker (speech, callbacks, hand-offs), timers — restarted if they die",
        "  first call .venv/bin/python -m tools.simulate --live   (simulated callers; README: First call)", ""])


def _cannot_listen(address: str) -> str | None:
    """Why nothing can listen on ``host:port`` now (in use, not an address), or None."""
    import errno
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), int(port)))
    except ValueError:
        return "is not host:port"
    except OSError as exc:
        return "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
    return None


def _live_speech_children(children: dict) -> dict:
    """With a speech model (``VOSK_MODEL_PATH``): the AudioSocket server for Asterisk
    (``AUDIOSOCKET_BIND``, default 127.0.0.1:9092, ``off`` to skip; the dialplan's
    ``HOTLINE_AUDIOSOCKET`` names it) and, when ``TWILIO_MEDIA_STREAM_URL`` is set, the Twilio
    media-stream server (``MEDIA_STREAMS_BIND``, default 127.0.0.1:8001; nginx passes
    ``/twilio/media`` to it). Returns where each listens."""
    live = {}
    if not os.environ.get("VOSK_MODEL_PATH"):
        return live
    audiosocket = os.environ.get("AUDIOSOCKET_BIND", "127.0.0.1:9092")
    if audiosocket != "off":
        host, _, port = audiosocket.rpartition(":")
        children["audiosocket"] = [sys.executable, "-m", "agi_scripts.audiosocket", "--host", host, "--port", port]
        live["audiosocket"] = audiosocket
        log.info("AudioSocket server on %s: set HOTLINE_AUDIOSOCKET=%s in the dialplan's globals (AUDIOSOCKET_BIND=off "
                 "to skip)", audiosocket, audiosocket)
    if os.environ.get("TWILIO_MEDIA_STREAM_URL"):
        media = os.environ.get("MEDIA_STREAMS_BIND", "127.0.0.1:8001")
        host, _, port = media.rpartition(":")
        children["media"] = [sys.executable, "-m", "ivr.twilio.media", "--host", host, "--port", port]
        live["media"] = media
        log.info("Twilio media streams on %s (%s)", media, os.environ["TWILIO_MEDIA_STREAM_URL"])
    return live


def main() -> int:
    """Run the product: embedded Redis (unless REDIS_URL), rq worker, FastAGI server, web app."""
    from runtime.redis_server import DataDirError, redis_url_or_embedded
    from runtime.redis_conn import SettingError, sentinel_summary
    from runtime.proxy import nginx_binary, nginx_command, nginx_config
    from runtime.supervisor import Supervisor
    from call_routing.rules import RulesError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        load_rules(os.environ.get("RULES_PATH") or DEFAULT_RULES_PATH)
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    for setting, default in (("BIND", "0.0.0.0:8000"), ("FASTAGI_BIND", "127.0.0.1:4573")):
        address = os.environ.get(setting, default)
        if address != "off" and (problem := _cannot_listen(address)):
            print(f"cannot start: {setting}={address} {problem} (another ./run.sh, or another program? "
                  f"set {setting} to a free host:port{' or off' if setting == 'FASTAGI_BIND' else ''})",
                  file=sys.stderr)
            return 1
    if os.environ.get("TWILIO_API_BASE"):  # a Twilio-compatible API (the live simulator's): loopback or https only
        from ivr.twilio.calls import check_api_base

        try:
            check_api_base(os.environ["TWILIO_API_BASE"])
        except ValueError as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 1
    try:  # REDIS_SENTINELS: the Sentinels' primary; else REDIS_DATA_DIR (default var/redis) keeps the data
        sentinels = sentinel_summary()
        url, embedded = (None, None) if sentinels else redis_url_or_embedded(persistent=True)
    except (DataDirError, SettingError) as exc:
        print(f"cannot start: {exc}" if isinstance(exc, SettingError) else exc, file=sys.stderr)
        return 1
    if url:
        os.environ["REDIS_URL"] = url
    if embedded:
        log.info("started embedded Redis at %s (set REDIS_URL to use your own)", url)
    if not os.environ.get("DATABASE_URL"):
        (ROOT / "var").mkdir(exist_ok=True)  # the default SQLite database lives there
    import consoles

    consoles.bootstrap_from_env()  # first start: admin account (ADMIN_PASSWORD, else a printed one-time password)
    children = {"worker": [sys.executable, "-m", "intake.worker", *(["--url", url] if url else [])],  # speech, …
                "timers": [sys.executable, "-m", "call_routing.acd", "tick"]}  # overflow, ring/wrap-up timeouts, callbacks
    fastagi = os.environ.get("FASTAGI_BIND", "127.0.0.1:4573")
    if fastagi != "off":
        host, _, port = fastagi.rpartition(":")
        children["fastagi"] = [sys.executable, "-m", "agi_scripts.fastagi_server", "--host", host, "--port", port]
        log.info("FastAGI server on agi://%s (FASTAGI_BIND=off to skip)", fastagi)
    live = _live_speech_children(children)  # waiting callers heard live (AudioSocket, Media Streams)
    bind = os.environ.get("BIND", "0.0.0.0:8000")
    proxy_dir = None
    if os.environ.get("WEB_PROXY", "nginx") != "off" and nginx_binary():
        # nginx reads each request whole before a gunicorn worker sees it: slow clients hold nothing
        proxy_dir = tempfile.mkdtemp(prefix="hotline-nginx-")
        public, bind = bind, f"unix:{proxy_dir}/web.sock"  # gunicorn behind it: no port to race for
        children["proxy"] = nginx_command(nginx_config(public, bind, proxy_dir, media=live.get("media")))
        os.environ.setdefault("PROXY_HOPS", "1")  # the client's address, as nginx says, for audit and throttling
        log.info("serving on http://%s through nginx (buffering proxy; WEB_PROXY=off to serve gunicorn directly)",
                 public)
    supervisor = Supervisor(children, cwd=ROOT, report=_process_report(url)).start()  # restarted when they die
    started_by = os.getpid()
    print(_summary(public if proxy_dir else bind, bool(proxy_dir), fastagi, sentinels or url, embedded), flush=True)
    try:
        from gunicorn.app.base import BaseApplication

        from runtime import serving

        class _Server(BaseApplication):
            def load_config(self):
                self.cfg.set("bind", bind)
                self.cfg.set("workers", serving.default_workers())
                self.cfg.set("worker_class", serving.worker_class)
                self.cfg.set("backlog", serving.backlog)
                self.cfg.set("post_worker_init", serving.post_worker_init)

            def load(self):
                return create_app()

        if not proxy_dir:
            log.info("serving on http://%s", bind)
        _Server().run()
    finally:
        # a gunicorn worker is forked from here and leaves through this block too when it exits
        # (its own exit code): only the process that started them stops the product's processes
        if os.getpid() == started_by:
            supervisor.stop()  # the worker finishes its job, FastAGI lets calls drain
            if proxy_dir:
                shutil.rmtree(proxy_dir, ignore_errors=True)
            if embedded:
                embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
