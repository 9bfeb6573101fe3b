"""Helpers for the console tests: an app on a copy of the rules, users of every role, sign-in."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"admin": "admin-pass-123", "super": "super-pass-123", "agent1": "agent-pass-123"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def copy_rules(directory: Path) -> Path:
    """The shipped rules and keyword files, copied where a test may edit them."""
    shutil.copy(ROOT / "transfer_rules.yaml", directory / "transfer_rules.yaml")
    shutil.copy(ROOT / "emergency_keywords.yaml", directory / "emergency_keywords.yaml")
    return directory / "transfer_rules.yaml"


def open_expert_seats(app) -> None:
    """Expert groups open at any hour in this app's rules copy (the shipped ones keep office
    hours, and a three-way never reaches a closed group): what an admin's edit would do."""
    path = Path(app.config["RULES_PATH"])
    text = path.read_text("utf-8")
    path.write_text(text.replace('hours: {days: workdays, open: "08:30", close: "17:30"}', "hours: always"), "utf-8")
    app.extensions["rules"].reload()


def make_console_app(tmp_path: Path, redis_url: str, **extra):
    """create_app on a copy of the rules, a fresh SQLite file, Twilio with a recording HTTP client."""
    from app import create_app
    from intake.jobs import CallTickets
    from intake.tickets import TicketStore
    from tests.twilio_support import ACCOUNT, TOKEN, RecordingHttpClient

    rules_path = copy_rules(tmp_path)
    url = f"sqlite:///{tmp_path / 'console.db'}"
    tickets = TicketStore(url)
    http = RecordingHttpClient()
    config = {"RULES_PATH": str(rules_path), "REDIS_URL": redis_url, "DATABASE_URL": url,
              "SECRET_KEY": "test-secret-key", "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT,
              "TWILIO_HTTP_CLIENT": http, "TWILIO_CALLER_ID": "+8612345",
              "HOTLINE_SERVICES": {"tickets": CallTickets(tickets), "classify": None}, "CONSOLE_TICKETS": tickets}
    config.update(extra)
    app = create_app(config)
    console = app.extensions["console"]
    console.db.add_user("admin", PASSWORDS["admin"], "admin", display_name="王管理")
    console.db.add_user("super", PASSWORDS["super"], "supervisor", display_name="李班长")
    console.db.add_user("agent1", PASSWORDS["agent1"], "agent", agent_id="a1", display_name="张坐席")
    app.test_http = http
    return app


def csrf_of(client) -> str:
    """The session's CSRF token (creates the session by opening the sign-in page)."""
    html = client.get("/login").get_data(as_text=True)
    return _CSRF.search(html).group(1)


def sign_in(client, username: str, password: str | None = None):
    token = csrf_of(client)
    return client.post("/login", data={"username": username, "password": password or PASSWORDS[username],
                                        "csrf_token": token})


def form_csrf(html: str) -> str:
    return _CSRF.search(html).group(1)


class served:
    """``with served(app) as base:`` the app on a real socket (werkzeug, threaded); ``base`` is its URL."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.thread.join(5)
