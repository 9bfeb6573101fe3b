"""The run: N calls placed at once through both front-ends, and the command that starts one."""
from __future__ import annotations

import http.client
import random
import sys
import threading
import time

from tools.simulate.agents import SimAgent
from tools.simulate.asterisk_pbx import SimAsterisk
from tools.simulate.callers import CallRecord, Callers
from tools.simulate.figures import Figures, Stats
from tools.simulate.stack import Stack


CALLBACK_GRACE_S = 30  # after the last caller: booked callbacks still being dialled


class Simulation(Callers, Stack, Figures):
    """Synthetic calls through the whole product (:mod:`tools.simulate`); ``with Simulation(...) as sim: sim.run()``."""

    def __init__(self, calls: int = 50, front: str = "both", agents: int | None = None, seed: int = 1, *,
                 lazy_agents: int = 0, emergency_share: float = 0.04, callback_share: float = 0.08,
                 abandon_share: float = 0.12, transfer_share: float = 0.05, ramp_s: float | None = None,
                 progress: bool = True, redis_url: str | None = None, workdir: str | None = None,
                 call_timeout_s: float = 240.0, web_threads: int = 64, agi_workers: int = 512,
                 processes: bool = False, web_workers: int = 2, wait_tick_s: int = 1):
        self.n, self.front, self.seed = calls, front, seed
        self.agent_count = agents or max(4, min(100, calls // 10))
        self.lazy_agents = lazy_agents
        self.shares = {"emergency": emergency_share, "callback": callback_share, "impatient": abandon_share}
        self.transfer_share = transfer_share
        self.ramp_s = ramp_s if ramp_s is not None else min(10.0, calls / 100)
        self.progress = progress
        self.redis_url = redis_url
        self.workdir = workdir
        self.call_timeout_s = call_timeout_s
        self.web_threads, self.agi_workers = web_threads, agi_workers
        # processes: the web app under gunicorn and the FastAGI server as their own processes (as
        # deployed), instead of threads of this one; the simulated callers stay here
        self.processes, self.web_workers, self.wait_tick_s = processes, web_workers, wait_tick_s
        self._children: list = []
        self.tick_s, self.ring_timeout_s, self.wrapup_s = 1.0, 2.0, 0.2
        self.alone_limit_s = 10.0  # a caller alone in a silent conference hangs up after this
        self.talk_s = (0.3, 1.5)
        self.stats = Stats()
        self.records: dict[str, CallRecord] = {}
        self.agents: dict[str, SimAgent] = {}
        self.lock = threading.Lock()
        self.callbacks_connected = 0
        self.transfers_refused: dict[str, int] = {}
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cleanup: list = []
        self.rng = random.Random(seed)
        self.app = None
        self.hooks: list = []  # callables(sim) run in a thread once calls are flowing (fault tests)

    def http(self, method, path, body=None, headers=None, *, stat=None, t0=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=30)
        try:
            t0 = t0 or time.perf_counter()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            if stat:
                self.stats.add(stat, time.perf_counter() - t0)
            self.stats.add_path(path, time.perf_counter() - t0)
            if resp.status >= 500:  # 503: a dependency is down and the app says so (counted apart)
                self.stats.error(f"{method} {path}: HTTP {resp.status}")
            return resp.status, raw
        finally:
            conn.close()

    def run(self) -> dict:
        plan = self._plan()
        for rec in plan:
            self.records[rec.id] = rec
        t_start = time.time()
        m_start = time.monotonic()
        threads = []
        progress = self._spawn(self._progress, name="progress") if self.progress else None
        for hook in self.hooks:
            self._spawn(hook, self, name="hook")
        for i, rec in enumerate(plan):
            if self.stop.is_set():  # a live run stopped early (the product refused it)
                break
            target = self.cloud.call if rec.front == "twilio" else SimAsterisk(self).call
            t = threading.Thread(target=self._one, args=(target, rec), daemon=True, name=f"call-{i}")
            t.start()
            threads.append(t)
            if self.ramp_s:
                time.sleep(self.ramp_s / max(1, self.n))
        for t in threads:
            t.join(max(1.0, self.call_timeout_s + 30 - (time.monotonic() - m_start)))
        elapsed = time.monotonic() - m_start
        # a booked callback is dialled after its caller hung up: give the last ones time to be placed
        deadline = time.monotonic() + CALLBACK_GRACE_S
        while (self.callbacks_connected < sum(1 for r in self.records.values() if r.outcome == "callback")
               and time.monotonic() < deadline):
            time.sleep(0.2)
        self._done = True
        if progress is not None:
            progress.join(2)
        return self.report(t_start, elapsed)

    def _one(self, target, rec: CallRecord) -> None:
        try:
            target(rec)
        except Exception as exc:
            rec.outcome = None
            last = self.cloud.last_path.get(rec.id) if getattr(self, "cloud", None) is not None else None
            rec.detail = f"simulator error: {exc!r}" + (f" (last webhook {last})" if last else "")
            self.stats.error(f"{rec.id}: {exc!r}")
        finally:
            rec.ended = time.monotonic()

    def _progress(self) -> None:
        self._done = False
        width = 30
        while not self._done and not self.stop.is_set():
            done = sum(1 for r in self.records.values() if r.ended is not None)
            counts = {}
            for r in self.records.values():
                if r.ended is not None:
                    counts[r.outcome or "lost"] = counts.get(r.outcome or "lost", 0) + 1
            bar = "#" * int(width * done / max(1, self.n))
            sys.stderr.write(f"\r[{bar:<{width}}] {done}/{self.n} " +
                             " ".join(f"{k}={v}" for k, v in sorted(counts.items())) + "   ")
            sys.stderr.flush()
            time.sleep(0.5)
        sys.stderr.write("\n")
