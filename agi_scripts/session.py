"""One AGI session, whichever way it arrived (script over pipes, FastAGI over a socket).

:func:`run` is where every failure ends in a known dialplan place (STYLE.md): a hangup in any
of its forms closes the call in the flow; a crashed handler or a silent Asterisk sets
``HOTLINE_FALLBACK`` (best effort) and ends the session, so the dialplan falls through to the
general seats.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field

from call_routing.numbers import mask
from ivr.asterisk.agi import AGIChannel, CommandTimeout, EAGIAudio, Hangup, set_fallback

log = logging.getLogger("hotline.agi")


@dataclass
class Session:
    agi: AGIChannel
    services: object
    args: list = field(default_factory=list)
    audio: EAGIAudio | None = None
    call_id: str | None = None

    @property
    def flow(self):
        return self.services.flow

    def arg(self, i: int, default: str = "") -> str:
        return self.args[i] if len(self.args) > i and self.args[i] else default

    def call_id_from_args(self) -> str:
        """The call id the dialplan passes as first argument (``${HOTLINE_CALL_ID}``)."""
        self.call_id = self.arg(0) or self.agi.get_var("HOTLINE_CALL_ID") or self.agi.env.get("agi_uniqueid", "")
        return self.call_id


def agi_args(env: dict) -> list[str]:
    """agi_arg_1..n, in order (Asterisk passes AGI() arguments to scripts and FastAGI alike)."""
    out, i = [], 1
    while f"agi_arg_{i}" in env:
        out.append(env[f"agi_arg_{i}"])
        i += 1
    return out


def run(handler, agi: AGIChannel, services, args=None, audio=None) -> str:
    """Run one handler to its end; returns how it ended: ok | hangup | timeout | error."""
    session = Session(agi, services, list(args if args is not None else agi_args(agi.env)), audio)
    try:
        handler(session)
        if agi._got_sighup:  # Asterisk's SIGHUP arrived after the last command
            raise Hangup("SIGHUP")
        return "ok"
    except Hangup:
        if session.call_id:
            services.flow.hung_up(session.call_id)
        return "hangup"
    except CommandTimeout as exc:
        log.error("%s: Asterisk stopped answering (%s); session closed, dialplan falls back",
                  getattr(handler, "__module__", handler), exc)
        _leave(services, session)
        return "timeout"
    except Exception:
        log.exception("%s crashed on call %s from %s; caller sent to the dialplan fallback",
                      getattr(handler, "__module__", handler), session.call_id,
                      mask(agi.env.get("agi_callerid")))
        set_fallback(agi, "error")
        _leave(services, session)
        return "error"


def _leave(services, session) -> None:
    if session.call_id:
        try:
            services.flow.fallback(session.call_id)
        except Exception:  # the flow's store may be what failed
            log.exception("could not release call %s", session.call_id)


def main_script(name: str) -> int:
    """An AGI script over stdin/stdout (``AGI(route_call.py)`` or ``EAGI(route_call.py)``).

    Asterisk sends SIGHUP when the caller hangs up: turned into a flag the next command
    sees, instead of killing the script. Logs go to stderr (the Asterisk console).
    """
    logging.basicConfig(level=os.environ.get("HOTLINE_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    hung_up = []
    signal.signal(signal.SIGHUP, lambda *_: hung_up.append(1))
    try:
        agi = AGIChannel(0, 1)
    except Hangup:
        return 0
    if hung_up:
        agi.mark_hangup()
    signal.signal(signal.SIGHUP, agi.mark_hangup)
    from ivr import services as services_mod

    from . import HANDLERS

    args = agi_args(agi.env)
    handler = HANDLERS[name]
    if name == "route_call" and args and args[0] in HANDLERS:  # route_call.py queue_wait <call id>
        handler, args = HANDLERS[args[0]], args[1:]
    audio = EAGIAudio() if agi.env.get("agi_enhanced", "0").startswith("1") and EAGIAudio.available() else None
    try:
        services = services_mod.build()
    except Exception:
        log.exception("cannot start the call flow; caller sent to the dialplan fallback")
        set_fallback(agi, "unavailable")
        return 0
    run(handler, agi, services, args, audio)
    return 0


def new_call_id() -> str:
    return uuid.uuid4().hex
