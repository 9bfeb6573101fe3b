"""Full-call recordings for quality review (质检): the whole conversation from the agent's answer,
kept with the ticket until its keep date (``hotline.recording.keep_days`` in the rules when it was
stored), transcribed into the ticket's history, deleted once the date has passed.

A recording is a file inside the recordings folder (``HOTLINE_RECORDINGS``); the row keeps only
its name, so no stored value can point a reader outside that folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from .ticket_db import Base, TicketRow, UTCDateTime
from .ticket_model import NoSuchTicket, TicketError, log

RECORDING_SOURCES = ("asterisk", "twilio")


class CallRecordingRow(Base):
    __tablename__ = "call_recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    source: Mapped[str] = mapped_column(String(16))  # asterisk | twilio
    ref: Mapped[str] = mapped_column(String(128), unique=True)  # file name or Twilio RecordingSid: stored once
    file: Mapped[str | None] = mapped_column(String(255))  # name inside the recordings folder; None once deleted
    seconds: Mapped[float | None] = mapped_column(Float)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    keep_until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    transcript: Mapped[str | None] = mapped_column(Text)
    transcript_status: Mapped[str] = mapped_column(String(16), default="pending")


@dataclass(frozen=True)
class CallRecording:
    id: int
    ticket_id: int
    source: str
    file: str | None
    seconds: float | None
    stored_at: datetime
    keep_until: datetime
    deleted_at: datetime | None
    transcript: str | None
    transcript_status: str

    @property
    def expired(self) -> bool:
        return self.deleted_at is not None


def _recording(row: CallRecordingRow) -> CallRecording:
    return CallRecording(row.id, row.ticket_id, row.source, row.file, row.seconds, row.stored_at, row.keep_until,
                         row.deleted_at, row.transcript, row.transcript_status)


def recording_file(folder: str | os.PathLike, name: str) -> Path:
    """``name`` inside ``folder``; a name that would leave it is refused."""
    base = Path(folder).resolve()
    path = (base / name).resolve()
    if path.parent != base or not name or name != path.name:
        raise TicketError(f"recording name {name!r} is not a file of the recordings folder")
    return path


class TicketRecordings:
    """Part of :class:`intake.tickets.TicketStore`: a ticket's full-call recordings."""

    def add_call_recording(self, call_id: str, *, file: str, ref: str, source: str, keep_days: int,
                           seconds: float | None = None) -> CallRecording:
        """The call's whole-conversation recording (``file`` in the recordings folder) onto its
        ticket, kept ``keep_days`` days. The same ``ref`` twice (a retried job) stores it once."""
        if source not in RECORDING_SOURCES:
            raise TicketError(f"recording source {source!r} is not one of {', '.join(RECORDING_SOURCES)}")
        if int(keep_days) < 1:
            raise TicketError(f"keep_days must be at least 1, got {keep_days!r}")
        ticket = self.by_call(call_id)  # written from its draft if the writer has not yet
        if ticket is None:
            raise NoSuchTicket(f"no ticket for call {call_id}")
        now = self.clock()
        with self._session.begin() as s:
            row = s.scalar(select(CallRecordingRow).where(CallRecordingRow.ref == ref))
            if row is not None:
                return _recording(row)
            row = CallRecordingRow(ticket_id=ticket.id, source=source, ref=ref, file=file, seconds=seconds,
                                   stored_at=now, keep_until=now + timedelta(days=int(keep_days)))
            s.add(row)
            s.flush()
            self._event(s, s.get(TicketRow, ticket.id), "system", "call_recorded",
                        {"seconds": round(seconds) if seconds else None, "keep_days": int(keep_days)})
            return _recording(row)

    def call_recordings(self, ticket_id: int) -> list[CallRecording]:
        with self._session() as s:
            rows = s.scalars(select(CallRecordingRow).where(CallRecordingRow.ticket_id == ticket_id)
                             .order_by(CallRecordingRow.id))
            return [_recording(r) for r in rows]

    def call_recording(self, recording_id: int) -> CallRecording:
        with self._session() as s:
            row = s.get(CallRecordingRow, recording_id)
            if row is None:
                raise NoSuchTicket(f"no recording {recording_id}")
            return _recording(row)

    def call_recording_transcribed(self, recording_id: int, text: str | None, status: str,
                                   confidence: float | None = None) -> CallRecording:
        """What the worker heard in the recording: kept with it and written into the ticket's
        history (not its pre-fill: the agent has confirmed the fields by then)."""
        if status == "ok" and not (text or "").strip():
            status = "empty"
        with self._session.begin() as s:
            row = s.get(CallRecordingRow, recording_id)
            if row is None:
                raise NoSuchTicket(f"no recording {recording_id}")
            row.transcript, row.transcript_status = text, status
            self._event(s, s.get(TicketRow, row.ticket_id), "machine", "call_transcribed",
                        {"status": status, "text": text if status == "ok" else None, "confidence": confidence})
            return _recording(row)

    def expire_call_recordings(self, folder: str | os.PathLike, at: datetime | None = None) -> int:
        """Delete the files of recordings past their keep date; the ticket says so. Returns how many."""
        at = at or self.clock()
        done = 0
        with self._session.begin() as s:
            rows = s.scalars(select(CallRecordingRow).where(CallRecordingRow.keep_until <= at,
                                                            CallRecordingRow.deleted_at.is_(None)).limit(500))
            for row in rows:
                if row.file:
                    try:
                        recording_file(folder, row.file).unlink(missing_ok=True)
                    except (OSError, TicketError):
                        log.exception("recording %s of ticket %s: file not deleted", row.id, row.ticket_id)
                        continue
                row.deleted_at, row.file = at, None
                self._event(s, s.get(TicketRow, row.ticket_id), "system", "recording_expired",
                            {"keep_until": row.keep_until.isoformat()})
                done += 1
        if done:
            log.info("%d call recording(s) past their keep date deleted", done)
        return done
