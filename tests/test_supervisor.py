"""The product's background processes are supervised: one that dies is started again, after a
pause that grows while it keeps dying, and every change is reported (real child processes)."""
from __future__ import annotations

import os
import signal
import sys
import time

from runtime.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_process_is_started_again_and_the_change_is_reported():
    reports = []
    sup = Supervisor({"worker": SLEEPER, "timers": SLEEPER}, report=reports.append, min_backoff_s=0.2).start()
    try:
        first = sup.pids()
        os.kill(first["worker"], signal.SIGKILL)
        assert wait_for(lambda: sup.pids()["worker"] != first["worker"] and alive(sup.pids()["worker"]))
        assert sup.pids()["timers"] == first["timers"]  # the others untouched
        worker = sup.states["worker"]
        assert (worker.state, worker.restarts, worker.last_exit) == ("running", 1, -signal.SIGKILL)
        assert any(r["worker"]["state"] == "restarting" for r in reports)
        assert reports[-1]["worker"]["state"] == "running" and reports[-1]["worker"]["pid"] == sup.pids()["worker"]
    finally:
        sup.stop()
    assert not any(alive(pid) for pid in sup.pids().values())
    assert {st["state"] for st in reports[-1].values()} == {"stopped"}


def test_a_process_that_keeps_dying_is_started_again_less_and_less_often():
    sup = Supervisor({"broken": CRASHER}, min_backoff_s=0.1, max_backoff_s=0.8).start()
    starts = []
    try:
        deadline = time.monotonic() + 6
        last = None
        while time.monotonic() < deadline and len(starts) < 6:
            pid = sup.pids()["broken"]
            if pid != last:
                starts.append(time.monotonic())
                last = pid
            time.sleep(0.01)
    finally:
        sup.stop()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) >= 4
    assert gaps[0] < 0.5 and gaps[3] >= 0.7  # 0.1, 0.2, 0.4, 0.8 s: backing off, capped at max_backoff_s
    assert sup.states["broken"].last_exit == 3


def test_what_a_dead_process_had_started_dies_with_it_and_stop_ends_everything(tmp_path):
    marker = tmp_path / "grandchild.pid"
    parent = [sys.executable, "-c", "import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(600)"]
    sup = Supervisor({"worker": parent}, min_backoff_s=5).start()
    try:
        assert wait_for(lambda: marker.exists() and marker.read_text())
        grandchild = int(marker.read_text())
        os.kill(sup.pids()["worker"], signal.SIGKILL)
        # an orphan left running would run beside its successor (rq's scheduler did)
        assert wait_for(lambda: not alive(grandchild) or _zombie(grandchild), timeout=5)
    finally:
        sup.stop()


def _zombie(pid) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
