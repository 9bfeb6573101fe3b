"""What a ticket is: its statuses and fields, the errors of the store, the city's time limits
(:class:`TicketPolicy`) and the :class:`Ticket` snapshot every caller of the store gets back."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from call_routing.numbers import mask
from call_routing.rules import CHINA_TZ

from .ticket_db import TicketRow

log = logging.getLogger("hotline.tickets")

STATUSES = ("open", "manual_entry", "confirmed", "finished", "handed_off")
TRANSCRIPT_STATUSES = ("pending", "ok", "empty", "no_model", "unreadable", "failed")
#: Fields the pre-fill writes and agents confirm or correct.
FIELDS = ("type", "line", "skill", "department", "emergency", "enterprise", "location", "unit", "subject",
          "numbers", "emergency_possible")
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


_PHONE_OR_ID = re.compile(r"(?<![0-9])(1[3-9][0-9]{9}|[1-9][0-9]{16}[0-9Xx]|0[1-9][0-9]{1,2}-?[2-9][0-9]{6,7})(?![0-9])")


def mask_said(value: str) -> str:
    """Phone and ID-card numbers said in ``value``, masked (138****5678, 1101**********1234)."""
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
    #: the number people read (``20261206-0001``); the id stays internal (URLs, Redis, jobs)
    number: str | None = None

    @property
    def display_number(self) -> str:
        """The number to show: the day number (rows written before there were any show the id)."""
        return self.number or str(self.id)

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
            nums["id_cards"] = [mask_said(i) for i in nums.get("id_cards", [])]
            fields["numbers"]["value"] = nums
        iso = lambda d: d.astimezone(CHINA_TZ).isoformat(timespec="seconds") if d else None  # noqa: E731
        return {
            "id": self.id, "number": self.display_number, "call_id": self.call_id, "entry_line": self.entry_line,
            "caller": self.caller if full else mask(self.caller),
            "status": self.status, "manual_reason": self.manual_reason,
            "transcript": (self.transcript if full or not self.transcript else mask_said(self.transcript)),
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
        return f"Ticket(id={self.id}, number={self.number!r}, call_id={self.call_id!r}, caller={mask(self.caller)!r}, status={self.status!r})"


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
        call_outcome=row.call_outcome, survey=row.survey, number=row.number,
    )
