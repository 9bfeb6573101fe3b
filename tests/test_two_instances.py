"""Several nodes: two instances of the product (``python app.py`` each: web, FastAGI, worker,
timers) on one Redis and one PostgreSQL serve the same calls and seats together.

Each call's AGI sessions go to the two FastAGI servers in turn (as behind a FastAGI load
balancer), each seat signs in through one instance and then talks to both. What the real parts
hold decides: the ACD's queue log and seats in Redis, the tickets in PostgreSQL.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ticket_db import fresh_schema, postgres_reachable, postgres_url

ROOT = Path(__file__).resolve().parent.parent
CALLS = 40
SEATS = 6
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres():
    why = postgres_reachable()
    if why:
        pytest.skip(why)
    return postgres_url()


@pytest.fixture
def schema(postgres):
    """A schema no other run sees, dropped at the end."""
    import sqlalchemy

    name = fresh_schema()
    yield name
    engine = sqlalchemy.create_engine(postgres)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    engine.dispose()


def test_processes_starting_together_on_an_empty_database_all_start(postgres, schema):
    """Ticket and console stores of many processes created at the same moment on an empty schema
    (every process of two nodes does this at start): before the advisory lock some died with
    "duplicate key … pg_type_typname_nsp_index" or 'relation "tickets" already exists'."""
    from consoles.db import ConsoleStore
    from intake.tickets import TicketStore

    start, errors = threading.Barrier(8), []

    def open_store(i):
        start.wait()
        try:
            (ConsoleStore if i % 2 else TicketStore)(postgres, schema=schema).close()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

    threads = [threading.Thread(target=open_store, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    store = TicketStore(postgres, schema=schema)
    assert store.open_ticket("call-1", "12345", "13800138000").id > 0  # the tables are there, whole
    store.close()


def test_nodes_taking_their_first_ticket_numbers_at_once_on_an_empty_database_get_distinct_blocks(postgres):
    """The first call on each node numbers its ticket at the same moment: before, all but one
    seeding of the numbering failed (UniqueViolation on ticket_seq_pkey) and those calls went to
    the dialplan's fallback with no ticket."""
    import sqlalchemy

    from intake.tickets import TicketStore

    got, errors, schemas = [], [], [fresh_schema() for _ in range(5)]
    try:
        for name in schemas:
            stores = [TicketStore(postgres, schema=name) for _ in range(4)]
            start, ids = threading.Barrier(len(stores)), []

            def number(store):
                start.wait()
                try:
                    ids.append(store.allocate_id())
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

            threads = [threading.Thread(target=number, args=(s,)) for s in stores]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            got.append(sorted(ids))
            for store in stores:
                store.close()
    finally:
        engine = sqlalchemy.create_engine(postgres)
        with engine.begin() as conn:
            for name in schemas:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        engine.dispose()
    assert errors == []
    assert got == [[1001, 2001, 3001, 4001]] * 5  # a block of 1,000 numbers each, none shared


def test_processes_creating_the_same_calls_ticket_at_once_get_its_one_row(postgres, schema, redis_url):
    """The ticket writer of one node, a job and the agent console of the other create a call's
    row from its draft at the same moment: before, all but one insert failed on PostgreSQL
    (UniqueViolation on tickets_pkey: 72 of 100 in this test) and the job, the writer or the
    agent's page failed with it."""
    from datetime import datetime

    import redis

    from call_routing.rules import CHINA_TZ
    from intake.tickets import TicketDrafts, TicketStore

    drafts = TicketDrafts(redis.Redis.from_url(redis_url, decode_responses=True))
    stores = [TicketStore(postgres, schema=schema, drafts=drafts) for _ in range(5)]  # an engine each
    got, errors = [], []
    for n in range(1, 21):
        pipe = drafts.r.pipeline()
        drafts.put(pipe, ticket_id=5000 + n, call_id=f"call-{n}", line="12345", caller="13800138000",
                   rules_version="v1", at=datetime.now(CHINA_TZ))
        pipe.execute()
        start = threading.Barrier(len(stores))

        def create(store, call_id=f"call-{n}"):
            start.wait()
            try:
                got.append((call_id, store.by_call(call_id).id))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

        threads = [threading.Thread(target=create, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    assert sorted(set(got)) == [(f"call-{n}", 5000 + n) for n in sorted(range(1, 21), key=lambda n: f"call-{n}")]
    assert len(got) == 20 * len(stores)
    for store in stores:
        store.close()


def test_a_schema_that_cannot_be_one_is_refused_by_name(monkeypatch):
    from intake.tickets import TicketStore

    monkeypatch.setenv("DATABASE_SCHEMA", 'x"; DROP TABLE tickets; --')
    with pytest.raises(ValueError, match="is not a schema name"):
        TicketStore(postgres_url(), create=False)
    monkeypatch.setenv("DATABASE_SCHEMA", "hotline")
    with pytest.raises(ValueError, match="DATABASE_SCHEMA=hotline needs PostgreSQL"):
        TicketStore("sqlite:///:memory:", create=False)


# -- two nodes --------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    web: int
    agi: int
    proc: subprocess.Popen
    log: Path

    def tail(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text(errors="replace")[-3000:]


def _start_node(name: str, env: dict, tmp: Path) -> Node:
    from runtime.redis_server import free_port

    web, agi = free_port(), free_port()
    log = tmp / f"{name}.log"
    env = dict(env, HOTLINE_NODE=name, BIND=f"127.0.0.1:{web}", FASTAGI_BIND=f"127.0.0.1:{agi}",
               HOTLINE_RECORDINGS=str(tmp / name / "recordings"), HOTLINE_PROMPTS=str(tmp / name / "prompts"),
               HOTLINE_SPOOL=str(tmp / name / "spool"), SECRET_KEY_FILE=str(tmp / name / "secret_key"))
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    return Node(name, web, agi, proc, log)


def _healthy(node: Node) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.web}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class Centre:
    """What the simulator's Asterisk (tools.simulate.asterisk_pbx) and agent consoles
    (tools.simulate.agents) ask of a simulation, for a centre of two nodes."""

    seed, tick_s, ring_timeout_s, wrapup_s, talk_s, call_timeout_s = 16, 0.2, 2.0, 0.3, (0.2, 0.6), 45.0

    def __init__(self, nodes: list[Node]):
        from tools.simulate.figures import Stats

        self.nodes, self.stats, self.agents, self.logins = nodes, Stats(), {}, []

    def caller_number(self, rec) -> str:
        return f"+86139{int(rec.id.split('.')[1]):08d}"

    def patience(self, rec, rng) -> float:
        return self.call_timeout_s

    def write_wav(self, call_id: str, path: str) -> str:
        from tools.simulate.callers import Callers

        return Callers.write_wav(self, call_id, path)

    def agent_by_endpoint(self, target: str):
        m = re.search(r"(seat\d+)@", target or "")
        return self.agents.get(m.group(1)) if m else None

    def ensure_agent(self, agent_id: str) -> None:
        pass  # the seats were provisioned once; a lost one is a failure of the test


class Via:
    """The centre, one node after the other: each AGI session of a call (a FastAGI load balancer
    in front of both nodes) or each request of an agent console goes to the next node."""

    def __init__(self, centre: Centre, first: int):
        self._centre, self._turn = centre, itertools.count(first)

    def __getattr__(self, name):
        return getattr(self._centre, name)

    def _next(self) -> Node:
        return self._centre.nodes[next(self._turn) % 2]

    @property
    def agi_address(self):
        return ("127.0.0.1", self._next().agi)

    def http(self, method, path, body=None, headers=None):
        import http.client

        node = self._next()
        if path == "/agent/api/login":
            self._centre.logins.append(node.name)
        conn = http.client.HTTPConnection("127.0.0.1", node.web, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status >= 500:
                self._centre.stats.error(f"{node.name} {method} {path}: HTTP {resp.status}")
            return resp.status, raw
        finally:
            conn.close()


def test_two_instances_on_one_redis_and_one_postgresql_serve_calls_together(redis_url, postgres, schema, tmp_path):
    import redis
    import sqlalchemy

    from call_routing.acd import ACD, Agent
    from call_routing.acd.keys import Keys
    from call_routing.acd.kpi import audit, read_log
    from call_routing.rules_store import RulesStore
    from runtime.supervisor import STATE_KEY
    from tools.simulate.agents import PASSWORD, SimAgent
    from tools.simulate.asterisk_pbx import SimAsterisk
    from tools.simulate.callers import CallRecord

    t0 = time.monotonic()
    shutil.copy(ROOT / "transfer_rules.yaml", tmp_path / "transfer_rules.yaml")  # the same file on both nodes
    shutil.copy(ROOT / "emergency_keywords.yaml", tmp_path / "emergency_keywords.yaml")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOTLINE_", "TWILIO_", "REDIS_", "DATABASE_", "VOSK_", "WEB_", "SECRET_"))}
    env.update(REDIS_URL=redis_url, DATABASE_URL=postgres, DATABASE_SCHEMA=schema, WEB_PROXY="off",
               WEB_WORKERS="1", RULES_PATH=str(tmp_path / "transfer_rules.yaml"), PYTHONUNBUFFERED="1",
               SECRET_KEY="two-nodes-one-secret", ADMIN_PASSWORD="two-nodes-admin-pw",
               HOTLINE_INVITE_AFTER_S="1", HOTLINE_WAIT_SESSION_S="2", LOG_LEVEL="WARNING")
    nodes = [_start_node(name, env, tmp_path) for name in ("node-a", "node-b")]  # together, on an empty schema
    centre = Centre(nodes)
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 45
        while not all(_healthy(n) for n in nodes):
            dead = [n for n in nodes if n.proc.poll() is not None]
            assert not dead and time.monotonic() < deadline, "\n".join(n.tail() for n in nodes)
            time.sleep(0.3)
        started_s = time.monotonic() - t0

        client = redis.Redis.from_url(redis_url, decode_responses=True)
        acd = ACD(client, RulesStore(tmp_path / "transfer_rules.yaml"))
        skills = {s: 50 for s, skill in acd.rules.skills.items() if not skill.expert}
        for i in range(SEATS):  # the admin's seats, once, in the shared Redis
            seat = f"seat{i}"
            acd.save_agent(Agent(seat, f"坐席{i}", skills, endpoints=(f"sip:{seat}@agents.invalid",)),
                           password=PASSWORD)
            agent = centre.agents[seat] = SimAgent(Via(centre, i), seat)  # signs in through node i % 2
            assert agent.login(), centre.stats.errors
            threading.Thread(target=agent.loop, args=(stop,), daemon=True).start()
        assert sorted(centre.logins) == ["node-a"] * 3 + ["node-b"] * 3

        records = [CallRecord(f"1700000016.{i}", "agi", "12345", "patient") for i in range(CALLS)]
        callers = []
        for i, rec in enumerate(records):  # a call every 50 ms, first session on node i % 2
            callers.append(threading.Thread(target=SimAsterisk(Via(centre, i)).call, args=(rec,), daemon=True))
            callers[-1].start()
            time.sleep(0.05)
        for t in callers:
            t.join(60)

        engine = sqlalchemy.create_engine(postgres)
        rows: list = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the worker writes rows and call ends; agents end wrap-up
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(f'SELECT * FROM "{schema}".tickets ORDER BY id').mappings().all()
            seats = [acd.agent(f"seat{i}") for i in range(SEATS)]
            if (len(rows) >= CALLS and all(r["call_outcome"] for r in rows)
                    and all(s["state"] == "ready" and not s["call"] for s in seats)):
                break
            time.sleep(0.3)
        with engine.connect() as conn:
            admins = conn.exec_driver_sql(f'SELECT count(*) FROM "{schema}".console_users').scalar()
        engine.dispose()
        served_s = time.monotonic() - t0

        # every caller reached a seat, and the seat that answered is the one the ACD connected
        assert [r.outcome for r in records] == ["connected"] * CALLS, \
            [(r.id, r.outcome, r.detail) for r in records if r.outcome != "connected"]
        assert centre.stats.errors == []
        events = list(read_log(client, Keys()))
        connects = {}
        for e in events:
            if e["e"] == "connect":
                connects.setdefault(e["call"], []).append(e["agent"])
        assert connects == {r.id: [r.agent] for r in records}  # each call connected once, to one seat
        # no seat ever held two calls, no call was offered to two seats (the ACD's own audit of its log)
        checked = audit(events)
        assert checked["double_assignments"] == 0 and checked["double_connects"] == 0
        assert checked["offers"] >= CALLS
        assert [e["e"] for e in events].count("complete") == CALLS
        assert all(s["state"] == "ready" and not s["call"] for s in seats), seats  # wrap-up done, via either node
        assert sorted(centre.logins) == ["node-a"] * 3 + ["node-b"] * 3  # tokens of one node good on the other
        assert sum(a.calls for a in centre.agents.values()) == CALLS

        # one ticket per call in PostgreSQL, its number the one the PBX was given, none shared
        assert len(rows) == CALLS and len({r["id"] for r in rows}) == CALLS
        assert {r["call_id"]: str(r["id"]) for r in rows} == {r.id: r.ticket for r in records}
        assert {r["call_outcome"] for r in rows} == {"completed"}
        assert len({r["id"] // 1000 for r in rows}) >= 2  # numbered by both nodes, each from its own block
        if "number" in rows[0]:  # the number people read (per China day), where tickets have one
            assert None not in {r["number"] for r in rows} and len({r["number"] for r in rows}) == CALLS
        assert admins == 1  # both nodes bootstrapped the first admin: one account
        for n in nodes:
            assert n.proc.poll() is None, n.tail()
            assert f"database   {postgres}   (schema {schema})" in n.log.read_text()  # what runs where
            assert "Traceback" not in n.log.read_text(), n.tail()
        # each node's processes in the one report, by node: one node's running worker never hides
        # the other's (before, both wrote "worker"; the last to report won)
        client.hset(STATE_KEY, "worker@node-c", json.dumps({  # a node gone without a word a minute ago
            "name": "worker", "state": "running", "pid": 7, "restarts": 0, "since": time.time() - 600,
            "last_exit": None, "reported": time.time() - 60}))
        with urllib.request.urlopen(f"http://127.0.0.1:{nodes[0].web}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        for process in ("worker@node-a", "timers@node-a", "fastagi@node-b", "worker@node-b"):
            assert f'hotline_process_up{{process="{process}"}} 1.0' in metrics
        assert 'hotline_process_up{process="worker@node-c"} 0.0' in metrics
        print(f"\ntwo nodes: healthy after {started_s:.1f} s, {CALLS} calls served by {served_s:.1f} s")
    finally:
        stop.set()
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        for n in nodes:
            try:
                n.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(n.proc.pid, signal.SIGKILL)
                n.proc.wait()
