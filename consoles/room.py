"""The room right now, for the supervisor dashboard: each seat group's queue, the board of seats,
the callers waiting and the product's background processes (read from Redis at every request).
:class:`consoles.dashboard.Dashboard` adds today's figures."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from types import SimpleNamespace

from call_routing.acd.core import AGENT_STATES, MAX_PRIORITY
from call_routing.rules import CHINA_TZ
from runtime.supervisor import STATE_KEY, STATE_TTL_S

from . import labels

PROCESS_NAMES = {"worker": "后台任务（语音转写、回拨、工单推送）", "timers": "排队计时（超时、溢出、回拨）",
                 "fastagi": "FastAGI 服务（Asterisk 来电）", "proxy": "Web 前置代理（nginx）",
                 "audiosocket": "实时语音识别（Asterisk AudioSocket）", "media": "实时语音识别（Twilio 媒体流）"}
PROCESS_STATES = {"running": "运行中", "restarting": "已退出，等待重启", "stopped": "已停止", "starting": "启动中",
                  "silent": "所在节点无报告"}
BAND = 10 ** 13  # queue score = (9 - priority) * BAND + entered ms (docs/acd.md)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def urgent_text(number: str | None) -> str:
    """A call the pre-fill heard as a possible emergency (the ACD's ``urgent``: 110/119/120/122)."""
    return f"可能紧急（{number}）" if number else ""


def start_of_day(now: float) -> float:
    day = datetime.fromtimestamp(now, CHINA_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def removed_groups(acd) -> list:
    """The seat groups the current rules no longer have (removed or renamed by an admin's edit),
    as skill-like objects named as the supervisor reads them: callers may still wait there for
    the few seconds before the ACD's ticker moves them to the general group (docs/acd.md)."""
    return [SimpleNamespace(id=g, name=f"已撤销的坐席组「{name}」", expert=False)
            for g, name in sorted(acd.removed_groups().items())]


def queue_figures(acd, skills) -> list[dict]:
    """Callers waiting and the longest current wait (the oldest caller of every priority band)
    of each of ``skills`` (rules' Skill objects): one pipelined read of the ACD's queues."""
    k, now = acd.keys, acd.clock()
    pipe = acd.redis.pipeline(transaction=False)
    for s in skills:
        pipe.zcard(k.queue(s.id))
        for band in range(MAX_PRIORITY + 1):  # the oldest caller of every priority band
            pipe.zrangebyscore(k.queue(s.id), band * BAND, (band + 1) * BAND - 1, start=0, num=1, withscores=True)
    raw = pipe.execute()
    out = []
    step = MAX_PRIORITY + 2
    for i, s in enumerate(skills):
        waiting = int(raw[i * step])
        entered = [score % BAND / 1000 for band in raw[i * step + 1:(i + 1) * step] for _, score in band]
        longest = max(0.0, now - min(entered)) if entered else 0.0
        out.append({"skill": s.id, "name": s.name, "expert": s.expert, "waiting": waiting,
                    "longest_wait_s": round(longest, 1),
                    "longest_wait_text": labels.duration(longest) if waiting else "—"})  # nobody waits: no 0秒
    return out


class LiveRoom:
    """The live half of the dashboard (``self.acd``; the board counts today's answered calls
    through the dashboard's day tally)."""

    def ticket_numbers(self, ids) -> dict[str, str]:
        """The numbers people read of these tickets (internal ids, as the ACD holds them); a ticket
        whose row is not written yet reads 建单中."""
        ids = [i for i in ids if i]
        tickets = getattr(self, "tickets", None)
        found = tickets.numbers(ids) if tickets is not None and ids else {}
        return {str(i): found.get(int(i), "建单中") if str(i).isdigit() else "建单中" for i in ids}

    def queues(self) -> list[dict]:
        acd, k = self.acd, self.acd.keys
        rules = acd.rules
        r = acd.redis
        agent_ids = sorted(_text(a) for a in r.smembers(k.agents()))
        pipe = r.pipeline(transaction=False)
        for a in agent_ids:
            pipe.hget(k.agent(a), "state")
            pipe.hkeys(k.agent_skills(a))
        raw = pipe.execute()
        by_skill: dict = defaultdict(lambda: defaultdict(int))
        for i, _ in enumerate(agent_ids):
            state = _text(raw[2 * i] or "offline")
            for skill in raw[2 * i + 1]:
                by_skill[_text(skill)][state] += 1
        out = []
        gone = removed_groups(acd)
        general = rules.skills[rules.hotline.skill].name
        for q in queue_figures(acd, list(rules.skills.values()) + gone):
            states = {st: by_skill[q["skill"]].get(st, 0) for st in AGENT_STATES if st != "offline"}
            row = {**q, "agents": states, "logged_in": sum(states.values()),
                   "offline": by_skill[q["skill"]].get("offline", 0), "removed": q["skill"] not in rules.skills,
                   "note": "", "moves_to": None}
            if row["removed"]:
                if not row["waiting"]:
                    continue  # a group removed long ago, nobody left in it
                row["moves_to"] = general
                row["note"] = f"该组已从规则中撤销，排队来电将保留排队位置转入「{general}」"
            out.append(row)
        return out

    # -- the room: seats and the callers waiting ----------------------------------------------
    def board(self, limit: int = 500) -> list[dict]:
        """Every seat logged in (and those who answered calls today): name, state in words, time
        in that state, the current call's line and ticket, calls answered today."""
        acd, k = self.acd, self.acd.keys
        rules, now = acd.rules, acd.clock()
        r = acd.redis
        agent_ids = sorted(_text(a) for a in r.smembers(k.agents()))[:limit]
        pipe = r.pipeline(transaction=False)
        for a in agent_ids:
            pipe.hmget(k.agent(a), "name", "state", "reason", "since", "call")
        raw = pipe.execute()
        day = self._tally(start_of_day(now))
        with self._day_lock:
            answered = dict(day.agents)
        seats = []
        for a, (name, state, reason, since, call) in zip(agent_ids, raw):
            state, reason, call = _text(state or "offline"), _text(reason or ""), _text(call or "")
            if state == "offline" and not answered.get(a):
                continue
            since_s = float(_text(since or 0) or 0)
            seats.append({"id": a, "name": _text(name or "") or a, "state": state, "reason": reason,
                          "state_text": labels.agent_state_text(state, reason),
                          "in_state_s": round(max(0.0, now - since_s), 1) if since_s and state != "offline" else None,
                          "in_state_text": labels.duration(now - since_s) if since_s and state != "offline" else "—",
                          "call": call or None, "answered_today": answered.get(a, 0)})
        pipe = r.pipeline(transaction=False)
        with_call = [s for s in seats if s["call"]]
        for s in with_call:
            pipe.hmget(k.call(s["call"]), "line", "ticket", "urgent")
        for s, (line, ticket, urgent) in zip(with_call, pipe.execute() if with_call else []):
            line = _text(line or "")
            s["line"], s["ticket"] = line or None, _text(ticket or "") or None
            s["line_text"] = labels.line_text(line, rules) if line else "—"
            s["urgent"] = _text(urgent or "") or None
            s["urgent_text"] = urgent_text(s["urgent"])
        numbers = self.ticket_numbers(s["ticket"] for s in with_call)
        for s in seats:
            s.pop("call")
            s.setdefault("line", None)
            s.setdefault("ticket", None)
            s.setdefault("line_text", "")
            s.setdefault("urgent", None)
            s.setdefault("urgent_text", "")
            s["ticket_number"] = numbers.get(s["ticket"]) if s["ticket"] else None
        order = {st: i for i, st in enumerate(("busy", "ringing", "wrapup", "ready", "paused", "offline"))}
        seats.sort(key=lambda s: (order.get(s["state"], 9), s["name"]))
        return seats

    def waiting(self, limit: int = 100) -> list[dict]:
        return self.all_waiting(limit)[:limit]

    @staticmethod
    def room_summary(waiting: list[dict], queues: list[dict], limit: int = 100) -> dict:
        """The room in three figures for the top of the dashboard: callers waiting (each once, in
        whatever groups they wait; ``100+`` when a group holds more than ``all_waiting`` read),
        the longest wait, possible emergencies waiting; and, when an admin's rules edit removed a
        seat group while callers waited in it, one sentence saying where they are (``regrouped_text``)."""
        longest = max([w["waited_s"] for w in waiting] + [q["longest_wait_s"] for q in queues if q["waiting"]],
                      default=0.0)
        more = any(q["waiting"] > limit for q in queues)
        moved: dict = defaultdict(lambda: defaultdict(int))  # removed group -> where its callers wait now
        for w in waiting:
            if w.get("moved_from"):
                moved[w["moved_from"]][w["skill_name"]] += 1
        pending = [q for q in queues if q.get("removed") and q["waiting"]]
        parts = [f"坐席组「{g}」已从规则中撤销，其中 {sum(to.values())} 位排队来电已转入"
                 + "、".join(f"「{name}」" for name in to) + "，保留原排队位置" for g, to in moved.items()]
        parts += [f"{q['name']}还有 {q['waiting']} 位来电排队，数秒内将保留排队位置转入「{q['moves_to']}」"
                  for q in pending]
        return {"waiting": len(waiting), "waiting_text": f"{len(waiting)}{'+' if more else ''}",
                "longest_wait_s": longest, "longest_wait_text": labels.duration(longest) if waiting else "—",
                "urgent": sum(1 for w in waiting if w["urgent"]),
                "regrouped": sum(w["moved_from"] is not None for w in waiting) + sum(q["waiting"] for q in pending),
                "regrouped_text": "；".join(parts) + ("。" if parts else "")}

    def all_waiting(self, limit: int = 100) -> list[dict]:
        """The callers waiting (up to ``limit`` per group; the ticket numbers filled in for the first
        ``limit``), possible emergencies (可能紧急) first, then longest first: line,
        wait, place in line, whether a callback is booked (the caller hung up and keeps the
        place), the masked number, the ticket and the emergency line the call may need."""
        acd, k = self.acd, self.acd.keys
        rules, now = acd.rules, acd.clock()
        r = acd.redis
        skills = list(rules.skills.values()) + removed_groups(acd)  # groups an edit removed: still shown
        pipe = r.pipeline(transaction=False)
        for s in skills:
            pipe.zrange(k.queue(s.id), 0, limit - 1)
        best: dict = {}  # call -> (place, skill): a call waiting in several groups, its best place
        for s, calls in zip(skills, pipe.execute()):
            for place, c in enumerate(calls, 1):
                c = _text(c)
                if c not in best or place < best[c][0]:
                    best[c] = (place, s)
        ids = list(best)
        pipe = r.pipeline(transaction=False)
        for c in ids:
            pipe.hmget(k.call(c), "line", "entered", "kind", "ticket", "masked", "urgent", "regrouped_from")
        out = []
        names = None
        for c, (line, entered, kind, ticket, masked, urgent, moved) in zip(ids, pipe.execute() if ids else []):
            place, skill = best[c]
            line = _text(line or "")
            waited = max(0.0, now - float(_text(entered or 0) or now))
            callback = _text(kind or "") == "callback"
            moved = _text(moved or "") or None
            if moved and names is None:
                names = {_text(a): _text(b) for a, b in r.hgetall(k.groups()).items()}
            moved_from = (names.get(moved) or moved) if moved else None
            out.append({"moved_from": moved_from,
                        "moved_text": f"原坐席组「{moved_from}」已撤销，已保留排队位置转入本组" if moved_from else "",
                        "line": line or None, "line_text": labels.line_text(line, rules), "skill": skill.id,
                        "skill_name": skill.name, "position": place,
                        "waited_s": round(waited, 1), "waited_text": labels.duration(waited), "callback": callback,
                        "callback_text": "已登记回拨" if callback else "在线等待",
                        "ticket": _text(ticket or "") or None,
                        "caller": labels.caller_text(_text(masked or "") or None),
                        "urgent": _text(urgent or "") or None, "urgent_text": urgent_text(_text(urgent or ""))})
        out.sort(key=lambda w: (not w["urgent"], -w["waited_s"]))  # 可能紧急 on top, then longest wait
        numbers = self.ticket_numbers(w["ticket"] for w in out[:limit])
        for w in out[:limit]:
            w["ticket_number"] = numbers.get(w["ticket"]) if w["ticket"] else None
        return out

    # -- today -----------------------------------------------------------------------------
    def processes(self) -> list[dict]:
        """The product's background processes as ``python app.py``'s supervisor reported them
        (empty when they run under another supervisor, e.g. systemd). With several nodes, each
        process is named with its node (``worker@node-b``); one whose node has not reported for
        ``STATE_TTL_S`` (killed, or cut off from Redis) is ``silent``."""
        import json
        import time

        now = time.time()
        entries = []
        for field, value in self.acd.redis.hgetall(STATE_KEY).items():
            name, _, node = _text(field).partition("@")
            entries.append((node, name, json.loads(value)))
        several = len({node for node, _, _ in entries}) > 1
        out = []
        for node, name, st in sorted(entries, key=lambda e: e[:2]):
            state = st["state"]
            if state != "stopped" and st.get("reported", now) < now - STATE_TTL_S:
                state = "silent"
            out.append({"name": f"{name}@{node}" if several else name, "node": node,
                        "label": PROCESS_NAMES.get(name, name) + (f"（{node}）" if several else ""),
                        "state": state, "state_label": PROCESS_STATES.get(state, state),
                        "restarts": st["restarts"], "pid": st["pid"],
                        "since": datetime.fromtimestamp(st["since"], CHINA_TZ).strftime("%m月%d日 %H:%M:%S")})
        return out
