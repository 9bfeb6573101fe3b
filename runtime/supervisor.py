"""Keeps the product's background processes running: each one that dies is started again, after
a pause that doubles with every death in a row (``min_backoff_s`` up to ``max_backoff_s``; back
to the minimum once it has run ``stable_s``), and every change is reported — ``python app.py``
writes the report to Redis (:data:`STATE_KEY`) for the dashboard and ``/metrics``.

    sup = Supervisor({"worker": [sys.executable, "-m", "intake.worker"]}, report=print).start()
    ...
    sup.stop()   # SIGTERM to each, SIGKILL after ``grace_s``
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass

log = logging.getLogger("hotline.supervisor")

STATE_KEY = "hotline:processes"  # Redis hash: "<process>@<node>" -> JSON of ProcessState + "reported" (Unix s)
STATE_TTL_S = 30  # the report is refreshed every few seconds; gone when the product is


def node_name() -> str:
    """This machine's name in the report (``HOTLINE_NODE``, else the host name): several nodes
    report into one Redis, each process under its node's name."""
    import socket

    return os.environ.get("HOTLINE_NODE") or socket.gethostname()


@dataclass
class ProcessState:
    name: str
    state: str = "starting"  # running | restarting | stopped
    pid: int | None = None
    restarts: int = 0
    since: float = 0.0  # when it entered this state (Unix seconds)
    last_exit: int | None = None  # exit code of the last death (negative: killed by that signal)


class Supervisor:
    def __init__(self, children: dict[str, list[str]], *, report=None, cwd=None, env=None,
                 min_backoff_s: float = 1.0, max_backoff_s: float = 60.0, stable_s: float = 60.0,
                 grace_s: float = 35.0, poll_s: float = 0.2, report_every_s: float = 5.0):
        self.children, self.cwd, self.env = dict(children), cwd, env
        self.report = report or (lambda states: None)
        self.min_backoff_s, self.max_backoff_s, self.stable_s = min_backoff_s, max_backoff_s, stable_s
        self.grace_s, self.poll_s, self.report_every_s = grace_s, poll_s, report_every_s
        self.states = {name: ProcessState(name) for name in children}
        self._procs: dict[str, subprocess.Popen] = {}
        self._backoff = {name: min_backoff_s for name in children}
        self._due: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> "Supervisor":
        for name in self.children:
            self._spawn(name)
        self._publish()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def _spawn(self, name: str) -> None:
        # its own process group: when it dies, what it started (rq's scheduler, FastAGI's forks) goes too
        self._procs[name] = proc = subprocess.Popen(self.children[name], cwd=self.cwd, env=self.env,
                                                    process_group=0)
        st = self.states[name]
        st.state, st.pid, st.since = "running", proc.pid, time.time()

    def _watch(self) -> None:
        last_report = time.monotonic()
        while not self._stop.wait(self.poll_s):
            changed = False
            for name, proc in list(self._procs.items()):
                code = proc.poll()
                if code is not None and name not in self._due:
                    changed = True
                    _signal_group(proc, signal.SIGKILL)  # no orphan of the dead one runs beside its successor
                    st = self.states[name]
                    ran = time.time() - st.since
                    if ran >= self.stable_s:
                        self._backoff[name] = self.min_backoff_s
                    wait = self._backoff[name]
                    self._backoff[name] = min(self.max_backoff_s, wait * 2)
                    self._due[name] = time.monotonic() + wait
                    st.state, st.pid, st.since, st.last_exit = "restarting", None, time.time(), code
                    log.error("process %s (pid %s) exited with %s after %.0f s: starting it again in %.1f s",
                              name, proc.pid, code, ran, wait)
            for name, due in list(self._due.items()):
                if time.monotonic() >= due and not self._stop.is_set():
                    del self._due[name]
                    self.states[name].restarts += 1
                    self._spawn(name)
                    changed = True
                    log.warning("process %s started again (pid %s, restart %d)", name, self._procs[name].pid,
                                self.states[name].restarts)
            if changed or time.monotonic() - last_report >= self.report_every_s:
                self._publish()
                last_report = time.monotonic()

    def _publish(self) -> None:
        try:
            self.report({name: asdict(st) for name, st in self.states.items()})
        except Exception as exc:  # the report is for people; the processes matter more
            log.warning("could not report the processes' state: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for proc in self._procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))  # the worker finishes its job, FastAGI drains
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        for st in self.states.values():
            st.state, st.pid, st.since = "stopped", None, time.time()
        self._publish()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
