"""Drafts: a call's ticket before its row exists, kept in Redis by the call path."""
from __future__ import annotations

import json
import os
from datetime import datetime

from .ticket_model import NoSuchTicket

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
        from runtime.redis_conn import redis_client, sentinels_from_env

        url = os.environ.get("REDIS_URL")
        if not url and not sentinels_from_env():
            return None
        return cls(redis_client(url, decode_responses=True, socket_timeout=3, socket_connect_timeout=2))

    def key(self, call_id: str) -> str:
        return f"{self.prefix}draft:{call_id}"

    def put(self, pipe, *, ticket_id: int, call_id: str, line: str, caller: str | None, rules_version: str | None,
            at: datetime) -> None:
        """Queue the draft's commands on ``pipe`` (the caller executes it)."""
        draft = {"id": ticket_id, "call_id": call_id, "line": line or "", "caller": caller or "",
                 "rules_version": rules_version or "", "at": at.isoformat()}
        pipe.set(self.key(call_id), json.dumps(draft, ensure_ascii=False), ex=DRAFT_TTL_S)
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
