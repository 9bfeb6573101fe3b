"""The ACD's timers: overflow, ring and wrap-up timeouts, heartbeat expiry, callback retries,
lost callers, and groups that closed or lost their last seat — applied by :meth:`TimersMixin.tick`."""
from __future__ import annotations

from call_routing.rules import Skill

from .hours import is_open
from .model import _text, log
from .routing import REMOVED_GRACE_S


class TimersMixin:
    """The timers of :class:`call_routing.acd.core.ACD`, run about once a second by any process."""

    def tick(self, now: float | None = None) -> dict:
        """Apply every timer once; run it about once a second from one or more processes (each
        step re-checks its condition inside Redis, so concurrent tickers are harmless)."""
        now = self.clock() if now is None else now
        k = self.keys
        done = {"overflow": 0, "ring_timeout": 0, "heartbeat": 0, "wrapup_timeout": 0, "callback_retry": 0,
                "stranded": 0, "lost": 0, "regrouped": 0}
        for agent_id in self.redis.zrangebyscore(k.beats(), "-inf", now - self.heartbeat_timeout_s):
            r = self._run("logout", _text(agent_id), "heartbeat", repr(now - self.heartbeat_timeout_s), now=now)
            done["heartbeat"] += r.status in ("ok", "after_call")
        for call_id in self.redis.zrangebyscore(k.ringing(), "-inf", now):
            status = self._run("no_answer", _text(call_id), "ring-timeout", "1", now=now).status
            done["ring_timeout"] += status in ("ok", "not_rung")
        for call_id in self.redis.zrangebyscore(k.retry(), "-inf", now):
            done["callback_retry"] += self._run("callback_retry", _text(call_id), now=now).status == "ok"
        lost_after = self.lost_after_s
        if lost_after:
            stale_before = now - lost_after
            for call_id in self.redis.zrangebyscore(k.seen(), "-inf", stale_before, start=0, num=500):
                r = self._run("lost", _text(call_id), repr(stale_before), now=now)
                if r.status in ("callback", "abandoned"):
                    done["lost"] += 1
                    log.warning("call %s: no word from its front-end for %.0f s: caller lost, %s", _text(call_id),
                                lost_after, "callback booked" if r.status == "callback" else "no number to call back")
        for agent_id in self.redis.zrangebyscore(k.wrapping(), "-inf", now - self.wrapup_max_s):
            done["wrapup_timeout"] += self._run("ready", _text(agent_id), "wrapup", "wrapup-timeout",
                                                now=now).status == "ok"
        rules = self.rules
        self._note_groups(rules, now, refresh=True)
        skills = list(rules.skills.values())
        pipe = self.redis.pipeline()
        for s in skills:
            pipe.scard(k.staffed(s.id))
            pipe.zrangebyscore(k.age(s.id), "-inf", now, start=0, num=500, withscores=True)
        raw = pipe.execute()
        for i, s in enumerate(skills):
            staffed, aged = raw[2 * i], raw[2 * i + 1]
            if not aged:
                continue
            stranded = not staffed or not is_open(s, now, self.calendar)
            if stranded and s.id != rules.hotline.skill:
                done["stranded"] += self._strand(s, [_text(c) for c, _ in aged], now)
            elif s.overflow_to is not None and s.overflow_after_s is not None:
                chain, _ = self._plan(s.overflow_to, now, has_number=False)
                for call_id, joined in aged:
                    if joined > now - s.overflow_after_s:
                        break
                    done["overflow"] += self._run("move", _text(call_id), "overflow", s.id, "queue", *chain,
                                                  now=now).status == "ok"
        done["regrouped"] = self._regroup(now)
        return done

    def _regroup(self, now: float) -> int:
        """Callers left in seat groups the rules no longer have (an admin removed or renamed the
        group while they waited): each moves to the general group's plan keeping their place,
        and the supervisors are told once per group and tick. Never stranded, never dropped."""
        removed = self.removed_groups(now, grace_s=REMOVED_GRACE_S)
        if not removed:
            return 0
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        for g in removed:
            pipe.zrange(k.queue(g), 0, 499)
        waiting = pipe.execute()
        chain, _ = self._plan(self.rules.hotline.skill, now, has_number=False)
        moved = 0
        for (g, name), calls in zip(removed.items(), waiting):
            to: dict[str, int] = {}
            for call_id in calls:
                r = self._run("regroup", _text(call_id), g, *chain, now=now)
                if r.status == "ok":
                    to[r.info] = to.get(r.info, 0) + 1
            for skill, n in to.items():
                moved += n
                log.warning("seat group %s is no longer in the rules: %d waiting call(s) moved to %s, keeping "
                            "their place", g, n, skill)
                self.redis.xadd(k.alerts(), {"t": repr(float(now)), "alert": "group_removed", "skill": g,
                                             "name": name, "to": skill, "calls": str(n)},
                                maxlen=10000, approximate=True)
        return moved

    def _strand(self, skill: Skill, call_ids: list[str], now: float) -> int:
        """Calls left in a group that closed or lost its last seat: callback or overflow now."""
        moved = 0
        chain, _ = self._plan(skill.overflow_to or self.rules.hotline.skill, now, has_number=False)
        for call_id in call_ids:
            if skill.after_hours == "callback":
                r = self._run("request_callback", call_id, now=now)
                if r.status in ("ok", "already"):
                    self.redis.zrem(self.keys.age(skill.id), call_id)
                    moved += r.status == "ok"
                    continue
            moved += self._run("move", call_id, "overflow", skill.id, "queue", *chain, now=now).status == "ok"
        return moved
