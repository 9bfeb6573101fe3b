"""Benchmark the product's Asterisk path end to end on a real Asterisk 22.

    python -m bench.asterisk [--calls 200] [--agents CALLS/4] [--rate 50] [--talk 10-14] [--caller-audio]

Starts a real Asterisk (bench/asterisk_lab.py) with the product's dialplan installed by
agi_scripts/install.sh, the FastAGI server as deployed (``--processes 2``, following the agents'
phones over the product's AMI user: ``HOTLINE_AMI``), the ACD ticker, a private Redis and
SQLite. ``--agents`` seats log into the ACD (each with the skills of every line called); their
phones are Local channels in [lab-agent] that answer after 0.3 s, talk ``--talk`` seconds and
hang up; the ACD ends their wrap-up after 1 s (``wrapup_max_s: 1``). ``--calls`` citizens call
at ``--rate`` calls a second (0: all at once) 12345 and legacy numbers (merged lines with their
transition prompt, dual lines with their own seat group), as AMI Originates of Local channels
into [hotline-in]: route_call, queue_wait in the Redis ACD (hold music; after 3 s the
invitation to describe the matter and its recording, which the citizen ends with # a second
in), Dial of the agent, the agent hangs up, the survey (key 1 a second in), the product hangs
up. A served call lasts longer than the arrivals of the others at the default rate and talk
time, so every call is in the system at once (``peak_calls``).

The citizens send no audio (a Local channel in [bench-caller] waiting): with ``--caller-audio``
they play silence, 50 frames a second like a carrier's RTP, which costs Asterisk about as much
as the hold music does (docs/asterisk.md). What the PBX did is read from Asterisk's own AMI
events (``Timestamp``: timestampevents=yes), on a connection of our own that asks Asterisk only
for the events used here (AMI filters); the lab's own connection gets none. Last line: one JSON
object —

- ``completed``: calls that reached an agent (Dial ANSWER), got the survey and ended, and that
  the ACD's queue log shows complete; ``lost``: the others, but for calls that ended without an
  agent by the product's decision (route_call's ``hangup``: none in this mix); ``fallback``:
  calls sent to the dialplan's safe fallback (never completed).
- ``route_p50_ms``/``route_p99_ms``/``route_max_ms``: from the Newexten of the ``route_call`` AGI
  on the caller's channel (the [hotline] context answered) to the VarSet of a non-empty
  ``HOTLINE_ACTION`` (the routing decision).
- ``assign_p50_ms``/``assign_p99_ms``: the ACD's assignment latency, from its queue log: for each
  offer, its time minus the later of the call entering the queue (or going back to it) and the
  offered seat becoming ready (logging in, or its wrap-up time running out — the ticker notices
  within its 0.5 s tick). ``offer_to_dial_p50_ms``/``p99``: from the offer to Asterisk dialing the
  agent (DialBegin): the waiting caller's queue_wait sees it within a second — or after the
  prompt or recording it is in. ``wait_p50_s``/``wait_max_s``: first queue_wait to the Dial.
- ``asterisk_cpu_ms_per_call``, ``product_cpu_ms_per_call`` (FastAGI server and its forked
  process, ACD ticker, redis-server; each also alone): utime+stime from /proc/<pid>/stat over
  the calls, divided by calls. ``load_avg``: /proc/loadavg before anything starts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench.asterisk_lab import AMI_SECRET, AMI_USER, PRODUCT_AMI_SECRET, AsteriskLab, Product, locate
from call_routing.acd import ACD, Agent
from runtime.redis_server import EmbeddedRedis
from call_routing.rules import load_rules
from ivr.asterisk.ami import AMI

ROOT = Path(__file__).resolve().parent.parent
# 12345 itself, merged lines (their transition prompt) and dual lines (their own seat group)
NUMBERS = ("12345", "12345", "12345", "12345", "12301", "96119", "12348", "12333", "12315", "12331")
SKILLS = ("general", "tourism", "fire_hazard", "legal", "labor_social_security", "market_regulation", "food_drug")
WRAPUP_S = 1  # the rules' wrapup_max_s here: the ticker makes the seat ready again after this
FALLBACK_PHONES = ("9001", "9999")  # the dialplan's fallback queue member and duty desk: short calls
# only the events read here: AGI starts (Newexten), the hand-off variables, the recording, dials, hang-ups
AMI_FILTERS = ("Application: AGI", "Variable: HOTLINE_(ACTION|CALL_ID)", "Command: RECORD FILE",
               "Event: (Hangup|DialBegin|DialEnd|OriginateResponse)")
KEY_AFTER_S = 1.0  # the citizen presses # (ends the recording of the matter) and 1 (survey) after this
BENCH_CALLER = """
[bench-caller]            ; the citizen's side of an originated call: on the line, sends no audio
exten => s,1,Answer()
 same => n,Wait(3600)
"""


def bench_rules(path: Path) -> None:
    """The shipped rules, with wrap-up ended by the ACD after ``WRAPUP_S``."""
    text = (ROOT / "transfer_rules.yaml").read_text("utf-8")
    assert "wrapup_max_s: 120 " in text
    path.write_text(text.replace("wrapup_max_s: 120 ", f"wrapup_max_s: {WRAPUP_S} "), "utf-8")


class Call:
    """What Asterisk reported about one citizen's call (times are AMI ``Timestamp`` seconds)."""

    def __init__(self, uid: str, number: str):
        self.uid, self.number = uid, number  # uid: the citizen's side; the PBX side is uid;2
        self.route_start = self.route_done = self.first_action = self.call_id = None
        self.queue_start = self.survey_at = self.ended = self.answered_by = None
        self.dials: list[tuple[float, str]] = []  # (time, agent) of each Dial of an agent
        self.fallback = self.failed = False


class Recorder:
    """Per-call facts from the AMI events. Runs on the AMI reader thread: it only takes notes
    and queues the citizens' key presses for :func:`press_keys`."""

    def __init__(self):
        self.calls: dict[str, Call] = {}
        self.keys: queue.Queue = queue.Queue()
        self.done = threading.Condition()
        self.ended = 0

    def add(self, call: Call) -> None:
        self.calls[call.uid] = call

    def __call__(self, e: dict) -> None:
        event = e.get("Event")
        if event == "OriginateResponse":
            call = self.calls.get(e.get("Uniqueid", ""))
            if call is not None and e.get("Response") == "Failure":
                call.failed = True
                self._end(call, time.time())
            return
        call = self.calls.get(e.get("Linkedid", ""))
        if call is None or e.get("Uniqueid") != call.uid + ";2":  # only the PBX side of the citizen's call
            return
        ts = float(e.get("Timestamp", 0))
        if event == "Newexten":
            data = e.get("AppData", "")
            if "/route_call," in data and call.route_start is None:
                call.route_start = ts
            elif "/queue_wait," in data and call.queue_start is None:
                call.queue_start = ts
        elif event == "AGIExecStart" and e.get("Command", "").startswith("RECORD FILE"):
            self.press(e["Channel"], "#")
        elif event == "VarSet" and e.get("Value"):
            value = e["Value"]
            if e.get("Variable") == "HOTLINE_CALL_ID":
                call.call_id = call.call_id or value
                return
            if call.first_action is None:
                call.first_action, call.route_done = value, ts
            if value == "survey" and call.survey_at is None:
                call.survey_at = ts
                self.press(e["Channel"], "1")
            call.fallback = call.fallback or value == "fallback"
        elif event == "DialBegin" and "@lab-agent" in e.get("DestChannel", ""):
            call.dials.append((ts, agent_of(e["DestChannel"])))
        elif event == "DialEnd" and e.get("DialStatus") == "ANSWER" and "@lab-agent" in e.get("DestChannel", ""):
            call.answered_by = agent_of(e["DestChannel"])
        elif event == "Hangup":
            self._end(call, ts)

    def press(self, channel: str, digit: str) -> None:
        """The citizen presses ``digit`` in a moment: DTMF received on the PBX side (``Receive``
        queues it at once; sent out of the citizen's side it would hold the AMI session for the
        tone's length, and hundreds of presses come at once)."""
        self.keys.put((time.monotonic() + KEY_AFTER_S,
                       {"Channel": channel, "Digit": digit, "Duration": 120, "Receive": "true"}))

    def _end(self, call: Call, ts: float) -> None:
        if call.ended is None:
            call.ended = ts
            with self.done:
                self.ended += 1
                self.done.notify_all()

    def wait_all(self, n: int, deadline: float) -> None:
        with self.done:
            while self.ended < n and time.monotonic() < deadline:
                self.done.wait(1)


def agent_of(channel: str) -> str:
    """``Local/6001@lab-agent-0000002a;1`` -> ``6001``."""
    return channel.split("/", 1)[1].split("@", 1)[0]


def press_keys(ami: AMI, keys: queue.Queue) -> None:
    """The citizens' key presses when due (in order: they are all due KEY_AFTER_S after their event)."""
    while (item := keys.get()) is not None:
        due, fields = item
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            ami.action("PlayDTMF", **fields)
        except Exception:  # the call ended meanwhile
            pass


def cpu_ms(pid: int) -> float:
    """utime + stime of one process (all its threads), in ms; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(p) for task in Path(f"/proc/{pid}/task").glob("*/children") for p in task.read_text().split()]


def percentile(values, p: float):
    if not values:
        return None
    values = sorted(values)
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def assignments(events) -> tuple[list[float], dict]:
    """From the ACD's queue log: for every offer, its time minus the later of the call (back) in
    the queue and the seat ready (a wrap-up ended by the ticker counts from when its time ran
    out); and each offer's time by (call, agent)."""
    queued, ready, wrapup, latencies, offers = {}, {}, {}, [], {}
    for e in events:
        kind, t = e["e"], float(e["t"])
        if kind in ("enter", "noanswer", "resume"):
            queued[e["call"]] = t
        elif kind == "agent" and e.get("state") == "wrapup":
            wrapup[e["agent"]] = t
        elif kind == "agent" and e.get("state") == "ready":
            due = wrapup.get(e["agent"], t) + WRAPUP_S if e.get("reason") == "wrapup-timeout" else t
            ready[e["agent"]] = min(t, due)
        elif kind == "offer":
            latencies.append(t - max(queued.get(e["call"], t), ready.get(e["agent"], 0.0)))
            offers[(e["call"], e["agent"])] = t
    return latencies, offers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--agents", type=int, default=0, help="seats logged in (default: calls / 4)")
    parser.add_argument("--rate", type=float, default=50.0, help="calls a second (0: all at once; default 50)")
    parser.add_argument("--talk", default="10-14", help="seconds an agent talks, MIN-MAX (default 10-14)")
    parser.add_argument("--caller-audio", action="store_true", help="citizens send audio (silence, 50 frames/s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for every call to end (default 300)")
    args = parser.parse_args(argv)
    launcher, why = locate()
    if launcher is None:
        raise SystemExit(f"bench.asterisk: {why}")
    n_agents = args.agents or max(1, args.calls // 4)
    low, _, high = args.talk.partition("-")
    talks = range(int(low), int(high or low) + 1)
    load_avg = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]

    tmp = Path(tempfile.mkdtemp(prefix="bench-ast-"))
    rules_path = tmp / "transfer_rules.yaml"
    bench_rules(rules_path)
    (tmp / "emergency_keywords.yaml").write_text((ROOT / "emergency_keywords.yaml").read_text("utf-8"), "utf-8")
    (tmp / "recordings").mkdir()  # HOTLINE_RECORDINGS: RECORD FILE writes what waiting callers say here
    redis_server = EmbeddedRedis().start()
    lab = AsteriskLab(launcher)
    product = ami = None
    recorder = Recorder()
    stop = threading.Event()
    try:
        lab.start(dialplan_extra=BENCH_CALLER)
        lab.ami.action("Events", EventMask="off")  # the lab's own connection: actions only
        product = Product(tmp, rules_path, redis_server.url, env={
            "HOTLINE_PROMPTS": str(lab.run / "data" / "sounds" / "hotline"),
            # as docs/asterisk.md deploys it: the product's AMI user follows the agents' phones
            "HOTLINE_AMI": f"ami://hotline:{PRODUCT_AMI_SECRET}@127.0.0.1:{lab.ami_port}"})
        lab.install(product.agi_url, env={"RULES_PATH": str(rules_path)},
                    queue_members=(f"Local/{FALLBACK_PHONES[0]}@lab-agent/n",))
        product.start_fastagi(processes=2)
        product.start_ticker()
        ami = AMI.connect("127.0.0.1", lab.ami_port, AMI_USER, AMI_SECRET)
        for regex in AMI_FILTERS:
            ami.action("Filter", Operation="Add", Filter=regex)
        ami.on_event(recorder)
        threading.Thread(target=press_keys, args=(ami, recorder.keys), daemon=True).start()

        acd = ACD(redis.Redis.from_url(redis_server.url, decode_responses=True), load_rules(rules_path),
                  dispatch_callback=False)
        agents = [str(6000 + i) for i in range(n_agents)]
        phones = [(p, 2) for p in FALLBACK_PHONES] + [(a, talks[i % len(talks)]) for i, a in enumerate(agents)]
        for phone, talk in phones:
            lab.ami.action("DBPut", Family="lab", Key=phone, Val="answer")
            lab.ami.action("DBPut", Family="lab-talk", Key=phone, Val=str(talk))
        for a in agents:
            acd.save_agent(Agent(a, f"坐席{a}", {s: 50 for s in SKILLS}, endpoints=(f"Local/{a}@lab-agent/n",)))
            acd.login(a)

        def heartbeats():  # the agents' consoles are alive (heartbeat_timeout_s: 30 s)
            while not stop.wait(10):
                for a in agents:
                    acd.heartbeat(a)
        threading.Thread(target=heartbeats, daemon=True).start()

        fastagi = product.procs["fastagi"].pid
        pids = {"asterisk": [lab.proc.pid], "fastagi": [fastagi, *children(fastagi)],
                "ticker": [product.procs["ticker"].pid], "redis": [redis_server.process.pid]}
        cpu0 = {k: sum(map(cpu_ms, v)) for k, v in pids.items()}
        context = "lab-caller" if args.caller_audio else "bench-caller"
        t0, wall0 = time.monotonic(), time.time()
        for i in range(args.calls):
            if args.rate:
                time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
            call = Call(f"cit-{os.getpid()}-{i}", NUMBERS[i % len(NUMBERS)])
            recorder.add(call)
            lab.ami.action("Originate", Channel=f"Local/{call.number}@hotline-in", Context=context, Exten="s",
                           Priority=1, CallerID=f'"citizen" <1390000{i:04d}>', Async="true", Timeout=30000,
                           ChannelId=call.uid)
        recorder.wait_all(args.calls, t0 + args.timeout)
        elapsed = time.monotonic() - t0
        cpu = {k: sum(map(cpu_ms, v)) - cpu0[k] for k, v in pids.items()}
        time.sleep(0.5)  # the last calls' queue-log entries
        log = list(acd.events(since=wall0 - 1))
    finally:
        stop.set()
        recorder.keys.put(None)
        if ami is not None:
            ami.close()
        if product is not None:
            product.stop()
        lab.stop()
        redis_server.stop()
        if os.environ.get("HOTLINE_KEEP_LAB") != "1":  # kept like the lab's run directory
            shutil.rmtree(tmp, ignore_errors=True)

    calls = list(recorder.calls.values())
    acd_completed = {e["call"] for e in log if e["e"] == "complete"}
    completed = [c for c in calls if c.answered_by and c.survey_at and c.ended and not c.fallback
                 and c.call_id in acd_completed]
    by_design = [c for c in calls if not c.answered_by and c.first_action == "hangup" and c.ended]
    for c in [c for c in calls if c not in completed and c not in by_design][:10]:
        print(f"not completed: {c.uid} to {c.number}: first action {c.first_action}, dialed "
              f"{[a for _, a in c.dials]}, answered by {c.answered_by}, survey {bool(c.survey_at)}, "
              f"fallback {c.fallback}, ended {bool(c.ended)}, originate failed {c.failed}", file=sys.stderr)
    routes = [c.route_done - c.route_start for c in calls if c.route_start and c.route_done]
    latencies, offers = assignments(log)
    offer_to_dial = [ts - offers[(c.call_id, agent)] for c in calls for ts, agent in c.dials
                     if (c.call_id, agent) in offers]
    waits = [c.dials[-1][0] - c.queue_start for c in calls if c.queue_start and c.dials]
    peak = running = 0
    for _, step in sorted([(c.route_start, 1) for c in calls if c.route_start]
                          + [(c.ended, -1) for c in calls if c.route_start and c.ended]):
        running += step
        peak = max(peak, running)
    n = max(1, args.calls)
    result = {
        "calls": args.calls, "completed": len(completed), "lost": len(calls) - len(completed) - len(by_design),
        "fallback": sum(c.fallback for c in calls), "agents": n_agents, "rate": args.rate, "talk_s": args.talk,
        "caller_audio": args.caller_audio, "peak_calls": peak, "elapsed_s": round(elapsed, 1),
        "route_p50_ms": ms(percentile(routes, 50)), "route_p99_ms": ms(percentile(routes, 99)),
        "route_max_ms": ms(max(routes, default=None)),
        "assign_p50_ms": ms(percentile(latencies, 50)), "assign_p99_ms": ms(percentile(latencies, 99)),
        "offer_to_dial_p50_ms": ms(percentile(offer_to_dial, 50)),
        "offer_to_dial_p99_ms": ms(percentile(offer_to_dial, 99)),
        "wait_p50_s": round(percentile(waits, 50) or 0, 1), "wait_max_s": round(max(waits, default=0), 1),
        "asterisk_cpu_ms_per_call": round(cpu["asterisk"] / n, 1),
        "product_cpu_ms_per_call": round((cpu["fastagi"] + cpu["ticker"] + cpu["redis"]) / n, 1),
        **{f"{k}_cpu_ms_per_call": round(cpu[k] / n, 1) for k in ("fastagi", "ticker", "redis")},
        "load_avg": load_avg,
    }
    print(f"{result['completed']}/{args.calls} calls completed, {result['lost']} lost, with {n_agents} agents "
          f"in {result['elapsed_s']} s ({peak} at once); routing p50 {result['route_p50_ms']} ms, "
          f"p99 {result['route_p99_ms']} ms; CPU per call: Asterisk {result['asterisk_cpu_ms_per_call']} ms, "
          f"product {result['product_cpu_ms_per_call']} ms")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
