"""The ACD: seats and per-skill call queues on Redis, shared by every front-end process.

Every change of state is one Lua script (``acd.lua``), so one Redis round trip both changes
the state and, when a call and an agent can meet, offers that call to exactly one agent.
Front-ends (Twilio webhooks, FastAGI handlers) and the agent API call the methods below; a
periodic :meth:`ACD.tick` applies the timers (overflow, ring and wrap-up timeouts, heartbeat
expiry, callback retries, groups that closed or lost their last seat).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import redis as redis_lib

from call_routing.numbers import digits_of, mask
from call_routing.rules import Rules, Skill
from call_routing.workdays import WorkdayCalendar, default_calendar

from .hours import is_open
from .keys import Keys, lua_key_functions

log = logging.getLogger("hotline.acd")

AGENT_STATES = ("offline", "ready", "ringing", "busy", "wrapup", "paused")
CALL_STATES = ("waiting", "ringing", "connected", "completed", "abandoned", "left", "retry", "failed", "resumed")
#: why a call leaves the queue on purpose (:meth:`ACD.leave`): not abandoned, no callback
LEAVE_REASONS = ("emergency", "fallback", "subcenter", "transfer", "admin")
SURVEY_SCORES = ("1", "2", "3")  # 满意 / 基本满意 / 不满意
MAX_PRIORITY = 9
#: pause reasons of a seat whose phone cannot ring (the PBX says so: ivr.asterisk.pbx.PhoneWatcher)
PHONE_OFFLINE, PHONE_BUSY = "phone-offline", "phone-busy"
PHONE_STATE_TTL_S = 60  # the watcher refreshes it every few seconds; a stopped watcher blocks nobody
DEFAULT_HANDLE_S = 180.0  # estimated handle time before a group has any history


FROM_RULES = object()  # an ACD timer not given to the constructor: the rules' queue: settings decide
TIMER_DEFAULTS = {"ring_timeout_s": 20, "callback_ring_timeout_s": 90, "heartbeat_timeout_s": 30,
                  "wrapup_max_s": 120, "abandon_callback_after_s": 10, "callback_attempts": 3,
                  "callback_retry_s": 300, "lost_after_s": 120}


def _timer(name: str, rules_name: str | None = None) -> property:
    """An ACD timer: set on the ACD (constructor or assignment: tests, tools), else the current
    rules' ``queue:`` value (an admin's edit applies from the next operation), else the default."""
    key = rules_name or name

    def get(self):
        if name in self._explicit:
            return self._explicit[name]
        return self.rules.acd_settings.get(key, TIMER_DEFAULTS[name])

    def set_(self, value):
        self._explicit[name] = value

    return property(get, set_, doc=get.__doc__)


class ACDError(Exception):
    """A request the ACD refuses, worded for the agent or front-end that made it."""


@dataclass(frozen=True)
class Agent:
    """A seat's profile. ``skills`` maps skill id to level (1–99, higher is offered first)."""

    id: str
    name: str
    skills: dict
    endpoints: tuple = ()  # Twilio client identity, SIP URI or phone number
    expert: bool = False
    languages: tuple = ("zh",)


@dataclass(frozen=True)
class Offer:
    """A call offered to an agent: ring ``agent_id`` (or, for a callback, dial both)."""

    call_id: str
    agent_id: str
    kind: str  # live | callback | transfer
    n: int  # how many times this call has been offered (callback dial idempotence)
    skill: str


@dataclass(frozen=True)
class Result:
    status: str
    info: str = ""
    offers: tuple = ()

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "queued", "completed", "abandoned", "callback", "already", "retry",
                               "failed", "after_call")


@dataclass(frozen=True)
class Placement:
    """Where :meth:`ACD.enqueue` put a call: ``skill`` queue, as a ``live`` call or a ``callback``."""

    call_id: str
    status: str
    skill: str
    kind: str
    offers: tuple = ()


@dataclass(frozen=True)
class Position:
    """What a waiting caller is told: place in line and the expected wait."""

    call_id: str
    state: str
    skill: str
    position: int  # 1 = next; 0 = being offered / connected
    waited_s: float
    estimated_wait_s: float
    callback_offer_due: bool


#: call and agent ids: what Twilio CallSids, Asterisk uniqueids and staff numbers look like
_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


def _check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ACDError(f"{what} {value!r} must be 1-128 letters, digits or _ . : @ + -")
    return value


def _text(v) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else str(v)


def caller_key(caller: str | None) -> str:
    """A stable, non-reversible key for a caller number (pending callbacks by caller)."""
    digits = digits_of(caller or "")
    if not digits:
        return ""
    return hashlib.sha256(digits.encode()).hexdigest()[:24]


def _load_scripts() -> tuple[str, dict[str, str]]:
    text = (Path(__file__).with_name("acd.lua")).read_text(encoding="utf-8")
    parts = text.split("\n--@ ")
    header = parts[0].replace("--KEYS--", lua_key_functions())
    bodies = {}
    for part in parts[1:]:
        name, _, body = part.partition("\n")
        bodies[name.strip()] = body
    return header, bodies


_HEADER, _BODIES = _load_scripts()


class ACD:
    """Automatic call distribution over one Redis. Safe to use from many threads and processes.

    ``rules`` is a :class:`Rules`, a ``RulesStore`` or a zero-argument callable returning the
    current rules (so a reload is seen at the next operation). ``clock`` returns Unix seconds (tests inject one).
    ``dispatch_callback(acd, offer)`` starts the outbound call of a callback offer: the product's
    processes pass :func:`intake.callback_jobs.rq_dispatch` (an rq job on the ``hotline`` queue);
    without one a callback offer is logged and goes back to its place at its ring timeout.
    """

    def __init__(self, client: redis_lib.Redis, rules: Rules | Callable[[], Rules], *,
                 clock: Callable[[], float] = time.time, prefix: str = "acd",
                 calendar: WorkdayCalendar | None = None,
                 ring_timeout_s: float = FROM_RULES, callback_ring_timeout_s: float = FROM_RULES,
                 heartbeat_timeout_s: float = FROM_RULES, wrapup_max_s: float = FROM_RULES,
                 abandon_callback_after_s: float | None = FROM_RULES,
                 callback_attempts: int = FROM_RULES, callback_retry_s: float = FROM_RULES,
                 lost_after_s: float = FROM_RULES, log_max: int = 5_000_000,
                 dispatch_callback: Callable[["ACD", Offer], None] | None = None,
                 on_offer: Iterable[Callable[[Offer], None]] = ()):
        self.redis = client
        self._rules = rules
        self.clock = clock
        self.keys = Keys(prefix)
        self.calendar = calendar or default_calendar()
        # the timers: what the caller passed, else the rules' queue: settings, else the defaults
        given = {"ring_timeout_s": ring_timeout_s, "callback_ring_timeout_s": callback_ring_timeout_s,
                 "heartbeat_timeout_s": heartbeat_timeout_s, "wrapup_max_s": wrapup_max_s,
                 "abandon_callback_after_s": abandon_callback_after_s, "callback_attempts": callback_attempts,
                 "callback_retry_s": callback_retry_s, "lost_after_s": lost_after_s}
        self._explicit = {k: v for k, v in given.items() if v is not FROM_RULES}
        self.log_max = log_max
        self.dispatch_callback = dispatch_callback
        self.on_offer = list(on_offer)
        self._plans: dict = {}
        self._scripts = {name: _HEADER + "\n" + body for name, body in _BODIES.items()}
        self._shas = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._scripts.items()}

    ring_timeout_s = _timer("ring_timeout_s")
    callback_ring_timeout_s = _timer("callback_ring_timeout_s")
    heartbeat_timeout_s = _timer("heartbeat_timeout_s")
    wrapup_max_s = _timer("wrapup_max_s")
    abandon_callback_after_s = _timer("abandon_callback_after_s", "missed_call_callback_after_s")
    callback_attempts = _timer("callback_attempts")
    callback_retry_s = _timer("callback_retry_s")
    lost_after_s = _timer("lost_after_s")

    @classmethod
    def from_url(cls, url: str, rules, **kwargs) -> "ACD":
        return cls(redis_lib.Redis.from_url(url, decode_responses=True), rules, **kwargs)

    @property
    def rules(self) -> Rules:
        source = self._rules
        if hasattr(source, "current"):  # a RulesStore: hot-reloaded rules
            return source.current()
        return source() if callable(source) else source

    @rules.setter
    def rules(self, value) -> None:
        """Swap the rules while calls wait: queued calls keep their place; see docs/acd.md."""
        self._rules = value

    # -- one round trip ---------------------------------------------------------------------
    def _run(self, name: str, *args, now: float | None = None) -> Result:
        now = self.clock() if now is None else now
        # one tab-separated argument (see acd.lua); a tab inside a value would shift the fields
        settings = f"{self.keys.prefix}\t{self.ring_timeout_s}\t{self.callback_ring_timeout_s}\t{self.log_max}"
        argv = "\t".join((settings, repr(float(now)), *(str(a).replace("\t", " ") for a in args)))
        try:
            raw = self.redis.evalsha(self._shas[name], 0, argv)
        except redis_lib.exceptions.NoScriptError:  # a restarted or new server: load once, run again
            self.redis.script_load(self._scripts[name])
            raw = self.redis.evalsha(self._shas[name], 0, argv)
        values = _text(raw).split("\t")
        offers = tuple(Offer(values[i], values[i + 1], values[i + 2], int(values[i + 3]), values[i + 4])
                       for i in range(2, len(values), 5))
        result = Result(values[0], values[1], offers)
        for offer in offers:
            self._announce(offer)
        return result

    def _announce(self, offer: Offer) -> None:
        for hook in self.on_offer:
            hook(offer)
        if offer.kind == "callback" and self.dispatch_callback is None:
            log.warning("callback %s (offer %s) reserved a seat but this process dials no callbacks: it goes back "
                        "to its place at the ring timeout", offer.call_id, offer.n)
        elif offer.kind == "callback" and self.dispatch_callback:
            try:
                self.dispatch_callback(self, offer)
            except Exception:  # the ring timeout gives the callback back its place
                log.exception("could not start callback %s (offer %s)", offer.call_id, offer.n)

    def follow_offers(self, handler: Callable[[Offer], None], stop=None, poll_s: float = 1.0) -> None:
        """Call ``handler(offer)`` for every offer made by any process (ticker, agent API, other
        workers) until ``stop`` (a ``threading.Event``) is set. Run it in a thread of each
        front-end process. Pub/sub is at-most-once: a front-end that misses a message still sees
        the call ringing in :meth:`call`; handlers must tolerate the same offer twice (a process
        also gets its own offers through ``on_offer``): ``(call_id, n)`` identifies an offer."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.offers())
        try:
            while stop is None or not stop.is_set():
                message = pubsub.get_message(timeout=poll_s)
                if not message:
                    continue
                call_id, agent_id, kind, n, skill = _text(message["data"]).split(" ")
                handler(Offer(call_id, agent_id, kind, int(n), skill))
        finally:
            pubsub.close()

    # -- seats ------------------------------------------------------------------------------
    def save_agent(self, agent: Agent, password: str | None = None) -> None:
        """Create or update a seat's profile. Skills change only while the agent is offline."""
        _check_id("agent id", agent.id)
        skills = self.rules.skills
        for sid, level in agent.skills.items():
            if sid not in skills:
                raise ACDError(f"agent {agent.id}: no skill {sid!r} in rules {self.rules.version}")
            if not (isinstance(level, int) and 1 <= level <= 99):
                raise ACDError(f"agent {agent.id}: skill level for {sid} must be 1 to 99, got {level!r}")
        k = self.keys
        state = _text(self.redis.hget(k.agent(agent.id), "state")) or "offline"
        if state != "offline":
            raise ACDError(f"agent {agent.id} is {state}: log out before changing the profile")
        pipe = self.redis.pipeline()
        pipe.hset(k.agent(agent.id), mapping={
            "id": agent.id, "name": agent.name, "endpoints": json.dumps(list(agent.endpoints)),
            "expert": int(agent.expert), "languages": json.dumps(list(agent.languages)), "state": "offline"})
        if password is not None:
            pipe.hset(k.agent(agent.id), "pw", hash_password(password))
        pipe.delete(k.agent_skills(agent.id))
        if agent.skills:
            pipe.hset(k.agent_skills(agent.id), mapping={s: int(v) for s, v in agent.skills.items()})
        pipe.sadd(k.agents(), agent.id)
        pipe.execute()

    def check_password(self, agent_id: str, password: str) -> bool:
        stored = _text(self.redis.hget(self.keys.agent(agent_id), "pw"))
        return bool(stored) and verify_password(password, stored)

    def login(self, agent_id: str, state: str = "ready", reason: str = "") -> Result:
        """offline → ready (or paused with a reason; paused ``phone-offline`` when the PBX says
        the seat's phone cannot ring). Unknown agents are refused."""
        if state not in ("ready", "paused"):
            raise ACDError("an agent logs in ready or paused")
        return self._run("login", agent_id, state, reason)

    def ready(self, agent_id: str, reason: str = "") -> Result:
        """paused → ready (resume), or wrap-up → ready (wrap-up done).

        A seat whose phone the PBX says cannot ring (``phone-offline`` / ``phone-busy``, kept by
        :class:`ivr.asterisk.pbx.PhoneWatcher`) logs in paused and stays (or goes) paused with that reason
        instead of becoming ready (status ``phone``), until its phone is back."""
        return self._run("ready", agent_id, "paused,wrapup", reason)

    def wrapup_done(self, agent_id: str) -> Result:
        return self._run("ready", agent_id, "wrapup", "wrapup-done")

    def pause(self, agent_id: str, reason: str) -> Result:
        """ready / wrap-up → paused with a reason (break, training, …)."""
        if not reason:
            raise ACDError("a pause needs a reason")
        return self._run("pause", agent_id, reason)

    def logout(self, agent_id: str, reason: str = "logout") -> Result:
        """Any state → offline. A ringing call goes back to its place; a busy seat leaves after the call."""
        return self._run("logout", agent_id, reason, "")

    def heartbeat(self, agent_id: str) -> bool:
        """The console is alive. False when the seat is not logged in (log in again)."""
        return bool(self.redis.zadd(self.keys.beats(), {agent_id: self.clock()}, xx=True, ch=True)) or \
            self.redis.zscore(self.keys.beats(), agent_id) is not None

    def agent(self, agent_id: str) -> dict | None:
        k = self.keys
        pipe = self.redis.pipeline()
        pipe.hgetall(k.agent(agent_id))
        pipe.hgetall(k.agent_skills(agent_id))
        data, skills = pipe.execute()
        if not data:
            return None
        data = {_text(a): _text(b) for a, b in data.items()}
        return {"id": agent_id, "name": data.get("name", ""), "state": data.get("state", "offline"),
                "reason": data.get("reason", ""), "since": float(data.get("since") or 0),
                "call": data.get("call") or None, "endpoints": json.loads(data.get("endpoints") or "[]"),
                "expert": data.get("expert") == "1", "languages": json.loads(data.get("languages") or "[]"),
                "skills": {_text(a): int(b) for a, b in skills.items()}}

    # -- calls ------------------------------------------------------------------------------
    def enqueue(self, skill: str, line: str, caller: str | None = None, *, priority: int = 0,
                ticket: str | None = None, call_id: str | None = None, transfer: bool = False,
                now: float | None = None) -> Placement:
        """Queue a call for ``skill`` (from the router's enqueue step) and offer it if a seat is free.

        Closed groups send the call to their overflow/general group or to a callback; an open
        group with nobody logged in overflows at once and warns the supervisor. Expert groups
        take calls only by transfer (``transfer=True``).
        """
        rules = self.rules
        target = rules.skills.get(skill)
        if target is None:
            raise ACDError(f"no skill {skill!r} in rules {rules.version}")
        if target.expert and not transfer:
            raise ACDError(f"{skill} is an expert group: expert seats are reached only by transfer")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ACDError(f"priority must be 0 to {MAX_PRIORITY}")
        now = self.clock() if now is None else now
        call_id = _check_id("call id", call_id) if call_id is not None else uuid.uuid4().hex
        key = caller_key(caller)
        chain, unstaffed = self._plan(skill, now, has_number=bool(key))
        score = (MAX_PRIORITY - priority) * 10 ** 13 + int(now * 1000)
        masked = mask(caller)
        result = self._run("enqueue", call_id, score, repr(float(now)), line, caller or "", masked,
                           priority, ticket or "", "transfer" if transfer else "live", unstaffed,
                           key, skill, *chain, now=now)
        if result.status == "exists":
            raise ACDError(f"call {call_id} is already known to the ACD ({result.info})")
        queued_skill, _, kind = result.info.partition(" ")
        log.debug("call %s from %s on %s queued for %s as %s", call_id, masked, line, queued_skill, kind)
        return Placement(call_id, result.status, queued_skill, kind, result.offers)

    def answer(self, call_id: str, agent_id: str = "") -> Result:
        """The offered agent picked up (for a callback: both legs are bridged). ringing → connected/busy."""
        return self._run("answer", call_id, agent_id)

    def no_answer(self, call_id: str, reason: str = "no-answer") -> Result:
        """The agent did not pick up: the call goes back to its place (the head) and is offered to
        the next agent; the agent is paused with reason ``no-answer``."""
        return self._run("no_answer", call_id, reason, "0")

    def hangup(self, call_id: str, ended_by: str = "caller") -> Result:
        """The call ended. Waiting/ringing: abandoned (with a missed-call callback keeping its
        place when it waited ``abandon_callback_after_s``). Connected: completed, agent wraps up."""
        after = "" if self.abandon_callback_after_s is None else self.abandon_callback_after_s
        return self._run("hangup", call_id, after, ended_by)

    def leave(self, call_id: str, reason: str) -> Result:
        """The caller leaves the queue on purpose — transferred to an emergency line, sent to the
        front-end's fallback seats, …: logged as ``leave`` with ``reason``; never abandoned, never
        a missed-call callback, not in 呼损率. A ringing agent is released (keeps its place).
        Status ``ok``, or ``bad_state`` when the call is not waiting/ringing (already gone)."""
        if reason not in LEAVE_REASONS:
            raise ACDError(f"leave reason must be one of {', '.join(LEAVE_REASONS)}")
        return self._run("leave", call_id, reason)

    def survey(self, call_id: str, score: str, line: str = "") -> Result:
        """The caller's satisfaction key after the call (1 满意, 2 基本满意, 3 不满意), into the
        queue log once per call (``already`` after that). ``line`` is used for calls the ACD
        never queued (sub-center, emergency)."""
        score = str(score)
        if score not in SURVEY_SCORES:
            raise ACDError(f"survey score must be one of {', '.join(SURVEY_SCORES)}")
        return self._run("survey", call_id, score, line or "")

    def request_callback(self, call_id: str) -> Result:
        """A waiting caller accepts a callback: they may hang up, their place is kept."""
        return self._run("request_callback", call_id)

    def callback_failed(self, call_id: str) -> Result:
        """The citizen did not answer a callback: retried later from the same place, up to
        ``callback_attempts`` times; the agent is ready again."""
        return self._run("callback_failed", call_id, self.callback_attempts, self.callback_retry_s)

    def requeue(self, call_id: str, new_skill: str) -> Result:
        """A waiting call moves to another skill keeping its waiting time (its place by arrival)."""
        skill = self.rules.skills.get(new_skill)
        if skill is None:
            raise ACDError(f"no skill {new_skill!r} in rules {self.rules.version}")
        if skill.expert:
            raise ACDError(f"{new_skill} is an expert group: expert seats are reached only by transfer")
        has_number = bool(_text(self.redis.hget(self.keys.call(call_id), "caller")))
        chain, unstaffed = self._plan(new_skill, self.clock(), has_number)
        return self._run("move", call_id, "requeue", "", unstaffed, *chain)

    def transfer(self, call_id: str, skill: str, *, three_way: bool = False) -> Result:
        """An agent transfers a connected call to a group (expert groups included); the caller
        keeps their place by arrival time, the agent goes to wrap-up.

        ``three_way=True`` (三方转接, the agent stays in the conference): only when a seat of
        the group (or its chain) is ready right now — that seat is reserved in the same round
        trip (``Result.offers``, kind ``transfer``); otherwise status ``no_seat`` and nothing
        changes. The agent stays out of rotation (paused, reason ``three-way``) until
        :meth:`end_three_way` (they left: wrap-up) or :meth:`take_back` (cancelled)."""
        if skill not in self.rules.skills:
            raise ACDError(f"no skill {skill!r} in rules {self.rules.version}")
        if three_way:
            # a seat of that very group, open now: never its overflow (a general seat pulled in
            # as the "expert" while the experts are closed)
            if not self.is_open(skill):
                return Result("no_seat", "closed")
            return self._run("move", call_id, "consult", "", "queue", skill)
        has_number = bool(_text(self.redis.hget(self.keys.call(call_id), "caller")))
        chain, unstaffed = self._plan(skill, self.clock(), has_number)
        return self._run("move", call_id, "transfer", "", unstaffed, *chain)

    def take_back(self, call_id: str, reason: str = "cancelled") -> Result:
        """A three-way transfer is cancelled (``reason='no-answer'``: the target did not answer,
        and is paused like any seat that misses a call): the call is connected to the agent who
        started it again; a target already talking goes to wrap-up."""
        return self._run("take_back", call_id, reason)

    def end_three_way(self, agent_id: str) -> Result:
        """The agent who started a three-way transfer left the conference: wrap-up."""
        return self._run("end_three_way", agent_id)

    def set_ticket(self, call_id: str, ticket: str) -> bool:
        """Record the ticket id of a call (the speech pipeline fills it while the caller waits)."""
        key = self.keys.call(call_id)
        if not self.redis.exists(key):
            return False
        self.redis.hset(key, "ticket", ticket)
        return True

    def call(self, call_id: str) -> dict | None:
        data = self.redis.hgetall(self.keys.call(call_id))
        if not data:
            return None
        d = {_text(a): _text(b) for a, b in data.items()}
        return {"id": call_id, "state": d.get("state"), "kind": d.get("kind"), "skill": d.get("skill"),
                "queues": [q for q in d.get("queues", "").split(",") if q], "line": d.get("line"),
                "caller": d.get("caller") or None, "caller_masked": d.get("masked"),
                "priority": int(d.get("prio") or 0), "ticket": d.get("ticket") or None,
                "agent": d.get("agent") or None, "entered": float(d.get("entered") or 0),
                "offers": int(d.get("offers") or 0), "attempts": int(d.get("attempts") or 0)}

    def position(self, call_id: str, *, caller_there: bool = False) -> Position | None:
        """Place in line (best over the queues the call is in) and an estimated wait from the
        group's recent handle times: position × average handle time ÷ seats logged in.

        ``caller_there``: asked by the front-end holding the caller (its waiting loop), which
        proves the caller is still on the line; a live caller nobody asks about for
        ``lost_after_s`` is taken as lost by :meth:`tick`."""
        call = self.call(call_id)
        if call is None:
            return None
        now = self.clock()
        waited = max(0.0, now - call["entered"])
        due = call["kind"] == "live" and waited >= self.rules.callback_offer_after_s
        if call["state"] != "waiting":
            return Position(call_id, call["state"], call["skill"], 0, waited, 0.0, False)
        k = self.keys
        pipe = self.redis.pipeline()
        for q in call["queues"]:
            pipe.zrank(k.queue(q), call_id)
            pipe.scard(k.staffed(q))
            pipe.lrange(k.handle(q), 0, 19)
        if caller_there:
            pipe.zadd(k.seen(), {call_id: now}, xx=True)  # only a caller still in the index (waiting live)
            pipe.hsetnx(k.call(call_id), "polled", "1")  # its front-end is one that asks (see no_answer)
        raw = pipe.execute()
        best = None
        for i, q in enumerate(call["queues"]):
            rank, staffed, handles = raw[3 * i: 3 * i + 3]
            if rank is None:
                continue
            times = [float(_text(h)) for h in handles]
            aht = sum(times) / len(times) if times else DEFAULT_HANDLE_S
            ewt = (rank + 1) * aht / max(1, staffed)
            if best is None or (rank + 1, ewt) < best[:2]:
                best = (rank + 1, ewt, q)
        if best is None:
            return Position(call_id, call["state"], call["skill"], 0, waited, 0.0, due)
        return Position(call_id, "waiting", best[2], best[0], waited, round(best[1], 1), due)

    def offer_seen(self, call_id: str, offer: int) -> None:
        """The caller's front-end saw offer number ``offer`` of its call (and rings the seat, or
        its process does). At the ring timeout a seat is paused only for an offer that was seen:
        when a front-end that asks about its caller (see :meth:`position`) never saw the offer,
        it is gone and nobody rang the seat — the seat goes back to ready instead."""
        self._run("offer_seen", call_id, str(offer))

    # -- routing by rules --------------------------------------------------------------------
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

    # -- timers -----------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> dict:
        """Apply every timer once; run it about once a second from one or more processes (each
        step re-checks its condition inside Redis, so concurrent tickers are harmless)."""
        now = self.clock() if now is None else now
        k = self.keys
        done = {"overflow": 0, "ring_timeout": 0, "heartbeat": 0, "wrapup_timeout": 0, "callback_retry": 0,
                "stranded": 0, "lost": 0}
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
        return done

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

    # -- the queue log ----------------------------------------------------------------------
    def events(self, since: float | None = None, until: float | None = None) -> Iterable[dict]:
        from .kpi import read_log

        return read_log(self.redis, self.keys, since, until)

    def kpis(self, since: float | None = None, until: float | None = None) -> dict:
        from .kpi import kpis

        return kpis(self.events(since, until))

    def alerts(self, count: int = 100) -> list[dict]:
        return [{_text(a): _text(b) for a, b in fields.items()}
                for _, fields in self.redis.xrevrange(self.keys.alerts(), count=count)]


# -- passwords (stdlib scrypt) -------------------------------------------------------------------
def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, salt, digest = stored.split("$")
    except ValueError:
        return False
    check = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2 ** 14, r=8, p=1)
    return hmac.compare_digest(check.hex(), digest)
