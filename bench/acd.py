"""Benchmark the ACD: assignments per second, Redis round trips per assignment, double assignments.

    python -m bench.acd [--calls 10000] [--clients 3]

Starts its own redis-server unless ``REDIS_URL`` is set (then it uses database prefix
``benchacd`` and deletes its keys afterwards). Two directions of assignment are timed, each
with ``--clients`` processes at once:

- agent-driven: ``--calls`` callers already wait; seats become ready (``login``) and each
  readiness takes the best waiting call in the same round trip;
- call-driven: ``--calls`` seats are ready; callers arrive (``enqueue``) and each arrival is
  offered to the best seat in the same round trip.

Then a full-cycle phase (enqueue, answer, hang-up, wrap-up done) gives calls handled per
second end to end. Round trips are counted at the client; double assignments by replaying the
queue log. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time

import redis

from call_routing.acd import ACD
from call_routing.acd.kpi import audit, read_log
from runtime.redis_server import redis_url_or_embedded
from call_routing.rules import load_rules

PREFIX = "benchacd"


class CountingRedis(redis.Redis):
    """Counts every command sent (a pipeline counts once: it is one round trip)."""

    round_trips = 0

    def execute_command(self, *args, **options):
        CountingRedis.round_trips += 1
        return super().execute_command(*args, **options)


def _acd(url: str, prefix: str, counting=False) -> ACD:
    cls = CountingRedis if counting else redis.Redis
    client = cls.from_url(url, decode_responses=True)
    return ACD(client, load_rules(), prefix=prefix, dispatch_callback=False, abandon_callback_after_s=None,
               heartbeat_timeout_s=3600, log_max=10_000_000)


def _seats(acd: ACD, ids) -> None:
    pipe = acd.redis.pipeline(transaction=False)
    for agent_id in ids:
        pipe.hset(acd.keys.agent(agent_id), mapping={"id": agent_id, "name": agent_id, "state": "offline"})
        pipe.hset(acd.keys.agent_skills(agent_id), "general", 5)
    pipe.execute()


def _login_agents(url, prefix, ids, out):
    acd = _acd(url, prefix, counting=True)
    acd.login(ids[0])  # warm-up: the script is loaded, the connection open
    CountingRedis.round_trips = 0
    offers = 0
    t0 = time.perf_counter()
    for agent_id in ids[1:]:
        offers += len(acd.login(agent_id).offers)
    out.put((offers, CountingRedis.round_trips, time.perf_counter() - t0))


def _enqueue_calls(url, prefix, n, seed, out):
    acd = _acd(url, prefix, counting=True)
    acd.enqueue("general", "12345", "13800000000", call_id=f"warm-{seed}")
    CountingRedis.round_trips = 0
    offers = 0
    t0 = time.perf_counter()
    for i in range(n):
        offers += len(acd.enqueue("general", "12345", f"139{seed:02d}{i:06d}", call_id=f"c{seed}-{i}").offers)
    out.put((offers, CountingRedis.round_trips, time.perf_counter() - t0))


def _full_cycle(url, prefix, ids, rounds, out):
    acd = _acd(url, prefix)
    handled = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        for agent_id in ids:
            placed = acd.enqueue("general", "12345", "13800000000", call_id=f"f{agent_id}-{r}")
            for offer in placed.offers:
                acd.answer(offer.call_id, offer.agent_id)
                acd.hangup(offer.call_id, "agent")
                acd.wrapup_done(offer.agent_id)
                handled += 1
    out.put((handled, 0, time.perf_counter() - t0))


def _run(target, argsets):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, out)) for a in argsets]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    return sum(r[0] for r in results), sum(r[1] for r in results), wall, max(r[2] for r in results)


def _server_usec(client, reset=False):
    """Server time per EVALSHA (commandstats); None where CONFIG is not allowed."""
    try:
        if reset:
            client.config_resetstat()
            return None
        return client.info("commandstats").get("cmdstat_evalsha", {}).get("usec_per_call")
    except redis.ResponseError:
        return None


def _clean(client):
    for key in client.scan_iter(f"{PREFIX}*", count=10_000):
        client.delete(key)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=3,
                        help="client processes assigning at once (web workers, FastAGI servers)")
    args = parser.parse_args(argv)
    url, embedded = redis_url_or_embedded()
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        _clean(client)
        n, k = args.calls, args.clients
        per = n // k

        # 1. agent-driven: callers wait, seats become ready
        acd1 = _acd(url, PREFIX + "1")
        ids = [f"b{i}" for i in range(per * k + k)]
        _seats(acd1, ids)
        for i in range(per * k + k):
            acd1.enqueue("general", "12345", "13800000000", call_id=f"w{i}")
        load_before = os.getloadavg()[0]
        _server_usec(client, reset=True)
        agent_offers, agent_trips, _, agent_time = _run(
            _login_agents, [(url, acd1.keys.prefix, ids[i::k]) for i in range(k)])

        agent_usec = _server_usec(client)

        # 2. call-driven: seats are ready, callers arrive
        acd2 = _acd(url, PREFIX + "2")
        _seats(acd2, ids)
        for agent_id in ids:
            acd2.login(agent_id)
        _server_usec(client, reset=True)
        call_offers, call_trips, _, call_time = _run(
            _enqueue_calls, [(url, acd2.keys.prefix, per, s) for s in range(k)])
        call_usec = _server_usec(client)

        # 3. full cycle, 50 seats per client
        acd3 = _acd(url, PREFIX + "3")
        seats = [ids[i * 50:(i + 1) * 50] for i in range(k)]
        _seats(acd3, ids[:50 * k])
        for agent_id in ids[:50 * k]:
            acd3.login(agent_id)
        handled, _, cycle_wall, _ = _run(_full_cycle, [(url, acd3.keys.prefix, g, 20) for g in seats])

        checked = {"offers": 0, "double_assignments": 0, "double_connects": 0}
        for acd in (acd1, acd2, acd3):
            for key, value in audit(read_log(client, acd.keys)).items():
                checked[key] += value
        assignments = agent_offers + call_offers
        result = {
            "assignments_per_s": round(assignments / (agent_time + call_time)),
            "agent_driven_assignments_per_s": round(agent_offers / agent_time),
            "call_driven_assignments_per_s": round(call_offers / call_time),
            "redis_round_trips_per_assignment": round((agent_trips + call_trips) / assignments, 3),
            "double_assignments": checked["double_assignments"],
            "double_connects": checked["double_connects"],
            "offers_audited": checked["offers"],
            "full_cycle_calls_per_s": round(handled / cycle_wall),
            "redis_server_us_per_assignment": {"agent_driven": agent_usec, "call_driven": call_usec},
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "cpu_cores": os.cpu_count(),
            "clients": k,
            "calls": n,
            "redis": client.info("server")["redis_version"],
        }
        print(json.dumps(result))
    finally:
        _clean(client)
        client.close()
        if embedded:
            embedded.stop()


if __name__ == "__main__":
    main()
