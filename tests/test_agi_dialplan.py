"""The sample dialplan and the Asterisk callback: what an Asterisk admin installs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agi_scripts.callback import CallFileDialer
from call_routing.acd.callbacks import PLACED, CallbackRequest

SAMPLE = Path(__file__).resolve().parent.parent / "agi_scripts" / "extensions.conf.sample"


def contexts() -> dict:
    out, current = {}, None
    for line in SAMPLE.read_text("utf-8").splitlines():
        line = line.split(";", 1)[0].rstrip()
        m = re.match(r"^\[([\w-]+)\]", line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif line.strip() and current is not None:
            current.append(line.strip())
    return out


def test_every_legacy_number_and_12345_enter_the_gateway(rules):
    inbound = " ".join(contexts()["hotline-in"])
    for number in ["12345", *rules.lines]:
        assert f"exten => {number},1,Goto(hotline," in inbound
    for number in ("110", "119", "120", "122"):  # emergencies go to the trunk before any AGI
        assert f"exten => {number},1,Goto(hotline-emergency," in inbound
    emergency = contexts()["hotline-emergency"]
    assert emergency[1].startswith("same => n,Dial(${HOTLINE_TRUNK_PREFIX}${EXTEN}${HOTLINE_TRUNK_SUFFIX}")
    assert not any("AGI" in line for line in emergency[:emergency.index(next(
        line for line in emergency if "n(seats)" in line))])


def test_every_agi_failure_form_leads_to_the_general_seats():
    ctx = contexts()
    agi = " ".join(ctx["hotline-agi"])
    assert '"${HOTLINE_FALLBACK}" != ""' in agi  # handler crashed
    assert '"${HOTLINE_ACTION}" = ""' in agi  # server down / refused, session closed or timed out
    # a status other than SUCCESS after the hand-off was made (a prompt file missing) keeps it
    assert 'GotoIf($["${AGISTATUS}"' not in agi
    actions = " ".join(ctx["hotline-action"])
    for action in ("queue", "transfer", "hangup", "survey", "fallback", "i"):
        assert f"exten => {action},1,Goto(" in actions
    fallback = " ".join(ctx["hotline-fallback"])
    assert "Queue(${HOTLINE_FALLBACK_QUEUE}" in fallback and "AGI(" not in fallback
    every_agi = [line for lines in ctx.values() for line in lines if "AGI(" in line]
    assert all("${HOTLINE_AGI}" in line for line in every_agi)


def test_the_callback_rings_the_agent_first_through_an_atomically_placed_call_file(tmp_path):
    spool = tmp_path / "outgoing"
    dialer = CallFileDialer(spool=str(spool), trunk="carrier")
    request = CallbackRequest("cb42", 1, "+86 138-0013-8000", "a1001", ("PJSIP/agent1001",), "12345", "general", "77")
    assert dialer.dial(request) == PLACED
    (path,) = spool.iterdir()
    text = path.read_text()
    assert "Channel: PJSIP/agent1001\n" in text  # the agent first: no citizen rung into silence
    assert "Setvar: HOTLINE_CALLBACK_NUMBER=8613800138000" in text or \
        "Setvar: HOTLINE_CALLBACK_NUMBER=13800138000" in text
    assert "Context: hotline-callback" in text and "Setvar: HOTLINE_TICKET=77" in text
    assert not list(tmp_path.glob(".hotline-*"))  # nothing half-written left behind


def test_after_a_callback_the_citizen_left_on_the_line_gets_the_survey_and_the_callback_is_reported_once():
    ctx = contexts()
    callback = ctx["hotline-callback"]
    (dial,) = [line for line in callback if ",Dial(" in line]
    # the agent's channel dials the citizen; the agent hanging up first sends the citizen's channel on
    assert "F(hotline-callback-survey^s^1)" in dial
    assert any("Set(__HOTLINE_CALL_ID=${HOTLINE_CALL_ID})" in line for line in callback[:callback.index(dial)])
    after = callback[callback.index(dial) + 1]
    assert "AGI(${HOTLINE_AGI}/callback,${HOTLINE_CALL_ID},${DIALSTATUS},caller)" in after  # citizen hung up first
    survey = ctx["hotline-callback-survey"]
    assert "AGI(${HOTLINE_AGI}/callback,${HOTLINE_CALL_ID},ANSWER,agent)" in survey[0]  # reported here instead
    assert "Gosub(hotline-agi,s,1(survey))" in survey[1] and "Goto(hotline-hangup,s,1)" in survey[2]


def test_the_three_way_dialplan_matches_the_threeway_handler_and_the_snippets():
    from agi_scripts import HANDLERS

    ctx = contexts()
    text = SAMPLE.read_text("utf-8")
    steps = set(re.findall(r"/threeway,\$\{[A-Z0-9_]+\},([a-z-]+)", text))
    assert steps == {"start", "dial", "answered", "ended", "cancel", "agent-left"}
    assert "threeway" in HANDLERS
    # the feature codes run [hotline-threeway], which reserves first and only then moves anyone
    features = (SAMPLE.parent / "features.conf.sample").read_text("utf-8")
    assert "*3,self/callee,Gosub(hotline-threeway,subcenter,1)" in features
    assert "*4,self/callee,Gosub(hotline-threeway,expert,1)" in features
    threeway = ctx["hotline-threeway"]
    assert "/threeway,${HOTLINE_CALL_ID},start,${EXTEN})" in threeway[0]
    assert threeway.index(next(s for s in threeway if "ChannelRedirect" in s)) > 1
    assert "hotline_subcenter#hotline_expert" in " ".join(ctx["hotline-transfer"])
    # the party leg: an unoptimised Local channel, its DIALSTATUS reported by a hangup handler
    assert "Originate(Local/${HOTLINE_CALL_ID}@hotline-party/n," in " ".join(threeway)
    assert "hangup_handler_push)=hotline-party-ended" in " ".join(ctx["hotline-party"])
    assert "${DIALSTATUS}" in " ".join(ctx["hotline-party-ended"])
    assert "GOSUB_RESULT=ABORT" in " ".join(ctx["hotline-party-answered"])
    # the agent's menu and hangup handler
    conf = (SAMPLE.parent / "confbridge.conf.sample").read_text("utf-8")
    assert "*9=dialplan_exec(hotline-threeway-cancel,s,1)" in conf and "*0=leave_conference" in conf
    for name in ("hotline-threeway-cancel", "hotline-agent-left", "hotline-conf", "hotline-dialstr"):
        assert name in ctx
    assert "hangup_handler_push)=hotline-agent-left" in " ".join(ctx["hotline-conf"])
    # cancel and an agent leaving while the party rings hang the party leg up, by its Local name
    for name in ("hotline-threeway-cancel", "hotline-agent-left"):
        assert "@hotline-party,a)" in " ".join(ctx[name])
    # only the caller's hangup in the conference ends the citizen's call
    assert any('"${HOTLINE_CONF_ROLE}" != "caller"' in s for s in ctx["hotline-conf"])


def test_install_names_the_audiosocket_server_in_the_sites_globals_and_can_turn_it_off(tmp_path):
    """install.sh --audiosocket writes HOTLINE_AUDIOSOCKET (the only site setting it changes in
    an existing globals.conf: the admin's other edits stay), and refuses an address that is not one."""
    root = Path(__file__).resolve().parent.parent
    etc = tmp_path / "etc"
    etc.mkdir()

    def install(*args):
        return subprocess.run([str(root / "agi_scripts" / "install.sh"), "--etc", str(etc), "--sounds",
                               str(tmp_path / "sounds"), "--moh", str(tmp_path / "moh"), "--no-reload", *args],
                              env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)

    def setting():
        return re.search(r"^HOTLINE_AUDIOSOCKET=([^ ;]*)", (etc / "hotline" / "globals.conf").read_text(), re.M).group(1)

    assert install("--audiosocket", "127.0.0.1:9092").returncode == 0
    assert setting() == "127.0.0.1:9092"
    globals_conf = etc / "hotline" / "globals.conf"
    globals_conf.write_text(globals_conf.read_text().replace("HOTLINE_MAX_WAIT_LOOPS=240", "HOTLINE_MAX_WAIT_LOOPS=120"))
    assert install("--audiosocket", "off").returncode == 0
    assert setting() == "" and "HOTLINE_MAX_WAIT_LOOPS=120" in globals_conf.read_text()
    refused = install("--audiosocket", "127.0.0.1:9092;evil")
    assert refused.returncode == 1 and "--audiosocket" in refused.stderr and setting() == ""
