"""Many threads and processes enqueue, assign, answer, hang up and log out at random at once:
afterwards no call went to two agents, no agent had two calls, every call is connected,
abandoned or still queued, and the KPI counts add up."""
from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter

from acd_support import HELD_SKILL, SKILL_LINES, churn, churn_acd, events, make_acd
from call_routing.acd import Agent
from call_routing.acd.kpi import audit

THREADS, THREAD_OPS = 6, 500
PROCESSES, PROCESS_OPS = 3, 900


def test_thousands_of_concurrent_operations_never_double_assign_and_the_counts_add_up(redis_url, rules):
    acd = make_acd(redis_url, rules, clock=time.time)
    for i in range(30):
        skills = {"general": 1 + i % 9}
        if i % 3 == 0:
            skills["telecom"] = 5
        if i % 4 == 0:
            skills["legal"] = 1 + i % 7
        acd.save_agent(Agent(f"ag{i}", f"坐席{i}", skills))
    # whatever the random traffic does, the overflow timer must race it: a seat group whose one
    # seat is paused (logged in, so its callers queue rather than overflow at once) holds two
    # callers until the ticker moves them to the general seats
    held = churn_acd(redis_url)
    held.save_agent(Agent("held", "民政坐席", {HELD_SKILL: 5}))
    held.login("held", "paused", "break")
    for n in range(2):
        assert held.enqueue(HELD_SKILL, "12345", f"1370000000{n}").status == "queued"
    ctx = multiprocessing.get_context("fork")
    processes = [ctx.Process(target=churn, args=(redis_url, 100 + i, PROCESS_OPS)) for i in range(PROCESSES)]
    for p in processes:  # fork before any thread starts
        p.start()
    threads = [threading.Thread(target=churn, args=(redis_url, i, THREAD_OPS)) for i in range(THREADS)]
    stop = threading.Event()
    timers = {"overflow": 0, "ring_timeout": 0}

    def ticker():  # timers fire while agents answer: ring timeouts race answers, overflow races offers
        ticking = churn_acd(redis_url)
        while not stop.is_set():
            done = ticking.tick()
            for k in timers:
                timers[k] += done[k]
            time.sleep(0.02)

    threads.append(threading.Thread(target=ticker))
    for t in threads:
        t.start()
    for t in threads[:-1]:
        t.join()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    deadline = time.monotonic() + 10  # a fast machine may finish the traffic before 1 s has passed
    while not (timers["ring_timeout"] and timers["overflow"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    threads[-1].join()
    assert timers["ring_timeout"] > 0 and timers["overflow"] > 0, timers
    assert int(acd.redis.get("test:ops")) == THREADS * THREAD_OPS + PROCESSES * PROCESS_OPS

    log = events(acd)
    checked = audit(log)
    assert checked["offers"] > 800
    assert checked["double_assignments"] == 0 and checked["double_connects"] == 0

    calls = {}
    for key in acd.redis.scan_iter(acd.keys.call("*")):
        c = acd.call(key.split(":")[-1])
        calls[c["id"]] = c
    states = Counter(c["state"] for c in calls.values())
    assert set(states) <= {"waiting", "ringing", "connected", "completed", "abandoned"}
    assert states["completed"] > 100 and states["abandoned"] > 50

    # agents and calls agree: a ringing/busy agent holds exactly the call that names them
    held = Counter()
    for i in range(30):
        agent = acd.agent(f"ag{i}")
        if agent["state"] in ("ringing", "busy"):
            call = calls[agent["call"]]
            assert call["agent"] == agent["id"]
            assert call["state"] == {"ringing": "ringing", "busy": "connected"}[agent["state"]]
            held[agent["call"]] += 1
    assert all(n == 1 for n in held.values())
    assert sum(1 for c in calls.values() if c["state"] in ("ringing", "connected")) == len(held)

    # nothing is left waiting while a seat of its group is ready
    for skill in SKILL_LINES:
        assert not (acd.redis.zcard(acd.keys.queue(skill)) and acd.redis.zcard(acd.keys.ready(skill)))

    # the KPIs add up: every offered call is answered, abandoned or still queued
    total = acd.kpis()["total"]
    assert total["offered"] == len(calls)
    assert total["answered"] == states["connected"] + states["completed"]
    assert total["abandoned"] == states["abandoned"]
    assert total["offered"] == total["answered"] + total["abandoned"] + states["waiting"] + states["ringing"]
    assert total["completed"] == states["completed"]
