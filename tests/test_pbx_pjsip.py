"""The product over real SIP (PJSIP) on a real Asterisk 22, with SIPp as the carrier's trunk and as
an agent's desk phone.

* The carrier trunk (endpoint ``carrier``, identified by the From user) sends every form of a
  dialed number a Chinese carrier puts in the request URI — ``+86…``, ``0086…``, with an area
  code (``021…``, ``+8621…``), bare — and each must be routed as its own line: the
  HOTLINE_LINE / HOTLINE_SKILL / HOTLINE_ACTION that Asterisk set on the PJSIP channel equal the
  pure router's decision. SIPp really carries each call: INVITE → 200 OK → ACK, BYE later.
* An agent whose phone is a PJSIP endpoint (``PJSIP/agent7001``; a SIPp UAS answers on its
  contact): the citizen is bridged with the phone's channel, and the INVITE the phone received
  carries the ticket screen pop — ``X-Hotline-Ticket`` (the ticket Asterisk holds in
  HOTLINE_TICKET) and ``X-Hotline-Call`` — as the phone itself logged it; when the citizen hangs
  up the phone gets a BYE.
* An agent on a non-PJSIP channel (Local): the pre-dial handler must not call PJSIP_HEADER there,
  so Asterisk's own log shows no PJSIP_HEADER error for the call.

What happened is read from Asterisk (AMI events, its messages.log) and from what SIPp saw on the
wire — never from the product's logs.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench.asterisk_lab import free_port, wait_until
from call_routing.router import decide

pytestmark = [pytest.mark.pbx,
              pytest.mark.skipif(shutil.which("sipp") is None, reason="real-PBX SIP test skipped: no sipp")]

SIPP_DATA = Path(__file__).resolve().parent / "data" / "sipp"
CARRIER_UAC = SIPP_DATA / "carrier_uac.xml"
AGENT_PHONE_UAS = SIPP_DATA / "agent_phone_uas.xml"

CARRIER = "carrier"  # the From user Asterisk identifies the trunk by: also the call's caller id
UNKNOWN = "12399"    # no such line: plain 12345

#: the number as the carrier sends it -> the line a citizen dialed (checked against the router too)
NUMBER_FORMS = {
    "+8612301": "12301",     # E.164: a merge line (travel) with its transition prompt
    "008612348": "12348",    # international prefix 00: a dual line (legal)
    "12345": "12345",
    "02112345": "12345",     # Shanghai's area code 021 + 12345
    "+862112345": "12345",   # the same in E.164
    "12360": "12360",        # a sub-center line (customs): transferred, not queued
    UNKNOWN: "12345",
}


# -- SIPp -------------------------------------------------------------------------------------
def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def media_port() -> int:
    """A free UDP port p with p+2 free too: SIPp binds both for its (unused) RTP echo."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        if port < 65000 and _udp_free(port + 2):
            return port
    raise RuntimeError("no free UDP port pair for SIPp's media")


def _udp_bound(port: int) -> bool:
    """Something listens on UDP 127.0.0.1:``port`` (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    try:
        return any(line.split()[1] == want for line in Path("/proc/net/udp").read_text().splitlines()[1:])
    except OSError:
        return not _udp_free(port)


class Sipp:
    """One SIPp process bound to 127.0.0.1 on ``port``: its scenario's ``<log>`` records in
    ``log``, every SIP message it sent or received in ``messages``, unexpected ones in ``errors``."""

    def __init__(self, workdir: Path, name: str, scenario: Path, port: int, *args: str):
        self.workdir = workdir
        self.name = name
        self.port = port
        self.log = workdir / f"{name}.log"
        self.messages = workdir / f"{name}.messages"
        self.errors = workdir / f"{name}.errors"
        self.out = workdir / f"{name}.out"
        self.argv = ["sipp", *args, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
                     "-mp", str(media_port()), "-cp", str(free_port(socket.SOCK_DGRAM)), "-nostdin",
                     "-trace_logs", "-log_file", str(self.log), "-trace_msg", "-message_file", str(self.messages),
                     "-trace_err", "-error_file", str(self.errors)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Sipp":
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """End this SIPp (and only it) if it is still running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def records(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def successful_calls(self) -> int:
        """The 'Successful call' total of SIPp's final statistics screen."""
        found = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", self.out.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def diagnosis(self) -> str:
        parts = []
        for path in (self.errors, self.out, self.messages):
            if path.exists():
                parts.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


# -- what Asterisk did with a carrier call ------------------------------------------------------
def carrier_channel(events: list[dict], number: str) -> str | None:
    """The PJSIP channel Asterisk created for the trunk's INVITE to ``number``."""
    return next((e["Channel"] for e in events if e.get("Event") == "Newchannel"
                 and e.get("Channel", "").startswith(f"PJSIP/{CARRIER}-")
                 and e.get("Context") == "hotline-in" and e.get("Exten") == number), None)


def route_call_handoff(events: list[dict], channel: str) -> dict | None:
    """What route_call handed back on ``channel``: the HOTLINE_* values Asterisk held when the
    route_call AGI returned (VarSet events between the AGI application and the next dialplan
    step), plus the number the dialplan passed to it. None while the AGI has not returned."""
    mine = [e for e in events if e.get("Channel") == channel]
    start = next((i for i, e in enumerate(mine) if e.get("Event") == "Newexten" and e.get("Application") == "AGI"
                  and "/route_call," in e.get("AppData", "")), None)
    if start is None:
        return None
    values = {"dialed": mine[start]["AppData"].split(",")[2]}
    for e in mine[start + 1:]:
        if e.get("Event") == "Newexten":
            return values
        if e.get("Event") == "VarSet" and e.get("Variable", "").startswith("HOTLINE_"):
            values[e["Variable"]] = e.get("Value", "")
    return None


def channel_story(world, mark: int, channel: str) -> tuple[list[str], list[str]]:
    """(the states ``channel`` went through, the events that ended it) once Asterisk hung it up.
    A far end's hang-up (the citizen's BYE) is a HangupRequest the channel driver queues; the
    PBX ending the call would be a SoftHangupRequest or a plain Hangup first."""
    def ended():
        mine = [e for e in world.events_since(mark) if e.get("Channel") == channel]
        return mine if any(e.get("Event") == "Hangup" for e in mine) else None
    mine = wait_until(ended, 10, 0.05, f"{channel} to end")
    states = [e.get("ChannelStateDesc") for e in mine if e.get("Event") == "Newstate"]
    ending = [e["Event"] for e in mine if e.get("Event") in ("HangupRequest", "SoftHangupRequest", "Hangup")]
    return states, ending


def expected(world, number: str) -> dict:
    """The pure router's decision for this number and caller, now (the lab's rules)."""
    d = decide(number, CARRIER, time.time(), None, world.rules)
    action = {"enqueue": "queue", "transfer": "transfer"}
    act = next((action[s["do"]] for s in d.steps if s["do"] in action), "hangup")
    return {"line": d.line, "skill": d.skill or "", "action": act}


def test_every_carrier_number_form_over_pjsip_is_routed_as_its_own_line(pbx, tmp_path):
    world = pbx
    numbers = list(NUMBER_FORMS)
    (tmp_path / "numbers.csv").write_text("SEQUENTIAL\n" + "".join(f"{n}\n" for n in numbers))
    mark = len(world.ami.events)
    # the trunk places every call at once; each citizen stays 3 s on the line, then hangs up
    trunk = Sipp(tmp_path, "trunk", CARRIER_UAC, free_port(socket.SOCK_DGRAM),
                 f"127.0.0.1:{world.lab.sip_port}", "-inf", str(tmp_path / "numbers.csv"),
                 "-m", str(len(numbers)), "-l", str(len(numbers)), "-r", "50", "-d", "3000",
                 "-timeout", "30", "-timeout_error", "-recv_timeout", "10000")
    try:
        rc = trunk.start().wait(45)
    finally:
        trunk.stop()
    # the carrier's side: every call answered (200 OK, ACK) and ended by its BYE, nothing unexpected
    assert rc == 0 and trunk.successful_calls() == len(numbers), trunk.diagnosis()

    events = world.events_since(mark)
    wrong, lines = {}, {}
    for number in numbers:
        channel = carrier_channel(events, number)
        assert channel, f"Asterisk made no PJSIP channel for the trunk's INVITE to {number}"
        handoff = wait_until(lambda: route_call_handoff(world.events_since(mark), channel), 10, 0.05,
                             f"route_call to return on {channel}")
        got = {"line": handoff.get("HOTLINE_LINE"), "skill": handoff.get("HOTLINE_SKILL"),
               "action": handoff.get("HOTLINE_ACTION")}
        lines[number] = got["line"]
        if got != expected(world, number) or handoff["dialed"] != number:
            wrong[number] = (handoff["dialed"], got, expected(world, number))
        # Asterisk's side of the same call: answered, then ended by the far end
        states, ending = channel_story(world, mark, channel)
        assert "Up" in states and ending[0] == "HangupRequest", (channel, states, ending)
    assert not wrong, wrong
    # each form reached the line the citizen dialed (the router agrees: checked above)
    assert lines == NUMBER_FORMS


# -- an agent on a PJSIP phone --------------------------------------------------------------------
def phone_records(phone: Sipp, kind: str) -> list[dict]:
    """The phone's ``<log>`` records of one kind ("invite", "ack", "bye") as dicts."""
    out = []
    for line in phone.records():
        head, *fields = line.split("|")
        if head == kind:
            out.append({k: v.strip() for k, _, v in (f.partition("=") for f in fields)})
    return out


def start_phone(world, phone: Sipp) -> None:
    """Start agent7001's phone and wait until it listens on its contact's port."""
    phone.start()
    wait_until(lambda: _udp_bound(world.lab.phone_port) or phone.proc.poll() is not None, 5, 0.02,
               "the agent's phone to listen")
    assert phone.proc.poll() is None, phone.diagnosis()


def test_a_pjsip_agent_phone_gets_the_ticket_screen_pop_and_the_bye(pbx, tmp_path):
    world = pbx
    phone = Sipp(tmp_path, "agent7001", AGENT_PHONE_UAS, world.lab.phone_port,
                 "-m", "1", "-timeout", "40", "-recv_timeout", "30000")
    try:
        start_phone(world, phone)
        world.seat("7001", {"legal": 50}, endpoint="PJSIP/agent7001")
        call = world.call("12348")
        leg = call.bridged_with("PJSIP/agent7001-", timeout=30)
        ticket, call_id = call.var("HOTLINE_TICKET"), call.call_id()
        assert ticket and ticket == call.first_var("HOTLINE_TICKET")
        wait_until(lambda: (world.acd.agent("7001") or {}).get("state") == "busy", 10, 0.05,
                   "the ACD to see 7001 talking")
        assert world.acd.call(call_id)["agent"] == "7001"
        # the phone's own view of the INVITE that rang it: the ticket and call id of this call
        sip_call_id = world.ami.action("Getvar", Channel=leg, Variable="CHANNEL(pjsip,call-id)").get("Value")
        invites = wait_until(lambda: phone_records(phone, "invite"), 5, 0.05, "the phone to log the INVITE")
        assert invites == [{"call-id": sip_call_id, "X-Hotline-Ticket": ticket, "X-Hotline-Call": call_id}], \
            phone.diagnosis()
        assert wait_until(lambda: phone_records(phone, "ack"), 5, 0.05, "the phone to log the ACK") \
            == [{"call-id": sip_call_id}]
        # the citizen hangs up: Asterisk ends the agent's leg and the phone gets the BYE
        call.hangup()
        wait_until(lambda: call.hung_up(leg), 10, 0.05, "the agent's PJSIP leg to end")
        assert phone.wait(10) == 0, phone.diagnosis()
        assert phone_records(phone, "bye") == [{"call-id": sip_call_id}], phone.diagnosis()
    finally:
        phone.stop()


# -- an agent on a Local channel: no PJSIP_HEADER ------------------------------------------------
PJSIP_HEADER_ERROR = re.compile(r"\] (ERROR|WARNING)\[.*(PJSIP_HEADER|res_pjsip_header_funcs|requires a PJSIP channel)")


def test_a_non_pjsip_agent_gets_no_pjsip_header_call(pbx):
    world = pbx
    log = world.lab.run / "log" / "messages.log"
    offset = log.stat().st_size
    world.seat("7003", {"legal": 50})  # the world's default phone: Local/7003@lab-agent/n
    call = world.call("12348")
    leg = call.bridged_with("Local/7003@lab-agent")
    # the pre-dial handler ran on the agent's Local leg and skipped the SIP headers
    headers = [e for e in call.events() if e.get("Event") == "Newexten" and e.get("Context") == "hotline-headers"
               and e.get("Channel") == leg]
    assert [e["AppData"] for e in headers if e.get("Application") == "GotoIf"] == ["1?done"], headers
    assert not [e for e in call.events() if e.get("Event") == "Newexten" and "PJSIP_HEADER" in e.get("AppData", "")]
    call.hangup()
    wait_until(lambda: call.hung_up(leg), 10, 0.05, "the agent's leg to end")

    # Asterisk's own log, written up to the handler's Return on the agent's leg (an error of
    # its Set(PJSIP_HEADER(…)) would come before): no PJSIP_HEADER error ("Function PJSIP_HEADER
    # not registered", res_pjsip_header_funcs' "This function requires a PJSIP channel")
    returned = re.compile(r"\[s@hotline-headers:\d+\] Return\(" + re.escape(f'"{leg}"'))

    def written():
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        return text if returned.search(text) else None
    text = wait_until(written, 5, 0.05, "Asterisk's log to show the pre-dial handler")
    errors = [line for line in text.splitlines() if PJSIP_HEADER_ERROR.search(line)]
    assert not errors, errors
