"""The agents: seats that sign in through the agent API, heartbeat, wrap up, and answer when rung;
the callbacks they take (the rq job's dialer, simulated)."""
from __future__ import annotations

import json
import random
import threading
import time

PASSWORD = "sim-agent-pw"
_ACTIVE = None  # the running simulation (for the callback dialer factory)


def activate(sim) -> None:
    """The simulation the callback dialer of this process works for (None: none)."""
    global _ACTIVE
    _ACTIVE = sim


class SimAgent:
    """A seat: signs in through the agent API, heartbeats, wraps up; answers when rung."""

    def __init__(self, sim, agent_id: str, *, answers: bool = True):
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


class SimCallbackDialer:
    """``HOTLINE_CALLBACK_DIALER=tools.simulate:callback_dialer``: the agent first, then the citizen."""

    def __init__(self, sim):
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

