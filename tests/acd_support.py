"""Helpers for the ACD tests: a clock the test moves, an ACD on the test Redis, seats."""
from __future__ import annotations

import dataclasses
from datetime import datetime
from types import MappingProxyType

import redis

from call_routing.acd import ACD, Agent
from call_routing.rules import CHINA_TZ

#: Monday 3 June 2024, 10:00 in Beijing: a working day, expert seats open
WORKDAY_10AM = datetime(2024, 6, 3, 10, 0, tzinfo=CHINA_TZ).timestamp()


class Clock:
    def __init__(self, start: float = WORKDAY_10AM):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_acd(redis_url, rules, clock=None, **kwargs) -> ACD:
    kwargs.setdefault("dispatch_callback", False)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return ACD(client, rules, clock=clock or Clock(), **kwargs)


def seat(acd: ACD, agent_id: str, skills: dict, *, login=True, password=None, endpoints=()) -> str:
    acd.save_agent(Agent(agent_id, f"坐席{agent_id}", skills, endpoints=endpoints), password=password)
    if login:
        acd.login(agent_id)
    return agent_id


def with_skill(rules, skill_id: str, **changes):
    """A copy of ``rules`` with one seat group changed (what an admin's edit would produce)."""
    skills = dict(rules.skills)
    skills[skill_id] = dataclasses.replace(skills[skill_id], **changes)
    return dataclasses.replace(rules, skills=MappingProxyType(skills), version=rules.version + "-edited")


def events(acd, name=None, call=None):
    out = list(acd.events())
    return [e for e in out if (name is None or e["e"] == name) and (call is None or e.get("call") == call)]


# a dialer the rq worker can build from HOTLINE_CALLBACK_DIALER (records into Redis)
class RedisRecordingDialer:
    def __init__(self):
        import os

        self.redis = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)

    def dial(self, request):
        self.redis.rpush("test:dialed", f"{request.call_id} {request.number} {request.agent_id} {request.offer}")
        return "connected"


SKILL_LINES = {"general": "12345", "telecom": "12300", "legal": "12348"}


HELD_SKILL = "civil_affairs"  # the concurrency test keeps a few callers waiting here: they overflow


def churn_acd(redis_url: str) -> ACD:
    """Short ring timeouts and 1-second telecom and civil-affairs overflows, so the ticker races
    the agents."""
    from call_routing.rules import load_rules

    rules = with_skill(with_skill(load_rules(), "telecom", overflow_after_s=1), HELD_SKILL, overflow_after_s=1)
    return ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules, ring_timeout_s=0.03,
               abandon_callback_after_s=None, dispatch_callback=False, heartbeat_timeout_s=3600)


def churn(redis_url: str, seed: int, operations: int) -> None:
    """Random traffic for the concurrency test: callers arrive and hang up, agents log in, answer,
    miss calls, wrap up, pause and log out — all at once from many threads and processes."""
    import random

    rng = random.Random(seed)
    acd = churn_acd(redis_url)
    agents = [f"ag{i}" for i in range(30)]
    mine: list[str] = []
    for n in range(operations):
        roll = rng.random()
        if roll < 0.35:
            skill = rng.choice(list(SKILL_LINES))
            mine.append(acd.enqueue(skill, SKILL_LINES[skill], f"139{seed:04d}{n:04d}",
                                    priority=rng.choice((0, 0, 0, 3))).call_id)
        elif roll < 0.47 and mine:
            acd.hangup(rng.choice(mine))
        elif roll < 0.52:
            acd.logout(rng.choice(agents))
        else:
            a = rng.choice(agents)
            info = acd.agent(a)
            state, call = info["state"], info["call"]
            if state == "offline":
                acd.login(a)
            elif state == "ringing" and call:
                r = rng.random()
                if r < 0.75:
                    acd.answer(call, a)
                elif r < 0.95:
                    acd.no_answer(call)
                else:
                    acd.logout(a)
            elif state == "busy" and call:
                acd.hangup(call, "agent")
            elif state == "wrapup":
                acd.wrapup_done(a)
            elif state == "paused":
                acd.ready(a)
            elif state == "ready" and rng.random() < 0.1:
                acd.pause(a, "break")
    acd.redis.incrby("test:ops", operations)
    acd.redis.close()


def agi_world(store, redis_url, tmp_path, workers: int = 64, tickets=None):
    """A FastAGI server (real sockets) over the real Redis ACD, a Redis call store and in-memory
    tickets (or ``tickets``, e.g. the product's own), on a test clock: ``w.clock, w.acd, w.flow,
    w.server, w.tickets``; a generator for a pytest fixture (stops the server after the test)."""
    from agi_scripts.fastagi_server import FastAGIServer
    from ivr import flow as F
    from ivr.services import AcdQueue, Services

    clock = Clock()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    acd = ACD(client, store, clock=clock, dispatch_callback=False)
    tickets = tickets if tickets is not None else F.MemoryTickets()
    flow = F.CallFlow(store.current, AcdQueue(acd), tickets, F.RedisCalls(client), clock=clock)
    server = FastAGIServer(Services(flow, store, "/var/lib/asterisk/sounds/hotline", str(tmp_path / "rec")),
                           "127.0.0.1", 0, workers=workers).start()
    w = type("World", (), {})()
    w.clock, w.acd, w.flow, w.server, w.tickets = clock, acd, flow, server, tickets
    yield w
    server.stop(2)
    client.close()

