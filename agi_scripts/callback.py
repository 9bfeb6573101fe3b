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
                 wait_s: int = 30, trunk_prefix: str | None = None, trunk_suffix: str | None = None,
                 sip_prefix: str | None = None):
        """Numbers are dialed like the dialplan does (globals.conf): ``trunk_prefix`` + number +
        ``trunk_suffix`` (``HOTLINE_TRUNK_PREFIX``/``_SUFFIX``, default ``PJSIP/`` and
        ``@carrier``; ``trunk`` is the older spelling of a PJSIP trunk endpoint)."""
        env = os.environ.get
        self.spool = spool or SPOOL
        trunk = trunk or env("HOTLINE_TRUNK")
        self.trunk_prefix = trunk_prefix if trunk_prefix is not None else env("HOTLINE_TRUNK_PREFIX", "PJSIP/")
        self.trunk_suffix = trunk_suffix if trunk_suffix is not None else \
            (f"@{trunk}" if trunk else env("HOTLINE_TRUNK_SUFFIX", "@carrier"))
        self.sip_prefix = sip_prefix if sip_prefix is not None else \
            env("HOTLINE_SIP_PREFIX", f"PJSIP/{trunk or 'subcenters'}/")
        self.context = context
        self.wait_s = wait_s

    def channel(self, endpoint: str) -> str:
        if "/" in endpoint and not endpoint.lower().startswith(("sip:", "sips:")):
            return endpoint  # already a Dial string: PJSIP/agent1001
        if endpoint.lower().startswith(("sip:", "sips:")):
            return f"{self.sip_prefix}{endpoint}"
        return f"{self.trunk_prefix}{digits_of(endpoint)}{self.trunk_suffix}"

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
        # mkstemp makes it 0600: Asterisk, running as its own user, could not open it and pbx_spool
        # deletes a call file it cannot open — the callback "placed", never dialed
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(self.spool, f"hotline-{request.call_id}-{request.offer}.call"))
        log.info("callback %s: call file placed, agent %s first, then %s", request.call_id, request.agent_id,
                 mask(request.number))
        return PLACED


def handler(session) -> None:
    """``callback,${HOTLINE_CALL_ID},<what>[,<who hung up>]``: ``connected`` as the citizen
    answers (the Dial's U() on the citizen's leg); after the call ``ANSWER,caller`` (the
    citizen hung up first: the agent's channel reports after its Dial) or ``ANSWER,agent``
    (the agent hung up first: the citizen's channel, sent to the survey, reports); another
    DIALSTATUS (the citizen did not answer: retried later from the same place); ``agent-failed``
    from the call file's failed extension (the agent did not answer: the next seat)."""
    call_id = session.call_id_from_args()
    outcome = session.arg(1).upper()
    acd = getattr(session.flow.queue, "acd", None)
    if acd is None:
        log.error("callback %s: no Redis ACD configured, outcome %s not recorded", call_id, outcome)
        return
    from call_routing.acd.callbacks import AGENT_NO_ANSWER, CONNECTED, NO_ANSWER, report_callback_outcome

    if outcome in ("CONNECTED", "ANSWER"):
        report_callback_outcome(acd, call_id, CONNECTED)  # "already" when the answer was reported
        if outcome == "ANSWER":  # the conversation is over: who hung up first
            by = session.arg(2).lower()
            acd.hangup(call_id, by if by in ("agent", "caller") else "caller")
    else:
        report_callback_outcome(acd, call_id, AGENT_NO_ANSWER if outcome == "AGENT-FAILED" else NO_ANSWER)
    session.agi.set_var("HOTLINE_ACTION", "hangup")
