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
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator,
                        create_engine, event, func, select, text, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from call_routing.numbers import mask
from call_routing.rules import CHINA_TZ, Rules
from call_routing.workdays import WorkdayCalendar, default_calendar

log = logging.getLogger("hotline.tickets")

#: SQLite inside the checkout's var/ (created on first use); PostgreSQL in production via DATABASE_URL.
DEFAULT_DATABASE_URL = f"sqlite:///{Path(__file__).resolve().parent.parent / 'var' / 'hotline.db'}"
STATUSES = ("open", "manual_entry", "confirmed", "finished", "handed_off")
TRANSCRIPT_STATUSES = ("pending", "ok", "empty", "no_model", "unreadable", "failed")
#: Fields the pre-fill writes and agents confirm or correct.
FIELDS = ("type", "line", "skill", "department", "emergency", "enterprise", "location", "unit", "subject",
          "numbers")
#: Roles that see the caller's number and the numbers said in full.
CALLER_ROLES = frozenset({"agent", "supervisor"})
#: Request types that count towards supervision (a wave of questions is not a failing unit).
SUPERVISED_TYPES = frozenset({"help", "complaint", "report"})


class TicketError(Exception):
    """A ticket operation that cannot be done; the message is meant for the agent."""


class ExtensionRefused(TicketError):
    """An extension beyond the allowed working days."""


class NoSuchTicket(TicketError, LookupError):
    pass


@dataclass(frozen=True)
class TicketPolicy:
    """The city's time limits and thresholds (configurable per city)."""

    contact_within: timedelta = timedelta(hours=1)
    days_general: int = 5
    days_enterprise: int = 15
    max_extension_days: int = 10
    link_window: timedelta = timedelta(hours=24)
    supervision_window: timedelta = timedelta(hours=24)
    supervision_threshold: int = 10


# ---------------------------------------------------------------------------------------
# Schema


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (no time zones) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=CHINA_TZ)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class TicketRow(Base):
    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(String(128), unique=True)
    entry_line: Mapped[str] = mapped_column(String(16))
    caller: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    manual_reason: Mapped[str | None] = mapped_column(Text)
    transcript: Mapped[str | None] = mapped_column(Text)
    transcript_confidence: Mapped[float | None] = mapped_column(Float)
    transcript_status: Mapped[str] = mapped_column(String(16), default="pending")
    recording: Mapped[str | None] = mapped_column(Text)
    fields: Mapped[dict] = mapped_column(JSON, default=dict)
    matter_key: Mapped[str | None] = mapped_column(String(256), index=True)
    unit_key: Mapped[str | None] = mapped_column(String(256), index=True)
    request_type: Mapped[str | None] = mapped_column(String(16))
    enterprise: Mapped[bool] = mapped_column(Boolean, default=False)
    linked_to_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    supervision: Mapped[bool] = mapped_column(Boolean, default=False)
    rules_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    contact_due: Mapped[datetime] = mapped_column(UTCDateTime)
    base_due: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    extension_days: Mapped[int] = mapped_column(Integer, default=0)
    contacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[str | None] = mapped_column(Text)
    handed_off_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    handoff_ref: Mapped[str | None] = mapped_column(String(128))
    handoff_error: Mapped[str | None] = mapped_column(Text)
    call_outcome: Mapped[str | None] = mapped_column(String(16))  # completed | abandoned | …
    survey: Mapped[str | None] = mapped_column(String(32))  # satisfied / basically_satisfied / dissatisfied


class TicketEvent(Base):
    """What happened to a ticket, by whom: the audit trail agents and supervisors read."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class TicketSeq(Base):
    """Ticket ids handed out in blocks (hi/lo): a process reserves ``block`` ids with one
    statement and numbers tickets from them without the database (see :meth:`TicketStore.allocate_id`)."""

    __tablename__ = "ticket_seq"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    hi: Mapped[int] = mapped_column(Integer)  # the next block to hand out


class SupervisionRow(Base):
    """A supervision flag (督办): many callers on one matter or one unit."""

    __tablename__ = "supervisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # matter | unit
    key: Mapped[str] = mapped_column(String(256), index=True)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    callers: Mapped[int] = mapped_column(Integer)
    ticket_ids: Mapped[list] = mapped_column(JSON, default=list)


# ---------------------------------------------------------------------------------------
# What callers of the store get back


_PHONE_OR_ID = re.compile(r"(?<![0-9])(1[3-9][0-9]{9}|[1-9][0-9]{16}[0-9Xx]|0[1-9][0-9]{1,2}-?[2-9][0-9]{6,7})(?![0-9])")


def _mask_said(value: str) -> str:
    return _PHONE_OR_ID.sub(lambda m: mask(m.group(0)) if len(m.group(0)) < 18 else m.group(0)[:4] + "*" * 10
                            + m.group(0)[-4:], value)


@dataclass(frozen=True)
class Ticket:
    """A snapshot of one ticket. ``view(role)`` is what a screen or API may show that role."""

    id: int
    call_id: str
    entry_line: str
    caller: str | None
    status: str
    manual_reason: str | None
    transcript: str | None
    transcript_confidence: float | None
    transcript_status: str
    recording: str | None
    fields: dict
    linked_to: int | None
    supervision: bool
    rules_version: str | None
    created_at: datetime
    updated_at: datetime
    contact_due: datetime
    due_at: datetime
    extension_days: int
    finished_at: datetime | None
    result: str | None
    handed_off_at: datetime | None
    handoff_ref: str | None
    handoff_error: str | None
    call_outcome: str | None = None
    survey: str | None = None

    def value(self, name: str, default: Any = None) -> Any:
        entry = self.fields.get(name)
        return entry["value"] if entry else default

    @property
    def unconfirmed(self) -> list[str]:
        return [n for n, e in self.fields.items() if not e.get("confirmed")]

    def view(self, role: str) -> dict:
        """The ticket as ``role`` may see it: the caller and numbers said are masked unless the
        role is in :data:`CALLER_ROLES`."""
        full = role in CALLER_ROLES
        fields = {n: dict(e) for n, e in self.fields.items()}
        if not full and "numbers" in fields and isinstance(fields["numbers"].get("value"), dict):
            nums = dict(fields["numbers"]["value"])
            nums["phones"] = [mask(p) for p in nums.get("phones", [])]
            nums["id_cards"] = [_mask_said(i) for i in nums.get("id_cards", [])]
            fields["numbers"]["value"] = nums
        iso = lambda d: d.astimezone(CHINA_TZ).isoformat(timespec="seconds") if d else None  # noqa: E731
        return {
            "id": self.id, "call_id": self.call_id, "entry_line": self.entry_line,
            "caller": self.caller if full else mask(self.caller),
            "status": self.status, "manual_reason": self.manual_reason,
            "transcript": (self.transcript if full or not self.transcript else _mask_said(self.transcript)),
            "transcript_confidence": self.transcript_confidence, "transcript_status": self.transcript_status,
            "recording": self.recording, "fields": fields, "unconfirmed": self.unconfirmed,
            "linked_to": self.linked_to, "supervision": self.supervision, "rules_version": self.rules_version,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "contact_due": iso(self.contact_due), "due_at": iso(self.due_at),
            "extension_days": self.extension_days, "finished_at": iso(self.finished_at), "result": self.result,
            "handed_off_at": iso(self.handed_off_at), "handoff_ref": self.handoff_ref,
            "handoff_error": self.handoff_error, "call_outcome": self.call_outcome, "survey": self.survey,
        }

    def __repr__(self) -> str:  # never print a caller's number, even in a traceback
        return f"Ticket(id={self.id}, call_id={self.call_id!r}, caller={mask(self.caller)!r}, status={self.status!r})"


def _snapshot(row: TicketRow) -> Ticket:
    return Ticket(
        id=row.id, call_id=row.call_id, entry_line=row.entry_line, caller=row.caller, status=row.status,
        manual_reason=row.manual_reason, transcript=row.transcript,
        transcript_confidence=row.transcript_confidence, transcript_status=row.transcript_status,
        recording=row.recording, fields={k: dict(v) for k, v in (row.fields or {}).items()},
        linked_to=row.linked_to_id, supervision=row.supervision, rules_version=row.rules_version,
        created_at=row.created_at, updated_at=row.updated_at, contact_due=row.contact_due, due_at=row.due_at,
        extension_days=row.extension_days, finished_at=row.finished_at, result=row.result,
        handed_off_at=row.handed_off_at, handoff_ref=row.handoff_ref, handoff_error=row.handoff_error,
        call_outcome=row.call_outcome, survey=row.survey,
    )


# ---------------------------------------------------------------------------------------
# Drafts: a call's ticket before its row exists


DRAFT_TTL_S = 7 * 86400


class TicketDrafts:
    """What the call path knows of a ticket before the database row exists, kept in Redis.

    The call path numbers the ticket (:meth:`TicketStore.allocate_id`, no database) and writes a
    draft — in the same pipeline as the call's own state — and the ticket writer
    (:func:`intake.jobs.write_pending_tickets`, in ``python -m intake.worker``) turns drafts into rows.
    Every reader and writer of a ticket (jobs, agent console, survey, close) creates the row
    from the draft when it is not there yet, so the order of jobs never matters.

    Keys: ``tickets:draft:<call_id>`` (one JSON value, set with its expiry in one command: the
    draft is written on every call's first webhook), ``tickets:draftid:<ticket id>`` (call id),
    ``tickets:pending`` (list of call ids to write), ``tickets:writing`` (being written). Drafts
    written as hashes by earlier versions are still read.
    """

    def __init__(self, client, prefix: str = "tickets:"):
        self.r, self.prefix = client, prefix
        self.pending, self.writing = f"{prefix}pending", f"{prefix}writing"

    @classmethod
    def from_env(cls) -> "TicketDrafts | None":
        url = os.environ.get("REDIS_URL")
        if not url:
            return None
        import redis

        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=3, socket_connect_timeout=2))

    def key(self, call_id: str) -> str:
        return f"{self.prefix}draft:{call_id}"

    def put(self, pipe, *, ticket_id: int, call_id: str, line: str, caller: str | None, rules_version: str | None,
            at: datetime) -> None:
        """Queue the draft's commands on ``pipe`` (the caller executes it)."""
        pipe.set(self.key(call_id), _DRAFT_JSON.encode({"id": ticket_id, "call_id": call_id, "line": line or "",
                                                        "caller": caller or "", "rules_version": rules_version or "",
                                                        "at": at.isoformat()}), ex=DRAFT_TTL_S)
        pipe.set(f"{self.prefix}draftid:{ticket_id}", call_id, ex=DRAFT_TTL_S)
        pipe.rpush(self.pending, call_id)

    def by_call(self, call_id: str) -> dict | None:
        from redis.exceptions import ResponseError

        try:
            raw = self.r.get(self.key(call_id))
            d = json.loads(raw) if raw else None
        except ResponseError:  # WRONGTYPE: a hash draft written by an earlier version
            d = {_str(k): _str(v) for k, v in self.r.hgetall(self.key(call_id)).items()} or None
        if not d:
            return None
        return {"ticket_id": int(d["id"]), "call_id": d["call_id"], "entry_line": d["line"] or "12345",
                "caller": d["caller"] or None, "rules_version": d["rules_version"] or None,
                "at": datetime.fromisoformat(d["at"])}

    def by_id(self, ticket_id: int) -> dict | None:
        call_id = self.r.get(f"{self.prefix}draftid:{ticket_id}")
        return self.by_call(_str(call_id)) if call_id else None


_DRAFT_JSON = json.JSONEncoder(ensure_ascii=False)


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _from_draft(method):
    """A ticket that exists only as a draft yet is created from it, then the call is retried."""
    import functools

    @functools.wraps(method)
    def wrapper(self, ticket_id, *args, **kwargs):
        try:
            return method(self, ticket_id, *args, **kwargs)
        except NoSuchTicket:
            created = self._create_from_draft(ticket_id=ticket_id)
            if not created:
                raise
            # the draft's call already had its ticket (a call registered again after Redis lost
            # its state): that row is the call's ticket, the second number is only an alias
            return method(self, created if created is not True else ticket_id, *args, **kwargs)
    return wrapper


# ---------------------------------------------------------------------------------------
# The store


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def _wal(dbapi_connection, wait_s: float = 30.0) -> None:
    """Switch a SQLite file to WAL. Several processes opening a fresh file at once (the FastAGI
    server's ``--processes``, the rq worker) race for it, and SQLite answers the loser "database
    is locked" at once, without its busy timeout: wait for the winner instead."""
    import sqlite3
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str | None = None, schema: str | None = None) -> Engine:
    """An engine for ``url``; ``schema`` (PostgreSQL) keeps the tables in their own schema."""
    url = database_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database not in (None, "", ":memory:"):
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            if u.database not in (None, "", ":memory:"):
                _wal(dbapi_connection)
                # WAL + NORMAL: no fsync per commit (a power cut may lose the last commits, never
                # corrupts); a ticket insert on the call path then costs well under a millisecond
                dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # take the write lock up front: a read that later writes would otherwise fail with
            # "database is locked" instead of waiting for the other writer
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if schema:
        engine = engine.execution_options(schema_translate_map={None: schema})
    return engine


def _matter_key(fields: dict) -> str | None:
    line = _val(fields, "line")
    if not line:
        return None
    where = _val(fields, "location") or _val(fields, "subject")
    return f"{line}|{where}" if where else None


def _unit_key(fields: dict) -> str | None:
    unit = _val(fields, "unit")
    return str(unit).strip() or None if unit else None


def _val(fields: dict, name: str):
    entry = fields.get(name)
    return entry.get("value") if entry else None


class TicketStore:
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
        self.schema = schema
        self.engine = make_engine(self.url, schema)
        self.policy = policy or TicketPolicy()
        self.calendar = calendar or default_calendar()
        self.clock = clock or (lambda: datetime.now(CHINA_TZ))
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            self.create_tables()

    def create_tables(self) -> None:
        if self.schema:
            with self.engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
        Base.metadata.create_all(self.engine)

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

    def _create_from_draft(self, *, ticket_id: int | None = None, call_id: str | None = None) -> int | bool:
        """Create the row of a draft; returns the id of the call's row (False: no draft)."""
        drafts = self.drafts
        if drafts is None:
            return False
        try:
            d = drafts.by_id(int(ticket_id)) if ticket_id is not None else drafts.by_call(call_id)
        except Exception:  # Redis unreachable: the row is simply not there yet
            log.exception("ticket drafts unreachable")
            return False
        if d is None:
            return False
        t = self.open_ticket(d["call_id"], d["entry_line"], d["caller"], rules_version=d["rules_version"], at=d["at"],
                             ticket_id=d["ticket_id"], from_draft=False)
        return t.id or True

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

    def supervisions(self) -> list[dict]:
        with self._session() as s:
            rows = s.scalars(select(SupervisionRow).order_by(SupervisionRow.id))
            return [{"kind": r.kind, "key": r.key, "callers": r.callers, "ticket_ids": list(r.ticket_ids),
                     "raised_at": r.raised_at.astimezone(CHINA_TZ).isoformat(timespec="seconds")} for r in rows]

    def overdue_contact(self, at: datetime | None = None) -> list[Ticket]:
        """Tickets whose caller has not been contacted within the contact limit (1 h)."""
        at = at or self.clock()
        with self._session() as s:
            rows = s.scalars(select(TicketRow).where(TicketRow.contacted_at.is_(None), TicketRow.contact_due < at,
                                                     TicketRow.status.in_(("open", "manual_entry", "confirmed"))))
            return [_snapshot(r) for r in rows]

    # -- the call --------------------------------------------------------------------------

    def open_ticket(self, call_id: str, entry_line: str, caller: str | None = None, *,
                    rules_version: str | None = None, recording: str | None = None,
                    at: datetime | None = None, ticket_id: int | None = None, from_draft: bool = True) -> Ticket:
        """The ticket for a call (idempotent per ``call_id``). When the call path left a draft
        (:class:`TicketDrafts`), the row is created from it — its number, line, caller and
        intake time — whatever the arguments say: the first one to touch the ticket creates it."""
        if ticket_id is None:
            with self._session() as s:
                found = s.scalar(select(TicketRow).where(TicketRow.call_id == call_id))
                if found is not None and not (recording and not found.recording):
                    return _snapshot(found)
            if found is None and from_draft and self._create_from_draft(call_id=call_id):
                return self.open_ticket(call_id, entry_line, caller, recording=recording, from_draft=False)
            if found is None:
                ticket_id = self.allocate_id()  # outside the write transaction (SQLite: one writer)
        at = at or self.clock()
        with self._session.begin() as s:
            row = s.scalar(select(TicketRow).where(TicketRow.call_id == call_id))
            if row is not None:
                if recording and not row.recording:
                    row.recording = recording
                return _snapshot(row)
            base_due = self.calendar.add_workdays(at, self.policy.days_general)
            row = TicketRow(id=ticket_id, call_id=call_id,
                            entry_line=entry_line, caller=caller, status="open",
                            transcript_status="pending", recording=recording, fields={},
                            rules_version=rules_version, created_at=at, updated_at=at,
                            contact_due=at + self.policy.contact_within, base_due=base_due, due_at=base_due,
                            extension_days=0, enterprise=False, supervision=False)
            s.add(row)
            s.flush()
            self._event(s, row, "system", "opened", {"entry_line": entry_line})
            log.info("ticket %s opened for call %s from %s on %s", row.id, call_id, mask(caller), entry_line)
            return _snapshot(row)

    def attach_transcript(self, call_id: str, *, text: str | None, confidence: float | None = None,
                          status: str = "ok", prefill: dict | None = None, recording: str | None = None,
                          entry_line: str | None = None, caller: str | None = None,
                          rules_version: str | None = None, reason: str | None = None) -> Ticket:
        """Store what was recognised and the pre-filled fields; flag for manual entry when
        there is nothing usable. Creates the ticket when the call's was never opened.

        ``prefill`` may be a dict, or a callable given the ticket's whole transcript (after
        :meth:`append_transcript`) and its intake time, returning the dict. A recording that
        yields nothing never replaces a transcript already heard on the live call.
        """
        if status not in TRANSCRIPT_STATUSES:
            raise TicketError(f"transcript status {status!r} is not one of {', '.join(TRANSCRIPT_STATUSES)}")
        if status == "ok" and not (text or "").strip():
            status = "empty"
        self.open_ticket(call_id, entry_line or "12345", caller, rules_version=rules_version, recording=recording)
        now = self.clock()
        with self._session.begin() as s:
            row = self._row_for_update(s, call_id=call_id)
            if status != "ok" and row.transcript_status == "ok":
                if recording:
                    row.recording = recording
                self._event(s, row, "machine", "recording_unusable", {"status": status, "reason": reason})
                return _snapshot(row)
            row.transcript = text
            row.transcript_confidence = confidence
            row.transcript_status = status
            if recording:
                row.recording = recording
            if status == "ok" and callable(prefill):
                prefill = prefill(row.transcript, row.created_at)
            if status == "ok" and prefill:
                fields = dict(row.fields or {})
                for name in FIELDS:
                    if name in prefill and not (name in fields and fields[name].get("source") == "agent"):
                        fields[name] = {"value": prefill[name], "source": "machine", "confirmed": False}
                row.fields = fields
                self._fields_changed(s, row, now)
                self._event(s, row, "machine", "prefilled", {"fields": sorted(n for n in FIELDS if n in prefill)})
            elif row.status == "open":
                reason = reason or {"no_model": "no speech model configured: no transcript",
                          "unreadable": "the recording could not be read",
                          "failed": "speech recognition failed",
                          "empty": "nothing was recognised in the recording"}.get(status, "no transcript")
                self._flag(s, row, reason, now)
            row.updated_at = now
            return _snapshot(row)

    def append_transcript(self, call_id: str, text: str, *, source: str = "speech",
                          confidence: float | None = None, prefill=None) -> Ticket:
        """Words heard on the live call, added to what was heard before, then pre-filled again
        (``prefill`` is called with the whole transcript and the intake time)."""
        with self._session() as s:
            row = s.scalar(select(TicketRow).where(TicketRow.call_id == call_id))
            before = row.transcript if row is not None and row.transcript_status == "ok" else None
        whole = f"{before} {text}".strip() if before else text
        ticket = self.attach_transcript(call_id, text=whole, confidence=confidence, status="ok", prefill=prefill)
        with self._session.begin() as s:
            self._event(s, self._row(s, ticket.id), source, "heard", {"chars": len(text or "")})
        return ticket

    @_from_draft
    def record_call_end(self, ticket_id: int, outcome: str, survey: str | None = None) -> Ticket:
        """How the call ended (completed, abandoned, …) and the caller's satisfaction key, if any."""
        with self._session.begin() as s:
            row = self._row_for_update(s, ticket_id=ticket_id)
            if outcome:
                row.call_outcome = outcome
            if survey:
                row.survey = survey
            self._event(s, row, "system", "call_end" if outcome else "survey", {"outcome": outcome, "survey": survey})
            return _snapshot(row)

    def flag_manual_entry(self, call_id: str, reason: str, *, entry_line: str | None = None,
                          caller: str | None = None, recording: str | None = None,
                          transcript_status: str = "failed") -> Ticket:
        """The machine could not fill this ticket: an agent types it in (the caller loses nothing)."""
        self.open_ticket(call_id, entry_line or "12345", caller, recording=recording)
        with self._session.begin() as s:
            row = self._row_for_update(s, call_id=call_id)
            if row.transcript_status == "pending":
                row.transcript_status = transcript_status
            if row.status == "open":
                self._flag(s, row, reason, self.clock())
            return _snapshot(row)

    # -- the agent -------------------------------------------------------------------------

    @_from_draft
    def confirm_fields(self, ticket_id: int, agent: str, edits: dict | None = None,
                       confirm: Iterable[str] | str = "all", rules: Rules | None = None) -> Ticket:
        """An agent corrects ``edits`` and confirms ``confirm`` (field names, or "all").

        Edited fields become ``source: agent``. With ``rules``, a new ``line`` brings its skill
        and department. When no field is left unconfirmed the ticket is ``confirmed``.
        """
        edits = dict(edits or {})
        unknown = [n for n in edits if n not in FIELDS and n != "summary"]
        if unknown:
            raise TicketError(f"unknown field(s) {', '.join(unknown)} (fields: {', '.join(FIELDS)}, summary)")
        if rules is not None and "line" in edits:
            line = rules.line(str(edits["line"]))
            if line is None:
                raise TicketError(f"{edits['line']} is not a hotline in rules {rules.version}")
            edits.setdefault("skill", line.skill)
            edits.setdefault("department", line.department if line is not rules.hotline else line.name)
        now = self.clock()
        with self._session.begin() as s:
            row = self._row_for_update(s, ticket_id=ticket_id)
            if row.status in ("finished", "handed_off"):
                raise TicketError(f"ticket {row.id} is {row.status}; it can no longer be edited")
            fields = {k: dict(v) for k, v in (row.fields or {}).items()}
            changes = {}
            for name, value in edits.items():
                before = fields.get(name, {}).get("value")
                fields[name] = {"value": value, "source": "agent", "confirmed": True, "by": agent,
                                "at": now.isoformat(timespec="seconds")}
                if before != value:
                    changes[name] = {"from": before, "to": value}
            names = list(fields) if confirm == "all" else list(confirm)
            for name in names:
                if name not in fields:
                    raise TicketError(f"ticket {row.id} has no field {name!r} to confirm")
                if not fields[name].get("confirmed"):
                    fields[name].update(confirmed=True, by=agent, at=now.isoformat(timespec="seconds"))
            row.fields = fields
            self._fields_changed(s, row, now)
            if all(e.get("confirmed") for e in fields.values()) and row.status in ("open", "manual_entry"):
                row.status = "confirmed"
            row.updated_at = now
            self._event(s, row, agent, "confirmed", {"changed": changes, "confirmed": names})
            return _snapshot(row)

    @_from_draft
    def record_contact(self, ticket_id: int, agent: str, at: datetime | None = None) -> Ticket:
        with self._session.begin() as s:
            row = self._row_for_update(s, ticket_id=ticket_id)
            row.contacted_at = at or self.clock()
            self._event(s, row, agent, "contacted", {})
            return _snapshot(row)

    @_from_draft
    def extend(self, ticket_id: int, days: int, reason: str, by: str) -> Ticket:
        """Extend the done-by deadline by ``days`` working days; refused beyond the limit in all."""
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ExtensionRefused("an extension is a whole number of working days, at least 1")
        if not reason or not reason.strip():
            raise ExtensionRefused("an extension needs a reason")
        with self._session.begin() as s:
            row = self._row_for_update(s, ticket_id=ticket_id)
            if row.status in ("finished", "handed_off"):
                raise ExtensionRefused(f"ticket {row.id} is already {row.status}")
            total = row.extension_days + days
            limit = self.policy.max_extension_days
            if total > limit:
                raise ExtensionRefused(f"ticket {row.id} is already extended by {row.extension_days} working days; "
                                       f"{days} more would make {total}, the limit is {limit}")
            row.extension_days = total
            row.due_at = self.calendar.add_workdays(row.base_due, total)
            row.updated_at = self.clock()
            self._event(s, row, by, "extended", {"days": days, "total": total, "reason": reason,
                                                 "due_at": row.due_at.astimezone(CHINA_TZ).isoformat()})
            return _snapshot(row)

    @_from_draft
    def finish(self, ticket_id: int, agent: str, result: str) -> Ticket:
        """The matter is done: record the result. Only a confirmed ticket can be finished."""
        if not result or not result.strip():
            raise TicketError("finishing a ticket needs the result (办理结果)")
        now = self.clock()
        with self._session.begin() as s:
            row = self._row_for_update(s, ticket_id=ticket_id)
            if row.status != "confirmed":
                pending = [n for n, e in (row.fields or {}).items() if not e.get("confirmed")]
                why = f"fields not confirmed: {', '.join(pending)}" if pending else f"it is {row.status}"
                raise TicketError(f"ticket {row.id} cannot be finished yet ({why})")
            row.status, row.finished_at, row.result, row.updated_at = "finished", now, result, now
            self._event(s, row, agent, "finished", {"result": result})
            return _snapshot(row)

    @_from_draft
    def mark_handed_off(self, ticket_id: int, ref: str | None) -> Ticket:
        now = self.clock()
        with self._session.begin() as s:
            row = self._row_for_update(s, ticket_id=ticket_id)
            if row.status == "handed_off":
                return _snapshot(row)
            if row.status != "finished":
                raise TicketError(f"ticket {row.id} is {row.status}; only a finished ticket is handed off")
            row.status, row.handed_off_at, row.handoff_ref, row.handoff_error = "handed_off", now, ref, None
            row.updated_at = now
            self._event(s, row, "system", "handed_off", {"ref": ref})
            return _snapshot(row)

    @_from_draft
    def record_handoff_error(self, ticket_id: int, error: str) -> Ticket:
        with self._session.begin() as s:
            row = self._row_for_update(s, ticket_id=ticket_id)
            row.handoff_error = error
            self._event(s, row, "system", "handoff_failed", {"error": error})
            return _snapshot(row)

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

    def _flag(self, s: Session, row: TicketRow, reason: str, now: datetime) -> None:
        row.status, row.manual_reason, row.updated_at = "manual_entry", reason, now
        self._event(s, row, "system", "manual_entry", {"reason": reason})
        log.info("ticket %s (call %s) flagged for manual entry: %s", row.id, row.call_id, reason)

    def _fields_changed(self, s: Session, row: TicketRow, now: datetime) -> None:
        """Recompute what depends on the fields: deadline, matter, links and supervision."""
        fields = row.fields or {}
        enterprise = bool(_val(fields, "enterprise"))
        if enterprise != row.enterprise or row.base_due is None:
            row.enterprise = enterprise
            days = self.policy.days_enterprise if enterprise else self.policy.days_general
            row.base_due = self.calendar.add_workdays(row.created_at, days)
            row.due_at = self.calendar.add_workdays(row.base_due, row.extension_days)
        row.request_type = _val(fields, "type")
        row.matter_key = _matter_key(fields)
        row.unit_key = _unit_key(fields)
        s.flush()
        self._link_duplicate(s, row)
        for kind, key in (("matter", row.matter_key), ("unit", row.unit_key)):
            if key and row.request_type in SUPERVISED_TYPES:
                self._check_supervision(s, row, kind, key)

    def _link_duplicate(self, s: Session, row: TicketRow) -> None:
        if row.linked_to_id is not None or not row.caller or not row.matter_key:
            return
        since = row.created_at - self.policy.link_window
        earlier = s.scalar(select(TicketRow).where(
            TicketRow.caller == row.caller, TicketRow.matter_key == row.matter_key, TicketRow.id != row.id,
            TicketRow.created_at >= since, TicketRow.created_at <= row.created_at,
        ).order_by(TicketRow.created_at, TicketRow.id).limit(1))
        if earlier is not None:
            row.linked_to_id = earlier.linked_to_id or earlier.id
            self._event(s, row, "system", "linked", {"to": row.linked_to_id, "matter": row.matter_key})
            log.info("ticket %s linked to %s: same caller %s, same matter", row.id, row.linked_to_id,
                     mask(row.caller))

    def _check_supervision(self, s: Session, row: TicketRow, kind: str, key: str) -> None:
        column = TicketRow.matter_key if kind == "matter" else TicketRow.unit_key
        since = row.created_at - self.policy.supervision_window
        rows = s.scalars(select(TicketRow).where(
            column == key, TicketRow.created_at >= since, TicketRow.request_type.in_(SUPERVISED_TYPES))).all()
        callers = {r.caller or f"call:{r.call_id}" for r in rows}
        if len(callers) < self.policy.supervision_threshold:
            return
        ids = sorted(r.id for r in rows)
        for r in rows:
            r.supervision = True
        existing = s.scalar(select(SupervisionRow).where(
            SupervisionRow.kind == kind, SupervisionRow.key == key, SupervisionRow.raised_at >= since))
        if existing is None:
            s.add(SupervisionRow(kind=kind, key=key, raised_at=self.clock(), callers=len(callers), ticket_ids=ids))
            self._event(s, row, "system", "supervision", {"kind": kind, "key": key, "callers": len(callers)})
            log.warning("supervision (督办) raised: %d callers on %s %s", len(callers), kind, key)
        else:
            existing.callers, existing.ticket_ids = len(callers), ids


__all__ = ["TicketStore", "TicketDrafts", "Ticket", "TicketPolicy", "TicketError", "ExtensionRefused", "NoSuchTicket",
           "CALLER_ROLES", "FIELDS", "STATUSES", "make_engine", "database_url"]
