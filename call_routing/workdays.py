"""China's working-day calendar: holidays and make-up working days (调休).

Deadlines ("done within 5 working days") and the opening hours of seat groups open on
working days use this one calendar. It combines the ``chinese-calendar`` package (the State
Council's notices up to its release) with ``data/workdays.yaml`` (years announced later).
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path


log = logging.getLogger("hotline.workdays")
CALENDAR_FILE = Path(__file__).resolve().parent.parent / "data" / "workdays.yaml"
_warned_years: set[int] = set()


class WorkdayCalendar:
    """``is_workday(day)`` and ``add_workdays(start, n)`` on China's official calendar."""

    def __init__(self, holidays=(), workdays=()):
        self.holidays = frozenset(holidays)
        self.workdays = frozenset(workdays)

    @classmethod
    def from_file(cls, path: str | Path = CALENDAR_FILE) -> "WorkdayCalendar":
        from call_routing.rules import read_yaml  # size, encoding and depth bounded like every YAML read

        _, data, _, problems = read_yaml(path)
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        data = data or {}
        return cls(_dates(data.get("holidays"), path, "holidays"), _dates(data.get("workdays"), path, "workdays"))

    def is_workday(self, day: date | datetime) -> bool:
        if isinstance(day, datetime):
            day = day.date()
        if day in self.workdays:
            return True
        if day in self.holidays:
            return False
        try:
            import chinese_calendar

            return chinese_calendar.is_workday(day)
        except NotImplementedError:
            if day.year not in _warned_years:
                _warned_years.add(day.year)
                log.warning("no official holiday calendar for %s: counting Monday-Friday as working days; "
                            "add the year's holidays to %s", day.year, CALENDAR_FILE)
            return day.weekday() < 5

    def add_workdays(self, start: datetime, days: int) -> datetime:
        """The same time of day, ``days`` working days after ``start`` (5 → the 5th working day).

        A request taken on a holiday starts counting from the next working day.
        """
        moment = start
        counted = 0
        while counted < days:
            moment += timedelta(days=1)
            if self.is_workday(moment):
                counted += 1
        return moment


def _dates(values, path, key) -> list[date]:
    out = []
    for v in values or []:
        if not isinstance(v, date):
            raise ValueError(f"{path}: {key}: {v!r} is not a date (YYYY-MM-DD)")
        out.append(v)
    return out


@lru_cache(maxsize=1)
def default_calendar() -> WorkdayCalendar:
    return WorkdayCalendar.from_file()
