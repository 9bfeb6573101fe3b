"""The agent's side of a ticket: corrections and confirmations, the contact, extensions, and
finishing it (办结) with its hand-off to the city's system."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from call_routing.rules import CHINA_TZ, Rules

from .ticket_drafts import _from_draft
from .ticket_model import FIELDS, ExtensionRefused, Ticket, TicketError, _snapshot


class TicketAgent:
    """The agent's part of :class:`intake.tickets.TicketStore`: from pre-filled to finished and handed off."""

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
