"""Shared fixtures: a real Redis for every test that needs one, the shipped rules, paths."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"  # copied from ../shared/data: legacy lines, labelled utterances
sys.path.insert(0, str(ROOT))
# every Flask app a test builds shares one Redis: an offer listener left running by one test's
# app would ring agents of the next test's calls. Tests that need it turn it on in their config.
os.environ.setdefault("TWILIO_OFFER_LISTENER", "0")
# tests never write into the checkout (its var/): what the product would keep there by default —
# the database, the session key, recordings — and hypothesis's example database go to a temp dir
_TMP = tempfile.mkdtemp(prefix="hotline-tests-")
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(_TMP, "hypothesis"))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{_TMP}/default.db")
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
os.environ.setdefault("HOTLINE_RECORDINGS", os.path.join(_TMP, "recordings"))
# the centre's own labelled sentences (var/utterances by default) never sway what the tests learn
os.environ.setdefault("HOTLINE_LOCAL_UTTERANCES", "off")

from runtime.redis_server import EmbeddedRedis  # noqa: E402
from call_routing.rules import load_rules  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """With ``REDIS_URL`` the tests run in one process: they flush its database between tests, and
    its pub/sub channels (the ACD's offers) are shared by every database of that server."""
    if os.environ.get("REDIS_URL") and getattr(config.option, "numprocesses", None):
        config.option.numprocesses, config.option.dist = 0, "no"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Learn the shipped pre-fill once, in the main process, before the test processes start (as
    a machine's first start of the product does): otherwise the first server a test starts on a
    fresh machine learns it (half a minute) while other tests load the CPU, and its readiness
    wait runs out. Later processes load it from the per-user cache (``ivr.prefill.model``)."""
    if hasattr(session.config, "workerinput"):  # an xdist test process: the main one has done it
        return
    import subprocess

    from ivr.prefill import Prefiller

    # beside it, on the other CPU: the pre-fill of test_prefill.py's admin catalogue (tests/
    # prefill_support.py), the only other one a test learns from all the labelled sentences
    admins = subprocess.Popen([sys.executable, "-m", "tests.prefill_support"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        Prefiller(load_rules())
    finally:
        admins.wait()  # if it failed, the test learns it itself


@pytest.fixture
def clock():
    """The ACD tests' clock (tests/acd_support.py): a workday at 10:00, advanced by the test."""
    from acd_support import Clock

    return Clock()


@pytest.fixture(scope="session")
def redis_server_url():
    """``REDIS_URL`` if set (its database is flushed between tests!), else a private server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url):
    """A Redis URL whose database starts empty for this test."""
    import redis

    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    yield redis_server_url


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def rules_path() -> Path:
    return ROOT / "transfer_rules.yaml"


@pytest.fixture(scope="session")
def rules(rules_path):
    """The shipped rules, loaded once."""
    return load_rules(rules_path)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: legacy_lines.csv (the State Council list) and utterances_dev.jsonl."""
    return DATA


@pytest.fixture(scope="session")
def pbx_session():
    """One real Asterisk 22 for every real-PBX test (tests/pbx_world.py), or a skip saying why."""
    from bench.asterisk_lab import locate

    launcher, why = locate()
    if launcher is None:
        pytest.skip(f"real-PBX test skipped: {why}")
    from tests.pbx_world import World

    world = World(launcher)
    yield world
    world.close()


@pytest.fixture
def pbx(pbx_session):
    """The real-PBX world, left with no call and no seat after each test."""
    pbx_session.log_marks = _log_sizes(pbx_session)
    yield pbx_session
    pbx_session.reset()


def _pbx_logs(world) -> list:
    """The product's process logs and Asterisk's own, which a failed real-PBX test shows."""
    return sorted(world.product.workdir.glob("*.log")) + [world.lab.run / "log" / "messages.log"]


def _log_sizes(world) -> dict:
    return {path: path.stat().st_size for path in _pbx_logs(world) if path.exists()}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A real-PBX test that failed shows what the product's processes and Asterisk logged while
    it ran (the world's files go with its temporary folder: a failure in a clean-clone run is
    otherwise left without them)."""
    report = yield
    world = getattr(item, "funcargs", {}).get("pbx")
    if report.failed and call.when == "call" and world is not None:
        for path in _pbx_logs(world):
            try:
                with open(path, "rb") as f:
                    f.seek(world.log_marks.get(path, 0))
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                continue
            if lines:
                report.sections.append((f"{path.name} during the test (last 120 lines)", "\n".join(lines[-120:])))
    return report


# files that run the whole product at full tilt (its processes, a simulated load, a browser) or
# measure the product's reaction time (the 1-s speech paths): one after the other in one test
# process, so that they never starve each other of the CPU; the other test processes meanwhile
# run files that mostly wait on a real Asterisk, a browser or a timer
WHOLE_PRODUCT = {"test_newcomer.py", "test_live_twilio.py", "test_fault_run.py", "test_two_instances.py",
                 "test_faults.py", "test_simulate.py", "test_prefill_emergency.py", "test_twilio_media.py",
                 "test_pbx_speech.py"}


# the longest other files (seconds in one test process of a full run, session 15), started first
# so that no long file starts near the end while the other processes have finished; the rest
# follow in xdist's order (the most tests first)
LONG_FIRST = ("test_pbx_waiting.py", "test_pbx_transfers.py", "test_jobs.py", "test_consoles_e2e.py",
              "test_twilio_calls.py", "test_app.py", "test_agi_script.py", "test_security.py",
              "test_pbx_agents.py", "test_pbx_routing.py", "test_bench_asterisk.py", "test_consoles_auth.py",
              "test_speech.py", "test_call_recordings.py", "test_consoles_rules.py", "test_consoles_chinese.py",
              "test_pbx_pjsip.py")


def pytest_xdist_make_scheduler(config, log):
    """Each file whole in one test process, the whole-product files in one (pytest.ini: ``-n``).

    xdist's own ``xdist_group`` marks are not seen with pytest 9.2 (pytest-xdist issue #1386):
    the files were split across processes. This scheduler groups by file name instead."""
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return "whole-product" if path.rsplit("/", 1)[-1] in WHOLE_PRODUCT else path

        def _assign_work_unit(self, node):
            # the longest unit first, so that the other processes share the rest beside it; then
            # the long files, longest first
            if not getattr(self, "_ordered", False):
                self._ordered = True
                rank = {name: i for i, name in enumerate(("whole-product",) + LONG_FIRST)}
                first = sorted((scope for scope in self.workqueue if scope.rsplit("/", 1)[-1] in rank),
                               key=lambda scope: rank[scope.rsplit("/", 1)[-1]], reverse=True)
                for scope in first:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return FileGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` (full load runs) only with ``HOTLINE_FULL=1``."""
    if os.environ.get("HOTLINE_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set HOTLINE_FULL=1 for the full run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _var_snapshot() -> dict:
    var = ROOT / "var"
    return {str(p.relative_to(var)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in var.rglob("*") if p.is_file()} if var.exists() else {}


@pytest.fixture(scope="session", autouse=True)
def checkout_var_untouched():
    """The whole run leaves the checkout's var/ as it found it (fails at the end otherwise)."""
    before, existed = _var_snapshot(), (ROOT / "var").exists()
    yield
    after = _var_snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed and (ROOT / "var").exists() == existed, f"the tests wrote into var/: {changed}"
