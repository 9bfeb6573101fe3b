"""Figures for the supervisor dashboard and Prometheus ``/metrics``, read from the ACD and tickets.

* Live queue per seat group: callers waiting, the longest wait, seats by state (Redis, read-only,
  keys from :mod:`call_routing.acd.keys`).
* Today's KPIs per line from the ACD queue log (:func:`call_routing.acd.kpi.kpis`, the one
  definition of 接通率 / 15-s answer rate / 呼损率), satisfaction from the tickets' survey keys,
  and how often agents kept what the pre-fill filled (智能填单准确率) from their confirmations.
* Calls offered and answer rate per hour of today (the same KPI function over each hour).

The queue log holds days of events (up to ``log_max``, ≈ 5 M): each process keeps today's
figures as running tallies (:class:`call_routing.acd.kpi.Tally`, one for the day and one per
hour) and reads only the entries written since its last read — the first read of a day starts
where the day begins in the log (:func:`call_routing.acd.kpi.start_id`). They are refreshed at
most every ``ttl_s`` seconds (the live queue is read at every request).
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, select

from call_routing.acd.kpi import Tally, read_entries, start_id
from call_routing.acd.kpi import kpis as compute_kpis
from call_routing.rules import CHINA_TZ

from . import labels
from .room import LiveRoom, _text, start_of_day

STATE_NAMES = labels.AGENT_STATES
SATISFIED = ("satisfied", "basically_satisfied", "1", "2")  # survey keys: 满意 / 基本满意
SURVEYED = SATISFIED + ("dissatisfied", "3")


class Dashboard(LiveRoom):
    """The supervisor dashboard: the room right now (:class:`~consoles.room.LiveRoom`) and today's figures."""

    def __init__(self, acd, tickets=None, ttl_s: float = 5.0):
        self.acd = acd
        self.tickets = tickets
        self.ttl_s = ttl_s
        self._cache: dict = {}
        self._lock = threading.Lock()
        self._day: _DayTally | None = None  # today's figures so far, and where in the log they stop
        self._day_lock = threading.Lock()

    # -- live queue ----------------------------------------------------------------------
    def _cached(self, name, compute):
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
            if hit and now - hit[0] < self.ttl_s:
                return hit[1]
        value = compute()
        with self._lock:
            self._cache[name] = (now, value)
        return value

    def today(self) -> dict:
        return self._cached("today", self._today)

    def _tally(self, since: float) -> "_DayTally":
        """Today's tallies brought up to date with the entries written since the last read."""
        with self._day_lock:
            day = self._day
            if day is None or day.since != since:  # first read, or a new day: from where it begins
                day = self._day = _DayTally(since, start_id(self.acd.redis, self.acd.keys, since))
            for entry_id, e in read_entries(self.acd.redis, self.acd.keys, day.resume):
                day.resume = "(" + entry_id
                t = float(e.get("t", since))
                if since <= t < since + 86400:
                    day.total.add(e)
                    day.hours[int((t - since) // 3600)].add(e)
                    if e.get("e") == "connect" and e.get("agent"):  # a call the seat answered
                        day.agents[e["agent"]] += 1
            return day

    def _today(self) -> dict:
        now = self.acd.clock()
        since = start_of_day(now)
        day = self._tally(since)
        with self._day_lock:
            figures = day.total.figures()
            by_hour = {h: tally.figures()["total"] for h, tally in day.hours.items()}
        current_hour = int((now - since) // 3600)
        hourly = []
        for h in range(0, min(23, current_hour) + 1):
            t = by_hour.get(h) or compute_kpis([])["total"]
            hourly.append({"hour": h, "offered": t["offered"], "answered": t["answered"],
                           "answer_rate": t["connection_rate"], "answer_rate_15s": t["answer_rate_15s"]})
        satisfaction = self.satisfaction(since)
        prefill = self.prefill_kept(since)
        lines = {}
        rules = self.acd.rules
        for number in sorted(set(figures["lines"]) | set(satisfaction["lines"])):
            line = rules.line(number)
            lines[number] = {"name": line.name if line else number, "line_text": labels.line_text(number, rules),
                             **figures["lines"].get(number, compute_kpis([])["total"]),
                             **satisfaction["lines"].get(number, _no_survey())}
        return {"day": datetime.fromtimestamp(since, CHINA_TZ).strftime("%Y-%m-%d"),
                "total": {**figures["total"], **satisfaction["total"], **prefill}, "lines": lines, "hourly": hourly}

    def prefill_kept(self, since: float) -> dict:
        """智能填单准确率: of today's tickets an agent confirmed whose transcript was heard, the
        share whose type (line) the agent left as the pre-fill had filled it."""
        empty = {"prefill_confirmed": 0, "prefill_type_rate": None, "prefill_line_rate": None}
        if self.tickets is None:
            return empty
        from intake.tickets import TicketEvent, TicketRow

        start = datetime.fromtimestamp(since, CHINA_TZ)
        with self.tickets.engine.connect() as conn:
            confirmed = (TicketRow.created_at >= start, TicketRow.transcript_status == "ok",
                         TicketRow.status.in_(("confirmed", "finished", "handed_off")))
            n = conn.scalar(select(func.count()).select_from(TicketRow).where(*confirmed)) or 0
            changes = conn.execute(select(TicketEvent.ticket_id, TicketEvent.detail)
                                   .join(TicketRow, TicketRow.id == TicketEvent.ticket_id)
                                   .where(TicketEvent.kind == "confirmed", *confirmed)).all()
        if not n:
            return empty
        changed = {"type": set(), "line": set()}
        for ticket_id, detail in changes:
            for name in set((detail or {}).get("changed") or ()) & set(changed):
                changed[name].add(ticket_id)
        return {"prefill_confirmed": n, "prefill_type_rate": round(1 - len(changed["type"]) / n, 4),
                "prefill_line_rate": round(1 - len(changed["line"]) / n, 4)}

    def satisfaction(self, since: float) -> dict:
        """满意率 = (满意 + 基本满意) ÷ callers who answered the survey, per entry line."""
        if self.tickets is None:
            return {"total": _no_survey(), "lines": {}}
        from intake.tickets import TicketRow

        start = datetime.fromtimestamp(since, CHINA_TZ)
        with self.tickets.engine.connect() as conn:
            rows = conn.execute(select(TicketRow.entry_line, TicketRow.survey, func.count())
                                .where(TicketRow.created_at >= start, TicketRow.survey.is_not(None))
                                .group_by(TicketRow.entry_line, TicketRow.survey)).all()
        per = defaultdict(lambda: [0, 0])
        for line, survey, n in rows:
            if survey in SURVEYED:
                per[line][0] += n
                per[line][1] += n if survey in SATISFIED else 0
        total = [sum(v[0] for v in per.values()), sum(v[1] for v in per.values())]
        return {"total": _survey(*total), "lines": {line: _survey(*v) for line, v in per.items()}}

    def supervision(self, limit: int = 50) -> list[dict]:
        """Matters and units flagged for supervision (督办), newest first, with their tickets."""
        if self.tickets is None:
            return []
        out = []
        rules = self.acd.rules
        for sup in reversed(self.tickets.supervisions()[-limit:]):
            tickets = []
            for tid in sup["ticket_ids"][:20]:
                try:
                    t = self.tickets.get(tid).view("supervisor")
                except LookupError:
                    continue
                kind = (t["fields"].get("type") or {}).get("value")
                tickets.append({"id": t["id"], "number": t["number"], "status": t["status"], "entry_line": t["entry_line"],
                                "type": kind, "location": (t["fields"].get("location") or {}).get("value"),
                                "due_at": t["due_at"], "created_at": t["created_at"],
                                "status_text": labels.TICKET_STATUSES.get(t["status"], t["status"]),
                                "type_text": labels.TYPES.get(kind, kind or ""),
                                "line_text": labels.line_text(t["entry_line"], rules),
                                "due_text": labels.when(t["due_at"])})
            out.append({**sup, "tickets": tickets, "kind_text": labels.SUPERVISION_KINDS.get(sup["kind"], ""),
                        "key_text": labels.supervision_key_text(sup["kind"], sup["key"], rules),
                        "raised_text": labels.when(sup["raised_at"])})
        return out

    def alerts(self, count: int = 10) -> list[dict]:
        """The ACD's latest supervisor warnings, newest first, each with a sentence to show."""
        acd, rules = self.acd, self.acd.rules
        alerts = acd.alerts(count)
        pipe = acd.redis.pipeline(transaction=False)
        for a in alerts:
            pipe.hmget(acd.keys.call(a.get("call") or "-"), "ticket", "masked", "line")
        out = []
        held = pipe.execute() if alerts else []
        numbers = self.ticket_numbers(_text(ticket or "") for ticket, _, _ in held)
        for a, (ticket, masked, line) in zip(alerts, held):
            call = {"ticket": _text(ticket or "") or None, "caller": labels.caller_text(_text(masked or "") or None)
                    if masked is not None else None, "line": _text(line or "") or None}
            call["number"] = numbers.get(call["ticket"]) if call["ticket"] else None
            out.append({**a, "ticket": call["ticket"], "ticket_number": call["number"], "caller": call["caller"],
                        "text": describe_alert(a, rules, call)})
        return out

    def snapshot(self) -> dict:
        now = self.acd.clock()
        waiting, queues = self.all_waiting(100), self.queues()
        return {"at": datetime.fromtimestamp(now, CHINA_TZ).isoformat(timespec="seconds"),
                "at_text": labels.when(now, seconds=True), "queues": queues, "today": self.today(),
                "alerts": self.alerts(10), "processes": self.processes(), "agents": self.board(),
                "waiting": waiting[:100], "room": self.room_summary(waiting, queues)}


def describe_alert(alert: dict, rules, call: dict | None = None) -> str:
    """One ACD alert as the supervisor reads it: when (China time), the group's name, the line,
    the call's ticket and masked caller (``call``: what the ACD still holds of the call), and
    what happened — never a CallSid or a raw record."""
    at = labels.when(alert.get("t"), seconds=True)
    at = "时间不详" if at == "—" else at
    skill = rules.skills.get(alert.get("skill") or "")
    group = f"坐席组「{skill.name}」" if skill else "坐席组（已不在规则中）"
    call = call or {}
    line = alert.get("line") or call.get("line")
    who = []
    if call.get("ticket"):
        who.append(f"工单 {call.get('number') or '建单中'}")
    if call.get("caller"):
        who.append(f"来电 {call['caller']}" if call["caller"] != labels.caller_text(None) else "来电（无来电号码）")
    caller = "，".join(who) if who else "一通来电"
    kind = alert.get("alert")
    if kind == "group_removed":  # an admin's rules edit removed the group while callers waited in it
        to = rules.skills.get(alert.get("to") or "")
        return (f"{at} 坐席组「{alert.get('name') or alert.get('skill')}」已从规则中撤销：其中排队的 "
                f"{alert.get('calls') or '若干'} 位来电已转入「{to.name if to else alert.get('to')}」，保留原排队位置和等待时间")
    if kind == "unstaffed":
        where = f"（{labels.line_text(line, rules)}）" if line else ""
        return f"{at} {group}无坐席在岗：{caller}{where}已按规则溢出到其他坐席组或登记回拨"
    if kind == "lost":
        try:
            silent = f"{float(alert.get('silent') or 0):.0f} 秒"
        except ValueError:
            silent = "长时间"
        return (f"{at} {caller}（{labels.line_text(line or '12345', rules)}，{group}）的接入端 {silent}无响应，"
                f"按呼损处理；有来电号码的已登记回拨")
    if kind == "possible_emergency":
        number = alert.get("emergency") or ""
        return (f"{at} 可能紧急：{caller}（{labels.line_text(line or '12345', rules)}，{group}）描述的情况可能需要"
                f" {number}，已排到队首，由下一位空闲坐席先接听核实，请关注")
    return f"{at} 系统告警：{group}出现异常（{kind or '未知'}），{caller}"


class _DayTally:
    __slots__ = ("since", "resume", "total", "hours", "agents")

    def __init__(self, since: float, resume: str):
        self.since, self.resume = since, resume  # resume: where the next read of the log starts
        self.total = Tally()
        self.hours: dict = defaultdict(Tally)
        self.agents: dict = defaultdict(int)  # calls answered today per seat


def _survey(surveyed: int, satisfied: int) -> dict:
    return {"surveyed": surveyed, "satisfied": satisfied,
            "satisfaction_rate": round(satisfied / surveyed, 4) if surveyed else None}


def _no_survey() -> dict:
    return _survey(0, 0)


# ---------------------------------------------------------------------------------------
# Prometheus


class HotlineCollector:
    """prometheus-client collector: figures are read from Redis/tickets at scrape time."""

    def __init__(self, dashboard: Dashboard, rules_store):
        self.dashboard = dashboard
        self.rules_store = rules_store

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        rules = self.rules_store.current()
        info = InfoMetricFamily("hotline_rules", "the routing rules version this process routes with")
        info.add_metric([], {"version": rules.version})
        yield info
        bad = GaugeMetricFamily("hotline_rules_file_invalid",
                                "1 when the rules file on disk is invalid and was not loaded")
        bad.add_metric([], 1 if self.rules_store.last_problems else 0)
        yield bad
        waiting = GaugeMetricFamily("hotline_queue_waiting", "callers waiting per seat group", labels=["skill"])
        longest = GaugeMetricFamily("hotline_queue_longest_wait_seconds", "longest current wait per seat group",
                                    labels=["skill"])
        agents = GaugeMetricFamily("hotline_agents", "seats logged in per seat group and state",
                                   labels=["skill", "state"])
        for q in self.dashboard.queues():
            waiting.add_metric([q["skill"]], q["waiting"])
            longest.add_metric([q["skill"]], q["longest_wait_s"])
            for state, n in q["agents"].items():
                agents.add_metric([q["skill"], state], n)
        yield waiting
        yield longest
        yield agents
        up = GaugeMetricFamily("hotline_process_up", "1 while a supervised process of the product runs",
                               labels=["process"])
        restarts = GaugeMetricFamily("hotline_process_restarts", "times the supervisor started a process again",
                                     labels=["process"])
        for proc in self.dashboard.processes():
            up.add_metric([proc["name"]], 1 if proc["state"] == "running" else 0)
            restarts.add_metric([proc["name"]], proc["restarts"])
        yield up
        yield restarts
        today = self.dashboard.today()
        gauges = {
            "offered": ("hotline_calls_offered_today", "calls offered since midnight (China time)"),
            "answered": ("hotline_calls_answered_today", "calls answered since midnight"),
            "abandoned": ("hotline_calls_abandoned_today", "calls abandoned since midnight"),
            "lost": ("hotline_calls_lost_today", "callers lost with their front-end (AGI server, web process) "
                                                 "since midnight; counted in abandoned"),
            "connection_rate": ("hotline_connection_rate_today", "接通率: answered / offered since midnight"),
            "answer_rate_15s": ("hotline_answer_rate_15s_today", "answered within 15 s / offered since midnight"),
            "abandon_rate": ("hotline_abandon_rate_today", "呼损率: abandoned / offered since midnight"),
            "satisfaction_rate": ("hotline_satisfaction_rate_today", "satisfied / surveyed since midnight"),
            "prefill_type_rate": ("hotline_prefill_type_kept_today", "智能填单: confirmed tickets whose type the agent "
                                                                     "left as pre-filled, since midnight"),
            "prefill_line_rate": ("hotline_prefill_line_kept_today", "智能填单: confirmed tickets whose line the agent "
                                                                     "left as pre-filled, since midnight"),
        }
        for key, (name, doc) in gauges.items():
            fam = GaugeMetricFamily(name, doc, labels=["line"])
            for line, figures in [("total", today["total"])] + list(today["lines"].items()):
                value = figures.get(key)
                if value is not None:
                    fam.add_metric([line], value)
            yield fam

