"""Callback call files on a real Asterisk 22 that runs as its own user, as in production
(docs/asterisk.md: Asterisk as ``asterisk``, the rq worker as ``hotline``): the file the worker
places must be one Asterisk can read. A call file Asterisk cannot open is deleted by pbx_spool
("Unable to open …: Permission denied, deleting") — the callback counted as placed, never dialed.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from agi_scripts.callback import CallFileDialer
from bench.asterisk_lab import locate, wait_until
from call_routing.acd.callbacks import PLACED, CallbackRequest

pytestmark = pytest.mark.pbx

DIALPLAN = """[general]
static=yes
[cf]
exten => s,1,Answer()
 same => n,Hangup()
"""


@pytest.fixture
def asterisk_as_nobody():
    launcher, why = locate()
    if launcher is None:
        pytest.skip(f"real-PBX test skipped: {why}")
    if os.geteuid() != 0:
        pytest.skip("needs root to run Asterisk as another user than the worker's")
    user = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="astcf"))
    run = base / "a"
    run.mkdir()
    (run / "extensions.conf").write_text(DIALPLAN)
    (run / "manager.conf").write_text("[general]\nenabled=no\n")
    (run / "cdr.conf").write_text("[general]\nenable=no\n")
    subprocess.run([str(launcher), str(run), "-V"], capture_output=True, timeout=30)  # writes asterisk.conf
    for path in [base, *base.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    base.chmod(0o755)
    proc = subprocess.Popen([str(launcher), str(run), "-f", "-n", "-U", "nobody", "-G", grp.getgrgid(user.pw_gid).gr_name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)

    def rx(command):
        return subprocess.run([str(launcher), str(run), "-rx", command], capture_output=True, text=True,
                              timeout=15).stdout

    try:
        wait_until(lambda: "fully booted" in rx("core waitfullybooted"), 30, 0.2, "Asterisk to boot")
        wait_until(lambda: (run / "spool" / "outgoing").is_dir(), 10, 0.1, "Asterisk's outgoing spool")
        yield run, rx
    finally:
        rx("core stop now")
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)
        shutil.rmtree(base, ignore_errors=True)


def test_a_call_file_placed_by_the_worker_is_dialed_by_an_asterisk_running_as_another_user(asterisk_as_nobody):
    run, rx = asterisk_as_nobody
    dialer = CallFileDialer(spool=str(run / "spool" / "outgoing"), trunk="carrier")
    request = CallbackRequest("cb7", 1, "13800138000", "a1001", ("Local/s@cf",), "12345", "general", "77")
    assert dialer.dial(request) == PLACED
    # Asterisk (user nobody) read the file and rang the agent's endpoint (pbx_spool's own log)
    log = run / "log" / "messages.log"
    wait_until(lambda: "Call completed to Local/s@cf" in log.read_text(), 10, 0.2, "the agent's phone to be rung")
    assert "Permission denied" not in log.read_text()
