"""The ticket store: one ticket per call, pre-filled by machine, confirmed by an agent.

SQLAlchemy 2 over SQLite (default, ``var/hotline.db`` in the checkout) or PostgreSQL (``DATABASE_URL``).

Lifecycle (``status``)::

    open ──(transcript + pre-fill)──────────────┐
      │                                         ├─> confirmed ─> finished ─> handed_off
      └─(no usable transcript)─> manual_entry ──┘

* Every pre-filled field is stored with its ``source`` (``machine`` or ``agent``) and whether
  an agent ``confirmed`` it. The machine never overwrites what an agent wrote.
* Deadlines run on China's working-day calendar: contact the caller within 1 hour; done in
  5 working days (15 for enterprise requests); extensions add at most 10 working days in all.
* The same caller on the same matter within ``link_window`` links to the earlier ticket
  (重复件); 10 or more callers on the same matter, or about the same unit, within
  ``supervision_window`` raise a supervision flag (督办) on all of those tickets.
* The caller's number is stored in full (agents call back, return visits need it) but never
  logged, and shown masked to every role outside :data:`CALLER_ROLES`.

The store is composed here of its parts (ticket_opening, ticket_agent, ticket_supervision, ticket_ids);
ticket_model, ticket_db and ticket_drafts hold what they share, importable from here as before.
"""
from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from typing import Callable

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from call_routing.rules import CHINA_TZ
from call_routing.workdays import WorkdayCalendar, default_calendar

# the parts of the store, and every name this module had before they moved (imported from here)
from .ticket_agent import TicketAgent
from .ticket_db import (DEFAULT_DATABASE_URL, Base, SupervisionRow, TicketEvent, TicketRow,  # noqa: F401
                        TicketSeq, UTCDateTime, create_tables, database_schema, database_url, make_engine)
from .ticket_drafts import DRAFT_TTL_S, TicketDrafts, _from_draft  # noqa: F401
from .ticket_ids import TicketIds
from .ticket_model import (CALLER_ROLES, FIELDS, STATUSES, SUPERVISED_TYPES, TRANSCRIPT_STATUSES,  # noqa: F401
                           ExtensionRefused, NoSuchTicket, Ticket, TicketError, TicketPolicy, _snapshot, log)
from .ticket_opening import TicketOpening
from .ticket_recordings import CallRecording, TicketRecordings  # noqa: F401
from .ticket_supervision import TicketSupervision

#: the most tickets :meth:`TicketStore.search` returns at once
MAX_PAGE_SIZE = 200


class TicketStore(TicketIds, TicketOpening, TicketAgent, TicketSupervision, TicketRecordings):
    """Create, fill, confirm, finish and hand off tickets. Thread- and process-safe."""

    def __init__(self, url: str | None = None, *, schema: str | None = None, policy: TicketPolicy | None = None,
                 calendar: WorkdayCalendar | None = None, clock: Callable[[], datetime] | None = None,
                 create: bool = True, drafts: "TicketDrafts | None | str" = "env", id_block: int | None = None):
        import threading

        self.url = database_url(url)
        #: where drafts of tickets not yet written are found ("env": Redis at REDIS_URL, when set)
        self._drafts = drafts
        self.id_block = int(id_block or os.environ.get("TICKET_ID_BLOCK") or 1000)
        self._ids = iter(())
        self._ids_left = 0
        self._ids_lock = threading.Lock()
        self._next_block: dict | None = None  # the block reserved ahead: {"thread", "hi", "error"}
        if hasattr(os, "register_at_fork"):  # a forked child must never number from its parent's blocks
            import weakref

            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: (store := ref()) is not None and store._forget_blocks())
        self.schema = database_schema(schema)
        self.engine = make_engine(self.url, self.schema)
        self.policy = policy or TicketPolicy()
        self.calendar = calendar or default_calendar()
        self.clock = clock or (lambda: datetime.now(CHINA_TZ))
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            self.create_tables()
            self._add_number_column()

    def create_tables(self) -> None:
        create_tables(self.engine, Base.metadata, self.schema)

    def _add_number_column(self) -> None:
        """A database created before tickets had numbers people read gets the column (its older
        tickets show their id)."""
        from sqlalchemy import inspect

        table = f'"{self.schema}".tickets' if self.schema else "tickets"
        with self.engine.begin() as conn:
            if "number" in {c["name"] for c in inspect(conn).get_columns("tickets", schema=self.schema)}:
                return
            exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN{exists} number VARCHAR(16)"))
            conn.execute(text(f"CREATE UNIQUE INDEX IF NOT EXISTS ix_tickets_number ON {table} (number)"))
            log.info("tickets: added the column of day numbers")

    def drop_tables(self) -> None:
        Base.metadata.drop_all(self.engine)
        if self.schema:
            with self.engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    def close(self) -> None:
        self.engine.dispose()

    @property
    def drafts(self) -> TicketDrafts | None:
        if self._drafts == "env":
            self._drafts = TicketDrafts.from_env()
        return self._drafts

    # -- reading ---------------------------------------------------------------------------

    @_from_draft
    def get(self, ticket_id: int) -> Ticket:
        with self._session() as s:
            return _snapshot(self._row(s, ticket_id))

    def by_call(self, call_id: str) -> Ticket | None:
        for attempt in (1, 2):
            with self._session() as s:
                row = s.scalar(select(TicketRow).where(TicketRow.call_id == call_id))
                if row is not None:
                    return _snapshot(row)
            if attempt == 2 or not self._create_from_draft(call_id=call_id):
                return None
        return None

    def events(self, ticket_id: int) -> list[dict]:
        with self._session() as s:
            rows = s.scalars(select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id))
            return [{"at": e.at.astimezone(CHINA_TZ).isoformat(timespec="seconds"), "actor": e.actor,
                     "kind": e.kind, "detail": e.detail} for e in rows]

    def numbers(self, ticket_ids) -> dict[int, str]:
        """The number people read for each of ``ticket_ids`` whose row exists (one query)."""
        ids = {int(i) for i in ticket_ids if str(i).isdigit()}
        if not ids:
            return {}
        with self._session() as s:
            rows = s.execute(select(TicketRow.id, TicketRow.number).where(TicketRow.id.in_(ids)))
            return {i: n or str(i) for i, n in rows}

    def search(self, *, ticket_id: int | None = None, number: str | None = None, day: date | None = None, line: str | None = None,
               request_type: str | None = None, status: str | None = None, overdue: bool = False,
               supervision: bool = False, caller_digits: str | None = None, page: int = 1,
               per_page: int = 50, at: datetime | None = None) -> tuple[list[Ticket], int]:
        """Tickets matching every filter given, newest first, one page of them, and how many match.

        ``number``: the number people read (``20261206-0001``); ``day``: received that day (China time); ``line``: the entry line; ``overdue``: past the
        done-by deadline and not finished; ``caller_digits``: the caller's number ends with them.
        ``per_page`` is at most :data:`MAX_PAGE_SIZE`. Tickets still only drafts are not listed."""
        per_page = max(1, min(int(per_page), MAX_PAGE_SIZE))
        page = max(1, int(page))
        where = []
        if ticket_id is not None:
            where.append(TicketRow.id == ticket_id)
        if number is not None:
            where.append(TicketRow.number == number)
        if day is not None:
            start = datetime(day.year, day.month, day.day, tzinfo=CHINA_TZ)
            where += [TicketRow.created_at >= start, TicketRow.created_at < start + timedelta(days=1)]
        if line:
            where.append(TicketRow.entry_line == line)
        if request_type:
            where.append(TicketRow.request_type == request_type)
        if status:
            where.append(TicketRow.status == status)
        if overdue:
            where += [TicketRow.due_at < (at or self.clock()), TicketRow.status.not_in(("finished", "handed_off"))]
        if supervision:
            where.append(TicketRow.supervision.is_(True))
        if caller_digits:
            if not caller_digits.isdigit():
                raise TicketError("caller_digits must be digits")
            where.append(TicketRow.caller.like(f"%{caller_digits}"))
        with self._session() as s:
            total = s.scalar(select(func.count()).select_from(TicketRow).where(*where)) or 0
            rows = s.scalars(select(TicketRow).where(*where).order_by(TicketRow.created_at.desc(), TicketRow.id.desc())
                             .offset((page - 1) * per_page).limit(per_page))
            return [_snapshot(r) for r in rows], int(total)

    def confirmed_by_agents(self, limit: int = 20000) -> list[Ticket]:
        """Tickets an agent confirmed (confirmed, finished, handed off) whose transcript was
        heard, newest first, at most ``limit``: what the pre-fill may learn from
        (``python -m intake.harvest``)."""
        with self._session() as s:
            rows = s.scalars(select(TicketRow).where(
                TicketRow.status.in_(("confirmed", "finished", "handed_off")), TicketRow.transcript_status == "ok",
                TicketRow.transcript.is_not(None)).order_by(TicketRow.created_at.desc(), TicketRow.id.desc())
                .limit(max(0, int(limit))))
            return [_snapshot(r) for r in rows]

    def overdue_contact(self, at: datetime | None = None) -> list[Ticket]:
        """Tickets whose caller has not been contacted within the contact limit (1 h)."""
        at = at or self.clock()
        with self._session() as s:
            rows = s.scalars(select(TicketRow).where(TicketRow.contacted_at.is_(None), TicketRow.contact_due < at,
                                                     TicketRow.status.in_(("open", "manual_entry", "confirmed"))))
            return [_snapshot(r) for r in rows]

    # -- internals -------------------------------------------------------------------------

    def _row(self, s: Session, ticket_id: int) -> TicketRow:
        row = s.get(TicketRow, ticket_id)
        if row is None:
            raise NoSuchTicket(f"no ticket {ticket_id}")
        return row

    def _row_for_update(self, s: Session, *, ticket_id: int | None = None, call_id: str | None = None) -> TicketRow:
        q = select(TicketRow).with_for_update()
        q = q.where(TicketRow.id == ticket_id) if ticket_id is not None else q.where(TicketRow.call_id == call_id)
        row = s.scalar(q)
        if row is None:
            raise NoSuchTicket(f"no ticket {ticket_id if ticket_id is not None else 'for call ' + str(call_id)}")
        return row

    def _event(self, s: Session, row: TicketRow, actor: str, kind: str, detail: dict) -> None:
        s.add(TicketEvent(ticket_id=row.id, at=self.clock(), actor=actor, kind=kind, detail=detail))


__all__ = ["TicketStore", "TicketDrafts", "Ticket", "TicketPolicy", "TicketError", "ExtensionRefused", "NoSuchTicket",
           "CALLER_ROLES", "FIELDS", "STATUSES", "make_engine", "database_url"]
