"""``--fault``: kill the product's processes and attack it while the calls flow, and say what it did.

    python -m tools.simulate --calls 100 --fault kill-worker@5 --fault kill-timers@8 \\
        --fault kill-fastagi@10 --fault kill-redis@12 --fault slow-http@3 --fault trickle-agi@3x300

Each fault is ``KIND@SECOND`` (seconds after the first call is placed), the attacks optionally
``xN`` (connections held open):

- ``kill-worker``, ``kill-timers``, ``kill-fastagi``: ``SIGKILL`` to the rq worker
  (``python -m intake.worker``: speech, hand-offs, the ticket writer), the ACD timers
  (``python -m call_routing.acd tick``) or the FastAGI server. In a fault run they and the web app
  run as :class:`runtime.supervisor.Supervisor` children, as ``python app.py`` runs them, and the
  process killed is the one the OS lists as ours; the outcome is when a new process (a new pid)
  is serving again.
- ``kill-redis``: ``SIGKILL`` to the run's Redis, which keeps an append-only file here (as
  ``./run.sh``'s does); started again from it at the same address after 1 s. With
  ``REDIS_SENTINELS`` set, the primary the sentinels name is killed and left to them: the
  outcome is when they name another.
- ``slow-http`` (default x40): connections to the web port that send a webhook body one byte
  every 2 s; ``trickle-agi`` (default x300): FastAGI connections that send an ``agi_*`` header line
  every 2 s. A connection the server closes is opened again at once. Both last until the calls end.

A fault run always runs the product as processes (``--processes``), with nginx in front of the
web app when nginx is installed (:mod:`runtime.proxy`, as ``./run.sh``); the simulated callers
and agents go through it too. Callbacks stay with the simulator's own thread worker: their
dialling is the simulated carrier's part. ``/healthz`` is asked every 0.25 s throughout.

The JSON line gains ``proxy`` and ``faults``: per fault when it struck, what was killed (pid,
new pid, restarted after s) or what the attack saw (connections the server closed and how long
it held them), the calls in progress meanwhile (lost, fallback) and ``/healthz`` meanwhile
(asked, failed, p99). Linux only (the processes are found in ``/proc``). docs/simulate.md.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.simulate.figures import percentile
from tools.simulate.run import Simulation
from tools.simulate.stack import ROOT

#: kill-* -> the supervised child it kills (kill-redis: the run's Redis)
KILLS = {"kill-worker": "worker", "kill-timers": "timers", "kill-fastagi": "fastagi", "kill-redis": "redis"}
#: attack -> default connections
ATTACKS = {"slow-http": 40, "trickle-agi": 300}
MAX_CONNECTIONS = 2000
DRIP_S = 2.0  # an attacking connection sends its next byte or header line this often
REDIS_DOWN_S = 1.0  # a killed Redis is started again after this (a supervisor's pause)
RESTART_LIMIT_S = 60.0
HEALTH_EVERY_S = 0.25
#: how each supervised child shows in its command line (``/proc/<pid>/cmdline``)
MARKERS = {"worker": "intake.worker", "timers": "call_routing.acd", "fastagi": "agi_scripts.fastagi_server"}
_SYNTAX = re.compile(r"([a-z-]+)@(\d+(?:\.\d+)?)(?:x(\d+))?")


@dataclass
class Fault:
    kind: str
    at_s: float
    connections: int = 0
    start: float | None = None  # monotonic: when it struck
    end: float | None = None  # the killed part serving again; the attack stopped
    outcome: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.at_s:g}" + (f"x{self.connections}" if self.kind in ATTACKS else "")


def parse_fault(text: str) -> Fault:
    """``kill-worker@5``, ``slow-http@3x40`` → :class:`Fault`; anything else → ValueError saying why."""
    kinds = ", ".join([*KILLS, *ATTACKS])
    m = _SYNTAX.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not KIND@SECOND or KIND@SECONDxCONNECTIONS (e.g. kill-worker@5, "
                         f"slow-http@3x40); KIND is one of {kinds}")
    kind, at, n = m.groups()
    if kind not in KILLS and kind not in ATTACKS:
        raise ValueError(f"{text!r}: no fault called {kind!r}; KIND is one of {kinds}")
    if n is not None and kind not in ATTACKS:
        raise ValueError(f"{text!r}: xCONNECTIONS is for {' and '.join(ATTACKS)} only")
    connections = int(n) if n is not None else ATTACKS.get(kind, 0)
    if kind in ATTACKS and not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"{text!r}: connections must be 1 to {MAX_CONNECTIONS}, not {connections}")
    return Fault(kind, float(at), connections)


def fault_arg(text: str) -> Fault:
    """``--fault``'s argparse type: one clear error naming the bad value."""
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def our_children(marker: str) -> list[int]:
    """Pids of this process's live children whose command line contains ``marker`` (from /proc)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")  # empty for a zombie
        except (OSError, ValueError, IndexError):
            continue
        if marker in command:
            found.append(int(entry))
    return found


class Trickle:
    """``n`` connections to ``address``, each sending ``opening`` and then ``drip(i)`` every
    :data:`DRIP_S` seconds; one the server closes is counted (and how long it was held) and
    opened again at once."""

    def __init__(self, address, n: int, opening: bytes, drip):
        self.address, self.n, self.opening, self.drip = address, n, opening, drip
        self.opened = self.closed_by_server = self.refused = 0
        self.held: list[float] = []  # seconds the server kept each connection it closed

    def run(self, until) -> None:
        sel = selectors.DefaultSelector()
        socks: dict[socket.socket, list] = {}  # -> [opened at, lines sent]

        def drop(s: socket.socket) -> None:
            sel.unregister(s)
            self.held.append(time.monotonic() - socks.pop(s)[0])
            self.closed_by_server += 1
            s.close()

        next_drip = time.monotonic() + DRIP_S
        try:
            while not until():
                while len(socks) < self.n and not until():
                    try:
                        s = socket.create_connection(self.address, timeout=2)
                        s.sendall(self.opening)
                    except OSError:
                        self.refused += 1
                        break  # the server is down or full: try again in a moment
                    s.setblocking(False)
                    socks[s] = [time.monotonic(), 0]
                    sel.register(s, selectors.EVENT_READ)
                    self.opened += 1
                for key, _ in sel.select(timeout=max(0.0, min(0.5, next_drip - time.monotonic()))):
                    try:
                        if not key.fileobj.recv(4096):
                            drop(key.fileobj)
                    except BlockingIOError:
                        pass
                    except OSError:
                        drop(key.fileobj)
                if time.monotonic() >= next_drip:
                    for s, entry in list(socks.items()):
                        try:
                            s.send(self.drip(entry[1]))
                            entry[1] += 1
                        except BlockingIOError:
                            pass
                        except OSError:
                            drop(s)
                    next_drip += DRIP_S
        finally:
            for s in socks:
                s.close()
            sel.close()

    def summary(self) -> dict:
        return {"connections": self.n, "opened": self.opened, "closed_by_server": self.closed_by_server,
                "refused": self.refused, "held_p50_s": round(percentile(self.held, 50) / 1000, 2),
                "held_max_s": round(max(self.held), 2) if self.held else None}


class FaultRun(Simulation):
    """A :class:`~tools.simulate.run.Simulation` with its product supervised and ``faults`` (list
    of :class:`Fault`) struck while its calls flow."""

    def __init__(self, *args, faults=(), **kwargs):
        kwargs["processes"] = True
        super().__init__(*args, **kwargs)
        self.faults = list(faults)
        self.sentinels = os.environ.get("REDIS_SENTINELS", "").strip()
        if any(f.kind == "kill-redis" for f in self.faults) and self.redis_url and not self.sentinels:
            raise ValueError("kill-redis kills the simulator's own Redis: not one given by URL")
        self.supervisor = None
        self.proxied = False
        self.health: list[tuple[float, float | None]] = []  # (asked at, seconds; None: no 200 within 5 s)
        self.run_start = time.monotonic()
        self._own_redis = self._redis_dir = self._proxy_dir = self._public_port = None

    # -- the stack: persistent Redis, supervised processes, nginx in front --------------------------

    def start(self):
        from runtime.redis_server import EmbeddedRedis

        try:
            if not self.redis_url:
                self._redis_dir = tempfile.mkdtemp(prefix="hotline-sim-redis-")
                self._own_redis = EmbeddedRedis(data_dir=self._redis_dir).start()
                self.redis_url = self._own_redis.url
            super().start()
        except BaseException:
            self.close()
            raise
        self.redis_server = self._own_redis
        return self

    def close(self) -> None:
        try:
            super().close()  # its clean-ups stop the supervisor: children first, then Redis
        finally:
            if self._own_redis is not None:
                self._own_redis.stop()
            for d in (self._redis_dir, self._proxy_dir):
                if d:
                    shutil.rmtree(d, ignore_errors=True)

    def _rules_copy(self) -> str:
        path = super()._rules_copy()
        text = Path(path).read_text("utf-8")
        # the timers run in their own process: they learn the simulator's ring timeout from the rules
        text = re.sub(r"(?m)^(\s*)ring_timeout_s: *\d+", rf"\g<1>ring_timeout_s: {int(self.ring_timeout_s + 3)}", text)
        Path(path).write_text(text, "utf-8")
        return path

    def _launch(self, commands: dict[str, list[str]], env: dict) -> None:
        from intake import jobs
        from runtime.proxy import nginx_binary, nginx_command, nginx_config
        from runtime.redis_server import free_port
        from runtime.supervisor import Supervisor

        children = dict(commands)
        children["worker"] = [sys.executable, "-m", "intake.worker", jobs.SPEECH_QUEUE, jobs.HANDOFF_QUEUE,
                              "--url", self.redis_url, "--log-level", "ERROR"]
        children["timers"] = [sys.executable, "-m", "call_routing.acd", "tick", "--every", "0.5"]
        env = dict(env)
        if nginx_binary():  # as ./run.sh: nginx reads each request whole before gunicorn sees it
            self._proxy_dir = tempfile.mkdtemp(prefix="hotline-sim-nginx-")
            public = free_port()
            children["proxy"] = nginx_command(nginx_config(f"127.0.0.1:{public}", f"127.0.0.1:{self.web_port}",
                                                           self._proxy_dir))
            env["PROXY_HOPS"] = "1"
            self._public_port = public  # the callers and agents use it once gunicorn answers (_start_processes)
        logs = Path(self.dir, "logs")  # each child's output, apart from the progress bar and the report
        logs.mkdir(exist_ok=True)
        children = {name: ["sh", "-c", f'exec "$@" >>{logs / name}.log 2>&1', "sh", *command]
                    for name, command in children.items()}
        self.supervisor = Supervisor(children, cwd=ROOT, env=env, grace_s=10).start()
        self._cleanup.append(self.supervisor.stop)

    def _start_processes(self) -> None:
        super()._start_processes()
        if self._public_port:
            self.web_port, self.base_url, self.proxied = self._public_port, f"http://127.0.0.1:{self._public_port}", True
            deadline = time.monotonic() + 30
            while self._healthz() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx in front of the web app did not answer /healthz")
                time.sleep(0.2)

    def _start_workers(self) -> None:
        """The supervised ``intake.worker`` works speech and hand-offs and writes the tickets; the
        callback queue is worked here, where the simulated carrier dials."""
        import redis as redis_lib
        from rq import Queue, SimpleWorker
        from rq.timeouts import TimerDeathPenalty

        from call_routing.acd.callbacks import RQ_QUEUE
        from intake import jobs
        from intake.tickets import TicketDrafts

        class ThreadWorker(SimpleWorker):
            death_penalty_class = TimerDeathPenalty  # SIGALRM works in the main thread only

            def _install_signal_handlers(self):
                pass

        conn = redis_lib.Redis.from_url(self.redis_url)
        self.rq_queues = [Queue(name, connection=conn) for name in (jobs.SPEECH_QUEUE, RQ_QUEUE, jobs.HANDOFF_QUEUE)]
        self.drafts = TicketDrafts(redis_lib.Redis.from_url(self.redis_url, decode_responses=True))

        def work():
            while not self.stop.is_set():
                try:
                    ThreadWorker([self.rq_queues[1]], connection=conn).work(burst=True, with_scheduler=False,
                                                                           logging_level="WARNING")
                except Exception as exc:
                    self.stats.error(f"callback worker: {exc!r}")
                self.stop.wait(0.2)

        self._spawn(work, name="rq-worker")

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> dict:
        self.run_start = time.monotonic()
        for fault in self.faults:
            self.hooks.append(lambda sim, fault=fault: self._strike(fault))
        self._spawn(self._ask_health, name="healthz")
        return super().run()

    def calls_over(self) -> bool:
        return self.stop.is_set() or bool(self.records) and all(r.ended is not None for r in self.records.values())

    def _healthz(self) -> float | None:
        """Seconds ``/healthz`` took to answer 200; None: another answer, or none within 5 s."""
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return time.monotonic() - t0 if conn.getresponse().status == 200 else None
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def _ask_health(self) -> None:
        while not self.calls_over():
            t0 = time.monotonic()
            self.health.append((t0, self._healthz()))
            time.sleep(max(0.0, HEALTH_EVERY_S - (time.monotonic() - t0)))

    def _strike(self, fault: Fault) -> None:
        while time.monotonic() < self.run_start + fault.at_s:
            if self.calls_over():
                fault.outcome["error"] = "not struck: the calls had ended"
                return
            time.sleep(0.05)
        fault.start = time.monotonic()
        try:
            if fault.kind in ATTACKS:
                self._attack(fault)
            elif fault.kind == "kill-redis":
                self._kill_sentinel_primary(fault) if self.sentinels else self._kill_redis(fault)
            else:
                self._kill_child(fault, KILLS[fault.kind])
        except Exception as exc:
            fault.outcome["error"] = repr(exc)
        if fault.end is None:
            fault.end = time.monotonic()

    def _kill_child(self, fault: Fault, name: str) -> None:
        marker = MARKERS[name]
        old = our_children(marker)
        if len(old) != 1:
            raise RuntimeError(f"expected one {name} process ({marker}) among ours, found {old}")
        os.kill(old[0], signal.SIGKILL)
        fault.outcome.update(process=name, pid=old[0])
        while time.monotonic() < fault.start + RESTART_LIMIT_S:
            new = [pid for pid in our_children(marker) if pid != old[0]]
            if new and self._serving(name, new[0]):
                fault.end = time.monotonic()
                fault.outcome.update(new_pid=new[0], restarted_after_s=round(fault.end - fault.start, 2))
                return
            time.sleep(0.05)
        fault.outcome["restarted_after_s"] = None

    def _serving(self, name: str, pid: int) -> bool:
        """The new process does its work: the worker is registered with rq, FastAGI accepts."""
        if name == "worker":
            import redis as redis_lib
            from rq import Worker

            try:
                return any(w.pid == pid for w in Worker.all(connection=redis_lib.Redis.from_url(self.redis_url)))
            except Exception:
                return False
        if name == "fastagi":
            try:
                socket.create_connection(self.agi_address, timeout=0.5).close()
                return True
            except OSError:
                return False
        return True

    def _kill_redis(self, fault: Fault) -> None:
        import redis as redis_lib

        server = self._own_redis
        before = redis_lib.Redis.from_url(self.redis_url, socket_timeout=2).dbsize()
        server.process.kill()
        server.process.wait(5)
        fault.outcome.update(process="redis", pid=server.process.pid, keys_before=before)
        time.sleep(REDIS_DOWN_S)
        server._unlock()  # the data directory's lock of the dead server: start() takes it again
        server.start()  # same port and socket, from the append-only file
        fault.end = time.monotonic()
        after = redis_lib.Redis.from_url(self.redis_url, socket_timeout=2).dbsize()
        fault.outcome.update(new_pid=server.process.pid, restarted_after_s=round(fault.end - fault.start, 2),
                             keys_after=after)

    def _kill_sentinel_primary(self, fault: Fault) -> None:
        import redis as redis_lib
        from redis.sentinel import Sentinel

        hosts = [(h, int(p)) for h, _, p in (a.strip().rpartition(":") for a in self.sentinels.split(","))]
        service = os.environ.get("REDIS_SENTINEL_SERVICE", "hotline")
        sentinel = Sentinel(hosts, socket_timeout=1)
        primary = sentinel.discover_master(service)
        pid = redis_lib.Redis(*primary, socket_timeout=2).info("server")["process_id"]
        os.kill(pid, signal.SIGKILL)  # a primary on this machine; Sentinel does the rest
        fault.outcome.update(process="redis primary", primary=f"{primary[0]}:{primary[1]}", pid=pid)
        while time.monotonic() < fault.start + RESTART_LIMIT_S:
            try:
                now = sentinel.discover_master(service)
            except Exception:
                now = primary
            if now != primary:
                fault.end = time.monotonic()
                fault.outcome.update(new_primary=f"{now[0]}:{now[1]}", failover_after_s=round(fault.end - fault.start, 2))
                return
            time.sleep(0.2)
        fault.outcome["failover_after_s"] = None

    def _attack(self, fault: Fault) -> None:
        if fault.kind == "slow-http":
            trickle = Trickle(("127.0.0.1", self.web_port), fault.connections,
                              b"POST /twilio/voice HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                              b"application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\nCallSid=CA",
                              lambda i: b"1")
        else:
            trickle = Trickle(self.agi_address, fault.connections, b"agi_network: yes\n",
                              lambda i: f"agi_arg_{i + 1}: {'x' * 32}\n".encode())
        trickle.run(self.calls_over)
        fault.end = time.monotonic()
        fault.outcome.update(trickle.summary())

    # -- the figures ---------------------------------------------------------------------------------

    def report(self, t_start: float, elapsed: float) -> dict:
        for t in self._threads:  # the attacks stop and the last kills are seen through before they are told
            if t.name in ("hook", "healthz"):
                t.join(RESTART_LIMIT_S)
        result = super().report(t_start, elapsed)
        result["proxy"] = "nginx" if self.proxied else "none"
        result["faults"] = [self._summary(f) for f in self.faults]
        return result

    def _summary(self, fault: Fault) -> dict:
        out = {"fault": fault.label}
        if fault.start is None:
            return {**out, **fault.outcome}
        start, end = fault.start, max(fault.end or fault.start, fault.start + HEALTH_EVERY_S)
        during = [r for r in self.records.values() if r.started <= end and (r.ended or end) >= start]
        asked = [took for t, took in list(self.health) if start <= t <= end]
        answered = [took for took in asked if took is not None]
        out.update(at_s=round(start - self.run_start, 2), lasted_s=round(end - start, 2), **fault.outcome)
        out.update(calls_meanwhile=len(during), calls_lost=sum(1 for r in during if r.outcome is None),
                   calls_fallback=sum(1 for r in during if r.outcome == "fallback"),
                   healthz_asked=len(asked), healthz_failed=len(asked) - len(answered),
                   healthz_p99_ms=percentile(answered, 99) if answered else None)
        return out
