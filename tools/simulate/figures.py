"""The figures of a run: latencies, outcomes, tickets found in the database, the JSON line and the report."""
from __future__ import annotations

import json
import re
import sys
import threading
import time

from tools.simulate.callers import CallRecord


def percentile(values, p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return round(s[k] * 1000, 2)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.webhook: list[float] = []
        self.agi: list[float] = []
        self.errors: list[str] = []
        self.by_path: dict[str, list[float]] = {}

    def add_path(self, path: str, seconds: float) -> None:
        key = path.split("?", 1)[0]
        with self.lock:
            self.by_path.setdefault(key, []).append(seconds)

    def add(self, kind: str, seconds: float) -> None:
        with self.lock:
            getattr(self, kind).append(seconds)

    def error(self, msg: str) -> None:
        with self.lock:
            if len(self.errors) < 200:
                self.errors.append(msg)



class Figures:
    """Part of :class:`~tools.simulate.run.Simulation`: what became of every call, once the work is drained."""

    def _drain(self, timeout: float = 60.0) -> None:
        """Wait for the speech/callback jobs and the ticket writer to finish what the calls left."""
        from rq.registry import StartedJobRegistry

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                busy = sum(q.count + len(StartedJobRegistry(queue=q)) for q in self.rq_queues)
                busy += self.drafts.r.llen(self.drafts.pending) + self.drafts.r.llen(self.drafts.writing)
            except Exception:
                busy = 1
            if not busy:
                return
            time.sleep(0.3)

    def tickets(self) -> dict:
        """ticket id -> (call id, outcome), straight from the database (no draft fallback)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.connect() as c:
                rows = c.execute(text("SELECT id, call_id, call_outcome, transcript_status FROM tickets")).all()
        finally:
            engine.dispose()
        return {str(r[0]): (r[1], r[2], r[3]) for r in rows}

    def _ticket_of(self, rec: CallRecord) -> str | None:
        if rec.ticket:
            return rec.ticket
        try:
            from ivr.flow import RedisCalls

            state = RedisCalls(self.acd.redis).get(rec.id) or {}
            return state.get("ticket")
        except Exception:
            return None

    def report(self, t_start: float, elapsed: float) -> dict:
        self._drain()
        for rec in self.records.values():
            rec.ticket = self._ticket_of(rec)
        rows = self.tickets()
        by_call = {v[0]: k for k, v in rows.items()}
        missing = []
        for rec in self.records.values():
            needs = rec.outcome not in (None, "announced", "fallback") or rec.ticket
            if rec.outcome == "fallback" and not rec.ticket:
                needs = False  # the backend failed before a ticket could be numbered: app_queue seats
            if needs and rec.id not in by_call:
                missing.append(rec.id)
        outcomes: dict[str, int] = {}
        for rec in self.records.values():
            outcomes[rec.outcome or "lost"] = outcomes.get(rec.outcome or "lost", 0) + 1
        try:
            offers = sum(1 for e in self.acd.events(since=t_start) if e.get("e") == "offer")
            kpis = self.acd.kpis(since=t_start)
        except Exception as exc:
            offers, kpis = 0, {"error": repr(exc)}
        total = (kpis or {}).get("total", {}) if isinstance(kpis, dict) else {}
        all_lat = self.stats.webhook + self.stats.agi
        result = {
            "calls": self.n, "front": self.front, "agents": self.agent_count, "seed": self.seed,
            "connected": outcomes.get("connected", 0) + outcomes.get("subcenter", 0),
            "subcenter": outcomes.get("subcenter", 0),
            "abandoned": outcomes.get("abandoned", 0), "callback": outcomes.get("callback", 0),
            "callbacks_connected": self.callbacks_connected,
            "emergency": outcomes.get("emergency", 0), "fallback": outcomes.get("fallback", 0),
            "announced": outcomes.get("announced", 0), "lost": outcomes.get("lost", 0),
            "transferred": sum(1 for r in self.records.values() if r.transferred),
            "silence": sum(1 for r in self.records.values() if r.silence),
            "max_silence_s": max((r.max_silence_s for r in self.records.values()), default=0.0),
            "transfers_refused": sum(self.transfers_refused.values()),
            "tickets": len(rows), "tickets_missing": len(missing),
            "server_errors": sum(1 for e in self.stats.errors if re.search(r"HTTP 5(?!03)", e)),
            "unavailable_503": sum(1 for e in self.stats.errors if "HTTP 503" in e), "errors": len(self.stats.errors),
            "webhooks": len(self.stats.webhook), "agi_commands": len(self.stats.agi),
            "webhook_p50_ms": percentile(self.stats.webhook, 50), "webhook_p99_ms": percentile(self.stats.webhook, 99),
            "agi_p50_ms": percentile(self.stats.agi, 50), "agi_p99_ms": percentile(self.stats.agi, 99),
            "p50_ms": percentile(all_lat, 50), "p99_ms": percentile(all_lat, 99),
            "assignments": offers, "assignments_per_s": round(offers / elapsed, 1) if elapsed else 0.0,
            "connection_rate": total.get("connection_rate") if isinstance(total, dict) else None,
            "elapsed_s": round(elapsed, 1),
        }
        self.missing_tickets = missing
        self.kpis = kpis
        return result


def print_report(sim, result: dict, out=sys.stdout) -> None:
    print(f"{'call':<34} {'front':<6} {'dialed':<7} {'caller':<9} {'outcome':<10} {'ticket':<8} detail", file=out)
    for rec in sim.records.values():
        print(f"{rec.id:<34} {rec.front:<6} {rec.dialed:<7} {rec.behaviour:<9} {rec.outcome or 'LOST':<10} "
              f"{rec.ticket or '-':<8} {rec.detail}{' (transferred)' if rec.transferred else ''}", file=out)
    total = sim.kpis.get("total") if isinstance(sim.kpis, dict) else None
    if total:
        print("KPIs (ACD queue log): " + json.dumps(total, ensure_ascii=False, default=str), file=out)
    for path, values in sorted(sim.stats.by_path.items(), key=lambda kv: -percentile(kv[1], 99)):
        print(f"latency {path}: n={len(values)} p50={percentile(values, 50)} ms p99={percentile(values, 99)} ms "
              f"max={round(max(values) * 1000, 1)} ms", file=out)
    for why, n in sim.transfers_refused.items():
        print(f"three-way transfer refused {n}x: {why}", file=out)
    for err in sim.stats.errors[:20]:
        print("error: " + err, file=out)
    print(json.dumps(result, ensure_ascii=False), file=out)
