"""The ACD's seats: an agent's profile and password, log-in, ready, pause, wrap-up, log-out and heartbeat."""
from __future__ import annotations

import hashlib
import hmac
import json
import os

from .model import ACDError, Agent, Result, _check_id, _text


class SeatsMixin:
    """The seat half of :class:`call_routing.acd.core.ACD` (one Lua script per change of state)."""

    def save_agent(self, agent: Agent, password: str | None = None) -> None:
        """Create or update a seat's profile. Skills change only while the agent is offline."""
        _check_id("agent id", agent.id)
        skills = self.rules.skills
        for sid, level in agent.skills.items():
            if sid not in skills:
                raise ACDError(f"agent {agent.id}: no skill {sid!r} in rules {self.rules.version}")
            if not (isinstance(level, int) and 1 <= level <= 99):
                raise ACDError(f"agent {agent.id}: skill level for {sid} must be 1 to 99, got {level!r}")
        k = self.keys
        state = _text(self.redis.hget(k.agent(agent.id), "state")) or "offline"
        if state != "offline":
            raise ACDError(f"agent {agent.id} is {state}: log out before changing the profile")
        pipe = self.redis.pipeline()
        pipe.hset(k.agent(agent.id), mapping={
            "id": agent.id, "name": agent.name, "endpoints": json.dumps(list(agent.endpoints)),
            "expert": int(agent.expert), "languages": json.dumps(list(agent.languages)), "state": "offline"})
        if password is not None:
            pipe.hset(k.agent(agent.id), "pw", hash_password(password))
        pipe.delete(k.agent_skills(agent.id))
        if agent.skills:
            pipe.hset(k.agent_skills(agent.id), mapping={s: int(v) for s, v in agent.skills.items()})
        pipe.sadd(k.agents(), agent.id)
        pipe.execute()

    def check_password(self, agent_id: str, password: str) -> bool:
        stored = _text(self.redis.hget(self.keys.agent(agent_id), "pw"))
        return bool(stored) and verify_password(password, stored)

    def login(self, agent_id: str, state: str = "ready", reason: str = "") -> Result:
        """offline → ready (or paused with a reason; paused ``phone-offline`` when the PBX says
        the seat's phone cannot ring). Unknown agents are refused."""
        if state not in ("ready", "paused"):
            raise ACDError("an agent logs in ready or paused")
        return self._run("login", agent_id, state, reason)

    def ready(self, agent_id: str, reason: str = "") -> Result:
        """paused → ready (resume), or wrap-up → ready (wrap-up done).

        A seat whose phone the PBX says cannot ring (``phone-offline`` / ``phone-busy``, kept by
        :class:`ivr.asterisk.pbx.PhoneWatcher`) logs in paused and stays (or goes) paused with that reason
        instead of becoming ready (status ``phone``), until its phone is back."""
        return self._run("ready", agent_id, "paused,wrapup", reason)

    def wrapup_done(self, agent_id: str) -> Result:
        return self._run("ready", agent_id, "wrapup", "wrapup-done")

    def pause(self, agent_id: str, reason: str) -> Result:
        """ready / wrap-up → paused with a reason (break, training, …)."""
        if not reason:
            raise ACDError("a pause needs a reason")
        return self._run("pause", agent_id, reason)

    def logout(self, agent_id: str, reason: str = "logout") -> Result:
        """Any state → offline. A ringing call goes back to its place; a busy seat leaves after the call."""
        return self._run("logout", agent_id, reason, "")

    def heartbeat(self, agent_id: str) -> bool:
        """The console is alive. False when the seat is not logged in (log in again)."""
        return bool(self.redis.zadd(self.keys.beats(), {agent_id: self.clock()}, xx=True, ch=True)) or \
            self.redis.zscore(self.keys.beats(), agent_id) is not None

    def agent(self, agent_id: str) -> dict | None:
        k = self.keys
        pipe = self.redis.pipeline()
        pipe.hgetall(k.agent(agent_id))
        pipe.hgetall(k.agent_skills(agent_id))
        data, skills = pipe.execute()
        if not data:
            return None
        data = {_text(a): _text(b) for a, b in data.items()}
        return {"id": agent_id, "name": data.get("name", ""), "state": data.get("state", "offline"),
                "reason": data.get("reason", ""), "since": float(data.get("since") or 0),
                "call": data.get("call") or None, "endpoints": json.loads(data.get("endpoints") or "[]"),
                "expert": data.get("expert") == "1", "languages": json.loads(data.get("languages") or "[]"),
                "skills": {_text(a): int(b) for a, b in skills.items()}}


# -- passwords (stdlib scrypt) -------------------------------------------------------------------
def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, salt, digest = stored.split("$")
    except ValueError:
        return False
    check = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2 ** 14, r=8, p=1)
    return hmac.compare_digest(check.hex(), digest)
