"""``python -m tools.simulate`` — synthetic calls through the whole product, no phone line needed.

    python -m tools.simulate --calls 200 [--front twilio|agi|both] [--agents 20] [--seed 1]

Starts what it needs when nothing is running (an embedded Redis unless ``REDIS_URL`` is set, a
SQLite ticket database in a temp folder, the web app on a threaded HTTP server on 127.0.0.1,
the FastAGI server, an rq worker and the ticket writer in threads, the ACD timers) and then
places N concurrent calls:

- **Twilio** calls are signed webhooks over HTTP, exactly as Twilio sends them
  (``X-Twilio-Signature``); the app's Twilio REST client is given a simulated Twilio
  (:class:`SimTwilio`) that answers REST requests and plays Twilio's part: agent legs ring,
  answer (``agent-answer``) and hang up (``agent-status``), the caller is moved into the
  conference, redirected to the survey, recordings are reported (``recording``).
- **Asterisk** calls are FastAGI sessions over TCP (:class:`SimAsterisk`): the ``agi_*``
  environment, ``200 result=`` replies, and the sample dialplan's continuation by
  ``HOTLINE_ACTION`` (queue_wait loops, Dial of the agent with ``transfer,answered`` /
  ``transfer,<DIALSTATUS>``, survey, the ``h`` extension, and ``[hotline-fallback]`` when an
  AGI fails).
- **Agents** (:class:`SimAgent`) log in through the agent API (``/agent/api/login``), keep a
  heartbeat, answer when their endpoint rings (some never do, with ``--lazy-agents``), talk,
  and end wrap-up through the API; a share of Twilio calls are handed to the sub-center by a
  three-way transfer (``/agent/api/twilio/three-way`` then ``/leave``).
- **Callers** say what their matter is while waiting (Twilio speech results; Asterisk
  ``RECORD FILE`` writes a short WAV for the speech job), some give up and hang up, some
  press 1 for a callback (dialled by :class:`SimCallbackDialer` through the rq worker), and an
  emergency share says emergency words (Twilio) or dials 110/119/120/122 (Asterisk).

Times are compressed (invitation after 1 s, callback offer after 3 s, ring timeout 2 s, talk
0.3-1.5 s). A progress bar goes to stderr; the report of every call and the KPIs go to stdout,
and the LAST line is one JSON object (``calls``, ``connected``, ``abandoned``, ``callback``,
``emergency``, ``lost``, ``tickets_missing``, ``p99_ms``, …). Exit code 0 when nothing was lost.

Everything listens on 127.0.0.1 only. See docs/simulate.md.
"""
from __future__ import annotations
from intake.callback_jobs import rq_dispatch

import argparse
import http.client
import itertools
import json
import logging
import os
import queue as queue_mod
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("hotline.simulate")

TOKEN = "sim-auth-token-0123456789abcdef0123"
ACCOUNT = "AC" + "5" * 32
PASSWORD = "sim-agent-pw"
EMERGENCY_WORDS = ("楼下着火了，好大的烟", "有人晕倒了，叫救护车", "我被抢劫了")
MATTERS = ("我想问一下公积金贷款最多能贷多少", "小区门口的路灯坏了好几天了", "我要投诉楼下饭店噪音扰民",
           "社保卡丢了怎么补办", "景区门票乱收费", "孩子上学的户口问题想咨询一下", "")
LINES = ("12345",) * 12 + ("12301", "12348", "12333", "12315", "12329", "12319", "12360")

_ACTIVE: "Simulation | None" = None  # the running simulation (for the callback dialer factory)
if __name__ == "__main__":  # python -m tools.simulate: the rq job imports tools.simulate, make it this module
    sys.modules.setdefault("tools.simulate", sys.modules[__name__])


# ---------------------------------------------------------------------------------------------
# numbers

def percentile(values, p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return round(s[k] * 1000, 2)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.webhook: list[float] = []
        self.agi: list[float] = []
        self.errors: list[str] = []
        self.by_path: dict[str, list[float]] = {}

    def add_path(self, path: str, seconds: float) -> None:
        key = path.split("?", 1)[0]
        with self.lock:
            self.by_path.setdefault(key, []).append(seconds)

    def add(self, kind: str, seconds: float) -> None:
        with self.lock:
            getattr(self, kind).append(seconds)

    def error(self, msg: str) -> None:
        with self.lock:
            if len(self.errors) < 200:
                self.errors.append(msg)


@dataclass
class CallRecord:
    id: str
    front: str
    dialed: str
    behaviour: str  # patient | impatient | callback | emergency
    outcome: str | None = None  # connected | subcenter | abandoned | callback | emergency | fallback | announced
    detail: str = ""
    ticket: str | None = None
    agent: str | None = None
    transferred: bool = False
    silence: bool = False  # heard silence (alone in a conference, nothing said) before giving up
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


# ---------------------------------------------------------------------------------------------
# agents

class SimAgent:
    """A seat: signs in through the agent API, heartbeats, wraps up; answers when rung."""

    def __init__(self, sim: "Simulation", agent_id: str, *, answers: bool = True):
        self.sim, self.id, self.answers = sim, agent_id, answers
        self.endpoint = f"sip:{agent_id}@agents.sim.invalid"
        self.token: str | None = None
        self.calls = 0
        self.missed = 0
        self.rng = random.Random(f"{sim.seed}-{agent_id}")

    def api(self, path: str, body: dict | None = None, method: str = "POST") -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        status, raw = self.sim.http(method, path, json.dumps(body or {}).encode() if method == "POST" else None,
                                    headers)
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {}

    def login(self) -> bool:
        status, body = self.api("/agent/api/login", {"agent_id": self.id, "password": PASSWORD})
        if status == 200:
            self.token = body["token"]
            return True
        return False

    def loop(self, stop: threading.Event) -> None:
        """The console: heartbeat, wrap-up done, resume after a missed call, sign in again."""
        last_beat = 0.0
        while not stop.is_set():
            try:
                if self.token is None and not self.login():
                    self.sim.ensure_agent(self.id)  # Redis lost its state: the admin's seat list is re-applied
                    stop.wait(0.5)
                    continue
                now = time.monotonic()
                if now - last_beat > 5:
                    status, _ = self.api("/agent/api/heartbeat")
                    if status == 401:
                        self.token = None
                        continue
                    last_beat = now
                status, me = self.api("/agent/api/me", method="GET")
                if status == 401:
                    self.token = None
                    continue
                agent = me.get("agent") or {}
                state = agent.get("state")
                if state == "wrapup":
                    stop.wait(self.sim.wrapup_s)
                    self.api("/agent/api/wrapup/done")
                elif state == "paused" and agent.get("reason") == "no-answer" and self.answers:
                    stop.wait(0.5)
                    self.api("/agent/api/state", {"state": "ready"})
                elif state == "offline":
                    self.token = None
            except Exception as exc:  # the console keeps trying, like a browser would
                self.sim.stats.error(f"agent {self.id}: {exc!r}")
            stop.wait(self.rng.uniform(0.5, 1.0))

    def talk_s(self) -> float:
        return self.rng.uniform(*self.sim.talk_s)


# ---------------------------------------------------------------------------------------------
# Twilio, simulated: REST in (the app's client), webhooks out (signed HTTP to the app)

def _PooledServer(host, port, app, threads):
    """Werkzeug's server with a bounded pool of request threads (like gunicorn's gthread
    worker): a web process never runs more requests at once than it has threads."""
    from concurrent.futures import ThreadPoolExecutor

    from werkzeug.serving import BaseWSGIServer

    class Server(BaseWSGIServer):
        multithread = True
        request_queue_size = 1024

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="web")

        def _work(self, request, client_address):
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

        def process_request(self, request, client_address):
            self.pool.submit(self._work, request, client_address)

    return Server(host, port, app)


class SimHttpClient:
    """The app's ``twilio.rest.Client`` http_client: answers like Twilio and tells the simulated
    Twilio what happened — directly (:class:`SimTwilio` in this process) or, when the app runs in
    its own processes (gunicorn), through a Redis list the simulator reads (``sim:twilio:rest``)."""

    def __init__(self, cloud: "SimTwilio | None" = None, redis_url: str | None = None):
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
            return Response(204, "")
        if method == "GET" and path.endswith("/Conferences.json"):
            name = dict(params or {}).get("FriendlyName", "")
            running = self.cloud.conference_running(name) if self.cloud is not None \
                else bool(self._redis.sismember(CONFERENCES, name))
            found = [{"sid": "CF" + "9" * 32, "friendly_name": name, "status": "in-progress"}] if running else []
            return Response(200, json.dumps({"conferences": found, "meta": {"key": "conferences"}}))
        if path.endswith("/Participants.json"):
            sid = f"CAparty{self._prefix}{next(self._ids)}"
            self._tell("participant", sid, data)
            return Response(201, json.dumps({"call_sid": sid, "conference_sid": path.split("/")[-2],
                                             "account_sid": ACCOUNT}))
        if path.endswith("/Calls.json"):
            sid = f"CAleg{self._prefix}{next(self._ids):06d}"
            self._tell("outbound", sid, data)
            return Response(201, json.dumps({"sid": sid, "account_sid": ACCOUNT, "status": "queued"}))
        m = re.search(r"/Calls/([^/]+)\.json$", path)
        if m and method == "POST":
            if not self._tell("update", m.group(1), data):
                return Response(404, json.dumps({"code": 20404, "message": "not found", "status": 404}))
        return Response(200, json.dumps({"sid": path.rsplit("/", 1)[-1].split(".")[0], "account_sid": ACCOUNT}))


REST_EVENTS = "sim:twilio:rest"
CONFERENCES = "sim:twilio:conferences"  # running conferences, for app processes asking Twilio (--processes)


def web_app():
    """gunicorn's app for ``--processes``: the product's app with the simulated Twilio REST API."""
    from app import create_app

    return create_app({"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_CALLER_ID": "+8612345",
                       "TWILIO_HTTP_CLIENT": SimHttpClient(redis_url=os.environ["REDIS_URL"]),
                       "TWILIO_WAIT_TICK_S": int(os.environ.get("SIM_WAIT_TICK_S", "2")),
                       "SECRET_KEY": "sim", "ADMIN_PASSWORD": None})


class SimTwilio:
    """Twilio's side of every call: posts signed webhooks, follows TwiML, rings agent legs."""

    def __init__(self, sim: "Simulation"):
        from twilio.request_validator import RequestValidator

        self.sim = sim
        self.validator = RequestValidator(TOKEN)
        self.inbox: dict[str, queue_mod.Queue] = {}  # caller leg -> REST moves for it
        self.legs: dict[str, threading.Event] = {}  # agent/party leg -> cancelled
        self.conferences: set[str] = set()  # running conferences: those a caller is in
        self.last_path: dict[str, str] = {}  # leg -> the last webhook posted for it (for reports)
        self.lock = threading.Lock()
        self._redis = None

    def conference_running(self, name: str) -> bool:
        with self.lock:
            return name in self.conferences

    def _conference(self, name: str, running: bool) -> None:
        """Twilio's conference list, answered truthfully to ``GET Conferences``."""
        with self.lock:
            (self.conferences.add if running else self.conferences.discard)(name)
        if self.sim.processes:  # app processes ask through Redis (best effort: Redis may be down)
            try:
                if self._redis is None:
                    import redis as redis_lib

                    self._redis = redis_lib.Redis.from_url(self.sim.redis_url)
                (self._redis.sadd if running else self._redis.srem)(CONFERENCES, name)
            except Exception:
                pass

    def dispatch(self, kind: str, sid: str, data: dict) -> bool:
        if kind == "outbound":
            self.submit(self.outbound_leg, sid, data)
        elif kind == "participant":
            self.submit(self.participant, sid, data)
        elif kind == "update":
            return self.update_leg(sid, data)
        return True

    def follow(self, redis_url: str, stop: threading.Event) -> None:
        """REST requests of app processes (``--processes``), from the Redis list they push to."""
        import redis as redis_lib

        r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
        while not stop.is_set():
            try:
                item = r.blpop(REST_EVENTS, timeout=1)
            except Exception:
                stop.wait(0.5)
                continue
            if item:
                kind, sid, data = json.loads(item[1])
                self._guard(self.dispatch, kind, sid, data)

    def submit(self, fn, *args) -> None:
        threading.Thread(target=self._guard, args=(fn, *args), daemon=True).start()

    def _guard(self, fn, *args):
        try:
            fn(*args)
        except Exception as exc:
            self.sim.stats.error(f"twilio {fn.__name__}: {exc!r}")

    # -- webhooks ---------------------------------------------------------------------------
    def post(self, path: str, params: dict, *, expect_xml: bool = True):
        """A signed webhook; returns the TwiML root (or None for 204)."""
        url = f"{self.sim.base_url}{path}"
        self.last_path[params.get("CallSid", "")] = path.split("?")[0]
        body = urlencode(params).encode()
        sig = self.validator.compute_signature(url, params)
        t0 = time.perf_counter()
        status, raw = self.sim.http("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                          "X-Twilio-Signature": sig}, stat="webhook", t0=t0)
        if status >= 500 or status in (403, 404, 405, 413):
            raise RuntimeError(f"{path} answered {status}")
        if status == 204 or not raw:
            return None
        root = ET.fromstring(raw)
        if root.tag != "Response":
            raise RuntimeError(f"{path}: not TwiML")
        return root

    # -- REST side effects ------------------------------------------------------------------
    def update_leg(self, sid: str, data: dict) -> bool:
        with self.lock:
            box = self.inbox.get(sid)
            cancel = self.legs.get(sid)
        if box is not None:
            if "Twiml" in data:
                box.put(("twiml", data["Twiml"]))
            elif "Url" in data:
                box.put(("redirect", urlparse(data["Url"]).path + (("?" + urlparse(data["Url"]).query)
                                                                   if urlparse(data["Url"]).query else "")))
            elif data.get("Status") in ("canceled", "completed"):
                box.put(("hangup", None))
            return True
        if cancel is not None:
            if data.get("Status") in ("canceled", "completed"):
                cancel.set()
            return True
        return False

    def outbound_leg(self, sid: str, data: dict) -> None:
        """A leg the app placed: an agent being rung for a waiting caller."""
        url = urlparse(data.get("Url", ""))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        status_url = urlparse(data.get("StatusCallback", ""))
        status_path = status_url.path + (f"?{status_url.query}" if status_url.query else "")
        agent = self.sim.agent_by_endpoint(data.get("To", ""))
        cancelled = threading.Event()
        with self.lock:
            self.legs[sid] = cancelled
        try:
            ring_s = min(float(data.get("Timeout", 20)), self.sim.ring_timeout_s)
            if agent is None or not agent.answers:
                if agent is not None:
                    agent.missed += 1
                cancelled.wait(ring_s)
                self.post(status_path, {"CallSid": sid, "CallStatus": "canceled" if cancelled.is_set() else "no-answer",
                                        "AccountSid": ACCOUNT})
                return
            if cancelled.wait(agent.rng.uniform(0.05, 0.3)):
                self.post(status_path, {"CallSid": sid, "CallStatus": "canceled", "AccountSid": ACCOUNT})
                return
            path = url.path + (f"?{url.query}" if url.query else "")
            root = self.post(path, {"CallSid": sid, "CallStatus": "in-progress", "AccountSid": ACCOUNT})
            conf = root.find("Dial/Conference") if root is not None else None
            if conf is None:  # "来电已结束": the caller left meanwhile
                self.post(status_path, {"CallSid": sid, "CallStatus": "completed", "AccountSid": ACCOUNT})
                return
            call_id = q.get("call", "")
            agent.calls += 1
            rec = self.sim.records.get(call_id)
            if rec is not None:
                rec.agent = agent.id
            self.post("/twilio/conference-events", {"FriendlyName": conf.text, "ConferenceSid": "CF" + "9" * 32,
                                                    "StatusCallbackEvent": "participant-join", "CallSid": sid})
            talk = agent.talk_s()
            if rec is not None and rec.behaviour == "patient" and self.sim.wants_transfer(call_id):
                if self._transfer(agent, call_id, talk):
                    return  # the agent left the caller with the sub-center (warm transfer)
            cancelled.wait(talk)
            self.post(status_path, {"CallSid": sid, "CallStatus": "completed", "AccountSid": ACCOUNT,
                                    "CallDuration": str(int(talk))})
            with self.lock:
                box = self.inbox.get(call_id)
            if box is not None:
                box.put(("agent-left", None))
        finally:
            with self.lock:
                self.legs.pop(sid, None)

    def _transfer(self, agent: SimAgent, call_id: str, talk: float) -> bool:
        """三方转接 to the line's expert seats through the agent API, then a warm leave."""
        time.sleep(talk / 2)
        status, body = agent.api("/agent/api/twilio/three-way", {"kind": "expert"})
        if status != 200:  # e.g. 409: no expert seat free now, or the expert group is closed
            with self.sim.lock:
                self.sim.transfers_refused[str(body.get("error", status))[:60]] = \
                    self.sim.transfers_refused.get(str(body.get("error", status))[:60], 0) + 1
            return False
        for _ in range(50):  # wait for the sub-center to answer (transfer-status)
            status, _ = agent.api("/agent/api/twilio/leave")
            if status == 200:
                rec = self.sim.records.get(call_id)
                if rec is not None:
                    rec.transferred = True
                return True
            time.sleep(0.1)
        agent.api("/agent/api/twilio/cancel")
        return False

    def participant(self, sid: str, data: dict) -> None:
        """An expert seat (or sub-center) joins the conference, talks, leaves."""
        url = urlparse(data.get("StatusCallback", ""))
        path = url.path + (f"?{url.query}" if url.query else "")
        expert = self.sim.agent_by_endpoint(data.get("To", ""))
        if expert is not None:
            expert.calls += 1
        time.sleep(0.1)
        self.post(path, {"CallSid": sid, "CallStatus": "in-progress", "AccountSid": ACCOUNT})
        time.sleep(random.uniform(0.3, 1.0))
        self.post(path, {"CallSid": sid, "CallStatus": "completed", "AccountSid": ACCOUNT})

    def participant_deleted(self, sid: str) -> None:
        pass  # the agent left the conference (their leg's status callback follows from agent-status)

    # -- one citizen call ---------------------------------------------------------------------
    def call(self, rec: CallRecord) -> None:
        box: queue_mod.Queue = queue_mod.Queue()
        with self.lock:
            self.inbox[rec.id] = box
        base = {"CallSid": rec.id, "AccountSid": ACCOUNT, "To": rec.dialed, "From": self.sim.caller_number(rec),
                "Direction": "inbound"}
        try:
            self._call(rec, box, base)
        finally:
            with self.lock:
                self.inbox.pop(rec.id, None)

    def _call(self, rec: CallRecord, box, base) -> None:
        sim = self.sim
        rng = random.Random(f"{sim.seed}-{rec.id}")
        root = self.post("/twilio/voice", {**base, "CallStatus": "ringing"})
        deadline = time.monotonic() + sim.call_timeout_s
        patience = sim.patience(rec, rng)
        recorded = False
        while time.monotonic() < deadline:
            if root is None:
                return self._lost(rec, f"no TwiML from {self.last_path.get(rec.id, '?')}")
            verbs = [c.tag for c in root]
            if "Start" in verbs:
                recorded = True
            if "Enqueue" in verbs:
                root = self._hold(rec, box, base, patience, rng, deadline, root.find("Enqueue").text or "")
                if root is None:
                    break
                continue
            if "Dial" in verbs:
                dial = root.find("Dial")
                number = dial.findtext("Number")
                target = number or dial.findtext("Sip") or dial.findtext("Client") or ""
                if number and number in ("110", "119", "120", "122"):
                    rec.outcome = rec.outcome or "emergency"
                elif "Conference" not in [c.tag for c in dial]:
                    rec.outcome = rec.outcome or "subcenter"
                rec.detail = rec.detail or target
                time.sleep(rng.uniform(0.2, 0.8))  # the far end talks with the caller
                root = self.post("/twilio/" + dial.get("action", "dial-ended"),
                                 {**base, "CallStatus": "in-progress", "DialCallStatus": "completed"})
                continue
            if "Gather" in verbs:  # the survey after the conversation
                g = root.find("Gather")
                root = self.post("/twilio/" + g.get("action", "survey"),
                                 {**base, "CallStatus": "in-progress", "Digits": rng.choice("1112223")})
                continue
            if "Hangup" in verbs or not verbs:
                if rec.outcome is None and "已停用" in "".join(e.text or "" for e in root.iter("Say")):
                    rec.outcome = "announced"
                break
            return self._lost(rec, f"unexpected TwiML {verbs}")
        else:
            return self._lost(rec, "call timed out")
        if recorded:
            self._recording(rec, base)
        self.post("/twilio/status", {**base, "CallStatus": "completed"})
        if rec.outcome is None:
            self._lost(rec, "ended without an outcome")

    def _recording(self, rec: CallRecord, base) -> None:
        path = self.sim.write_wav(rec.id)
        self.post("/twilio/recording", {**base, "RecordingStatus": "completed", "RecordingSid": "RE" + rec.id[2:],
                                        "RecordingUrl": path, "RecordingDuration": "1"})

    def _hold(self, rec, box, base, patience, rng, deadline, queue_name):
        """In ``<Enqueue>``: ask ``wait`` every tick, follow Gather/Leave/Hangup and REST moves."""
        started = time.monotonic()
        waited = 0
        while time.monotonic() < deadline:
            root = self.post("/twilio/wait", {**base, "CallStatus": "in-progress", "QueueSid": "QU" + "1" * 32,
                                             "QueuePosition": "1", "QueueTime": str(waited),
                                             "CurrentQueueSize": "1"})
            verbs = [c.tag for c in root] if root is not None else []
            if "Hangup" in verbs:
                said = "".join(e.text or "" for e in root.iter("Say"))
                if "回拨" in said:
                    rec.outcome = rec.outcome or "callback"
                return root
            if "Leave" in verbs:
                return self._queue_exit(rec, base, "leave")
            gather = root.find("Gather") if root is not None else None
            if gather is not None:
                action = gather.get("action")
                if action == "heard":
                    text = rng.choice(EMERGENCY_WORDS) if rec.behaviour == "emergency" else rng.choice(MATTERS)
                    r = self.post("/twilio/heard", {**base, "CallStatus": "in-progress", "SpeechResult": text,
                                                    "Confidence": "0.9"})
                    if r is not None and "Leave" in [c.tag for c in r]:
                        return self._queue_exit(rec, base, "leave")
                elif action == "pressed" and rec.behaviour == "callback":
                    r = self.post("/twilio/pressed", {**base, "CallStatus": "in-progress", "Digits": "1"})
                    if r is not None and "Hangup" in [c.tag for c in r]:
                        rec.outcome = "callback"
                        return r
            # hold for one round, unless Twilio is told to move the caller meanwhile
            try:
                kind, payload = box.get(timeout=self.sim.wait_tick_s)
            except queue_mod.Empty:
                waited = int(time.monotonic() - started)
                if time.monotonic() - started > patience:
                    rec.outcome = "abandoned"
                    self._queue_exit(rec, base, "hangup")
                    return ET.fromstring("<Response><Hangup/></Response>")
                continue
            return self._moved(rec, box, base, kind, payload, deadline)
        return None

    def _queue_exit(self, rec, base, result):
        return self.post("/twilio/queue-exit", {**base, "CallStatus": "in-progress" if result != "hangup" else
                                                "completed", "QueueResult": result, "QueueTime": "1"})

    def _moved(self, rec, box, base, kind, payload, deadline):
        """The app moved the caller by REST: into the conference (agent answered), then the survey."""
        joined: list[str] = []
        try:
            return self._follow_moves(rec, box, base, kind, payload, deadline, joined)
        finally:
            for conference in joined:
                self._conference(conference, False)

    def _follow_moves(self, rec, box, base, kind, payload, deadline, joined):
        alone_since = None
        while True:
            if kind == "twiml" and "<Conference" in (payload or ""):
                rec.outcome = rec.outcome or "connected"
                name = ET.fromstring(payload).findtext(".//Conference") or ""
                joined.append(name)
                self._conference(name, True)
            elif kind == "twiml":  # new TwiML for the caller (e.g. a goodbye)
                return ET.fromstring(payload)
            elif kind == "agent-left":
                alone_since = time.monotonic()
            elif kind == "redirect":
                return self.post(payload, {**base, "CallStatus": "in-progress"})
            elif kind == "hangup":
                return ET.fromstring("<Response><Hangup/></Response>")
            left = deadline - time.monotonic()
            if alone_since is not None:  # a caller alone in a conference hears silence and gives up
                left = min(left, alone_since + self.sim.alone_limit_s - time.monotonic())
            if left <= 0:
                return self._silence(rec, base) if alone_since is not None else None
            try:
                kind, payload = box.get(timeout=left)
            except queue_mod.Empty:
                return self._silence(rec, base) if alone_since is not None else None

    def _silence(self, rec, base):
        rec.silence = True
        rec.detail = "left alone in the conference (silence) after the agent hung up"
        self.sim.stats.error(f"{rec.id}: {rec.detail}")
        return ET.fromstring("<Response><Hangup/></Response>")

    def _lost(self, rec, why):
        rec.detail = why
        rec.outcome = None
        self.sim.stats.error(f"{rec.id}: {why}")


# ---------------------------------------------------------------------------------------------
# Asterisk, simulated: FastAGI sessions over TCP + the sample dialplan's continuation

class AGIRefused(Exception):
    pass


class SimAsterisk:
    def __init__(self, sim: "Simulation"):
        self.sim = sim

    def session(self, rec: CallRecord, chan: dict, script: str, args=(), *, patience_until=None, rng=None) -> dict:
        """One ``AGI(agi://.../script,args)``; returns {"status": SUCCESS|FAILURE, ...} and updates ``chan``."""
        env = {"agi_network": "yes", "agi_network_script": script, "agi_request": f"agi://127.0.0.1/{script}",
               "agi_channel": f"PJSIP/carrier-{rec.id[-8:]}", "agi_language": "zh", "agi_type": "PJSIP",
               "agi_uniqueid": rec.id, "agi_version": "20.5.0", "agi_callerid": self.sim.caller_number(rec),
               "agi_calleridname": "unknown", "agi_callingpres": "0", "agi_dnid": rec.dialed, "agi_rdnis": "unknown",
               "agi_context": "hotline", "agi_extension": rec.dialed, "agi_priority": "5", "agi_enhanced": "0.0",
               "agi_accountcode": "", "agi_threadid": "1"}
        for i, a in enumerate(args, 1):
            env[f"agi_arg_{i}"] = a
        try:
            sock = socket.create_connection(self.sim.agi_address, timeout=2)
        except OSError:
            return {"status": "FAILURE"}
        sock.settimeout(30)
        hung_up = False
        try:
            rfile = sock.makefile("rb")
            sock.sendall("".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n")
            t0 = time.perf_counter()
            while True:
                line = rfile.readline()
                if not line:
                    break
                cmd = line.decode("utf-8", "replace").strip()
                if not cmd:
                    continue
                self.sim.stats.add("agi", time.perf_counter() - t0)
                reply = self._answer(rec, chan, cmd, patience_until, rng)
                if reply == "200 result=-1":
                    hung_up = True
                sock.sendall(reply.encode() + b"\n")
                t0 = time.perf_counter()
        except (OSError, ValueError) as exc:
            if not hung_up:
                return {"status": "FAILURE", "error": repr(exc)}
        finally:
            sock.close()
        return {"status": "HANGUP" if hung_up else "SUCCESS"}

    def _answer(self, rec, chan, cmd, patience_until, rng) -> str:
        if chan.get("_dead"):
            return "511 Command Not Permitted on a dead channel or intercept routine"
        if cmd.startswith("SET VARIABLE"):
            m = re.match(r'SET VARIABLE (\S+) "(.*)"$', cmd) or re.match(r"SET VARIABLE (\S+) (.*)$", cmd)
            if m:
                chan[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\\\", "\\")
            return "200 result=1"
        if cmd.startswith("GET VARIABLE"):
            name = cmd.split(" ", 2)[2].strip('"')
            return f"200 result=1 ({chan[name]})" if chan.get(name) else "200 result=0"
        if cmd.startswith("STREAM FILE"):
            parts = cmd.split(" ")
            escape = parts[3].strip('"') if len(parts) > 3 else ""
            if "1" in escape and rec.behaviour == "callback" and chan.get("_offered_callback") is None and \
                    escape == "1":
                chan["_offered_callback"] = True
                return f"200 result={ord('1')} endpos=4000"
            if escape == "123":  # the survey question
                return f"200 result={ord(rng.choice('1112223'))} endpos=4000"
            return "200 result=0 endpos=8000"
        if cmd.startswith("WAIT FOR DIGIT"):
            ms = int(cmd.split(" ")[3]) if len(cmd.split(" ")) > 3 else 1000
            if patience_until is not None and time.monotonic() > patience_until:
                chan["_dead"] = True
                return "200 result=-1"
            time.sleep(min(ms / 1000.0, self.sim.tick_s))
            return "200 result=0"
        if cmd.startswith("RECORD FILE"):
            path = cmd.split(" ")[2].strip('"')
            self.sim.write_wav(rec.id, path + ".wav")
            return "200 result=0 (timeout) endpos=8000"
        if cmd.startswith("CHANNEL STATUS"):
            return "200 result=6"
        return "200 result=0"

    def call(self, rec: CallRecord) -> None:
        """The sample dialplan, context by context (agi_scripts/extensions.conf.sample)."""
        sim = self.sim
        rng = random.Random(f"{sim.seed}-{rec.id}")
        patience_until = time.monotonic() + sim.patience(rec, rng)
        chan: dict = {}
        deadline = time.monotonic() + sim.call_timeout_s
        loops = 0

        def agi(script, *args):  # [hotline-agi]
            for k in ("HOTLINE_ACTION", "HOTLINE_TARGET", "HOTLINE_REASON", "HOTLINE_FALLBACK"):
                chan.pop(k, None)
            r = self.session(rec, chan, script, (chan.get("HOTLINE_CALL_ID", ""), *args),
                             patience_until=patience_until, rng=rng)
            if r["status"] == "HANGUP":
                return "gone"
            if r["status"] != "SUCCESS" or chan.get("HOTLINE_FALLBACK") or not chan.get("HOTLINE_ACTION"):
                chan["_why"] = f"{script}: AGISTATUS={r['status']} {r.get('error', '')}".strip()
                return "fallback"
            return chan["HOTLINE_ACTION"]

        action = agi("route_call")
        if chan.get("HOTLINE_TICKET"):
            rec.ticket = chan["HOTLINE_TICKET"]
        while time.monotonic() < deadline:
            if chan.get("HOTLINE_TICKET"):
                rec.ticket = chan["HOTLINE_TICKET"]
            if action == "queue":
                loops += 1
                action = agi("queue_wait")
                continue
            if action == "transfer":
                target, reason = chan.get("HOTLINE_TARGET", ""), chan.get("HOTLINE_REASON", "")
                if not target:
                    action = "fallback"
                    continue
                status = self._dial(rec, chan, target, reason, rng)
                if status == "GONE":
                    action = "gone"
                    continue
                action = agi("transfer", status)
                continue
            if action == "survey":
                agi("survey")
                rec.outcome = rec.outcome or "connected"
                break
            if action == "hangup":
                if rec.outcome is None:
                    rec.outcome = "callback" if chan.get("HOTLINE_REASON") == "callback" else "announced"
                break
            if action == "gone":  # the caller hung up (while waiting)
                rec.outcome = rec.outcome or "abandoned"
                break
            if action == "fallback":  # [hotline-fallback]: app_queue general seats, never silence
                rec.outcome = rec.outcome or "fallback"
                rec.detail = rec.detail or (f"AGI fallback ({chan.get('HOTLINE_FALLBACK') or 'no action'}; "
                                            f"{chan.get('_why', '')})")
                break
            rec.outcome = "fallback"  # exten i
            break
        else:
            rec.detail = "call timed out"
            sim.stats.error(f"{rec.id}: AGI call timed out")
            return
        if chan.get("HOTLINE_CALL_ID"):  # h extension -> [hotline-gone]
            chan.pop("_dead", None)
            self.session(rec, chan, "transfer", (chan["HOTLINE_CALL_ID"], "hangup"), rng=rng)

    def _dial(self, rec, chan, target, reason, rng) -> str:
        """Dial(): an agent (rings, answers or not), an emergency line, a sub-center."""
        if reason == "agent":
            agent = self.sim.agent_by_endpoint(target)
            if agent is None or not agent.answers:
                if agent is not None:
                    agent.missed += 1
                time.sleep(self.sim.ring_timeout_s)
                return "NOANSWER"
            time.sleep(agent.rng.uniform(0.05, 0.3))
            # U(hotline-answered): the answering channel tells the ACD before the bridge
            self.session(rec, chan, "transfer", (chan.get("HOTLINE_CALL_ID", ""), "answered"), rng=rng)
            agent.calls += 1
            rec.agent = agent.id
            rec.outcome = rec.outcome or "connected"
            time.sleep(agent.talk_s())
            return "ANSWER"
        if target.lstrip("+") in ("110", "119", "120", "122"):
            rec.outcome = rec.outcome or "emergency"
        else:
            rec.outcome = rec.outcome or "subcenter"
        rec.detail = rec.detail or target
        time.sleep(rng.uniform(0.2, 0.8))
        return "ANSWER"


# ---------------------------------------------------------------------------------------------
# callbacks: the rq job's dialer, simulated

class SimCallbackDialer:
    """``HOTLINE_CALLBACK_DIALER=tools.simulate:callback_dialer``: the agent first, then the citizen."""

    def __init__(self, sim: "Simulation"):
        self.sim = sim

    def dial(self, request) -> str:
        threading.Thread(target=self._dial, args=(request,), daemon=True).start()
        return "placed"

    def _dial(self, request) -> None:
        sim = self.sim
        acd = sim.acd
        agent = sim.agents.get(request.agent_id)
        try:
            if agent is None or not agent.answers:
                time.sleep(sim.ring_timeout_s)
                acd.no_answer(request.call_id, "no-answer")
                return
            time.sleep(0.2)
            acd.answer(request.call_id, request.agent_id)
            rec = sim.records.get(request.call_id)
            if rec is not None:
                rec.detail = "callback connected"
                rec.agent = agent.id
            with sim.lock:
                sim.callbacks_connected += 1
            time.sleep(agent.talk_s())
            acd.hangup(request.call_id, "agent")
        except Exception as exc:
            sim.stats.error(f"callback {request.call_id}: {exc!r}")


def callback_dialer():
    if _ACTIVE is None:
        raise RuntimeError("no simulation is running in this process")
    return SimCallbackDialer(_ACTIVE)


# ---------------------------------------------------------------------------------------------
# the simulation

class Simulation:
    def __init__(self, calls: int = 50, front: str = "both", agents: int | None = None, seed: int = 1, *,
                 lazy_agents: int = 0, emergency_share: float = 0.04, callback_share: float = 0.08,
                 abandon_share: float = 0.12, transfer_share: float = 0.05, ramp_s: float | None = None,
                 progress: bool = True, redis_url: str | None = None, workdir: str | None = None,
                 call_timeout_s: float = 240.0, web_threads: int = 64, agi_workers: int = 512,
                 processes: bool = False, web_workers: int = 2, wait_tick_s: int = 1):
        self.n, self.front, self.seed = calls, front, seed
        self.agent_count = agents or max(4, min(100, calls // 10))
        self.lazy_agents = lazy_agents
        self.shares = {"emergency": emergency_share, "callback": callback_share, "impatient": abandon_share}
        self.transfer_share = transfer_share
        self.ramp_s = ramp_s if ramp_s is not None else min(10.0, calls / 100)
        self.progress = progress
        self.redis_url = redis_url
        self.workdir = workdir
        self.call_timeout_s = call_timeout_s
        self.web_threads, self.agi_workers = web_threads, agi_workers
        # processes: the web app under gunicorn and the FastAGI server as their own processes (as
        # deployed), instead of threads of this one; the simulated callers stay here
        self.processes, self.web_workers, self.wait_tick_s = processes, web_workers, wait_tick_s
        self._children: list = []
        self.tick_s, self.ring_timeout_s, self.wrapup_s = 1.0, 2.0, 0.2
        self.alone_limit_s = 10.0  # a caller alone in a silent conference hangs up after this
        self.talk_s = (0.3, 1.5)
        self.stats = Stats()
        self.records: dict[str, CallRecord] = {}
        self.agents: dict[str, SimAgent] = {}
        self.lock = threading.Lock()
        self.callbacks_connected = 0
        self.transfers_refused: dict[str, int] = {}
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cleanup: list = []
        self.rng = random.Random(seed)
        self.app = None
        self.hooks: list = []  # callables(sim) run in a thread once calls are flowing (fault tests)

    # -- helpers ------------------------------------------------------------------------------
    def http(self, method, path, body=None, headers=None, *, stat=None, t0=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=30)
        try:
            t0 = t0 or time.perf_counter()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            if stat:
                self.stats.add(stat, time.perf_counter() - t0)
            self.stats.add_path(path, time.perf_counter() - t0)
            if resp.status >= 500:  # 503: a dependency is down and the app says so (counted apart)
                self.stats.error(f"{method} {path}: HTTP {resp.status}")
            return resp.status, raw
        finally:
            conn.close()

    def caller_number(self, rec: CallRecord) -> str:
        import zlib

        return f"+86139{zlib.crc32(rec.id.encode()) % 10**8:08d}"

    def agent_by_endpoint(self, target: str) -> SimAgent | None:
        m = re.search(r"(?:sip:|client:)?(sim\d+)", target or "")
        return self.agents.get(m.group(1)) if m else None

    def patience(self, rec: CallRecord, rng) -> float:
        return rng.uniform(1.5, 5.0) if rec.behaviour == "impatient" else self.call_timeout_s

    def wants_transfer(self, call_id: str) -> bool:
        rec = self.records.get(call_id)
        if rec is None or rec.dialed not in self._expert_lines:
            return False
        return random.Random(f"{self.seed}-t-{call_id}").random() < min(1.0, self.transfer_share * 6)

    def write_wav(self, call_id: str, path: str | None = None, seconds: float = 0.5) -> str:
        """What the caller said, as the PBX records it: 8 kHz 16-bit mono (low noise, no model needed)."""
        path = path or os.path.join(self.recordings, f"{call_id}.wav")
        rng = random.Random(call_id)
        frames = b"".join(struct.pack("<h", rng.randint(-300, 300)) for _ in range(int(8000 * seconds)))
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(frames)
        return path

    def ensure_agent(self, agent_id: str) -> None:
        from call_routing.acd import Agent

        try:
            if self.acd.agent(agent_id) is None:
                rules = self.rules()
                expert = int(agent_id[3:]) % 4 == 1  # every fourth seat is also an expert seat
                skills = {s: 50 for s in rules.skills if expert or not rules.skills[s].expert}
                self.acd.save_agent(Agent(agent_id, f"模拟坐席{agent_id}", skills,
                                          endpoints=(self.agents[agent_id].endpoint,)), password=PASSWORD)
        except Exception:
            pass

    # -- start and stop -------------------------------------------------------------------------
    def _rules_copy(self) -> str:
        """The shipped rules with compressed queue timings (invitation, announcements, callback offer)."""
        text = (ROOT / "transfer_rules.yaml").read_text("utf-8")
        text = re.sub(r"announce_every_s: *\d+", "announce_every_s: 10", text)
        text = re.sub(r"callback_offer_after_s: *\d+", "callback_offer_after_s: 3", text)
        path = os.path.join(self.dir, "transfer_rules.yaml")
        Path(path).write_text(text, "utf-8")
        shutil.copy(ROOT / "emergency_keywords.yaml", os.path.join(self.dir, "emergency_keywords.yaml"))
        return path

    def start(self) -> "Simulation":
        global _ACTIVE
        self.dir = self.workdir or tempfile.mkdtemp(prefix="hotline-sim-")
        if not self.workdir:
            self._cleanup.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.recordings = os.path.join(self.dir, "recordings")
        os.makedirs(self.recordings, exist_ok=True)
        if not self.redis_url:
            from runtime.redis_server import EmbeddedRedis

            self.redis_server = EmbeddedRedis().start()
            self.redis_url = self.redis_server.url
            self._cleanup.append(self.redis_server.stop)
        else:
            self.redis_server = None
        self.rules_path = self._rules_copy()
        self.db_url = f"sqlite:///{os.path.join(self.dir, 'tickets.db')}"
        env = {"REDIS_URL": self.redis_url, "DATABASE_URL": self.db_url, "RULES_PATH": self.rules_path,
               "HOTLINE_INVITE_AFTER_S": "1", "HOTLINE_RECORDINGS": self.recordings,
               "HOTLINE_PROMPTS": os.path.join(self.dir, "prompts"), "HOTLINE_WAIT_SESSION_S": "20",
               "HOTLINE_CALLBACK_DIALER": "tools.simulate:callback_dialer", "TWILIO_OFFER_LISTENER": "1",
               "SPEECH_RETRY_S": "1,1", "HANDOFF_RETRY_S": "1"}
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        _ACTIVE = self
        from intake import jobs

        jobs.close_resources()  # a fresh store for this database
        from call_routing.rules_store import RulesStore

        if self.processes:
            self._start_processes()
        else:
            self._start_web()
            self._start_agi()
        self._start_workers()

        self._expert_lines = {n for n in self.rules().lines if self._has_expert(n)}
        for i in range(self.agent_count):
            aid = f"sim{i:03d}"
            self.agents[aid] = SimAgent(self, aid, answers=i >= self.lazy_agents)
            self.ensure_agent(aid)
        for agent in self.agents.values():
            if not agent.login():
                raise RuntimeError(f"agent {agent.id} could not sign in")
            self._spawn(agent.loop, self.stop, name=f"agent-{agent.id}")
        del RulesStore
        return self

    def _has_expert(self, number: str) -> bool:
        from call_routing.router import three_way

        try:
            return bool(three_way(self.rules(), number, "expert").get("skill"))
        except Exception:
            return False

    def rules(self):
        return self.rules_store.current()

    def _start_processes(self) -> None:
        import redis as redis_lib

        from call_routing.acd import ACD
        from runtime.redis_server import free_port
        from call_routing.rules_store import RulesStore

        self.rules_store = RulesStore(self.rules_path)
        self.acd = ACD(redis_lib.Redis.from_url(self.redis_url, decode_responses=True), self.rules_store,
                       dispatch_callback=rq_dispatch)
        self.acd.ring_timeout_s = self.ring_timeout_s + 3
        self.app = None
        self.cloud = SimTwilio(self)
        self.web_port, agi_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        env = dict(os.environ, TWILIO_OFFER_LISTENER="1", SIM_WAIT_TICK_S=str(self.wait_tick_s),
                   PYTHONPATH=str(ROOT), HOTLINE_REDIS_CONNECTIONS="512")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT, "env": env}
        self._children.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(self.web_workers), "-k", "gthread", "--threads", "16",
             "--backlog", "2048", "-b", f"127.0.0.1:{self.web_port}", "--log-level", "error", "tools.simulate:web_app()"],
            **quiet))
        self._children.append(subprocess.Popen(
            [sys.executable, "-m", "agi_scripts.fastagi_server", "--host", "127.0.0.1", "--port", str(agi_port),
             "--processes", "2", "--workers", str(self.agi_workers), "--timeout", "30", "--log-level", "ERROR"],
            **quiet))
        self.agi_address = ("127.0.0.1", agi_port)
        self.agi_server = self.agi_services = None
        deadline = time.monotonic() + 60
        for port, path in ((self.web_port, "/healthz"), (agi_port, None)):
            while True:
                if time.monotonic() > deadline:
                    raise RuntimeError("the web app or the FastAGI server did not start")
                try:
                    if path:
                        if self.http("GET", path)[0] == 200:
                            break
                    else:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                except OSError:
                    pass
                time.sleep(0.2)
        self._spawn(self.cloud.follow, self.redis_url, self.stop, name="twilio-rest")

    def _spawn(self, target, *args, name=None) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _start_web(self) -> None:
        from app import create_app

        self.cloud = SimTwilio(self)
        self.rest = SimHttpClient(self.cloud)
        self.app = create_app({"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_HTTP_CLIENT": self.rest,
                               "TWILIO_CALLER_ID": "+8612345", "TWILIO_WAIT_TICK_S": self.wait_tick_s,
                               "SECRET_KEY": "sim-" + str(self.seed), "ADMIN_PASSWORD": None})
        self.acd = self.app.extensions["acd"]
        self.rules_store = self.app.extensions["rules"]
        self.acd.ring_timeout_s = self.ring_timeout_s + 3  # the ticker is the backstop for lost statuses
        self.server = _PooledServer("127.0.0.1", 0, self.app, self.web_threads)
        self.web_port = self.server.server_port
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        self._spawn(self.server.serve_forever, name="web")
        self._cleanup.append(self.server.shutdown)

    def _start_agi(self) -> None:
        from agi_scripts.fastagi_server import FastAGIServer
        from ivr.services import build

        self.agi_services = build()
        self.agi_server = FastAGIServer(self.agi_services, "127.0.0.1", 0, workers=self.agi_workers,
                                       command_timeout=30).start()
        self.agi_address = self.agi_server.address[:2]
        self._cleanup.append(lambda: self.agi_server.stop(2))

    def _start_workers(self) -> None:
        import redis as redis_lib
        from rq import Queue, SimpleWorker

        from call_routing.acd.callbacks import RQ_QUEUE

        from intake import jobs
        from intake.tickets import TicketDrafts

        from rq.timeouts import TimerDeathPenalty

        class ThreadWorker(SimpleWorker):
            death_penalty_class = TimerDeathPenalty  # SIGALRM works in the main thread only

            def _install_signal_handlers(self):  # not the main thread
                pass

        conn = redis_lib.Redis.from_url(self.redis_url)
        self.rq_queues = [Queue(name, connection=conn) for name in (jobs.SPEECH_QUEUE, RQ_QUEUE, jobs.HANDOFF_QUEUE)]

        def work():
            while not self.stop.is_set():
                try:
                    w = ThreadWorker(self.rq_queues, connection=conn)
                    w.work(burst=True, with_scheduler=False, logging_level="WARNING")
                except Exception as exc:
                    self.stats.error(f"rq worker: {exc!r}")
                self.stop.wait(0.2)

        self.store = jobs.ticket_store(self.db_url)
        self.drafts = TicketDrafts(redis_lib.Redis.from_url(self.redis_url, decode_responses=True))
        if self.store.drafts is None:
            self.store._drafts = self.drafts
        self._spawn(work, name="rq-worker")
        self._spawn(jobs.ticket_writer_loop, self.stop, self.store, self.drafts, name="ticket-writer")

        def ticker():
            while not self.stop.is_set():
                try:
                    self.acd.tick()
                except Exception as exc:
                    self.stats.error(f"tick: {exc!r}")
                self.stop.wait(0.5)

        self._spawn(ticker, name="acd-tick")

    def close(self) -> None:
        global _ACTIVE
        self.stop.set()
        try:
            if self.app is not None:
                self.app.extensions["twilio"]["listener"].stop(2)
        except Exception:
            pass
        for t in self._threads:
            if t.name in ("ticket-writer", "rq-worker", "acd-tick"):
                t.join(3)
        for child in self._children:
            child.terminate()
        for child in self._children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for fn in reversed(self._cleanup):
            try:
                fn()
            except Exception:
                pass
        for k, v in getattr(self, "_saved_env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from intake import jobs

        jobs.close_resources()
        _ACTIVE = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- calls --------------------------------------------------------------------------------
    def _plan(self) -> list[CallRecord]:
        fronts = {"twilio": ["twilio"], "agi": ["agi"], "both": ["twilio", "agi"]}[self.front]
        out = []
        for i in range(self.n):
            front = fronts[i % len(fronts)]
            roll = self.rng.random()
            behaviour = "patient"
            acc = 0.0
            for name, share in self.shares.items():
                acc += share
                if roll < acc:
                    behaviour = name
                    break
            dialed = self.rng.choice(LINES)
            if behaviour == "emergency" and front == "agi":
                dialed = self.rng.choice(("110", "119", "120", "122"))  # FastAGI cannot hear: dialled directly
            cid = f"CA{self.seed:08x}{i:024x}" if front == "twilio" else f"{1700000000 + self.seed}.{i}"
            out.append(CallRecord(cid, front, dialed, behaviour))
        return out

    def run(self) -> dict:
        plan = self._plan()
        for rec in plan:
            self.records[rec.id] = rec
        t_start = time.time()
        m_start = time.monotonic()
        threads = []
        progress = self._spawn(self._progress, name="progress") if self.progress else None
        for hook in self.hooks:
            self._spawn(hook, self, name="hook")
        for i, rec in enumerate(plan):
            target = self.cloud.call if rec.front == "twilio" else SimAsterisk(self).call
            t = threading.Thread(target=self._one, args=(target, rec), daemon=True, name=f"call-{i}")
            t.start()
            threads.append(t)
            if self.ramp_s:
                time.sleep(self.ramp_s / max(1, self.n))
        for t in threads:
            t.join(max(1.0, self.call_timeout_s + 30 - (time.monotonic() - m_start)))
        elapsed = time.monotonic() - m_start
        self._done = True
        if progress is not None:
            progress.join(2)
        return self.report(t_start, elapsed)

    def _one(self, target, rec: CallRecord) -> None:
        try:
            target(rec)
        except Exception as exc:
            rec.outcome = None
            last = self.cloud.last_path.get(rec.id) if getattr(self, "cloud", None) is not None else None
            rec.detail = f"simulator error: {exc!r}" + (f" (last webhook {last})" if last else "")
            self.stats.error(f"{rec.id}: {exc!r}")
        finally:
            rec.ended = time.monotonic()

    def _progress(self) -> None:
        self._done = False
        width = 30
        while not self._done and not self.stop.is_set():
            done = sum(1 for r in self.records.values() if r.ended is not None)
            counts = {}
            for r in self.records.values():
                if r.ended is not None:
                    counts[r.outcome or "lost"] = counts.get(r.outcome or "lost", 0) + 1
            bar = "#" * int(width * done / max(1, self.n))
            sys.stderr.write(f"\r[{bar:<{width}}] {done}/{self.n} " +
                             " ".join(f"{k}={v}" for k, v in sorted(counts.items())) + "   ")
            sys.stderr.flush()
            time.sleep(0.5)
        sys.stderr.write("\n")

    # -- results ------------------------------------------------------------------------------
    def _drain(self, timeout: float = 60.0) -> None:
        """Wait for the speech/callback jobs and the ticket writer to finish what the calls left."""
        from rq.registry import StartedJobRegistry

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                busy = sum(q.count + len(StartedJobRegistry(queue=q)) for q in self.rq_queues)
                busy += self.drafts.r.llen(self.drafts.pending) + self.drafts.r.llen(self.drafts.writing)
            except Exception:
                busy = 1
            if not busy:
                return
            time.sleep(0.3)

    def tickets(self) -> dict:
        """ticket id -> (call id, outcome), straight from the database (no draft fallback)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.connect() as c:
                rows = c.execute(text("SELECT id, call_id, call_outcome, transcript_status FROM tickets")).all()
        finally:
            engine.dispose()
        return {str(r[0]): (r[1], r[2], r[3]) for r in rows}

    def _ticket_of(self, rec: CallRecord) -> str | None:
        if rec.ticket:
            return rec.ticket
        try:
            from ivr.flow import RedisCalls

            state = RedisCalls(self.acd.redis).get(rec.id) or {}
            return state.get("ticket")
        except Exception:
            return None

    def report(self, t_start: float, elapsed: float) -> dict:
        self._drain()
        for rec in self.records.values():
            rec.ticket = self._ticket_of(rec)
        rows = self.tickets()
        by_call = {v[0]: k for k, v in rows.items()}
        missing = []
        for rec in self.records.values():
            needs = rec.outcome not in (None, "announced", "fallback") or rec.ticket
            if rec.outcome == "fallback" and not rec.ticket:
                needs = False  # the backend failed before a ticket could be numbered: app_queue seats
            if needs and rec.id not in by_call:
                missing.append(rec.id)
        outcomes: dict[str, int] = {}
        for rec in self.records.values():
            outcomes[rec.outcome or "lost"] = outcomes.get(rec.outcome or "lost", 0) + 1
        try:
            offers = sum(1 for e in self.acd.events(since=t_start) if e.get("e") == "offer")
            kpis = self.acd.kpis(since=t_start)
        except Exception as exc:
            offers, kpis = 0, {"error": repr(exc)}
        total = (kpis or {}).get("total", {}) if isinstance(kpis, dict) else {}
        all_lat = self.stats.webhook + self.stats.agi
        result = {
            "calls": self.n, "front": self.front, "agents": self.agent_count, "seed": self.seed,
            "connected": outcomes.get("connected", 0) + outcomes.get("subcenter", 0),
            "subcenter": outcomes.get("subcenter", 0),
            "abandoned": outcomes.get("abandoned", 0), "callback": outcomes.get("callback", 0),
            "callbacks_connected": self.callbacks_connected,
            "emergency": outcomes.get("emergency", 0), "fallback": outcomes.get("fallback", 0),
            "announced": outcomes.get("announced", 0), "lost": outcomes.get("lost", 0),
            "transferred": sum(1 for r in self.records.values() if r.transferred),
            "silence": sum(1 for r in self.records.values() if r.silence),
            "transfers_refused": sum(self.transfers_refused.values()),
            "tickets": len(rows), "tickets_missing": len(missing),
            "server_errors": sum(1 for e in self.stats.errors if re.search(r"HTTP 5(?!03)", e)),
            "unavailable_503": sum(1 for e in self.stats.errors if "HTTP 503" in e), "errors": len(self.stats.errors),
            "webhooks": len(self.stats.webhook), "agi_commands": len(self.stats.agi),
            "webhook_p50_ms": percentile(self.stats.webhook, 50), "webhook_p99_ms": percentile(self.stats.webhook, 99),
            "agi_p50_ms": percentile(self.stats.agi, 50), "agi_p99_ms": percentile(self.stats.agi, 99),
            "p50_ms": percentile(all_lat, 50), "p99_ms": percentile(all_lat, 99),
            "assignments": offers, "assignments_per_s": round(offers / elapsed, 1) if elapsed else 0.0,
            "connection_rate": total.get("connection_rate") if isinstance(total, dict) else None,
            "elapsed_s": round(elapsed, 1),
        }
        self.missing_tickets = missing
        self.kpis = kpis
        return result


def print_report(sim: Simulation, result: dict, out=sys.stdout) -> None:
    print(f"{'call':<34} {'front':<6} {'dialed':<7} {'caller':<9} {'outcome':<10} {'ticket':<8} detail", file=out)
    for rec in sim.records.values():
        print(f"{rec.id:<34} {rec.front:<6} {rec.dialed:<7} {rec.behaviour:<9} {rec.outcome or 'LOST':<10} "
              f"{rec.ticket or '-':<8} {rec.detail}{' (transferred)' if rec.transferred else ''}", file=out)
    total = sim.kpis.get("total") if isinstance(sim.kpis, dict) else None
    if total:
        print("KPIs (ACD queue log): " + json.dumps(total, ensure_ascii=False, default=str), file=out)
    for path, values in sorted(sim.stats.by_path.items(), key=lambda kv: -percentile(kv[1], 99)):
        print(f"latency {path}: n={len(values)} p50={percentile(values, 50)} ms p99={percentile(values, 99)} ms "
              f"max={round(max(values) * 1000, 1)} ms", file=out)
    for why, n in sim.transfers_refused.items():
        print(f"three-way transfer refused {n}x: {why}", file=out)
    for err in sim.stats.errors[:20]:
        print("error: " + err, file=out)
    print(json.dumps(result, ensure_ascii=False), file=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.simulate", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--front", choices=("twilio", "agi", "both"), default="both")
    p.add_argument("--agents", type=int, default=None, help="simulated seats (default calls/10, 4..100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lazy-agents", type=int, default=0, help="seats that never answer")
    p.add_argument("--ramp", type=float, default=None, help="seconds over which the calls arrive")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-call lines")
    p.add_argument("--processes", action="store_true",
                   help="run the web app (gunicorn, 2 workers) and the FastAGI server (2 processes) as their own "
                        "processes, as deployed (default: threads of this process; automatic above 200 calls)")
    p.add_argument("--wait-tick", type=int, default=None, help="seconds between Twilio wait-URL rounds "
                   "(default 1, 2 with --processes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    processes = args.processes or args.calls > 200
    with Simulation(args.calls, args.front, args.agents, args.seed, lazy_agents=args.lazy_agents,
                    ramp_s=args.ramp, progress=not args.quiet, processes=processes,
                    wait_tick_s=args.wait_tick or (2 if processes else 1)) as sim:
        result = sim.run()
        if args.quiet:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print_report(sim, result)
    return 0 if result["lost"] == 0 and result["tickets_missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
