"""The ticket database: the tables (SQLAlchemy 2) and the engine, SQLite by default
(``var/hotline.db`` in the checkout) or PostgreSQL (``DATABASE_URL``)."""
from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator,
                        create_engine, event, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from call_routing.rules import CHINA_TZ

#: SQLite inside the checkout's var/ (created on first use); PostgreSQL in production via DATABASE_URL.
DEFAULT_DATABASE_URL = f"sqlite:///{Path(__file__).resolve().parent.parent / 'var' / 'hotline.db'}"


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
    #: the number people read, ``20261206-0001``: China day of opening + gap-free sequence (:class:`TicketDaySeq`)
    number: Mapped[str | None] = mapped_column(String(16), unique=True)
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


class TicketDaySeq(Base):
    """The last ticket number handed out on a China day (``20261206``): incremented in the
    transaction that inserts the ticket row, so numbers are 1..N per day with no gap and no
    duplicate, whatever the ids (a rolled-back insert gives its number back)."""

    __tablename__ = "ticket_day_seq"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)
    last: Mapped[int] = mapped_column(Integer)


class SupervisionRow(Base):
    """A supervision flag (督办): many callers on one matter or one unit."""

    __tablename__ = "supervisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # matter | unit
    key: Mapped[str] = mapped_column(String(256), index=True)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    callers: Mapped[int] = mapped_column(Integer)
    ticket_ids: Mapped[list] = mapped_column(JSON, default=list)


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def database_schema(schema: str | None = None) -> str | None:
    """The PostgreSQL schema every table lives in: ``schema``, else ``DATABASE_SCHEMA``, else none
    (the database's own, ``public``). Every process of the product reads the same setting."""
    return schema or os.environ.get("DATABASE_SCHEMA") or None


#: pg_advisory_xact_lock key held while tables are created ("12345" in ASCII)
_CREATE_LOCK = 0x3132333435


def create_tables(engine: Engine, metadata, schema: str | None = None) -> None:
    """Create ``schema`` (if any) and the tables of ``metadata`` that are missing. On PostgreSQL
    under one advisory lock: the processes of one or several nodes starting together on an empty
    database would otherwise race (``duplicate key … pg_type_typname_nsp_index``, ``relation
    "tickets" already exists``) and some of them die at start."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
        if schema:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        metadata.create_all(conn)


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
    if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
        raise ValueError(f"DATABASE_SCHEMA {schema!r} is not a schema name (letters, digits, _; at most 63)")
    if schema and u.get_backend_name() == "sqlite":
        raise ValueError(f"DATABASE_SCHEMA={schema} needs PostgreSQL, but DATABASE_URL is SQLite ({u.database})")
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
