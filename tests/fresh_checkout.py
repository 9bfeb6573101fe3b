"""The product as a newcomer starts it, on a fresh copy of this checkout (never the checkout's own
``var/``): what the copy holds, the environment without the test run's own settings, and stopping
the whole process group the product started."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# settings the test run gives itself (tests/conftest.py) that a newcomer's shell does not have
TEST_ONLY = ("DATABASE_URL", "SECRET_KEY", "HOTLINE_RECORDINGS", "TWILIO_OFFER_LISTENER", "REDIS_URL",
             "RULES_PATH", "REDIS_DATA_DIR", "HYPOTHESIS_STORAGE_DIRECTORY", "BIND", "FASTAGI_BIND")


def newcomer_env(**settings) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TEST_ONLY}
    env.update(settings)
    return env


def fresh_checkout(to: Path) -> None:
    """What a clone of this checkout holds (tracked and new files, nothing ignored), with this
    checkout's .venv linked in (setup.sh then finds it ready)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, to / name)
    (to / ".venv").symlink_to(ROOT / ".venv")


def stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process group started with ``start_new_session``, SIGKILL after ``grace_s``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
