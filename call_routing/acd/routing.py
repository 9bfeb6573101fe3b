"""The ACD's routing by rules: the groups a call may wait in (opening hours, overflow chains)."""
from __future__ import annotations

from call_routing.rules import Rules, Skill

from .hours import is_open


class RoutingMixin:
    """Plans of :class:`call_routing.acd.core.ACD`: which queues, and what when none is staffed."""

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
