"""The ticket numbers people read: ``20261206-0001``, the China day of opening and a sequence
1..N per day with no gap and no duplicate, however the internal ids jump (hi/lo blocks, one per
process) and however many threads and processes write tickets at once — on SQLite and PostgreSQL."""
from __future__ import annotations

import multiprocessing
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import IntegrityError

from call_routing.rules import CHINA_TZ
from intake.tickets import TicketStore
from ticket_db import fresh_schema, postgres_reachable, postgres_url

DAY = datetime(2026, 12, 6, 9, 30, tzinfo=CHINA_TZ)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    """(url, schema) of an empty ticket database; the PostgreSQL schema is dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'numbers.db'}", None
        return
    why = postgres_reachable()
    if why:
        pytest.skip(why)
    schema = fresh_schema()
    yield postgres_url(), schema
    TicketStore(postgres_url(), schema=schema, drafts=None).drop_tables()


def store_of(db, at=DAY, block=10) -> TicketStore:
    url, schema = db
    return TicketStore(url, schema=schema, drafts=None, id_block=block, clock=lambda: at)


def sequence(numbers, day="20261206") -> list[int]:
    numbers = list(numbers)
    assert all(n.startswith(day + "-") for n in numbers), numbers
    return sorted(int(n.split("-")[1]) for n in numbers)


def test_numbers_run_one_to_n_per_day_with_threads_on_several_stores(db):
    stores = [store_of(db) for _ in range(3)]  # three processes' worth of id blocks
    made, lock = [], threading.Lock()

    def open_some(store, who):
        for i in range(15):
            t = store.open_ticket(f"CA{who}-{i}", "12345", "13800138000")
            with lock:
                made.append(t)

    threads = [threading.Thread(target=open_some, args=(stores[i % 3], i)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = sorted(t.id for t in made)
    assert ids[-1] - ids[0] > len(ids)  # the internal ids jump between blocks …
    assert sequence(t.number for t in made) == list(range(1, 91))  # … the numbers people read do not
    assert made[0].view("agent")["number"] == made[0].number
    (found,), total = stores[0].search(number=made[0].number)
    assert total == 1 and found.id == made[0].id
    for s in stores:
        s.close()


def _open_in_child(url, schema, who, count, out):
    store = TicketStore(url, schema=schema, drafts=None, id_block=7, clock=lambda: DAY)
    out.put([store.open_ticket(f"CAproc{who}-{i}", "12345", None).number for i in range(count)])
    store.close()


def test_numbers_stay_gap_free_with_several_processes_writing_at_once(db):
    store_of(db).close()  # the tables exist before the processes start, as under ./run.sh
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_open_in_child, args=(*db, who, 12, out)) for who in range(4)]
    for p in procs:
        p.start()
    numbers = [n for _ in procs for n in out.get(timeout=60)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sequence(numbers) == list(range(1, 49))


def test_an_insert_that_fails_gives_its_number_back(db):
    store = store_of(db)
    first = store.open_ticket("CAfirst", "12345", None)
    with pytest.raises(IntegrityError):  # a second row with the same id: the insert is rolled back
        store.open_ticket("CAclash", "12345", None, ticket_id=first.id)
    again = store.open_ticket("CAfirst", "12345", None)  # the same call: its ticket, no new number
    second = store.open_ticket("CAsecond", "12345", None)
    assert (first.number, again.number, second.number) == ("20261206-0001", "20261206-0001", "20261206-0002")
    store.close()


def test_a_new_china_day_starts_again_at_0001(db):
    before_midnight = datetime(2026, 12, 6, 15, 59, 59, tzinfo=timezone.utc)  # 23:59:59 in Beijing
    store = store_of(db)
    a = store.open_ticket("CAlate", "12345", None, at=before_midnight)
    b = store.open_ticket("CAmidnight", "12345", None, at=before_midnight + timedelta(seconds=1))
    c = store.open_ticket("CAnext", "12345", None, at=before_midnight + timedelta(hours=3))
    assert (a.number, b.number, c.number) == ("20261206-0001", "20261207-0001", "20261207-0002")
    store.close()
