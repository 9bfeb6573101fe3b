"""Small in-process implementations of the ports (tests, a single FastAGI process, a working system
before the Redis ACD / ticket store are configured), and the call state in Redis."""
from __future__ import annotations

import json
import threading

from ivr.flow.state import QueueStatus


class MemoryCalls:
    def __init__(self):
        self._d: dict = {}
        self._lock = threading.Lock()

    def get(self, call_id):
        with self._lock:
            v = self._d.get(call_id)
            return dict(v) if v is not None else None

    def put(self, call_id, state):
        with self._lock:
            self._d[call_id] = dict(state)




class RedisCalls:
    """Call state shared by every AGI process and FastAGI server: one JSON value per call."""

    def __init__(self, client, prefix: str = "ivr:call:", ttl_s: int = 6 * 3600):
        self.client, self.prefix, self.ttl_s = client, prefix, ttl_s

    def get(self, call_id):
        raw = self.client.get(self.prefix + call_id)
        return json.loads(raw) if raw else None

    def put(self, call_id, state, pipe=None):
        (pipe if pipe is not None else self.client).set(self.prefix + call_id, json.dumps(state, ensure_ascii=False),
                                                        ex=self.ttl_s)

    def pipeline(self):
        """Writes of one request in one round trip (the flow executes it)."""
        return self.client.pipeline(transaction=False)

    def lock(self, call_id, wait_s: float = 2.0):
        """The call's state to one process at a time (a wait tick, words heard by a speech stream),
        held at most 5 s; None when it could not be had within ``wait_s`` (the caller goes on)."""
        held = self.client.lock(self.prefix + call_id + ":busy", timeout=5, blocking_timeout=wait_s)
        try:
            return held if held.acquire() else None
        except Exception:  # Redis unreachable: the state's own read will say so
            return None


class MemoryQueue:
    """A FIFO per skill with agents assigned by hand (:meth:`offer`). Not the ACD."""

    def __init__(self, handle_s: float = 20.0):
        self.calls: dict = {}
        self.events: list = []
        self.experts: dict = {}  # agent -> (skill, endpoint, call reserved for or None)
        self.handle_s = handle_s
        self._lock = threading.Lock()
        self._seq = 0

    def _event(self, *e):
        self.events.append(e)

    def enqueue(self, call_id, *, skill, line, caller, ticket, priority=0):
        with self._lock:
            self._seq += 1
            self.calls[call_id] = {"skill": skill, "line": line, "caller": caller, "ticket": ticket,
                                   "seq": self._seq, "state": "waiting", "agent": None, "endpoint": None}
            self._event("enter", call_id, skill)

    def offer(self, call_id, agent, endpoint):
        with self._lock:
            self.calls[call_id].update(state="offered", agent=agent, endpoint=endpoint)
            self._event("offer", call_id, agent)

    def status(self, call_id):
        with self._lock:
            c = self.calls.get(call_id)
            if c is None:
                return QueueStatus("gone")
            ahead = sum(1 for o in self.calls.values()
                        if o["skill"] == c["skill"] and o["state"] == "waiting" and o["seq"] < c["seq"])
            return QueueStatus(c["state"], ahead, (ahead + 1) * self.handle_s, c["agent"], c["endpoint"])

    def _set(self, call_id, event, **kw):
        with self._lock:
            if call_id in self.calls:
                self.calls[call_id].update(kw)
            self._event(event, call_id, *kw.values())

    def requeue(self, call_id, skill):
        self._set(call_id, "requeue", skill=skill)

    def prioritise(self, call_id, emergency):
        with self._lock:
            if call_id in self.calls:  # ahead of every waiting call
                self.calls[call_id]["seq"] = min(o["seq"] for o in self.calls.values()) - 1
            self._event("prioritise", call_id, emergency)

    def no_answer(self, call_id):
        with self._lock:
            c = self.calls[call_id]
            c.update(state="waiting", agent=None, endpoint=None, seq=min(o["seq"] for o in self.calls.values()) - 1)
            self._event("no_answer", call_id)

    def connected(self, call_id):
        self._set(call_id, "connect", state="connected")

    def completed(self, call_id, by="agent"):
        self._set(call_id, "complete", state="completed")

    def leave(self, call_id, reason):
        with self._lock:
            self.calls.pop(call_id, None)
            self._event(reason, call_id)

    def request_callback(self, call_id, number):
        self._set(call_id, "callback", state="callback")

    def survey(self, call_id, line, digit):
        with self._lock:
            self._event("survey", call_id, digit)

    def reserve_expert(self, call_id, skill):
        """Experts by hand (:meth:`add_expert`): the first free one is taken."""
        with self._lock:
            for agent, (s, endpoint, busy) in self.experts.items():
                if s == skill and not busy:
                    self.experts[agent] = (s, endpoint, call_id)
                    self._event("three_way", call_id, agent)
                    return agent, endpoint
            return None

    def add_expert(self, agent, skill, endpoint):
        with self._lock:
            self.experts[agent] = (skill, endpoint, None)

    def expert_answered(self, call_id, agent):
        self._set(call_id, "expert_answered", expert=agent)

    def take_back(self, call_id, reason):
        with self._lock:
            for agent, (s, endpoint, busy) in self.experts.items():
                if busy == call_id:
                    self.experts[agent] = (s, endpoint, None)
            self._event("take_back", call_id, reason)

    def end_three_way(self, agent):
        with self._lock:
            self._event("end_three_way", agent)


class MemoryTickets:
    def __init__(self):
        self.tickets: dict = {}
        self._lock = threading.Lock()

    def open(self, *, call_id, line, caller, rules_version, mode):
        with self._lock:
            tid = f"T{len(self.tickets) + 1:06d}"
            self.tickets[tid] = {"call_id": call_id, "line": line, "caller": caller, "mode": mode,
                                 "rules_version": rules_version, "transcript": [], "recordings": [],
                                 "survey": None, "status": "open"}
            return tid

    def transcript(self, ticket, text, source):
        self.tickets[ticket]["transcript"].append((source, text))

    def recording(self, ticket, path):
        self.tickets[ticket]["recordings"].append(path)

    def survey(self, ticket, score):
        self.tickets[ticket]["survey"] = score

    def close(self, ticket, outcome):
        self.tickets[ticket]["status"] = outcome

    def keep(self, ticket, *, call_id, line, caller, rules_version, started=None):
        """As the real port: the ticket of the number, else the call's, else one written from these facts."""
        with self._lock:
            if ticket in self.tickets:
                return ticket
            ticket = next((t for t, v in self.tickets.items() if v["call_id"] == call_id), None) or \
                ticket or f"T{len(self.tickets) + 1:06d}"
            self.tickets.setdefault(ticket, {"call_id": call_id, "line": line, "caller": caller, "mode": None,
                                             "rules_version": rules_version, "transcript": [], "recordings": [],
                                             "survey": None, "status": "open", "started": started})
            return ticket
