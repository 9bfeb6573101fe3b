"""Callbacks through Asterisk: a call file in the spool, and the handler reporting the outcome.

The ACD's rq job calls :meth:`CallFileDialer.dial` when a callback reaches the head of its
queue (``HOTLINE_CALLBACK_DIALER=agi_scripts.callback:CallFileDialer``). The call file rings
the agent first (no citizen is ever rung into silence); when the agent answers, the
dialplan (``[hotline-callback]``) dials the citizen and reports through
``AGI(agi://…/callback,${HOTLINE_CALL_ID},${DIALSTATUS})``:

- ANSWER -> ``answer`` (connected; the caller's place in line was kept until now);
- citizen did not answer -> ``callback_failed`` (retried later from the same place);
- agent did not answer (the call file's ``failed`` extension) -> ``no_answer``.

Files are written elsewhere and renamed into the spool, as Asterisk requires (it may read a
half-written file otherwise).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile

from call_routing.numbers import digits_of, mask

log = logging.getLogger("hotline.callback")

SPOOL = os.environ.get("HOTLINE_SPOOL", "/var/spool/asterisk/outgoing")
_SAFE = re.compile(r"[^A-Za-z0-9_.:@/+\-]")


class CallFileDialer:
    """A :class:`call_routing.acd.CallbackDialer` for Asterisk."""

    def __init__(self, spool: str | None = None, trunk: str | None = None, context: str = "hotline-callback",
                 wait_s: int = 30):
        self.spool = spool or SPOOL
        self.trunk = trunk or os.environ.get("HOTLINE_TRUNK", "carrier")
        self.context = context
        self.wait_s = wait_s

    def channel(self, endpoint: str) -> str:
        if "/" in endpoint and not endpoint.lower().startswith(("sip:", "sips:")):
            return endpoint  # already a Dial string: PJSIP/agent1001
        if endpoint.lower().startswith(("sip:", "sips:")):
            return f"PJSIP/{self.trunk}/{endpoint}"
        return f"PJSIP/{digits_of(endpoint)}@{self.trunk}"

    def call_file(self, request) -> str:
        endpoint = next(iter(request.agent_endpoints), "")
        if not endpoint:
            raise ValueError(f"agent {request.agent_id} has no endpoint to ring")
        number = digits_of(request.number)
        lines = [
            f"Channel: {_SAFE.sub('', self.channel(endpoint))}",
            "CallerID: \"12345回拨\" <12345>",
            f"WaitTime: {self.wait_s}",
            "MaxRetries: 0",
            f"Context: {self.context}",
            "Extension: s",
            "Priority: 1",
            f"Setvar: HOTLINE_CALL_ID={_SAFE.sub('', request.call_id)}",
            f"Setvar: HOTLINE_CALLBACK_NUMBER={number}",
            f"Setvar: HOTLINE_TICKET={_SAFE.sub('', request.ticket or '')}",
            f"Setvar: HOTLINE_LINE={_SAFE.sub('', request.line)}",
            "Archive: no",
        ]
        return "\n".join(lines) + "\n"

    def dial(self, request) -> str:
        from call_routing.acd.callbacks import PLACED

        text = self.call_file(request)
        os.makedirs(self.spool, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hotline-", dir=os.path.dirname(self.spool.rstrip("/")) or ".")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(self.spool, f"hotline-{request.call_id}-{request.offer}.call"))
        log.info("callback %s: call file placed, agent %s first, then %s", request.call_id, request.agent_id,
                 mask(request.number))
        return PLACED


def handler(session) -> None:
    """``callback,${HOTLINE_CALL_ID},${DIALSTATUS}`` (or ``agent-failed`` from the failed extension)."""
    call_id = session.call_id_from_args()
    outcome = session.arg(1).upper()
    acd = getattr(session.flow.queue, "acd", None)
    if acd is None:
        log.error("callback %s: no Redis ACD configured, outcome %s not recorded", call_id, outcome)
        return
    from call_routing.acd.callbacks import AGENT_NO_ANSWER, CONNECTED, NO_ANSWER, report_callback_outcome

    report_callback_outcome(acd, call_id, {"ANSWER": CONNECTED, "AGENT-FAILED": AGENT_NO_ANSWER}.get(outcome, NO_ANSWER))
    session.agi.set_var("HOTLINE_ACTION", "hangup")
