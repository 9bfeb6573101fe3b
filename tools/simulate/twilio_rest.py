"""Twilio's REST API, simulated: what the app's ``twilio.rest.Client`` reaches (:class:`SimHttpClient`)."""
from __future__ import annotations

import itertools
import json
import os
import re
from urllib.parse import urlparse

TOKEN = "sim-auth-token-0123456789abcdef0123"
ACCOUNT = "AC" + "5" * 32
REST_EVENTS = "sim:twilio:rest"
CONFERENCES = "sim:twilio:conferences"  # running conferences, for app processes asking Twilio (--processes)
LIVE_LEGS = "sim:twilio:legs"  # calls in progress (callers, agent legs), likewise
MEMBERS = "sim:twilio:members:"  # + conference name: the agent and party legs in it, likewise


def conference_sid(name: str) -> str:
    """A conference's SID, one per friendly name (as Twilio gives each conference its own)."""
    import hashlib

    return "CF" + hashlib.md5(name.encode()).hexdigest()


class SimHttpClient:
    """The app's ``twilio.rest.Client`` http_client: answers like Twilio and tells the simulated
    Twilio what happened — directly (:class:`~tools.simulate.twilio_cloud.SimTwilio` in this process) or, when the app runs in
    its own processes (gunicorn), through a Redis list the simulator reads (``sim:twilio:rest``)."""

    def __init__(self, cloud=None, redis_url: str | None = None):
        import uuid

        self.cloud = cloud
        self._redis = None
        if cloud is None:
            import redis as redis_lib

            self._redis = redis_lib.Redis.from_url(redis_url)
        self._prefix = uuid.uuid4().hex[:6]
        self._ids = itertools.count(1)
        self.last_request = self.last_response = None
        self.requests = 0

    def _tell(self, kind: str, sid: str, data: dict) -> bool:
        if self.cloud is not None:
            return self.cloud.dispatch(kind, sid, data)
        self._redis.rpush(REST_EVENTS, json.dumps([kind, sid, data]))
        return True

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        from twilio.http.response import Response

        self.requests += 1
        data = {k: (v if isinstance(v, str) else str(v)) for k, v in dict(data or {}).items()}
        path = urlparse(uri).path
        if method == "DELETE":
            m = re.search(r"/Participants/([^/]+)\.json$", path)
            if m:  # a leg taken out of a conference
                self._tell("left", m.group(1), {})
            return Response(204, "")
        if method == "GET" and path.endswith("/Conferences.json"):
            name = dict(params or {}).get("FriendlyName")
            found = [{"sid": conference_sid(n), "friendly_name": n, "status": "in-progress"}
                     for n in self._running() if name in (None, n)]
            return Response(200, json.dumps({"conferences": found, "meta": {"key": "conferences"}}))
        m = re.search(r"/Conferences/([^/]+)/Participants\.json$", path)
        if m and method == "GET":  # who is in it: the caller while it runs, and the legs that joined
            name = next((n for n in self._running() if conference_sid(n) == m.group(1)), None)
            legs = [] if name is None else [name[len("hotline-"):]] + self._members(name)
            return Response(200, json.dumps({"participants": [{"call_sid": leg, "account_sid": ACCOUNT,
                                                               "conference_sid": m.group(1)} for leg in legs],
                                             "meta": {"key": "participants"}}))
        if path.endswith("/Participants.json"):
            sid = f"CAparty{self._prefix}{next(self._ids)}"
            self._tell("participant", sid, {**data, "_Conference": path.split("/")[-2]})  # the sim's own note
            return Response(201, json.dumps({"call_sid": sid, "conference_sid": path.split("/")[-2],
                                             "account_sid": ACCOUNT}))
        if path.endswith("/Calls.json"):
            sid = f"CAleg{self._prefix}{next(self._ids):06d}"
            self._tell("outbound", sid, data)
            return Response(201, json.dumps({"sid": sid, "account_sid": ACCOUNT, "status": "queued"}))
        m = re.search(r"/Calls/([^/]+)\.json$", path)
        if m and method == "GET":  # a call's status: in progress while Twilio still plays it
            live = self.cloud.leg_live(m.group(1)) if self.cloud is not None \
                else bool(self._redis.sismember(LIVE_LEGS, m.group(1)))
            return Response(200, json.dumps({"sid": m.group(1), "account_sid": ACCOUNT,
                                             "status": "in-progress" if live else "completed"}))
        if m and method == "POST":
            if not self._tell("update", m.group(1), data):
                return Response(404, json.dumps({"code": 20404, "message": "not found", "status": 404}))
        return Response(200, json.dumps({"sid": path.rsplit("/", 1)[-1].split(".")[0], "account_sid": ACCOUNT}))


    def _running(self) -> list[str]:
        """The running conferences (a caller is in each), by name."""
        if self.cloud is not None:
            return self.cloud.running_conferences()
        return sorted(v.decode() for v in self._redis.smembers(CONFERENCES))

    def _members(self, name: str) -> list[str]:
        if self.cloud is not None:
            return self.cloud.conference_members(name)
        return sorted(v.decode() for v in self._redis.smembers(MEMBERS + name))


def web_app():
    """gunicorn's app for ``--processes``: the product's app with the simulated Twilio REST API."""
    from app import create_app

    return create_app({"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_CALLER_ID": "+8612345",
                       "TWILIO_HTTP_CLIENT": SimHttpClient(redis_url=os.environ["REDIS_URL"]),
                       "TWILIO_WAIT_TICK_S": int(os.environ.get("SIM_WAIT_TICK_S", "2")),
                       "SECRET_KEY": "sim", "ADMIN_PASSWORD": None})

