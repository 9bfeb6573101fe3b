"""Links and supervision (督办): a caller's repeat on one matter links to the earlier ticket (重复件);
many callers on one matter or one unit raise a supervision flag; deadlines follow the fields."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from call_routing.numbers import mask
from call_routing.rules import CHINA_TZ

from .ticket_db import SupervisionRow, TicketRow
from .ticket_model import SUPERVISED_TYPES, log


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


class TicketSupervision:
    """The supervision part of :class:`intake.tickets.TicketStore`: what the fields imply."""

    def supervisions(self) -> list[dict]:
        with self._session() as s:
            rows = s.scalars(select(SupervisionRow).order_by(SupervisionRow.id))
            return [{"kind": r.kind, "key": r.key, "callers": r.callers, "ticket_ids": list(r.ticket_ids),
                     "raised_at": r.raised_at.astimezone(CHINA_TZ).isoformat(timespec="seconds")} for r in rows]

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
