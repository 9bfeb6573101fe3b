"""The repeatable fault run: ``python -m tools.simulate --fault …`` (tools/simulate/faults.py),
through the command's own code path, with the product's real processes (supervised as
``python app.py`` supervises them, nginx in front of gunicorn) and a real Redis."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

from tools.simulate.cli import main


def _our_processes(marker: str) -> set[int]:
    """Pids the OS lists as children of this process running ``marker``."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines() if marker in line}


@pytest.mark.skipif(not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"),
                    reason="the buffering proxy needs nginx (apt-get install nginx-light)")
def test_killing_the_worker_and_holding_slow_clients_loses_no_call_and_no_ticket(capsys):
    seen: set[int] = set()
    done = threading.Event()

    def watch():  # the worker processes the OS shows while the run lasts
        while not done.wait(0.2):
            seen.update(_our_processes("intake.worker"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = main(["--calls", "20", "--agents", "4", "--seed", "3", "--quiet",
                     "--fault", "kill-worker@2", "--fault", "slow-http@1x40"])
    finally:
        done.set()
        watcher.join(5)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["lost"], result["tickets_missing"]) == (0, 0), result  # what exit status 1 would hide
    assert code == 0
    assert result["lost"] == 0 and result["tickets_missing"] == 0 and result["server_errors"] == 0, result
    assert result["tickets"] >= 20 and result["proxy"] == "nginx"
    kill, slow = result["faults"]

    # the rq worker was killed and a new one took over: two pids, both seen by the OS as ours
    assert kill["fault"] == "kill-worker@2" and kill["process"] == "worker"
    assert kill["new_pid"] != kill["pid"] and {kill["pid"], kill["new_pid"]} <= seen, (kill, seen)
    assert 0 < kill["restarted_after_s"] < 30
    assert kill["calls_meanwhile"] > 0 and kill["calls_lost"] == 0

    # forty clients sending a webhook body a byte every 2 s held their connections the whole time,
    # and /healthz answered every time it was asked meanwhile, quickly
    assert slow["fault"] == "slow-http@1x40" and slow["opened"] == 40 and slow["closed_by_server"] == 0
    assert slow["lasted_s"] > 5 and slow["healthz_asked"] >= 10
    assert slow["healthz_failed"] == 0 and slow["healthz_p99_ms"] < 1000, slow


@pytest.mark.parametrize("bad, says", [
    ("kill-web@3", "no fault called 'kill-web'"),
    ("kill-worker", "is not KIND@SECOND or KIND@SECONDxCONNECTIONS"),
    ("kill-worker@2x5", "xCONNECTIONS is for slow-http and trickle-agi only"),
    ("slow-http@1x0", "connections must be 1 to 2000, not 0"),
])
def test_a_bad_fault_is_one_clear_error_naming_it(bad, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--fault", bad])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"argument --fault: '{bad}'" in err and says in err and "Traceback" not in err
