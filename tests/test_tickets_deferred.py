"""Ticket creation off the call path: numbers from hi/lo blocks (no database per call), drafts in
Redis, rows written by the ticket writer — or by whichever consumer touches the ticket first.
Real Redis, real SQLite, a real ``python -m intake.worker``."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from intake.jobs import CallTickets, requeue_unwritten, write_pending_tickets
from intake.tickets import TicketDrafts, TicketStore

ROOT = Path(__file__).resolve().parent.parent
CALLER = "13812345678"


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'tickets.db'}"


@pytest.fixture
def drafts(redis_url):
    return TicketDrafts(redis.Redis.from_url(redis_url, decode_responses=True))


def port(db, drafts, **kw):
    store = TicketStore(db, drafts=drafts, **kw)
    return CallTickets(store, drafts=drafts)


def test_opening_a_ticket_on_the_call_path_writes_no_row_and_the_writer_creates_it(db, drafts):
    tickets = port(db, drafts)
    store = tickets.store
    n_before = store.engine.pool.checkedout()
    ticket = tickets.open(call_id="CA1", line="12348", caller=CALLER, rules_version="v1", mode="dual")
    assert ticket.isdigit()
    with _plain(db) as plain:
        assert plain.by_call("CA1") is None  # nothing in the database yet
    assert drafts.r.lrange(drafts.pending, 0, -1) == ["CA1"]
    assert write_pending_tickets(store, drafts) == 1
    t = _plain(db).by_call("CA1")
    assert (str(t.id), t.entry_line, t.caller, t.rules_version) == (ticket, "12348", CALLER, "v1")
    assert drafts.r.llen(drafts.pending) == 0 and drafts.r.llen(drafts.writing) == 0
    assert store.engine.pool.checkedout() == n_before


def test_a_draft_left_by_the_previous_version_is_still_written_after_an_upgrade(db, drafts):
    # drafts used to be Redis hashes; calls opened just before an upgrade still have one
    drafts.r.hset("tickets:draft:CAold", mapping={"id": 4242, "call_id": "CAold", "line": "12301", "caller": CALLER,
                                                  "rules_version": "v0", "at": "2026-11-21T23:59:58+08:00"})
    drafts.r.set("tickets:draftid:4242", "CAold")
    drafts.r.rpush(drafts.pending, "CAold")
    assert drafts.by_id(4242)["entry_line"] == "12301"
    assert write_pending_tickets(TicketStore(db, drafts=drafts), drafts) == 1
    t = _plain(db).by_call("CAold")
    assert (t.id, t.entry_line, t.caller, t.rules_version) == (4242, "12301", CALLER, "v0")


class _plain:
    """A store that knows no drafts: what is really in the database."""

    def __init__(self, db):
        self.store = TicketStore(db, drafts=None)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.store.close()

    def by_call(self, call_id):
        return self.store.by_call(call_id)


@pytest.mark.parametrize("first", ["console_get", "transcript", "recording_flag", "survey", "close", "by_call"])
def test_whoever_touches_the_ticket_first_creates_it_with_the_calls_number_and_facts(db, drafts, first):
    tickets = port(db, drafts)
    store = tickets.store
    ticket = int(tickets.open(call_id="CAx", line="12301", caller=CALLER, rules_version="v7", mode="merge"))
    if first == "console_get":
        t = TicketStore(db, drafts=drafts).get(ticket)  # the agent console's own store
    elif first == "transcript":
        t = store.attach_transcript("CAx", text="我想咨询旅游投诉", status="ok", prefill={"type": "complaint"},
                                    entry_line="12345")
    elif first == "recording_flag":
        t = store.flag_manual_entry("CAx", "unreadable", recording="/rec/CAx.wav")
    elif first == "survey":
        t = store.record_call_end(ticket, "", survey="satisfied")
    elif first == "close":
        t = store.record_call_end(ticket, "abandoned")
    else:
        t = store.by_call("CAx")
    assert (t.id, t.entry_line, t.caller, t.rules_version) == (ticket, "12301", CALLER, "v7")
    # the writer comes later: nothing new, the same ticket
    assert write_pending_tickets(store, drafts) == 1
    assert _plain(db).by_call("CAx").id == ticket
    with _plain(db) as plain:
        assert [e["kind"] for e in plain.events(ticket)].count("opened") == 1


def test_ticket_numbers_never_collide_across_processes_restarts_and_a_lost_redis(db, drafts, redis_url):
    a, b = TicketStore(db, drafts=drafts, id_block=50), TicketStore(db, drafts=drafts, id_block=50)
    seen = []

    def take(store, n):
        for _ in range(n):
            seen.append(store.allocate_id())

    threads = [threading.Thread(target=take, args=(s, 120)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 480
    drafts.r.flushdb()  # Redis restarted empty: numbers do not come from Redis
    c = TicketStore(db, drafts=drafts, id_block=50)  # a restarted process: a fresh block
    fresh = [c.allocate_id() for _ in range(60)]
    assert min(fresh) > max(seen) and len(set(fresh)) == 60
    # a ticket opened without a number (older callers) takes one from the same blocks
    t = c.open_ticket("CAold", "12345", CALLER)
    assert t.id not in seen and t.id not in fresh


def test_a_writer_killed_mid_write_loses_nothing(db, drafts):
    tickets = port(db, drafts)
    for i in range(3):
        tickets.open(call_id=f"CAk{i}", line="12345", caller=CALLER, rules_version="v", mode="main")
    drafts.r.lmove(drafts.pending, drafts.writing, "LEFT", "RIGHT")  # taken, then the worker died
    assert requeue_unwritten(drafts) == 1
    assert write_pending_tickets(tickets.store, drafts) == 3
    with _plain(db) as plain:
        assert all(plain.by_call(f"CAk{i}") for i in range(3))


def test_the_worker_process_writes_the_drafts(db, drafts, redis_url):
    tickets = port(db, drafts)
    ids = [tickets.open(call_id=f"CAw{i}", line="12345", caller=CALLER, rules_version="v", mode="main")
           for i in range(5)]
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=db, PYTHONPATH=str(ROOT))
    env.pop("VOSK_MODEL_PATH", None)
    done = subprocess.run([sys.executable, "-m", "intake.worker", "--burst", "--no-scheduler", "--url", redis_url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with _plain(db) as plain:
        assert [str(plain.by_call(f"CAw{i}").id) for i in range(5)] == ids
    assert drafts.r.llen(drafts.pending) == 0


def test_without_redis_the_ticket_is_written_at_once(db):
    tickets = CallTickets(TicketStore(db, drafts=None))
    ticket = tickets.open(call_id="CAsync", line="12345", caller=CALLER, rules_version="v", mode="main")
    with _plain(db) as plain:
        assert str(plain.by_call("CAsync").id) == ticket
