"""Ticket numbers handed out in blocks (hi/lo), so the call path numbers a ticket without the database."""
from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .ticket_db import TicketRow, TicketSeq
from .ticket_model import log


class TicketIds:
    """The numbering part of :class:`intake.tickets.TicketStore` (its state is set up there)."""

    def allocate_id(self) -> int:
        """A ticket id, without the database for all but one call in ``id_block``: ids come in
        blocks reserved with one statement (hi/lo), so they never collide — across processes,
        Redis restarts or database fail-overs — and a restarted process only leaves a gap."""
        with self._ids_lock:
            n = next(self._ids, None)
            if n is None:
                hi = self._take_next_block()
                self._ids = iter(range(hi * self.id_block + 1, (hi + 1) * self.id_block))
                self._ids_left = self.id_block - 1
                n = next(self._ids)
            self._ids_left -= 1
            if self._ids_left == self.id_block // 2 and self._next_block is None:
                self._reserve_ahead()
            return n

    def _reserve_ahead(self) -> None:
        """Half-way through a block, reserve the next one in a thread: the call path then never
        waits for the database (a slow or locked database costs the caller nothing)."""
        import threading

        ahead: dict = {"hi": None, "error": None}

        def run():
            try:
                ahead["hi"] = self._reserve_block()
            except Exception as exc:  # taken again on the call path when the block runs out
                ahead["error"] = exc

        ahead["thread"] = threading.Thread(target=run, name="ticket-ids-ahead", daemon=True)
        self._next_block = ahead
        ahead["thread"].start()

    def _take_next_block(self) -> int:
        ahead, self._next_block = self._next_block, None
        if ahead is not None:
            ahead["thread"].join()
            if ahead["hi"] is not None:
                return ahead["hi"]
            log.warning("reserving ticket ids ahead failed (%s); reserving now", ahead["error"])
        return self._reserve_block()

    def _forget_blocks(self) -> None:
        """After a fork: the parent's blocks are the parent's (its reservation thread is gone too)."""
        import threading

        self._ids, self._ids_left, self._next_block = iter(()), 0, None
        self._ids_lock = threading.Lock()

    def _reserve_block(self) -> int:
        try:
            return self._reserve_block_once()
        except IntegrityError:  # PostgreSQL: another process (another node) seeded the numbering this moment
            return self._reserve_block_once()

    def _reserve_block_once(self) -> int:
        # the common case in one statement, without the ORM (it runs while calls are served)
        seq = TicketSeq.__table__
        with self.engine.begin() as conn:
            top = conn.execute(update(seq).where(seq.c.name == "tickets").values(hi=seq.c.hi + 1)
                               .returning(seq.c.hi)).scalar()
        if top is not None:
            return top - 1
        with self._session.begin() as s:  # the first block ever: seeded above the highest ticket
            row = s.scalar(select(TicketSeq).where(TicketSeq.name == "tickets").with_for_update())
            if row is None:
                top = s.scalar(select(func.max(TicketRow.id))) or 0
                row = TicketSeq(name="tickets", hi=top // self.id_block + 1)
                s.add(row)
            hi = row.hi
            row.hi = hi + 1
        return hi
