"""The ACD's routing by rules: the groups a call may wait in (opening hours, overflow chains)."""
from __future__ import annotations

from call_routing.rules import Rules, Skill

from .hours import is_open
from .model import _text


#: a seat group missing from this process's rules is taken as removed (its callers move to the
#: general group) only when no process has found it in its rules for this long: every process
#: reloads an edited rules file within a second, and a ticker still on the older rules must not
#: empty a group that an edit has just added
REMOVED_GRACE_S = 10.0
GROUPS_REFRESH_S = 3.0  # how often a ticker says "my rules have these groups"


class RoutingMixin:
    """Plans of :class:`call_routing.acd.core.ACD`: which queues, and what when none is staffed."""

    def _note_groups(self, rules: Rules, now: float, refresh: bool = False) -> None:
        """Record the seat groups of ``rules`` (names, and when a process last had them): the
        ticker finds the groups that an edit removed while callers wait in them. Written once per
        rules version per process, and every ``GROUPS_REFRESH_S`` by the ticker."""
        noted = self._groups_noted
        if noted is not None and noted[0] == rules.version and (not refresh or now - noted[1] < GROUPS_REFRESH_S):
            return
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(k.groups(), mapping={s.id: s.name for s in rules.skills.values()})
        pipe.zadd(k.groups_seen(), {s.id: now for s in rules.skills.values()})
        pipe.execute()
        self._groups_noted = (rules.version, now)

    def removed_groups(self, now: float | None = None, grace_s: float = 0.0) -> dict[str, str]:
        """Seat groups calls may have joined that the current rules no longer have: id -> name
        (the name they had). ``grace_s``: only those no process has had in its rules for that long."""
        now = self.clock() if now is None else now
        k = self.keys
        skills = self.rules.skills
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(k.groups_seen(), "-inf", now - grace_s)
        pipe.hgetall(k.groups())
        gone, names = pipe.execute()
        names = {_text(a): _text(b) for a, b in names.items()}
        return {g: names.get(g) or g for g in map(_text, gone) if g not in skills}

    def is_open(self, skill: Skill | str, now: float | None = None) -> bool:
        if isinstance(skill, str):
            skill = self.rules.skills[skill]
        return is_open(skill, self.clock() if now is None else now, self.calendar)

    def _plan(self, skill_id: str, now: float, has_number: bool) -> tuple[list[str], str]:
        """The groups a call for ``skill_id`` may wait in, in order, and what happens when none
        has a seat logged in: ``queue`` (wait in the last), ``callback`` (park a callback in the
        first) or ``park`` (the group is closed: callback at once).

        Opening hours change on the minute, so plans are kept per rules set and minute."""
        rules = self.rules
        self._note_groups(rules, now)
        memo = (rules.version, skill_id, has_number, int(now // 60))
        plan = self._plans.get(memo)
        if plan is None:
            if len(self._plans) > 4096:
                self._plans.clear()
            plan = self._plans[memo] = self._make_plan(rules, skill_id, now, has_number)
        return list(plan[0]), plan[1]

    def _make_plan(self, rules: Rules, skill_id: str, now: float, has_number: bool) -> tuple[tuple, str]:
        general = rules.hotline.skill
        chain: list[str] = []
        seen: set[str] = set()
        sid: str | None = skill_id
        while sid is not None and sid not in seen:
            seen.add(sid)
            skill = rules.skills[sid]
            nxt = skill.overflow_to or (general if sid != general else None)
            if not is_open(skill, now, self.calendar):
                if skill.after_hours == "callback" and has_number and not chain:
                    return (sid,), "park"
                sid = nxt
                continue
            chain.append(sid)
            if skill.after_hours == "callback" and skill.overflow_to is None and has_number:
                return tuple(chain), "callback"
            sid = nxt
        return tuple(chain or [general]), "queue"
