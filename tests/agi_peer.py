"""A fake Asterisk that speaks the AGI protocol over real pipes or sockets, for the tests.

It sends the ``agi_*`` environment, answers each command the script sends like Asterisk
does, remembers channel variables and what was played, and can hang up at any command in
each of the three forms Asterisk uses: ``200 result=-1``, a bare ``HANGUP`` line, ``511``.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

DEAD = "511 Command Not Permitted on a dead channel or intercept routine"


def agi_env(dialed="12345", caller="13800138000", uniqueid="1700000000.1", script="route_call", args=(),
            enhanced=False, network=False) -> dict:
    env = {
        "agi_request": f"agi://127.0.0.1/{script}" if network else f"/opt/hotline/agi_scripts/{script}.py",
        "agi_channel": "PJSIP/carrier-00000001", "agi_language": "zh", "agi_type": "PJSIP",
        "agi_uniqueid": uniqueid, "agi_version": "20.5.0", "agi_callerid": caller, "agi_calleridname": "unknown",
        "agi_callingpres": "0", "agi_dnid": dialed, "agi_rdnis": "unknown", "agi_context": "hotline-in",
        "agi_extension": dialed, "agi_priority": "2", "agi_enhanced": "1.0" if enhanced else "0.0",
        "agi_accountcode": "", "agi_threadid": "140000000000000",
    }
    if network:
        env["agi_network"] = "yes"
        env["agi_network_script"] = script
    for i, a in enumerate(args, 1):
        env[f"agi_arg_{i}"] = a
    return env


@dataclass
class Peer:
    """Answers commands; ``hangup_when(cmd, n)`` -> True makes that command the hangup point."""

    hangup_form: str | None = None  # "-1" | "HANGUP" | "511"
    hangup_when: object = None
    digits: list = field(default_factory=list)  # digits for WAIT FOR DIGIT / STREAM FILE, in order
    variables: dict = field(default_factory=dict)
    commands: list = field(default_factory=list)
    played: list = field(default_factory=list)
    on_command: object = None  # callback(cmd) before answering (e.g. advance a clock, assign an agent)
    dead: bool = False
    missing_sounds: tuple = ()

    def answer(self, cmd: str) -> list[str]:
        self.commands.append(cmd)
        if self.on_command:
            self.on_command(cmd)
        if self.dead:
            return ["200 result=-1"] if self.hangup_form == "-1" else [DEAD]
        if self.hangup_form and self.hangup_when and self.hangup_when(cmd, len(self.commands)):
            self.dead = True
            return {"-1": ["200 result=-1"], "HANGUP": ["HANGUP", "200 result=-1"], "511": [DEAD]}[self.hangup_form]
        verb = cmd.split(" ", 2)
        if cmd.startswith("SET VARIABLE"):
            m = re.match(r'SET VARIABLE (\S+) "(.*)"$', cmd)
            self.variables[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\\\", "\\")
            return ["200 result=1"]
        if cmd.startswith("GET VARIABLE"):
            name = cmd.split(" ", 2)[2].strip('"')
            if name in self.variables:
                return [f"200 result=1 ({self.variables[name]})"]
            return ["200 result=0"]
        if cmd.startswith("STREAM FILE"):
            sound = verb[2].split(" ")[0]
            if sound in self.missing_sounds:
                return ["200 result=-1 endpos=0"]
            self.played.append(sound)
            escape = cmd.rsplit(" ", 1)[1].strip('"')
            if escape and self.digits and self.digits[0] in escape:
                return [f"200 result={ord(self.digits.pop(0))} endpos=4000"]
            return ["200 result=0 endpos=8000"]
        if cmd.startswith("WAIT FOR DIGIT"):
            if self.digits:
                return [f"200 result={ord(self.digits.pop(0))}"]
            return ["200 result=0"]
        if cmd.startswith("CHANNEL STATUS"):
            return ["200 result=6"]
        if cmd.startswith("RECORD FILE"):
            return ["200 result=0 (timeout) endpos=16000"]
        return ["200 result=0"]


def converse(reader, writer, env: dict, peer: Peer, timeout: float = 20.0) -> Peer:
    """Run one AGI session: ``reader.readline()`` gives the script's commands, ``writer`` our answers."""
    writer.write("".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n")
    writer.flush()
    while True:
        line = reader.readline()
        if not line:
            return peer
        cmd = line.decode("utf-8").strip()
        if not cmd:
            continue
        for answer in peer.answer(cmd):
            try:
                writer.write(answer.encode() + b"\n")
                writer.flush()
            except (BrokenPipeError, ConnectionResetError):
                return peer


def fastagi_session(address, env: dict, peer: Peer, timeout: float = 20.0) -> Peer:
    """One FastAGI session over a real TCP connection."""
    with socket.create_connection(address, timeout=timeout) as sock:
        reader = sock.makefile("rb")
        writer = sock.makefile("wb")
        try:
            return converse(reader, writer, env, peer, timeout)
        except (ConnectionResetError, BrokenPipeError):
            return peer
        finally:
            reader.close()
            writer.close()
