#!/usr/bin/env python3
"""route_call: the first AGI of every call — route it, tell the dialplan, speak the prompt.

Reads ``agi_dnid``/``agi_extension`` (what was dialed) and ``agi_callerid``, asks the flow
(router + ticket), sets the contract variables (``HOTLINE_ACTION`` queue|transfer|hangup,
``HOTLINE_TARGET``, ``HOTLINE_SKILL``, ``HOTLINE_LINE``, ``HOTLINE_TICKET``,
``HOTLINE_RULES_VERSION``, plus ``HOTLINE_CALL_ID``) and then streams the prompt. Variables
first: whatever happens to the prompt, the dialplan knows where the call goes.

As a script (plain AGI, or EAGI to listen while the caller waits)::

    exten => _X.,n,AGI(/opt/hotline/agi-bin/route_call)          ; see docs/asterisk.md
    exten => _X.,n,EAGI(/opt/hotline/agi-bin/route_call)         ; + listens on fd 3 while queued

Served by the FastAGI server as ``agi://127.0.0.1:4573/route_call``.
"""
if __name__ == "__main__" and not __package__:  # run by Asterisk as a file
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ivr.agi import hand_back, play_steps  # noqa: E402

_UNKNOWN = ("", "unknown", "anonymous", "s")


def dialed_number(env: dict) -> str:
    """What the caller dialed: the DNID when the carrier sent one, else the extension."""
    dnid = env.get("agi_dnid", "")
    if dnid.lower() not in _UNKNOWN and any(ch.isdigit() for ch in dnid):
        return dnid
    return env.get("agi_extension", "")


def handler(session) -> None:
    agi, env = session.agi, session.agi.env
    from agi_scripts.session import new_call_id

    session.call_id = env.get("agi_uniqueid") or new_call_id()
    caller = env.get("agi_callerid", "")
    turn = session.flow.start(session.call_id, dialed_number(env), None if caller.lower() in _UNKNOWN else caller)
    hand_back(agi, turn)
    play_steps(agi, turn.steps, session.services.prompt_dir)
    if turn.action == "queue" and session.audio is not None:
        # EAGI: the caller's audio is here only in this process — wait and listen now.
        from agi_scripts.queue_wait import wait

        wait(session)


if __name__ == "__main__":
    from agi_scripts.session import main_script

    raise SystemExit(main_script("route_call"))
