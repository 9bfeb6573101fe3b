"""The call's side of a ticket: opening it (from the call path's draft), what the machine heard
and pre-filled, the flag for manual entry, and how the call ended."""
from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from call_routing.numbers import mask
from call_routing.rules import CHINA_TZ

from .ticket_db import TicketDaySeq, TicketRow
from .ticket_drafts import _from_draft
from .ticket_model import FIELDS, TRANSCRIPT_STATUSES, Ticket, TicketError, _snapshot, log


def _once_per_call(method):
    """Two processes creating the same call's row at once (the ticket writer of one node, a job or
    the agent console of another, both from the call's draft): on PostgreSQL the second insert
    fails on the unique ticket id or call id. It then finds the row the first one wrote (SQLite's
    write lock makes them take turns instead)."""

    @functools.wraps(method)
    def wrapper(self, call_id: str, *args, **kwargs):
        try:
            return method(self, call_id, *args, **kwargs)
        except IntegrityError:
            with self._session() as s:
                if s.scalar(select(TicketRow.id).where(TicketRow.call_id == call_id)) is None:
                    raise
            return method(self, call_id, *args, **kwargs)
    return wrapper


class TicketOpening:
    """The call's part of :class:`intake.tickets.TicketStore`: everything written before an agent looks."""

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

    def keep_ticket(self, ticket_id: int | None, *, call_id: str, entry_line: str, caller: str | None,
                    rules_version: str | None, at: datetime | None = None) -> Ticket:
        """The call is over: its ticket's row, written now if the ticket writer has not yet.

        From the call's draft when Redis still has it; else — Redis restarted empty and lost the
        draft — from what the call's end report carries (number, line, caller, rules version),
        the history saying so. ``at`` None: the intake time is not known any more; the row takes
        this moment's, marked approximate in its history. ``ticket_id`` None: the number was in
        Redis only (a Twilio call) and the ticket gets a new one. A row that already exists for
        the number or the call is returned as it is."""
        found = self._row_of(ticket_id, call_id)
        if found is not None:
            return found
        if (ticket_id is not None and self._create_from_draft(ticket_id=ticket_id)) or \
                self._create_from_draft(call_id=call_id):
            return self._row_of(ticket_id, call_id)
        note = {"from": "call_end"} if at is not None else {"from": "call_end", "time": "approximate"}
        log.warning("ticket %s of call %s: its draft was lost with Redis; written from the call's end report",
                    ticket_id if ticket_id is not None else "(a new number)", call_id)
        return self.open_ticket(call_id, entry_line, caller, rules_version=rules_version, at=at, ticket_id=ticket_id,
                                from_draft=False, note=note)

    def _row_of(self, ticket_id: int | None, call_id: str) -> Ticket | None:
        """The row of ``ticket_id``, else the call's (a call registered again after Redis lost its
        state has its row under the second number)."""
        with self._session() as s:
            row = s.get(TicketRow, ticket_id) if ticket_id is not None else None
            if row is None:
                row = s.scalar(select(TicketRow).where(TicketRow.call_id == call_id))
            return _snapshot(row) if row is not None else None

    @_once_per_call
    def open_ticket(self, call_id: str, entry_line: str, caller: str | None = None, *,
                    rules_version: str | None = None, recording: str | None = None,
                    at: datetime | None = None, ticket_id: int | None = None, from_draft: bool = True,
                    note: dict | None = None) -> Ticket:
        """The ticket for a call (idempotent per ``call_id``). When the call path left a draft
        (:class:`TicketDrafts`), the row is created from it — its number, line, caller and
        intake time — whatever the arguments say: the first one to touch the ticket creates it.
        ``note``: added to the history's "opened" entry (how the row came to be written)."""
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
            row = TicketRow(id=ticket_id, number=self._day_number(s, at), call_id=call_id,
                            entry_line=entry_line, caller=caller, status="open",
                            transcript_status="pending", recording=recording, fields={},
                            rules_version=rules_version, created_at=at, updated_at=at,
                            contact_due=at + self.policy.contact_within, base_due=base_due, due_at=base_due,
                            extension_days=0, enterprise=False, supervision=False)
            s.add(row)
            s.flush()
            self._event(s, row, "system", "opened", {"entry_line": entry_line, **(note or {})})
            log.info("ticket %s (%s) opened for call %s from %s on %s", row.number, row.id, call_id, mask(caller), entry_line)
            return _snapshot(row)

    def _day_number(self, s: Session, at: datetime) -> str:
        """The next number of ``at``'s China day, taken in the transaction ``s`` that inserts the
        row: one upsert that locks the day's counter until commit (PostgreSQL: the row lock;
        SQLite: the write lock of BEGIN IMMEDIATE), so concurrent writers in any process number
        1, 2, 3… and a rolled-back insert returns its number."""
        seq = TicketDaySeq.__table__
        day = (at if at.tzinfo else at.replace(tzinfo=CHINA_TZ)).astimezone(CHINA_TZ).strftime("%Y%m%d")
        dialect = s.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        n = s.execute(insert(seq).values(day=day, last=1).on_conflict_do_update(
            index_elements=[seq.c.day], set_={"last": seq.c.last + 1}).returning(seq.c.last)).scalar_one()
        return f"{day}-{n:04d}"

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
            if recording and row.transcript_status == "ok" and row.transcript and row.transcript != text:
                # words heard live (AudioSocket, a media stream, Twilio's speech) were said while the
                # caller waited and acted on then; the recording's transcript does not replace them
                row.recording = recording
                self._event(s, row, "machine", "recording_kept", {"chars": len(text or "")})
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
                        fields[name] = {"value": prefill[name], "source": "machine", "confirmed": False,
                                        "uncertain": name in (prefill.get("uncertain") or ())}  # 待核实
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

    def _flag(self, s: Session, row: TicketRow, reason: str, now: datetime) -> None:
        row.status, row.manual_reason, row.updated_at = "manual_entry", reason, now
        self._event(s, row, "system", "manual_entry", {"reason": reason})
        log.info("ticket %s (call %s) flagged for manual entry: %s", row.id, row.call_id, reason)
