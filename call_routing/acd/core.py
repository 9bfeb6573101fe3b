"""The ACD: seats and per-skill call queues on Redis, shared by every front-end process.

Every change of state is one Lua script (``acd.lua``), so one Redis round trip both changes
the state and, when a call and an agent can meet, offers that call to exactly one agent.
Front-ends (Twilio webhooks, FastAGI handlers) and the agent API call the methods below; a
periodic :meth:`ACD.tick` applies the timers (overflow, ring and wrap-up timeouts, heartbeat
expiry, callback retries, groups that closed or lost their last seat).

Composed here of its parts: seats.py, queue.py, offers.py (and transfers), routing.py (plans by
the rules), timers.py (tick); model.py holds what they share, importable from here as before.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Iterable

import redis as redis_lib

from call_routing.rules import Rules
from call_routing.workdays import WorkdayCalendar, default_calendar
from runtime.redis_conn import ReplicaWait, redis_client

from .keys import Keys, lua_key_functions
from .model import (AGENT_STATES, CALL_STATES, LEAVE_REASONS, MAX_PRIORITY, PHONE_BUSY,  # noqa: F401 (re-exported)
                    PHONE_OFFLINE, PHONE_STATE_TTL_S, SURVEY_SCORES, ACDError, Agent, Offer, Placement, Position,
                    Result, _text, caller_key)
from .offers import OffersMixin
from .queue import QueueMixin
from .routing import RoutingMixin
from .seats import SeatsMixin, hash_password, verify_password  # noqa: F401 (re-exported)
from .timers import TimersMixin


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


class ACD(SeatsMixin, QueueMixin, OffersMixin, RoutingMixin, TimersMixin):
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
        self._groups_noted: tuple | None = None  # (rules version, when) last written to acd:groups
        self._scripts = {name: _HEADER + "\n" + body for name, body in _BODIES.items()}
        self._shas = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._scripts.items()}
        self._replica = ReplicaWait(client)  # with Sentinel: a state change returns once a replica holds it

    ring_timeout_s = _timer("ring_timeout_s")
    callback_ring_timeout_s = _timer("callback_ring_timeout_s")
    heartbeat_timeout_s = _timer("heartbeat_timeout_s")
    wrapup_max_s = _timer("wrapup_max_s")
    abandon_callback_after_s = _timer("abandon_callback_after_s", "missed_call_callback_after_s")
    callback_attempts = _timer("callback_attempts")
    callback_retry_s = _timer("callback_retry_s")
    lost_after_s = _timer("lost_after_s")

    @classmethod
    def from_url(cls, url: str | None, rules, **kwargs) -> "ACD":
        return cls(redis_client(url, decode_responses=True), rules, **kwargs)

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
        raw = self._eval(name, argv)
        values = _text(raw).split("\t")
        offers = tuple(Offer(values[i], values[i + 1], values[i + 2], int(values[i + 3]), values[i + 4])
                       for i in range(2, len(values), 5))
        result = Result(values[0], values[1], offers)
        for offer in offers:
            self._announce(offer)
        return result

    def _eval(self, name: str, argv: str):
        if not self._replica.enabled:
            try:
                return self.redis.evalsha(self._shas[name], 0, argv)
            except redis_lib.exceptions.NoScriptError:  # a restarted or new server: load once, run again
                self.redis.script_load(self._scripts[name])
                return self.redis.evalsha(self._shas[name], 0, argv)
        for _ in range(2):  # Sentinel: the script and WAIT on one connection (a new primary: load, again)
            pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(self._shas[name], 0, argv)
            raw, = self._replica.execute(pipe, raise_on_error=False)
            if not isinstance(raw, redis_lib.exceptions.NoScriptError):
                break
            self.redis.script_load(self._scripts[name])
        if isinstance(raw, Exception):
            raise raw
        return raw

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
