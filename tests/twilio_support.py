"""Helpers for the Twilio front-end tests: a signed Twilio, a recording REST HTTP client."""
from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlparse

from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator

from tools.simulate.twilio_rest import conference_sid

TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT = "AC" + "0" * 32
API = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}"


class RecordingHttpClient(HttpClient):
    """Answers Twilio REST requests like Twilio would, and keeps every request: no network."""

    def __init__(self):
        super().__init__(None, False)
        self.requests: list[tuple[str, str, dict]] = []
        self._ids = itertools.count(1)
        # what GET Conferences answers: a test's own list, else (None) as Twilio would, the
        # conferences a caller was moved into by REST (the agent's answer), by friendly name
        self.running_conferences: list[dict] | None = None
        self.moved_into: dict[str, str] = {}  # caller leg -> the conference its last REST move put it in
        self.call_status: dict[str, str] = {}  # what GET Calls/<sid> answers: in-progress unless a test says
        self.conferences_fail = False  # GET Conferences answers 503 while a test says so
        self.joined: dict[str, set[str]] = {}  # conference -> agent legs in it (their answer's TwiML joined them)

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        self.requests.append((method, uri, dict(data or {}) if method != "GET" else dict(params or {})))
        path = urlparse(uri).path
        if method == "DELETE":
            return Response(204, "")
        if method == "GET" and path.endswith("/Conferences.json"):
            if self.conferences_fail:  # Twilio in trouble: a 503, as its API answers then
                return Response(503, json.dumps({"code": 20503, "message": "Service unavailable", "status": 503}))
            running = self.running_conferences
            if running is None:
                name = (params or {}).get("FriendlyName")
                running = [{"sid": conference_sid(n), "friendly_name": n, "status": "in-progress"}
                           for n in sorted(set(self.moved_into.values())) if name in (None, n)]
            return Response(200, json.dumps({"conferences": running, "meta": {"key": "conferences"}}))
        if method == "GET" and path.endswith("/Participants.json"):  # who is in it: the callers moved in, the agents
            name = next((n for n in set(self.moved_into.values()) | set(self.joined) if conference_sid(n) in path), "")
            members = [c for c, n in self.moved_into.items() if n == name] + sorted(self.joined.get(name, ()))
            return Response(200, json.dumps({"participants": [{"call_sid": c, "account_sid": ACCOUNT,
                                                               "conference_sid": conference_sid(name)}
                                                              for c in members],
                                             "meta": {"key": "participants"}}))
        if method == "POST" and "/Calls/" in path:  # a caller moved: into a conference, or out of it
            sid = path.rsplit("/", 1)[-1].split(".")[0]
            conference = ET.fromstring(data["Twiml"]).findtext(".//Conference") if "Twiml" in (data or {}) else None
            if conference:
                self.moved_into[sid] = conference
            else:
                self.moved_into.pop(sid, None)
        if method == "GET" and "/Calls/" in path:
            sid = path.rsplit("/", 1)[-1].split(".")[0]
            return Response(200, json.dumps({"sid": sid, "account_sid": ACCOUNT,
                                             "status": self.call_status.get(sid, "in-progress")}))
        if path.endswith("/Participants.json"):
            n = next(self._ids)
            return Response(201, json.dumps({"call_sid": f"CAtransfer{n}", "conference_sid": path.split("/")[-2],
                                             "account_sid": ACCOUNT, "label": (data or {}).get("Label")}))
        if path.endswith("/Calls.json"):
            return Response(201, json.dumps({"sid": f"CAagentleg{next(self._ids)}", "account_sid": ACCOUNT}))
        return Response(200, json.dumps({"sid": path.rsplit("/", 1)[-1].split(".")[0], "account_sid": ACCOUNT}))

    def posts(self, suffix: str = "") -> list[tuple[str, dict]]:
        return [(u, d) for m, u, d in self.requests if m == "POST" and u.endswith(suffix)]


class SignedTwilio:
    """Posts to the Flask test client exactly as Twilio does: form params + X-Twilio-Signature."""

    def __init__(self, client, base="http://localhost", token=TOKEN):
        self.client, self.base, self.validator = client, base, RequestValidator(token)

    def post(self, path, params, *, sign_url=None, headers=None, signature=None):
        url = sign_url or (self.base + path)
        sig = signature if signature is not None else self.validator.compute_signature(url, params)
        h = {"X-Twilio-Signature": sig, **(headers or {})}
        return self.client.post(path, data=params, headers=h)

    def twiml(self, path, params, **kw) -> ET.Element:
        resp = self.post(path, params, **kw)
        assert resp.status_code == 200, (resp.status_code, resp.data)
        root = ET.fromstring(resp.data)
        assert root.tag == "Response"
        return root


def call_params(sid, to="12345", frm="+8613812345678", **extra):
    return {"CallSid": sid, "AccountSid": ACCOUNT, "To": to, "From": frm, "CallStatus": "ringing",
            "Direction": "inbound", **extra}


def verbs(root) -> list[str]:
    return [child.tag for child in root]


def said(root) -> str:
    return "".join(e.text or "" for e in root.iter("Say"))


def query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
