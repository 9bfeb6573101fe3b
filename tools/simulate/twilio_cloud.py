"""Twilio, simulated: REST in (the app's client), webhooks out (signed HTTP to the app); the legs
Twilio places for the app (agents rung for a waiting caller, parties of a three-way)."""
from __future__ import annotations

import json
import queue as queue_mod
import random
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlencode, urlparse

from tools.simulate.agents import SimAgent
from tools.simulate.twilio_callers import CallerLeg
from tools.simulate.twilio_rest import ACCOUNT, CONFERENCES, LIVE_LEGS, MEMBERS, REST_EVENTS, TOKEN, conference_sid


class AgentLegs:
    """Part of :class:`SimTwilio`: the legs Twilio places (``Calls.json``, ``Participants.json``)
    and the webhooks they cause."""

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
        self._share(LIVE_LEGS, sid, True)
        try:
            person_leg = getattr(self.sim, "person_leg", None)  # live: a person's seat rings its demo phone
            if agent is None and person_leg is not None:
                return person_leg(self, sid, data, cancelled)
            ring_s = min(float(data.get("Timeout", 20)), self.sim.ring_timeout_s)
            if agent is None or not agent.answers:
                if agent is not None:
                    agent.missed += 1
                cancelled.wait(ring_s)
                self.post(status_path, {"CallSid": sid, "CallStatus": "canceled" if cancelled.is_set() else "no-answer",
                                        "AccountSid": self.account})
                return
            if cancelled.wait(agent.rng.uniform(0.05, 0.3)):
                self.post(status_path, {"CallSid": sid, "CallStatus": "canceled", "AccountSid": self.account})
                return
            path = url.path + (f"?{url.query}" if url.query else "")
            root = self.post(path, {"CallSid": sid, "CallStatus": "in-progress", "AccountSid": self.account})
            conf = root.find("Dial/Conference") if root is not None else None
            if conf is None:  # "来电已结束": the caller left meanwhile
                self.post(status_path, {"CallSid": sid, "CallStatus": "completed", "AccountSid": self.account})
                return
            call_id = q.get("call", "")
            agent.calls += 1
            rec = self.sim.records.get(call_id)
            if rec is not None:
                rec.agent = agent.id
            self._member(conf.text, sid, True)
            self.post("/twilio/conference-events", {"FriendlyName": conf.text, "ConferenceSid": conference_sid(conf.text),
                                                    "StatusCallbackEvent": "participant-join", "CallSid": sid})
            talk = agent.talk_s()
            if rec is not None and rec.behaviour == "patient" and self.sim.wants_transfer(call_id):
                if self._transfer(agent, call_id, talk):
                    return  # the agent left the caller with the sub-center (warm transfer)
            cancelled.wait(talk)
            self._member(conf.text, sid, False)
            self.post(status_path, {"CallSid": sid, "CallStatus": "completed", "AccountSid": self.account,
                                    "CallDuration": str(int(talk))})
            with self.lock:
                box = self.inbox.get(call_id)
            if box is not None:
                box.put(("agent-left", None))
        finally:
            with self.lock:
                self.legs.pop(sid, None)
            self._share(LIVE_LEGS, sid, False)

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
        conference = self.conference_by_sid(data.get("_Conference", ""))
        time.sleep(0.1)
        self._member(conference, sid, True)
        self.post(path, {"CallSid": sid, "CallStatus": "in-progress", "AccountSid": self.account})
        time.sleep(random.uniform(0.3, 1.0))
        self._member(conference, sid, False)
        self.post(path, {"CallSid": sid, "CallStatus": "completed", "AccountSid": self.account})

    def participant_deleted(self, sid: str) -> None:
        """The app took a leg out of the conference (the agent leaves a warm transfer): it ends."""
        with self.lock:
            cancel = self.legs.get(sid)
        if cancel is not None:
            cancel.set()



class SimTwilio(CallerLeg, AgentLegs):
    """Twilio's side of every call: posts signed webhooks, follows TwiML, rings agent legs."""

    def __init__(self, sim, token: str = TOKEN, account: str = ACCOUNT):
        from twilio.request_validator import RequestValidator

        self.sim, self.account = sim, account
        self.validator = RequestValidator(token)
        self.inbox: dict[str, queue_mod.Queue] = {}  # caller leg -> REST moves for it
        self.legs: dict[str, threading.Event] = {}  # agent/party leg -> cancelled
        self.conferences: set[str] = set()  # running conferences: those a caller is in
        self.members: dict[str, set[str]] = {}  # conference -> agent and party legs in it
        self.last_path: dict[str, str] = {}  # leg -> the last webhook posted for it (for reports)
        self.lock = threading.Lock()
        self._redis = None

    def conference_running(self, name: str) -> bool:
        with self.lock:
            return name in self.conferences

    def leg_live(self, sid: str) -> bool:
        """A call Twilio is still playing (a caller, an agent leg): ``GET Calls/<sid>`` answers
        ``in-progress``, else ``completed``."""
        with self.lock:
            return sid in self.legs or sid in self.inbox

    def running_conferences(self) -> list[str]:
        with self.lock:
            return sorted(self.conferences)

    def conference_members(self, name: str) -> list[str]:
        """The agent and party legs in a conference (its caller aside)."""
        with self.lock:
            return sorted(self.members.get(name, ()))

    def conference_by_sid(self, sid: str) -> str:
        with self.lock:
            return next((n for n in self.conferences if conference_sid(n) == sid), "")

    def _member(self, name: str, sid: str, present: bool) -> None:
        if not name:
            return
        with self.lock:
            members = self.members.setdefault(name, set())
            (members.add if present else members.discard)(sid)
            if not members:
                self.members.pop(name, None)
        self._share(MEMBERS + name, sid, present)

    def _conference(self, name: str, running: bool) -> None:
        """Twilio's conference list, answered truthfully to ``GET Conferences``."""
        with self.lock:
            (self.conferences.add if running else self.conferences.discard)(name)
        self._share(CONFERENCES, name, running)

    def _share(self, key: str, member: str, present: bool) -> None:
        """What app processes ask Twilio about (``--processes``) goes to them through Redis (best
        effort: Redis may be down)."""
        if self.sim.processes:
            try:
                if self._redis is None:
                    import redis as redis_lib

                    self._redis = redis_lib.Redis.from_url(self.sim.redis_url)
                (self._redis.sadd if present else self._redis.srem)(key, member)
            except Exception:
                pass

    def dispatch(self, kind: str, sid: str, data: dict) -> bool:
        if kind == "outbound":
            self.submit(self.outbound_leg, sid, data)
        elif kind == "participant":
            self.submit(self.participant, sid, data)
        elif kind == "update":
            return self.update_leg(sid, data)
        elif kind == "left":
            self.participant_deleted(sid)
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
            if status in (403, 503) and hasattr(self.sim, "webhook_refused"):  # live: the product's token differs
                self.sim.webhook_refused(path, status, raw)
            raise RuntimeError(f"{path} answered {status}")
        if status == 204 or not raw:
            return None
        root = ET.fromstring(raw)
        if root.tag != "Response":
            raise RuntimeError(f"{path}: not TwiML")
        rec = self.sim.records.get(params.get("CallSid", ""))
        if rec is not None and rec.outcome is None:  # what the caller hears until a person answers
            heard_silence(rec, root)
        return root

    # -- REST side effects ------------------------------------------------------------------
    def update_leg(self, sid: str, data: dict) -> bool:
        with self.lock:
            box = self.inbox.get(sid)
            cancel = self.legs.get(sid)
        if box is not None:
            if "Twiml" in data:
                conference = ET.fromstring(data["Twiml"]).findtext(".//Conference")
                if conference:  # Twilio moves the caller at once, even while a webhook of theirs is
                    self._conference(conference, True)  # pending: GET Conferences says so from now on
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


def heard_silence(rec, root) -> None:
    """The caller's transcript in silences: ``<Say>``/``<Play>`` are sound, ``<Pause>`` and a
    key-press ``<Gather>``'s wait after its prompt are silence, a speech ``<Gather>`` is the
    caller's turn to talk. ``rec.max_silence_s`` keeps the longest stretch of silence heard, runs
    across documents joined (a document that ends silent and the next that starts silent)."""
    def hear(node):
        tag = node.tag
        if tag in ("Say", "Play"):
            rec.silence_run = 0.0
        elif tag == "Pause":
            rec.silence_run += float(node.get("length", 1))
            rec.max_silence_s = max(rec.max_silence_s, rec.silence_run)
        elif tag == "Gather":
            for child in node:
                hear(child)
            if "speech" in node.get("input", ""):
                rec.silence_run = 0.0  # the caller was asked to speak: their turn
            else:
                rec.silence_run += float(node.get("timeout", 5))
                rec.max_silence_s = max(rec.max_silence_s, rec.silence_run)
    for node in root:
        hear(node)

