"""agi_scripts/route_call.py as Asterisk runs it: a subprocess fed the AGI environment and
``200 result=…`` replies over real pipes, with EAGI audio on fd 3, on a real Redis ACD and a
real SQLite ticket store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import wave
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis as redis_lib
from agi_peer import Peer, agi_env, converse

from call_routing.acd import ACD, Agent
from call_routing.rules import load_rules
from ivr.prompts import sound_path
from intake.tickets import TicketStore

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "agi_scripts" / "route_call.py"
PROMPTS = "/var/lib/asterisk/sounds/hotline"


@pytest.fixture
def env(redis_url, tmp_path):
    db = tmp_path / "tickets.db"
    e = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{db}", HOTLINE_PROMPTS=PROMPTS,
             HOTLINE_RECORDINGS=str(tmp_path / "rec"), HOTLINE_INVITE_AFTER_S="0", HOTLINE_WAIT_SESSION_S="3",
             PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    e.pop("VOSK_MODEL_PATH", None)
    e.pop("HOTLINE_RECOGNIZER", None)
    return e


def tickets(env) -> TicketStore:
    """The ticket store as the agent console or a job sees it: rows not written yet are created
    from the draft the call path left in Redis (ticket creation is off the call path)."""
    from intake.tickets import TicketDrafts

    return TicketStore(env["DATABASE_URL"], drafts=TicketDrafts(redis_lib.Redis.from_url(env["REDIS_URL"])))


def work_off(env) -> None:
    """The rq worker's turn (``python -m intake.worker --burst``): the call end and the rating are
    written to the ticket by a job, never inside the call path."""
    done = subprocess.run([sys.executable, "-m", "intake.worker", "--burst"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def rules_with_window(tmp_path, until: date, after="forward") -> Path:
    """A copy of the shipped rules whose merge windows end on ``until``."""
    text = (ROOT / "transfer_rules.yaml").read_text("utf-8").replace("until: 2026-12-31", f"until: {until}")
    if after == "announce_and_hangup":
        text = text.replace('''    after:
      action: forward
      text: 12301旅游服务''', '''    after:
      action: announce_and_hangup
      text: 12301旅游服务''')
    (tmp_path / "emergency_keywords.yaml").write_text((ROOT / "emergency_keywords.yaml").read_text("utf-8"), "utf-8")
    path = tmp_path / "transfer_rules.yaml"
    path.write_text(text, "utf-8")
    return path


def run_script(env, agi, peer=None, audio: bytes | None = None, args=(), on_start=None, timeout=30) -> tuple:
    """Start route_call.py like Asterisk's AGI()/EAGI() and talk to it; returns (peer, exit code, stderr)."""
    peer = peer or Peer()
    cmd = [sys.executable, str(SCRIPT), *args]
    pass_fds = ()
    r = w = None
    if audio is not None:
        r, w = os.pipe()
        # Asterisk hands EAGI audio on fd 3: the shell maps our pipe there, then execs python
        cmd = ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{r}', *cmd]
        pass_fds = (r,)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            pass_fds=pass_fds, cwd="/")
    feeder = None
    if audio is not None:
        os.close(r)

        def feed():
            try:
                os.write(w, audio)
                time.sleep(5)  # the caller stays on the line
            except OSError:
                pass
            finally:
                os.close(w)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    if on_start:
        on_start(proc)
    converse(proc.stdout, proc.stdin, agi, peer)
    proc.stdin.close()
    code = proc.wait(timeout)
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    return peer, code, err


# -- every mode -----------------------------------------------------------------------------------

def test_main_line_over_pipes_queues_for_general_seats_with_a_ticket(env):
    peer, code, err = run_script(env, agi_env("12345", uniqueid="p-main"))
    assert code == 0, err
    v = peer.variables
    assert (v["HOTLINE_ACTION"], v["HOTLINE_SKILL"], v["HOTLINE_LINE"]) == ("queue", "general", "12345")
    assert v["HOTLINE_RULES_VERSION"] == load_rules().version
    t = tickets(env).by_call("p-main")
    assert str(t.id) == v["HOTLINE_TICKET"] and t.entry_line == "12345"
    assert peer.played == [sound_path(PROMPTS, "您好，这里是12345政务服务便民热线，正在为您接通坐席。")]  # the greeting
    assert "COMMAND:" not in err  # no pyst2 debug noise on the Asterisk console


@pytest.mark.parametrize("dialed,action,skill,target,greeting", [
    ("12348", "queue", "legal", "", "您好，这里是12345政务服务便民热线，正在为您接通坐席。"),
    ("12366", "transfer", "", "sip:12366@subcenter-tax.example.gov.cn",
     "您好，这里是12345政务服务便民热线，正在为您转接税务总局12366分中心。"),  # the line's own
    ("120", "transfer", "", "120", None),  # an emergency number is handed over at once
])
def test_dual_subcenter_and_emergency_numbers_over_pipes(env, dialed, action, skill, target, greeting):
    peer, code, err = run_script(env, agi_env(dialed, uniqueid=f"p-{dialed}"))
    assert code == 0, err
    assert (peer.variables["HOTLINE_ACTION"], peer.variables["HOTLINE_SKILL"], peer.variables["HOTLINE_TARGET"]) == \
        (action, skill, target)
    assert peer.played == ([sound_path(PROMPTS, greeting)] if greeting else [])


def test_merged_number_inside_the_window_plays_the_transition_prompt(env, tmp_path):
    path = rules_with_window(tmp_path, date.today() + timedelta(days=365))
    env["RULES_PATH"] = str(path)
    peer, code, err = run_script(env, agi_env("+8612301", uniqueid="p-in"))
    assert code == 0, err
    assert (peer.variables["HOTLINE_ACTION"], peer.variables["HOTLINE_SKILL"]) == ("queue", "tourism")
    assert peer.played == [sound_path(PROMPTS, load_rules(path).lines["12301"].transition.prompt)]


def test_merged_number_after_the_window_announces_retirement_and_hangs_up(env, tmp_path):
    path = rules_with_window(tmp_path, date.today() - timedelta(days=30), after="announce_and_hangup")
    env["RULES_PATH"] = str(path)
    peer, code, err = run_script(env, agi_env("12301", uniqueid="p-after"))
    assert code == 0, err
    assert peer.variables["HOTLINE_ACTION"] == "hangup"
    assert peer.played == [sound_path(PROMPTS, load_rules(path).lines["12301"].after_text)]


# -- hangups -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["-1", "HANGUP", "511"])
def test_hangup_during_the_prompt_ends_the_script_and_records_an_abandoned_call(env, tmp_path, form):
    env["RULES_PATH"] = str(rules_with_window(tmp_path, date.today() + timedelta(days=365)))
    peer = Peer(hangup_form=form, hangup_when=lambda cmd, n: cmd.startswith("STREAM FILE"))
    peer, code, err = run_script(env, agi_env("12301", uniqueid=f"p-h{form}"), peer)
    assert code == 0, err
    stream_at = next(i for i, c in enumerate(peer.commands) if c.startswith("STREAM FILE"))
    assert all(c.startswith("CHANNEL STATUS") for c in peer.commands[stream_at + 1:])
    work_off(env)
    assert tickets(env).by_call(f"p-h{form}").call_outcome == "abandoned"


def test_sighup_from_asterisk_does_not_kill_the_script_and_stops_further_commands(env, tmp_path):
    env["RULES_PATH"] = str(rules_with_window(tmp_path, date.today() + timedelta(days=365)))
    holder = {}
    peer = Peer()

    def on_command(cmd):
        if cmd.startswith("STREAM FILE"):
            holder["proc"].send_signal(signal.SIGHUP)
            time.sleep(0.2)
    peer.on_command = on_command
    peer, code, err = run_script(env, agi_env("12301", uniqueid="p-sighup"), peer,
                                 on_start=lambda p: holder.setdefault("proc", p))
    assert code == 0, err
    assert peer.commands[-1].startswith("STREAM FILE")
    work_off(env)
    assert tickets(env).by_call("p-sighup").call_outcome == "abandoned"


# -- EAGI: listening while queued ---------------------------------------------------------------------

def test_eagi_caller_who_describes_a_fire_while_waiting_is_transferred_to_119(env, redis_url):
    env["HOTLINE_RECOGNIZER"] = "fake_recognizer:Recognizer"
    audio = b"\x10\x00" * 8000 * 2  # two seconds of 8 kHz 16-bit audio
    peer, code, err = run_script(env, agi_env("12345", uniqueid="e-fire", enhanced=True), audio=audio)
    assert code == 0, err
    assert (peer.variables["HOTLINE_ACTION"], peer.variables["HOTLINE_TARGET"]) == ("transfer", "119")
    notice = load_rules().emergency_notice.format(number="119", name="消防救援")
    assert peer.played[-1] == sound_path(PROMPTS, notice)
    acd = ACD.from_url(redis_url, load_rules())
    assert acd.call("e-fire")["state"] != "waiting"  # out of the queue, and no missed-call callback
    assert acd.call("e-fire")["kind"] == "live"


def test_eagi_without_a_recognizer_records_what_the_caller_says_for_the_transcription_job(env, redis_url, tmp_path):
    audio = b"\x20\x00" * 8000 * 2
    peer, code, err = run_script(env, agi_env("12345", uniqueid="e-rec", enhanced=True), audio=audio)
    assert code == 0, err
    assert peer.variables["HOTLINE_ACTION"] == "queue"  # session over, still waiting: the dialplan loops
    with wave.open(str(tmp_path / "rec" / "e-rec.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.getnframes() == 16000
    from rq import Queue

    jobs = Queue("speech", connection=redis_lib.Redis.from_url(redis_url)).jobs
    assert any(j.kwargs.get("call_id") == "e-rec" for j in jobs)


# -- the real ACD: an agent is free ------------------------------------------------------------------

def test_with_a_free_agent_the_waiting_caller_is_sent_to_the_agents_endpoint(env, redis_url):
    acd = ACD.from_url(redis_url, load_rules())
    acd.save_agent(Agent("a1001", "王芳", {"general": 50}, ("PJSIP/agent1001",)))
    acd.login("a1001")
    first, code, err = run_script(env, agi_env("12345", uniqueid="r-1"))
    assert code == 0, err
    call_id = first.variables["HOTLINE_CALL_ID"]
    # AGI(route_call.py,queue_wait,${HOTLINE_CALL_ID}): Asterisk passes arguments in argv and agi_arg_N
    peer, code, err = run_script(env, agi_env("12345", uniqueid="r-1", args=("queue_wait", call_id)),
                                 args=("queue_wait", call_id))
    assert code == 0, err
    assert (peer.variables["HOTLINE_ACTION"], peer.variables["HOTLINE_TARGET"]) == ("transfer", "PJSIP/agent1001")
    assert acd.call(call_id)["agent"] == "a1001"


# -- failures -------------------------------------------------------------------------------------------

def test_redis_down_sets_the_fallback_variable_so_the_dialplan_reaches_general_seats(env):
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    peer, code, err = run_script(env, agi_env("12345", uniqueid="f-1"))
    assert code == 0
    assert peer.variables.get("HOTLINE_FALLBACK") == "error"
    assert "HOTLINE_ACTION" not in peer.variables


def test_an_invalid_rules_file_sets_the_fallback_variable(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hotline: [\n", "utf-8")
    env["RULES_PATH"] = str(bad)
    peer, code, err = run_script(env, agi_env("12345", uniqueid="f-2"))
    assert code == 0
    assert peer.variables == {"HOTLINE_FALLBACK": "unavailable"}
