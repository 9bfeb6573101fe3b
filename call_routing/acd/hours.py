"""Opening hours of seat groups, on China's working-day calendar."""
from __future__ import annotations

from datetime import datetime

from call_routing.rules import CHINA_TZ, Skill
from call_routing.workdays import WorkdayCalendar, default_calendar


def is_open(skill: Skill, ts: float, calendar: WorkdayCalendar | None = None) -> bool:
    """Whether ``skill``'s seats take calls at Unix time ``ts`` (China time; no hours = 7×24)."""
    hours = skill.hours
    if hours is None:
        return True
    moment = datetime.fromtimestamp(ts, CHINA_TZ)
    if hours.days == "workdays" and not (calendar or default_calendar()).is_workday(moment.date()):
        return False
    minute = moment.hour * 60 + moment.minute
    return hours.open_minute <= minute < hours.close_minute
