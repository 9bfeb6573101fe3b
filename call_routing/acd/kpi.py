"""The queue log (like Asterisk's queue_log) and the KPIs computed from it.

Events (field ``e``): ``enter`` ``offer`` ``connect`` ``noanswer`` ``abandon`` ``overflow``
``requeue`` ``transfer`` ``callback`` ``cbfail`` ``resume`` ``complete`` ``wrapup`` ``agent``
``warn`` ``leave`` (left the queue on purpose: emergency, fallback) ``survey`` (satisfaction
key 1/2/3) ``takeback`` (a three-way transfer cancelled: back to the agent). Every event has ``t`` (Unix seconds on the ACD clock); calls carry ``call`` and
``line``; waits and times are in seconds.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_log(client, keys, since: float | None = None, until: float | None = None,
             batch: int = 10_000) -> Iterator[dict]:
    """The queue log in order, optionally only events with ``since <= t < until``."""
    start = "-"
    while True:
        chunk = client.xrange(keys.log(), min=start, max="+", count=batch)
        if not chunk:
            return
        for entry_id, fields in chunk:
            event = {_text(a): _text(b) for a, b in fields.items()}
            t = float(event.get("t", 0))
            if (since is None or t >= since) and (until is None or t < until):
                yield event
        if len(chunk) < batch:
            return
        start = "(" + _text(chunk[-1][0])


def _empty() -> dict:
    return defaultdict(float)


def kpis(events: Iterable[dict]) -> dict:
    """接通率, 15-s / 30-s answer rates, 呼损率, average wait and handle time, per line and total.

    ``offered`` counts calls entering a queue from outside (not transfers); ``answered`` those
    connected to an agent while the caller was on the line; rates are over ``offered``. Calls
    that became callbacks are counted as abandoned (caller hung up) or ``callback_requested``
    (caller accepted the offer); callbacks themselves are reported apart.
    """
    per = defaultdict(_empty)
    for e in events:
        ev = e.get("e")
        line = e.get("line") or "unknown"
        if ev == "enter":
            if e.get("kind") != "transfer":
                per[line]["offered"] += 1
                if e.get("kind") == "callback":
                    per[line]["callback_requested"] += 1
        elif ev == "connect":
            wait = float(e.get("wait", 0))
            if e.get("kind") == "live":
                per[line]["answered"] += 1
                per[line]["wait_sum"] += wait
                per[line]["answered_15s"] += wait <= 15
                per[line]["answered_30s"] += wait <= 30
            elif e.get("kind") == "callback":
                per[line]["callbacks_connected"] += 1
            else:
                per[line]["transfers_connected"] += 1
        elif ev == "abandon":
            if e.get("kind") == "transfer":  # already answered once: not a lost call
                per[line]["transfers_abandoned"] += 1
                continue
            per[line]["abandoned"] += 1
            per[line]["abandon_wait_sum"] += float(e.get("wait", 0))
        elif ev == "callback":
            per[line]["callbacks"] += 1
            if e.get("reason") == "requested":
                per[line]["callback_requested"] += 1
        elif ev == "cbfail" and e.get("final") == "1":
            per[line]["callbacks_failed"] += 1
        elif ev == "complete":
            per[line]["completed"] += 1
            per[line]["talk_sum"] += float(e.get("talk", 0))
        elif ev == "wrapup":
            per[line]["wrapups"] += 1
            per[line]["wrap_sum"] += float(e.get("wrap", 0))
        elif ev == "overflow":
            per[line]["overflowed"] += 1
        elif ev == "noanswer":
            per[line]["no_answer"] += 1
        elif ev == "resume":
            per[line]["resumed"] += 1
        elif ev == "leave":
            if e.get("kind") == "transfer":
                per[line]["transfers_left"] += 1
            else:
                per[line]["left"] += 1
                per[line][f"left_{e.get('reason') or 'other'}"] += 1
        elif ev == "survey":
            score = e.get("score")
            if score in ("1", "2", "3"):
                per[line]["surveyed"] += 1
                per[line][f"survey_{score}"] += 1
    total = _empty()
    for figures in per.values():
        for k, v in figures.items():
            total[k] += v
    out = {"total": _finish(total), "lines": {line: _finish(f) for line, f in sorted(per.items())}}
    return out


def _finish(f) -> dict:
    offered = f["offered"]
    answered = f["answered"]

    def rate(n, d):
        return round(n / d, 4) if d else None

    out = {k: int(f[k]) for k in ("offered", "answered", "answered_15s", "answered_30s", "abandoned",
                                   "callback_requested", "callbacks", "callbacks_connected", "callbacks_failed",
                                   "transfers_connected", "transfers_abandoned", "overflowed", "no_answer", "resumed", "completed",
                                   "left", "left_emergency", "left_fallback", "transfers_left",
                                   "surveyed", "survey_1", "survey_2", "survey_3")}
    out.update(
        connection_rate=rate(answered, offered),  # 接通率
        answer_rate_15s=rate(f["answered_15s"], offered),
        answer_rate_30s=rate(f["answered_30s"], offered),
        abandon_rate=rate(f["abandoned"], offered),  # 呼损率
        # 满意率: (满意 + 基本满意) ÷ callers who answered the survey; very_satisfied_rate: 满意 only
        satisfaction_rate=rate(f["survey_1"] + f["survey_2"], f["surveyed"]),
        very_satisfied_rate=rate(f["survey_1"], f["surveyed"]),
        avg_wait_s=round(f["wait_sum"] / answered, 2) if answered else None,
        avg_abandon_wait_s=round(f["abandon_wait_sum"] / f["abandoned"], 2) if f["abandoned"] else None,
        avg_handle_s=round(f["talk_sum"] / f["completed"] + (f["wrap_sum"] / f["wrapups"] if f["wrapups"] else 0), 2)
        if f["completed"] else None,
    )
    return out


def audit(events: Iterable[dict]) -> dict:
    """Replay the log and count what must never happen: a call offered while already held by an
    agent, an agent offered a call while holding one, a call connected twice."""
    call_holder: dict[str, str] = {}
    agent_holding: dict[str, str] = {}
    connected: set[str] = set()
    double_assignments = 0
    double_connects = 0
    offers = 0

    def release(call):
        agent = call_holder.pop(call, None)
        if agent is not None and agent_holding.get(agent) == call:
            del agent_holding[agent]

    for e in events:
        ev, call = e.get("e"), e.get("call")
        if ev == "offer":
            offers += 1
            agent = e["agent"]
            if call in call_holder or agent in agent_holding:
                double_assignments += 1
            call_holder[call] = agent
            agent_holding[agent] = call
        elif ev in ("noanswer", "abandon", "cbfail", "complete", "leave"):
            release(call)
        elif ev == "connect":
            if call in connected and e.get("kind") == "live":
                double_connects += 1
            if e.get("kind") == "live":
                connected.add(call)
        elif ev == "transfer":
            release(call)
        elif ev == "takeback":
            release(call)
            call_holder[call] = e["agent"]
            agent_holding[e["agent"]] = call
    return {"offers": offers, "double_assignments": double_assignments, "double_connects": double_connects}
