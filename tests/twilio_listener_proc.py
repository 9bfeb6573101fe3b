"""A web process for the offer-listener test: the Twilio app with its offer listener running,
ringing agents through an HTTP client that records every Twilio request in Redis."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.twilio_support import ACCOUNT, TOKEN, RecordingHttpClient  # noqa: E402


class RedisRecordingHttpClient(RecordingHttpClient):
    """Like RecordingHttpClient, and every ``Calls.json`` POST is also pushed to ``test:rings``."""

    def __init__(self, url: str):
        super().__init__()
        self.r = redis.Redis.from_url(url, decode_responses=True)

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        response = super().request(method, uri, params, data, headers, auth, timeout, allow_redirects)
        if method == "POST" and uri.endswith("/Calls.json"):
            self.r.rpush("test:rings", f"{os.getpid()} {(data or {}).get('To')} {(data or {}).get('Url')}")
        return response


def main() -> None:
    from app import create_app
    from ivr.flow import MemoryTickets

    url, rules = sys.argv[1], sys.argv[2]
    app = create_app({"RULES_PATH": rules, "REDIS_URL": url, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT,
                      "TWILIO_HTTP_CLIENT": RedisRecordingHttpClient(url), "TWILIO_OFFER_LISTENER": "1",
                      "HOTLINE_SERVICES": {"tickets": MemoryTickets(), "classify": None}})
    listener = app.extensions["twilio"]["listener"]
    listener.sweep_s = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    listener.ensure_started()
    import time

    time.sleep(0.3)  # subscribed
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    listener.stop()


if __name__ == "__main__":
    main()
