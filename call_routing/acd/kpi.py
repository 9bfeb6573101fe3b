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


SLACK_S = 300.0  # events are written by several processes: their ``t`` is in order only to within this


def read_log(client, keys, since: float | None = None, until: float | None = None,
             batch: int = 10_000) -> Iterator[dict]:
    """The queue log in order, optionally only events with ``since <= t < until``. Only that
    part of the log is read (it holds days of events): see :func:`start_id`."""
    for _, event in read_entries(client, keys, start_id(client, keys, since) if since is not None else "-",
                                 until=until, batch=batch):
        t = float(event.get("t", 0))
        if (since is None or t >= since) and (until is None or t < until):
            yield event


def read_entries(client, keys, start: str = "-", until: float | None = None,
                 batch: int = 10_000) -> Iterator[tuple[str, dict]]:
    """(entry id, event) from ``start`` (an id, ``(id`` exclusive, or ``-``) to the end of the log,
    or until the events are ``SLACK_S`` past ``until``."""
    while True:
        chunk = client.xrange(keys.log(), min=start, max="+", count=batch)
        if not chunk:
            return
        for entry_id, fields in chunk:
            event = {_text(a): _text(b) for a, b in fields.items()}
            if until is not None and float(event.get("t", 0)) >= until + SLACK_S:
                return
            yield _text(entry_id), event
        if len(chunk) < batch:
            return
        start = "(" + _text(chunk[-1][0])


def start_id(client, keys, since: float) -> str:
    """Where in the log the events at ``since`` (ACD clock) begin, ``SLACK_S`` early: a binary
    search over the entry ids (Redis milliseconds) on the events' own ``t`` — about 40 reads of
    one entry, instead of reading days of the log from its start. The ids and ``t`` need not
    share a clock (tests inject one): only their common order is used."""
    target = since - SLACK_S
    log = keys.log()

    def first_at(ms: int):
        got = client.xrange(log, min=f"{ms}-0", max="+", count=1)
        return (_ms(got[0][0]), _t(got[0][1])) if got else None

    first = first_at(0)
    if first is None or first[1] >= target:
        return "-"
    last = client.xrevrange(log, max="+", min="-", count=1)
    if _t(last[0][1]) < target:
        return "(" + _text(last[0][0])  # nothing that recent: only what comes next
    lo, hi = first[0], _ms(last[0][0])  # the first entry at lo is too early; at hi it is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = first_at(mid)
        if found is not None and found[1] < target:
            lo = max(mid, found[0]) if found[0] < hi else mid
        else:
            hi = mid
    return f"{lo}-0"


def _t(fields) -> float:
    """An entry's ``t``, whether the client decodes responses or not."""
    return float(_text(fields.get("t", fields.get(b"t", 0))))


def _ms(entry_id) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _empty() -> dict:
    return defaultdict(float)


def kpis(events: Iterable[dict]) -> dict:
    """接通率, 15-s / 30-s answer rates, 呼损率, average wait and handle time, per line and total.

    ``offered`` counts calls entering a queue from outside (not transfers); ``answered`` those
    connected to an agent while the caller was on the line; rates are over ``offered``. Calls
    that became callbacks are counted as abandoned (caller hung up) or ``callback_requested``
    (caller accepted the offer); callbacks themselves are reported apart.
    """
    tally = Tally()
    for e in events:
        tally.add(e)
    return tally.figures()


class Tally:
    """:func:`kpis` one event at a time: a process keeps one for today and adds only the events
    it has not seen (the supervisor dashboard), instead of re-reading the day's log."""

    __slots__ = ("per",)

    def __init__(self):
        self.per = defaultdict(_empty)

    def add(self, e: dict) -> None:
        ev = e.get("e")
        line = e.get("line") or "unknown"
        if ev == "enter":
            if e.get("kind") != "transfer":
                self.per[line]["offered"] += 1
                if e.get("kind") == "callback":
                    self.per[line]["callback_requested"] += 1
        elif ev == "connect":
            wait = float(e.get("wait", 0))
            if e.get("kind") == "live":
                self.per[line]["answered"] += 1
                self.per[line]["wait_sum"] += wait
                self.per[line]["answered_15s"] += wait <= 15
                self.per[line]["answered_30s"] += wait <= 30
            elif e.get("kind") == "callback":
                self.per[line]["callbacks_connected"] += 1
            else:
                self.per[line]["transfers_connected"] += 1
        elif ev == "abandon":
            if e.get("kind") == "transfer":  # already answered once: not a lost call
                self.per[line]["transfers_abandoned"] += 1
                return
            self.per[line]["abandoned"] += 1
            self.per[line]["abandon_wait_sum"] += float(e.get("wait", 0))
            if e.get("reason") == "lost":  # its front-end died with it (ACD.tick): part of 呼损
                self.per[line]["lost"] += 1
        elif ev == "callback":
            self.per[line]["callbacks"] += 1
            if e.get("reason") == "requested":
                self.per[line]["callback_requested"] += 1
        elif ev == "cbfail" and e.get("final") == "1":
            self.per[line]["callbacks_failed"] += 1
        elif ev == "complete":
            self.per[line]["completed"] += 1
            self.per[line]["talk_sum"] += float(e.get("talk", 0))
        elif ev == "wrapup":
            self.per[line]["wrapups"] += 1
            self.per[line]["wrap_sum"] += float(e.get("wrap", 0))
        elif ev == "overflow":
            self.per[line]["overflowed"] += 1
        elif ev == "noanswer":
            if e.get("reason") != "not-rung":  # nobody rang that seat (its caller's front-end was gone)
                self.per[line]["no_answer"] += 1
        elif ev == "resume":
            self.per[line]["resumed"] += 1
        elif ev == "leave":
            if e.get("kind") == "transfer":
                self.per[line]["transfers_left"] += 1
            else:
                self.per[line]["left"] += 1
                self.per[line][f"left_{e.get('reason') or 'other'}"] += 1
        elif ev == "survey":
            score = e.get("score")
            if score in ("1", "2", "3"):
                self.per[line]["surveyed"] += 1
                self.per[line][f"survey_{score}"] += 1

    def figures(self) -> dict:
        total = _empty()
        for figures in self.per.values():
            for k, v in figures.items():
                total[k] += v
        return {"total": _finish(total), "lines": {line: _finish(f) for line, f in sorted(self.per.items())}}


def _finish(f) -> dict:
    offered = f["offered"]
    answered = f["answered"]

    def rate(n, d):
        return round(n / d, 4) if d else None

    out = {k: int(f[k]) for k in ("offered", "answered", "answered_15s", "answered_30s", "abandoned", "lost",
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
