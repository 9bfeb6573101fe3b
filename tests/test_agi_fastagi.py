"""The FastAGI server over real TCP sockets: every mode, the queue path, hangups in all three
forms at each step, crashing handlers, timeouts, a full pool, and 200 simultaneous calls."""
from __future__ import annotations

import socket
import threading
import time
from datetime import datetime

import pytest
from agi_peer import Peer, agi_env, fastagi_session

from agi_scripts.fastagi_server import FastAGIServer
from call_routing.rules import CHINA_TZ
from call_routing.rules_store import RulesStore
from ivr import flow as F
from ivr.prompts import sound_path
from ivr.services import Services

PROMPTS = "/var/lib/asterisk/sounds/hotline"
IN_WINDOW = datetime(2024, 6, 3, 10, 0, tzinfo=CHINA_TZ).timestamp()
AFTER_WINDOW = datetime(2027, 6, 3, 10, 0, tzinfo=CHINA_TZ).timestamp()


class Clock:
    def __init__(self, t=IN_WINDOW):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def store(rules_path):
    return RulesStore(rules_path)


@pytest.fixture
def world(store, tmp_path):
    clock = Clock()
    queue, tickets = F.MemoryQueue(), F.MemoryTickets()
    flow = F.CallFlow(store.current, queue, tickets, F.MemoryCalls(), clock=clock)
    services = Services(flow, store, PROMPTS, str(tmp_path / "rec"))
    server = FastAGIServer(services, "127.0.0.1", 0, workers=256).start()
    w = type("World", (), {})()
    w.clock, w.queue, w.tickets, w.flow, w.server, w.services = clock, queue, tickets, flow, server, services
    w.rules = store.current()
    yield w
    server.stop(2)


def call(world, dialed="12345", script="route_call", args=(), uid="1700000000.1", **peer):
    p = Peer(**peer)
    return fastagi_session(world.server.address, agi_env(dialed, uniqueid=uid, script=script, args=args,
                                                          network=True), p)


def say(text):
    return sound_path(PROMPTS, text)


# -- route_call: every mode ---------------------------------------------------------------

def test_merged_number_in_its_transition_window_hears_the_notice_then_waits_for_tourism_seats(world):
    p = call(world, "12301")
    line = world.rules.lines["12301"]
    assert p.variables["HOTLINE_ACTION"] == "queue"
    assert p.variables["HOTLINE_SKILL"] == "tourism"
    assert p.variables["HOTLINE_LINE"] == "12301"
    assert p.variables["HOTLINE_RULES_VERSION"] == world.rules.version
    assert world.tickets.tickets[p.variables["HOTLINE_TICKET"]]["line"] == "12301"
    assert p.played == [say(line.transition.prompt)]
    # variables first, then the prompt: a broken prompt never leaves the dialplan guessing
    assert p.commands.index(next(c for c in p.commands if c.startswith("STREAM"))) > \
        p.commands.index(next(c for c in p.commands if "HOTLINE_ACTION" in c))


def test_merged_number_after_its_window_hears_the_retirement_notice_and_is_still_connected(world):
    world.clock.t = AFTER_WINDOW
    p = call(world, "+8612301")
    assert p.variables["HOTLINE_ACTION"] == "queue" and p.variables["HOTLINE_SKILL"] == "tourism"
    assert p.played == [say(world.rules.lines["12301"].after_text)]


def test_dual_number_greets_and_goes_straight_to_its_own_seats_without_a_menu(world):
    p = call(world, "12348")
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_SKILL"], p.variables["HOTLINE_LINE"]) == \
        ("queue", "legal", "12348")
    assert p.played == [say(world.rules.hotline.greeting)]


def test_subcenter_number_is_transferred_to_the_subcenter(world):
    p = call(world, "12366")
    assert p.variables["HOTLINE_ACTION"] == "transfer"
    assert p.variables["HOTLINE_TARGET"] == "sip:12366@subcenter-tax.example.gov.cn"
    assert p.variables["HOTLINE_TICKET"]


def test_12345_goes_to_the_general_seats(world):
    p = call(world, "12345")
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_SKILL"], p.variables["HOTLINE_LINE"]) == \
        ("queue", "general", "12345")


def test_a_caller_dialing_119_through_the_gateway_is_handed_straight_to_119(world):
    p = call(world, "119")
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_TARGET"]) == ("transfer", "119")


# -- the queue path ---------------------------------------------------------------------------

def _ticking(world, then=None):
    """WAIT FOR DIGIT 1000 moves the fake clock one second; ``then(t)`` runs on every tick."""
    def on(cmd):
        if cmd.startswith("WAIT FOR DIGIT"):
            world.clock.t += int(cmd.split()[3]) / 1000
            if then:
                then(world.clock.t)
    return on


def test_waiting_caller_is_invited_recorded_told_position_offered_callback_then_connected_to_agent(world):
    start = world.clock.t
    first = call(world, "12345", uid="c1")
    call(world, "12345", uid="c0")  # someone else arrives too
    world.flow.wait("c0")
    world.flow.wait("c1")  # c1 entered first: one caller is behind it
    call_id = first.variables["HOTLINE_CALL_ID"]
    wait1 = call(world, script="queue_wait", args=(call_id,), on_command=_ticking(world))
    # within the first session (60 s): the invitation, a recording for the ticket, then the offer
    assert say(F.INVITE) in wait1.played
    assert any(c.startswith("RECORD FILE") for c in wait1.commands)
    assert world.tickets.tickets[first.variables["HOTLINE_TICKET"]]["recordings"]
    position = [say(t) for t in (F.POSITION_HEAD, "一", F.POSITION_MID)]
    assert wait1.played[-len(position) - 3:-3] == position  # 您前面还有一位，预计等待…
    assert wait1.played[-1] == say(F.CALLBACK_OFFER)
    assert wait1.variables["HOTLINE_ACTION"] == "queue"  # session over: the dialplan loops back
    assert world.clock.t - start >= 60
    wait2 = call(world, script="queue_wait", args=(call_id,),
                 on_command=_ticking(world, lambda t: world.queue.offer(call_id, "a7", "PJSIP/agent7")))
    assert wait2.variables["HOTLINE_ACTION"] == "transfer"
    assert wait2.variables["HOTLINE_TARGET"] == "PJSIP/agent7"
    assert wait2.commands[-1].startswith("SET VARIABLE") or "SET MUSIC off" in " ".join(wait2.commands)

    call(world, script="transfer", args=(call_id, "answered"))
    assert world.queue.calls[call_id]["state"] == "connected"
    after = call(world, script="transfer", args=(call_id, "ANSWER"))
    assert after.variables["HOTLINE_ACTION"] == "survey"
    survey = call(world, script="survey", args=(call_id,), digits=["1"])
    assert survey.played == [say(F.SURVEY), say(F.SURVEY_THANKS)]
    assert survey.variables["HOTLINE_ACTION"] == "hangup"
    ticket = world.tickets.tickets[first.variables["HOTLINE_TICKET"]]
    assert ticket["survey"] == "satisfied" and ticket["status"] == "completed"


def test_an_agent_who_does_not_answer_sends_the_caller_back_to_the_head_of_the_queue(world):
    call_id = call(world, "12345", uid="n1").variables["HOTLINE_CALL_ID"]
    world.queue.enqueue("other", skill="general", line="12345", caller="", ticket=None)
    call(world, script="queue_wait", args=(call_id,),
         on_command=_ticking(world, lambda t: world.queue.offer(call_id, "a1", "PJSIP/a1")))
    back = call(world, script="transfer", args=(call_id, "NOANSWER"))
    assert back.variables["HOTLINE_ACTION"] == "queue"
    assert ("no_answer", call_id) in world.queue.events
    assert world.queue.status(call_id).position == 0  # ahead of the caller who came later


def test_pressing_1_after_the_offer_books_a_callback_and_ends_the_call_politely(world):
    call_id = call(world, "12348", uid="cb1").variables["HOTLINE_CALL_ID"]
    world.clock.t += 0
    p = Peer(on_command=_ticking(world))
    p.digits = []

    def press_after_offer(cmd):
        _ticking(world)(cmd)
        if cmd.startswith("STREAM FILE") and say(F.CALLBACK_OFFER) in cmd:
            p.digits.append("1")
    p.on_command = press_after_offer
    fastagi_session(world.server.address, agi_env(script="queue_wait", args=(call_id,), network=True), p)
    assert p.variables["HOTLINE_ACTION"] == "hangup"
    assert p.played[-1] == say(F.CALLBACK_BOOKED)
    assert world.queue.calls[call_id]["state"] == "callback"


def test_failed_subcenter_transfer_lands_in_the_lines_seat_group(world):
    call_id = call(world, "12366", uid="s1").variables["HOTLINE_CALL_ID"]
    p = call(world, script="transfer", args=(call_id, "CHANUNAVAIL"))
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_SKILL"]) == ("queue", "tax")


def test_agent_pulls_in_the_subcenter_for_a_three_way_call(world):
    call_id = call(world, "12366", uid="t1").variables["HOTLINE_CALL_ID"]
    # nobody talking to the caller yet (the call is on its way to the sub-center): nothing to do
    p = call(world, script="threeway", args=(call_id, "start", "subcenter"))
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_REASON"]) == ("stay", "no_agent_talking")
    call(world, script="transfer", args=(call_id, "CHANUNAVAIL"))  # sub-center down: the tax seats
    call(world, script="queue_wait", args=(call_id,), uid="t1",
         on_command=lambda cmd: world.queue.calls.get(call_id, {}).get("state") == "waiting" and
         world.queue.offer(call_id, "a1", "PJSIP/a1"))
    call(world, script="transfer", args=(call_id, "answered"))
    p = call(world, script="transfer", args=(call_id, "threeway", "subcenter"))  # the older spelling
    assert (p.variables["HOTLINE_ACTION"], p.variables["HOTLINE_TARGET"]) == \
        ("transfer", "sip:12366@subcenter-tax.example.gov.cn")
    # full three-way life over the Redis ACD: tests/test_agi_threeway.py


# -- hangups: every step, every form ------------------------------------------------------------

FORMS = ["-1", "HANGUP", "511"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("step", ["SET VARIABLE", "STREAM FILE"])
def test_caller_hanging_up_during_routing_closes_the_ticket_and_the_session(world, form, step):
    p = call(world, "12301", uid=f"h{form}-{step}".replace(" ", "_"), hangup_form=form,
             hangup_when=lambda cmd, n: cmd.startswith(step))
    ticket = next(t for t in world.tickets.tickets.values() if t["call_id"] == f"h{form}-{step}".replace(" ", "_"))
    assert ticket["status"] == "abandoned"
    dead_at = next(i for i, c in enumerate(p.commands) if c.startswith(step))
    # after the hangup at most a CHANNEL STATUS probe (for result=-1 on a prompt), nothing else
    assert all(c.startswith("CHANNEL STATUS") for c in p.commands[dead_at + 1:])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("step", ["SET MUSIC", "WAIT FOR DIGIT", "STREAM FILE", "RECORD FILE"])
def test_caller_hanging_up_while_waiting_leaves_the_queue_as_abandoned(world, form, step):
    uid = f"w{form}-{step}".replace(" ", "_")
    call(world, "12345", uid=uid)
    world.flow.wait(uid)  # queued
    p = call(world, script="queue_wait", args=(uid,), hangup_form=form, on_command=_ticking(world),
             hangup_when=lambda cmd, n: cmd.startswith(step))
    assert ("abandoned", uid) in world.queue.events
    assert uid not in world.queue.calls
    assert world.flow.state(uid).state == "ended"
    assert len(p.commands) <= p.commands.index(next(c for c in p.commands if c.startswith(step))) + 2


@pytest.mark.parametrize("form", FORMS)
def test_caller_hanging_up_during_the_survey_keeps_the_call_completed_not_abandoned(world, form):
    call_id = call(world, "12345", uid=f"sv-{form}").variables["HOTLINE_CALL_ID"]
    world.flow.wait(call_id)
    world.queue.offer(call_id, "a", "PJSIP/a")
    world.flow.wait(call_id)
    world.flow.agent_answered(call_id)
    world.flow.transfer_ended(call_id, "ANSWER")
    call(world, script="survey", args=(call_id,), hangup_form=form, hangup_when=lambda c, n: c.startswith("STREAM"))
    ticket = world.tickets.tickets[world.flow.state(call_id).ticket]
    assert ticket["status"] == "completed" and ticket["survey"] is None


def test_a_missing_prompt_file_is_skipped_and_the_caller_still_queued(world):
    line = world.rules.lines["12396"]
    p = call(world, "12396", uid="m1", missing_sounds=(say(line.transition.prompt),))
    assert p.variables["HOTLINE_ACTION"] == "queue"
    assert any(c.startswith("CHANNEL STATUS") for c in p.commands)
    assert world.flow.state("m1").state == "waiting"


# -- failures end in the dialplan's fallback ------------------------------------------------------

def test_a_crashing_handler_sets_the_fallback_variable_and_closes_the_session(world):
    def boom(session):
        session.call_id = "x1"
        raise RuntimeError("bug")
    world.server.handlers["route_call"] = boom
    p = call(world, "12345")
    assert p.variables == {"HOTLINE_FALLBACK": "error"}
    assert world.server.stats["error"] == 1


def test_a_crash_while_waiting_takes_the_caller_out_of_our_queue_for_the_dialplan_fallback(world):
    call(world, "12345", uid="q1")
    world.flow.wait("q1")

    def broken_status(call_id):
        raise ConnectionError("redis went away")
    world.queue.status = broken_status
    p = call(world, script="queue_wait", args=("q1",))
    assert p.variables["HOTLINE_FALLBACK"] == "error"
    assert ("fallback", "q1") in world.queue.events


def test_an_unknown_script_name_falls_back(world):
    p = call(world, script="no_such_thing")
    assert p.variables == {"HOTLINE_FALLBACK": "unknown-script"}


def test_asterisk_that_stops_answering_is_dropped_after_the_command_timeout(store, tmp_path):
    queue = F.MemoryQueue()
    flow = F.CallFlow(store.current, queue, F.MemoryTickets(), F.MemoryCalls())
    with FastAGIServer(Services(flow, store, PROMPTS, str(tmp_path)), "127.0.0.1", 0, command_timeout=0.3) as srv:
        with socket.create_connection(srv.address, timeout=5) as s:
            env = agi_env("12345", uniqueid="t0", network=True)
            s.sendall("".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n")
            t0 = time.monotonic()
            data = b""
            while chunk := s.recv(4096):  # we read its commands and never answer
                data += chunk
            assert time.monotonic() - t0 < 3
        assert data.startswith(b"SET VARIABLE HOTLINE_ACTION")
        assert srv.stats["timeout"] == 1


def test_when_every_worker_is_busy_a_new_session_is_closed_at_once_so_the_dialplan_falls_back(store, tmp_path):
    flow = F.CallFlow(store.current, F.MemoryQueue(), F.MemoryTickets(), F.MemoryCalls())
    with FastAGIServer(Services(flow, store, PROMPTS, str(tmp_path)), "127.0.0.1", 0, workers=1, waiting=0,
                       command_timeout=2) as srv:
        env = "".join(f"{k}: {v}\n" for k, v in agi_env("12345", uniqueid="busy", network=True).items()) + "\n"
        busy = socket.create_connection(srv.address)  # a session in progress holds the only worker
        busy.sendall(env.encode())
        assert busy.recv(4096).startswith(b"SET VARIABLE")  # its first command, left unanswered
        with socket.create_connection(srv.address, timeout=2) as s:
            s.sendall(env.replace("busy", "next").encode())
            assert s.recv(100) == b""  # closed without a word: AGI() returns, fallback follows
        busy.close()
        assert srv.stats["refused"] == 1


# -- concurrency --------------------------------------------------------------------------------

def test_200_simultaneous_fastagi_sessions_each_get_their_own_correct_routing(world):
    numbers = ["12345", "12301", "12348", "12366", "12333", "12329", "96119", "12305"]
    expected = {n: ("transfer" if world.rules.line(n).mode == "subcenter" else "queue") for n in numbers}
    barrier = threading.Barrier(200)
    results = [None] * 200

    def one(i):
        barrier.wait()
        results[i] = call(world, numbers[i % len(numbers)], uid=f"conc-{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    tickets = set()
    for i, p in enumerate(results):
        n = numbers[i % len(numbers)]
        assert p.variables["HOTLINE_ACTION"] == expected[n]
        assert p.variables["HOTLINE_LINE"] == n
        assert p.variables["HOTLINE_CALL_ID"] == f"conc-{i}"
        tickets.add(p.variables["HOTLINE_TICKET"])
    assert len(tickets) == 200
    assert world.server.stats["ok"] == 200


def test_several_server_processes_start_together_on_a_fresh_sqlite_database(tmp_path, redis_url):
    """--processes 2 on a database file that does not exist yet: both processes race to switch
    it to WAL; both must live (one died with "database is locked" and left one serving)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{tmp_path / 'fresh' / 'tickets.db'}")
    log = tmp_path / "fastagi.log"  # a file, not a pipe nobody reads while it runs (a full pipe blocks it)
    server = subprocess.Popen([sys.executable, "-m", "agi_scripts.fastagi_server", "--port", str(port),
                               "--processes", "2", "--log-level", "WARNING", "--drain", "5"], cwd=root, env=env,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(4)
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        assert server.poll() is None and len(children) == 1
        assert all(Path(f"/proc/{pid}").exists() for pid in children)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:  # this test is about starting; stopping is tests' business elsewhere (see docs/NOTES.md)
        os.killpg(server.pid, 9)
        server.wait(10)
    assert "database is locked" not in log.read_text(errors="replace")


# -- hostile clients ---------------------------------------------------------------------------

def _env_lines(uid):
    return [f"{k}: {v}\n".encode() for k, v in agi_env("12345", uniqueid=uid, network=True).items()]


def test_connections_trickling_header_lines_hold_no_worker_and_real_calls_are_still_served(store, tmp_path):
    """300 connections sending one header line every half second (the attack that held every
    worker for as long as it lasted) against 4 workers: every real call is still routed."""
    flow = F.CallFlow(store.current, F.MemoryQueue(), F.MemoryTickets(), F.MemoryCalls())
    stop = threading.Event()
    with FastAGIServer(Services(flow, store, PROMPTS, str(tmp_path)), "127.0.0.1", 0, workers=4, waiting=0,
                       command_timeout=2) as srv:
        attackers = [socket.create_connection(srv.address) for _ in range(300)]

        def trickle():
            n = 0
            while not stop.is_set():
                for i, s in enumerate(attackers):
                    try:
                        s.sendall(f"agi_x{n}_{i}: y\n".encode())
                    except OSError:
                        pass
                n += 1
                stop.wait(0.5)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.6)
            results = []
            for i in range(12):  # real calls during the attack, a few seconds of it
                results.append(fastagi_session(srv.address, agi_env("12345", uniqueid=f"real-{i}", network=True),
                                               Peer(), timeout=5))
                time.sleep(0.3)
        finally:
            stop.set()
            t.join(5)
            for s in attackers:
                s.close()
        assert [p.variables.get("HOTLINE_ACTION") for p in results] == ["queue"] * 12
        assert srv.stats["refused"] == 0 and srv.stats["ok"] == 12
        assert srv.gate.closed["header_timeout"] + srv.gate.closed["evicted"] >= 44  # the attackers, not the calls


def test_a_header_that_never_ends_or_grows_past_its_cap_is_closed_within_seconds(store, tmp_path):
    flow = F.CallFlow(store.current, F.MemoryQueue(), F.MemoryTickets(), F.MemoryCalls())
    with FastAGIServer(Services(flow, store, PROMPTS, str(tmp_path)), "127.0.0.1", 0, workers=4) as srv:
        slow = socket.create_connection(srv.address, timeout=10)
        t0 = time.monotonic()
        closed = None
        for line in _env_lines("slow") * 10:  # a valid environment, one line every 0.2 s, never ended
            try:
                slow.sendall(line)
                if slow.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = time.monotonic() - t0
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = time.monotonic() - t0
                break
            time.sleep(0.2)
        slow.close()
        assert closed is not None and closed < 5
        big = socket.create_connection(srv.address, timeout=10)
        try:
            for i in range(4000):  # 40 KB of distinct header lines at once
                big.sendall(f"agi_junk_{i:06d}: x\n".encode())
        except OSError:
            pass  # closed while we were still sending: that is the point
        try:
            assert big.recv(100) == b""
        except ConnectionResetError:
            pass
        big.close()
        assert srv.gate.closed == {**srv.gate.closed, "header_timeout": 1, "header_too_large": 1}
        assert srv.stats["sessions"] == 0  # neither ever took a worker
        assert fastagi_session(srv.address, agi_env("12345", uniqueid="after", network=True),
                               Peer()).variables["HOTLINE_ACTION"] == "queue"


def test_the_fastagi_server_and_the_worker_agree_on_the_recordings_folder_by_default(monkeypatch, rules_path):
    """Without HOTLINE_RECORDINGS the FastAGI server told Asterisk to record into
    /var/spool/asterisk/hotline while the rq worker (and the web app) looked in the checkout's
    var/recordings: every 质检 recording was dropped as "never bridged to an agent"."""
    from intake.jobs import recordings_dir
    from ivr.services import build

    monkeypatch.delenv("HOTLINE_RECORDINGS", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    services = build({"tickets": object(), "RULES_PATH": str(rules_path)})
    assert services.recordings_dir == str(recordings_dir())


@pytest.mark.parametrize("reply", [b"200 result=1 (" + b"x" * (2 * 1024 * 1024),  # one line that never ends
                                   b"520-Invalid command syntax.\n" + b"usage\n" * 50_000],  # usage without end
                         ids=["endless-line", "endless-usage"])
def test_a_reply_that_never_ends_is_cut_off_at_its_cap_not_buffered_until_the_timeout(store, tmp_path, reply):
    """A peer on the FastAGI port answering the first command with megabytes: the session is
    dropped at MAX_REPLY_LINE / MAX_USAGE_LINES, before the (here 8 s) command timeout."""
    flow = F.CallFlow(store.current, F.MemoryQueue(), F.MemoryTickets(), F.MemoryCalls())
    with FastAGIServer(Services(flow, store, PROMPTS, str(tmp_path)), "127.0.0.1", 0, workers=2,
                       command_timeout=8) as srv:
        with socket.create_connection(srv.address, timeout=10) as s:
            s.sendall(b"".join(_env_lines("flood")) + b"\n")
            assert s.recv(4096).startswith(b"SET VARIABLE")
            t0 = time.monotonic()
            try:
                s.sendall(reply)
                while s.recv(65536):  # whatever else it says, until it closes
                    pass
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert time.monotonic() - t0 < 5
        deadline = time.monotonic() + 5
        while srv.stats["timeout"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.stats["timeout"] == 1 and srv.stats["ok"] == 0
