"""The centre's own calls, labelled by its agents, as sentences the pre-fill learns from.

``python -m intake.harvest`` reads the tickets an agent confirmed (confirmed, finished or handed
off) whose transcript was heard, and writes what the caller said with the type, line, emergency
and enterprise the agent confirmed — a labelled sentence from a real call, in the format of
``data/utterances/`` — to ``confirmed.jsonl`` in the centre's own folder
(``HOTLINE_LOCAL_UTTERANCES``, default ``var/utterances``). The pre-fill learns from that folder
beside the shipped sentences: the servers pick a new file up within a minute and learn in the
background (the last pre-fill reads meanwhile); ``python -m ivr.prefill evaluate`` reads it as
``local/confirmed.jsonl``, the accuracy on this centre's own calls.

Phone and ID-card numbers said are masked; the file is readable by its owner only and is
replaced whole (never half-written). Run it daily (cron, docs/operations.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from ivr.prefill import REQUEST_TYPES, local_dir
from ivr.prefill.model import EMERGENCY_NUMBERS

from .ticket_model import Ticket, mask_said

FILE_NAME = "confirmed.jsonl"
DEFAULT_LIMIT = 20000  # the newest tickets: learning time grows with the sentences (docs/tickets.md)
MAX_CHARS = 500  # as much as the call flow keeps of what was heard

# why a confirmed ticket gave no sentence, as the summary says it
SKIPPED = {"type": "type not confirmed by an agent", "line": "line not confirmed by an agent",
           "repeated": "the same words as a newer ticket"}


def _confirmed(ticket: Ticket, name: str):
    entry = ticket.fields.get(name) or {}
    return entry.get("value") if entry.get("confirmed") else None


def reading(ticket: Ticket) -> dict | str:
    """The labelled sentence of one ticket, or why it has none (a key of ``SKIPPED``)."""
    kind, line = _confirmed(ticket, "type"), _confirmed(ticket, "line")
    if kind not in REQUEST_TYPES:
        return "type"
    if not (isinstance(line, str) and line.isdigit()):
        return "line"
    emergency = _confirmed(ticket, "emergency")
    return {"text": mask_said(" ".join((ticket.transcript or "").split())[:MAX_CHARS]), "type": kind, "line": line,
            "emergency": emergency if emergency in EMERGENCY_NUMBERS else None,
            "enterprise": bool(_confirmed(ticket, "enterprise")), "ticket": ticket.display_number}


def harvest(store, limit: int = DEFAULT_LIMIT) -> tuple[list[dict], Counter]:
    """The labelled sentences of the newest ``limit`` confirmed tickets, and what was skipped."""
    sentences, skipped, seen = [], Counter(), set()
    for ticket in store.confirmed_by_agents(limit):
        got = reading(ticket)
        if isinstance(got, dict) and got["text"] in seen:
            got = "repeated"
        if isinstance(got, str):
            skipped[got] += 1
            continue
        seen.add(got["text"])
        sentences.append(got)
    return sentences, skipped


def write(sentences: list[dict], path: Path) -> None:
    """``path`` replaced whole, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for s in sentences:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None, stdout=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intake.harvest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", help="the tickets' database (default: $DATABASE_URL, else sqlite:///tickets.db)")
    parser.add_argument("--out", help=f"the file to write (default: {FILE_NAME} in $HOTLINE_LOCAL_UTTERANCES, "
                                      "else var/utterances)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help=f"the newest tickets read, at most (default {DEFAULT_LIMIT})")
    args = parser.parse_args(argv)
    stdout = stdout or sys.stdout
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    folder = local_dir()
    if args.out is None and folder is None:
        parser.error("HOTLINE_LOCAL_UTTERANCES is off: give --out FILE")
    out = Path(args.out) if args.out else folder / FILE_NAME
    from .tickets import TicketStore

    store = TicketStore(args.database, drafts=None)
    try:
        sentences, skipped = harvest(store, args.limit)
    finally:
        store.close()
    write(sentences, out)
    why = "; ".join(f"{n} {SKIPPED[k]}" for k, n in skipped.items())
    print(f"{out}: {len(sentences)} sentences from tickets agents confirmed" + (f" (left out: {why})" if why else ""),
          file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
