"""Ticket numbers: the next hi/lo block is reserved in the background half-way through a block,
so the call path never waits for the database; numbers stay unique; a fork forgets blocks."""
from __future__ import annotations

import os
import threading

import pytest

from intake.tickets import TicketStore


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'ids.db'}"


def test_the_next_block_is_reserved_ahead_and_the_call_path_never_waits_for_it(db):
    store = TicketStore(db, drafts=None, id_block=20)
    on_call_path = []
    reserve = store._reserve_block

    def counted():
        if threading.current_thread().name != "ticket-ids-ahead":
            on_call_path.append(1)
        return reserve()

    store._reserve_block = counted
    ids = [store.allocate_id() for _ in range(19 * 5)]  # five blocks (19 numbers each)
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert len(on_call_path) == 1  # only the very first block was reserved while a caller waited


def test_numbers_stay_unique_across_stores_and_threads_with_blocks_reserved_ahead(db):
    a, b = TicketStore(db, drafts=None, id_block=10), TicketStore(db, drafts=None, id_block=10)
    seen, lock = [], threading.Lock()

    def take(store):
        for _ in range(150):
            n = store.allocate_id()
            with lock:
                seen.append(n)

    threads = [threading.Thread(target=take, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 600


def test_a_failed_reservation_ahead_is_retried_when_the_block_runs_out(db, caplog):
    store = TicketStore(db, drafts=None, id_block=10)
    first = [store.allocate_id() for _ in range(5)]  # half-way: the reservation ahead starts
    store._next_block["thread"].join()
    store._next_block.update(hi=None, error=RuntimeError("database away"))
    rest = [store.allocate_id() for _ in range(10)]
    assert len(set(first + rest)) == 15
    assert "reserving ticket ids ahead failed" in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_numbers_from_its_parent_s_block(db):
    store = TicketStore(db, drafts=None, id_block=100)
    parent_first = store.allocate_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(w, str(store.allocate_id()).encode())
        finally:
            os._exit(0)
    os.close(w)
    child = int(os.read(r, 64))
    os.waitpid(pid, 0)
    parent_next = store.allocate_id()
    assert child != parent_next and abs(child - parent_first) >= 99  # the child reserved its own block
