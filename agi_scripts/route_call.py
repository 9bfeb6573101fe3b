#!/usr/bin/env python3
"""route_call: the first AGI of every call — route it, tell the dialplan, speak the prompt.

The dialplan passes what was dialed as the second argument
(``Gosub(hotline-agi,s,1(route_call,${EXTEN}))`` → ``AGI(…/route_call,<call id>,<dialed>)``):
inside that Gosub ``agi_extension`` is ``s``, and Local channels, call files and many trunks
carry no ``agi_dnid``. Without the argument (an older dialplan, a plain ``AGI(route_call)`` in
the dialed extension) the DNID, else the extension, is used. A third argument ``trunk-failed``
(110/119/120/122 dialed directly, the trunk and its backup unreachable) queues the caller to
the emergency line's seat group at once. With ``agi_callerid``, asks the flow
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

import re  # noqa: E402

from ivr.asterisk.agi import hand_back, play_steps  # noqa: E402

_UNKNOWN = ("", "unknown", "anonymous", "s")
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def dialed_number(env: dict, given: str = "") -> str:
    """What the caller dialed: the number the dialplan passed, else the DNID when the carrier
    sent one, else the extension."""
    if given and given.lower() not in _UNKNOWN:
        return given
    dnid = env.get("agi_dnid", "")
    if dnid.lower() not in _UNKNOWN and any(ch.isdigit() for ch in dnid):
        return dnid
    return env.get("agi_extension", "")


def call_id_of(uniqueid: str) -> str:
    """The channel's UNIQUEID as the call's id when it is a plain one (``1733452712.42``);
    otherwise (an id given by Originate/ARI such as ``abc;2``) a new one. The id travels in
    Local channel names (``Local/<call>@hotline-party``) and file names: nothing else fits."""
    from agi_scripts.session import new_call_id

    return uniqueid if _PLAIN_ID.fullmatch(uniqueid) else new_call_id()


def handler(session) -> None:
    agi, env = session.agi, session.agi.env
    session.call_id = call_id_of(env.get("agi_uniqueid", ""))
    caller = env.get("agi_callerid", "")
    turn = session.flow.start(session.call_id, dialed_number(env, session.arg(1)),
                              None if caller.lower() in _UNKNOWN else caller, channel=env.get("agi_channel"))
    if session.arg(2) == "trunk-failed" and turn.action == "transfer":
        turn = session.flow.transfer_ended(session.call_id, "CHANUNAVAIL")  # to the seats, ahead of the queue
    hand_back(agi, turn)
    play_steps(agi, turn.steps, session.services.prompt_dir)
    if turn.action == "queue" and session.audio is not None:
        # EAGI: the caller's audio is here only in this process — wait and listen now.
        from agi_scripts.queue_wait import wait

        wait(session)


if __name__ == "__main__":
    from agi_scripts.session import main_script

    raise SystemExit(main_script("route_call"))
