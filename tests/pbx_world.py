"""The real-PBX test world: a real Asterisk 22 (bench.asterisk_lab) with the product's dialplan
installed by agi_scripts/install.sh, the FastAGI server and ACD timers on a private Redis and
SQLite, seats whose phones are Local channels (or PJSIP endpoints) the tests steer through AMI.

Everything a test decides about the PBX comes from Asterisk: AMI events on the lab's manager
user (VarSet, AGIExecStart/End, BridgeEnter, ConfbridgeJoin/Leave, MusicOnHoldStart, Hangup),
``core show channels`` and channel variables (``Getvar``) — never from the product's logs.
"""
from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import redis

from bench.asterisk_lab import PRODUCT_AMI_SECRET, AsteriskLab, Product, wait_until
from call_routing.acd import ACD, Agent
from runtime.redis_server import EmbeddedRedis
from call_routing.rules import load_rules
from call_routing.rules_store import RulesStore
from intake.callback_jobs import rq_dispatch

ROOT = Path(__file__).resolve().parent.parent

#: merge lines moved outside their window in the lab's rules (the shipped ones are all inside it
#: until 2026-12-31): after the window (both after-behaviours) and before it
AFTER_FORWARD, AFTER_HANGUP, BEFORE_WINDOW = "12300", "12396", "12349"


def lab_rules_text() -> str:
    """The shipped rules with what the lab needs: sub-centers reachable as digits through the
    simulated carrier (lab-pstn), expert seats open at any hour, short queue timers, and three
    merge lines outside their transition window."""
    text = (ROOT / "transfer_rules.yaml").read_text("utf-8")
    text = re.sub(r'target: "sip:(\d+)@[^"]+"', r'target: "8\1"', text)
    text = text.replace('hours: {days: workdays, open: "08:30", close: "17:30"}', "hours: always")
    text = text.replace("announce_every_s: 30 ", "announce_every_s: 10 ")
    text = text.replace("callback_offer_after_s: 60 ", "callback_offer_after_s: 10 ")
    text = text.replace("ring_timeout_s: 20 ", "ring_timeout_s: 8 ")
    text = text.replace("wrapup_max_s: 120 ", "wrapup_max_s: 3 ")
    # short spoken texts, like the short timers: the 9-s greeting every 12345 caller hears first and
    # the 12-s emergency notice were most of many tests' time. What is asserted is unchanged: the
    # line's greeting (the rules' text, whatever it says) played to the end, then the queue; the
    # notice naming the emergency line, then the transfer
    text = _replaced(text, "greeting: 您好，这里是12345政务服务便民热线，正在为您接通坐席。", f"greeting: {LAB_GREETING}")
    text = _replaced(text, "notice: 您反映的情况可能危及生命财产安全，正在为您转接{number}{name}，请不要挂机。",
                     f"notice: {LAB_NOTICE}")
    text = _line_window(text, AFTER_FORWARD, "2021-01-01", "2026-01-01", "forward")
    text = _line_window(text, AFTER_HANGUP, "2021-01-01", "2026-01-01", "announce_and_hangup")
    return _line_window(text, BEFORE_WINDOW, "2030-01-01", "2030-12-31", "forward")


LAB_GREETING = "您好，请稍候。"  # 2.4 s as rendered (the shipped greeting: 9 s)
LAB_NOTICE = "正在为您转接{number}{name}。"  # 4.6 s for 119 (the shipped notice: 12 s)


def _replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"the shipped rules no longer say {old!r}: update tests/pbx_world.py"
    return text.replace(old, new)


def _line_window(text: str, number: str, start: str, until: str, action: str) -> str:
    head = text.index(f'  "{number}":')
    end = text.index("\n\n", head)
    block = text[head:end]
    block = re.sub(r"from: \S+", f"from: {start}", block)
    block = re.sub(r"until: \S+", f"until: {until}", block)
    block = re.sub(r"action: \S+", f"action: {action}", block)
    return text[:head] + block + text[end:]


class World:
    def __init__(self, launcher, processes: int = 2):
        self.tmp = Path(tempfile.mkdtemp(prefix="pbxworld"))
        self.rules_path = self.tmp / "transfer_rules.yaml"
        self.rules_path.write_text(lab_rules_text(), "utf-8")
        (self.tmp / "emergency_keywords.yaml").write_text(
            (ROOT / "emergency_keywords.yaml").read_text("utf-8"), "utf-8")
        self.rules = load_rules(self.rules_path)
        self.redis_server = EmbeddedRedis().start()
        self.redis_url = self.redis_server.url
        self.lab = AsteriskLab(launcher).start(dialplan_extra=LAB_DNID)
        self.prompt_dir = str(self.lab.run / "data" / "sounds" / "hotline")
        self.ami_url = f"ami://hotline:{PRODUCT_AMI_SECRET}@127.0.0.1:{self.lab.ami_port}"
        self.product = Product(self.tmp, self.rules_path, self.redis_url, env={
            "HOTLINE_PROMPTS": self.prompt_dir, "HOTLINE_WAIT_SESSION_S": "20",
            # callbacks: call files into this Asterisk's spool, numbers through the simulated carrier
            "HOTLINE_CALLBACK_DIALER": "agi_scripts.callback:CallFileDialer",
            "HOTLINE_SPOOL": str(self.lab.run / "spool" / "outgoing"),
            "HOTLINE_TRUNK_PREFIX": "Local/", "HOTLINE_TRUNK_SUFFIX": "@lab-pstn",
            # the product's own AMI user (install.sh --ami-secret): agents' phones, console transfers
            "HOTLINE_AMI": self.ami_url})
        self.product.start_fastagi(processes=processes)
        self.product.start_ticker()
        self.product.start_worker()
        self.install_log = self.lab.install(self.product.agi_url)
        self.ami = self.lab.ami
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        # like the product's consoles: a callback offered when a seat logs in is dialed (rq job)
        self.acd = ACD(self.redis, RulesStore(str(self.rules_path)), dispatch_callback=rq_dispatch)  # as the console does
        self._agents = set()

    def flow_heard(self, call_id: str, text: str) -> None:
        """What the speech pipeline does when it hears a waiting caller (``CallFlow.heard``), from
        a process of the product's own (no Mandarin model exists here to hear real speech)."""
        import subprocess
        import sys

        code = "import sys; from ivr.services import build; build().flow.heard(sys.argv[1], sys.argv[2])"
        subprocess.run([sys.executable, "-c", code, call_id, text], env=self.product.env, cwd=ROOT, check=True,
                       timeout=60, capture_output=True)

    def close(self) -> None:
        import os
        import shutil

        self.product.stop()
        self.lab.stop()
        self.redis_server.stop()
        if os.environ.get("HOTLINE_KEEP_LAB") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- seats ------------------------------------------------------------------------------
    def seat(self, agent_id: str, skills: dict, endpoint: str | None = None, mode: str = "answer",
             password: str | None = None) -> str:
        """A seat logged in ready; its phone a Local channel into [lab-agent] (``mode``:
        answer | noanswer | busy) unless ``endpoint`` is given."""
        endpoint = endpoint or f"Local/{agent_id}@lab-agent/n"
        self.acd.save_agent(Agent(agent_id, f"坐席{agent_id}", skills, endpoints=(endpoint,)), password=password)
        self.phone_mode(agent_id, mode)
        self.acd.login(agent_id)
        self._agents.add(agent_id)
        return agent_id

    def phone_mode(self, name: str, mode: str) -> None:
        self.ami.action("DBPut", Family="lab", Key=name, Val=mode)

    def reset(self) -> None:
        """Between tests: no channel, the carrier up, and the ACD empty (no seat, no caller in
        line, no booked callback that would take the next test's seat)."""
        self.hangup_everything()
        self.phone_mode("pstn", "up")
        self.ami.action("DBDelTree", Family="lab")
        self.redis.flushdb()
        self._agents.clear()

    # -- calls ------------------------------------------------------------------------------
    def call(self, number: str, *, dnid: bool = False, caller: str = "13800138000") -> "Call":
        mark = len(self.ami.events)
        uid = self.lab.originate_local(number, caller=caller, context="lab-dnid" if dnid else "hotline-in")
        return Call(self, uid, mark)

    def hangup_everything(self) -> None:
        for line in self.lab.rx("core show channels concise").splitlines():
            name = line.split("!", 1)[0]
            if name:
                try:
                    self.ami.action("Hangup", Channel=name)
                except Exception:
                    pass
        wait_until(lambda: "0 active channels" in self.lab.rx("core show channels count"), 15, 0.2,
                   "every channel to hang up")

    def events_since(self, mark: int) -> list[dict]:
        return list(self.ami.events)[mark:]


LAB_DNID = """
[lab-dnid]                ; a trunk that does send the DNID
exten => _[+0-9].,1,Set(CALLERID(dnid)=${EXTEN})
 same => n,Goto(hotline-in,${EXTEN},1)

[lab-speaker]             ; the citizen speaks: AMI Redirect here plays lab/speech, then stays on the line
exten => s,1,Playback(${DB(lab/speech)})
 same => n,NoOp(spoken)
 same => n(loop),Playback(silence/10)
 same => n,Goto(loop)
"""


class Call:
    """One citizen's call: the citizen's side is ``Local/…;1`` with uniqueid ``uid``; the PBX's
    side (the channel running our dialplan) is ``;2``; every channel of the call (agent legs,
    the conference, the party) shares the citizen's linkedid."""

    def __init__(self, world: World, uid: str, mark: int):
        self.world, self.uid, self.mark = world, uid, mark

    def events(self) -> list[dict]:
        return [e for e in self.world.events_since(self.mark) if e.get("Linkedid") == self.uid]

    def channel(self) -> str:
        """The PBX side of the citizen's call (runs the hotline dialplan)."""
        def find():
            for e in self.events():
                if e.get("Uniqueid") == self.uid + ";2" and e.get("Channel"):
                    return e["Channel"]
            return None
        return wait_until(find, 10, 0.05, f"the channel of call {self.uid}")

    def citizen(self) -> str:
        return self.channel()[:-1] + "1"

    def var(self, name: str, channel: str | None = None):
        """The last value Asterisk set for ``name`` on the call's PBX side (VarSet events)."""
        channel = channel or self.channel()
        value = None
        for e in self.events():
            if e.get("Event") == "VarSet" and e.get("Channel") == channel and e.get("Variable") == name:
                value = e.get("Value")
        return value

    def first_var(self, name: str, timeout: float = 15.0) -> str:
        """The first non-empty value Asterisk set for ``name`` on the PBX side: what route_call
        handed back (later AGIs clear and set the variables again)."""
        def find():
            channel = self.channel()
            for e in self.events():
                if e.get("Event") == "VarSet" and e.get("Channel") == channel and e.get("Variable") == name \
                        and e.get("Value"):
                    return e["Value"]
            return None
        return wait_until(find, timeout, 0.05, f"{name} on call {self.uid}")

    def wait_var(self, name: str, value=None, timeout: float = 15.0, channel: str | None = None):
        """Wait until Asterisk sets ``name`` (to ``value``, when given) on the call's PBX side;
        returns the value. Later AGIs clear the variables again, so any moment counts."""
        def check():
            ch = channel or self.channel()
            for e in self.events():
                if e.get("Event") == "VarSet" and e.get("Channel") == ch and e.get("Variable") == name \
                        and e.get("Value") and (value is None or e.get("Value") == value):
                    return e["Value"]
            return None
        return wait_until(check, timeout, 0.05, f"{name}={value or '…'} on call {self.uid}")

    def streamed(self) -> list[tuple[str, float]]:
        """(file, seconds Asterisk spent on it) for every STREAM FILE of this call, from the
        AGIExecStart/End events' timestamps: a missing file returns at once."""
        out, started = [], {}
        for e in self.events():
            if e.get("Command", "").startswith("STREAM FILE"):
                if e.get("Event") == "AGIExecStart":
                    started[e.get("CommandId")] = float(e.get("Timestamp", 0))
                elif e.get("Event") == "AGIExecEnd":
                    t0 = started.pop(e.get("CommandId"), None)
                    out.append((e["Command"].split()[2], float(e.get("Timestamp", 0)) - t0 if t0 else 0.0))
        return out

    def played(self) -> list[str]:
        """The prompt files Asterisk really played to the end (time spent ≥ 80 % of their length)."""
        import wave

        done = []
        for path, seconds in self.streamed():
            try:
                with wave.open(path + ".wav") as w:
                    length = w.getnframes() / w.getframerate()
            except OSError:
                continue
            if seconds >= 0.8 * length:
                done.append(path)
        return done

    def call_id(self) -> str:
        return self.wait_var("HOTLINE_CALL_ID", timeout=15)

    def bridged_with(self, prefix: str, timeout: float = 15.0) -> str:
        """The channel starting with ``prefix`` that Asterisk bridged with the citizen's PBX side."""
        mine = self.channel()

        def find():
            bridges = {}
            for e in self.events():
                if e.get("Event") == "BridgeEnter":
                    bridges.setdefault(e["BridgeUniqueid"], set()).add(e["Channel"])
                elif e.get("Event") == "BridgeLeave":
                    bridges.get(e["BridgeUniqueid"], set()).discard(e["Channel"])
            for members in bridges.values():
                if mine in members:
                    for other in members:
                        if other.startswith(prefix):
                            return other
            return None
        return wait_until(find, timeout, 0.05, f"{mine} bridged with {prefix}…")

    def conference(self) -> set[str]:
        """Who is in this call's conference (``hotline-<call id>``) now, by Asterisk's
        ConfbridgeJoin/Leave events (the party's legs are not linked to the citizen's call)."""
        name = f"hotline-{self.call_id()}"
        members = set()
        for e in self.world.events_since(self.mark):
            if e.get("Conference") != name:
                continue
            if e.get("Event") == "ConfbridgeJoin":
                members.add(e["Channel"])
            elif e.get("Event") == "ConfbridgeLeave":
                members.discard(e["Channel"])
        return members

    def bridged(self, prefix: str) -> str | None:
        """A channel starting with ``prefix`` that entered a bridge since the call began (any
        bridge: the expert's or sub-center's phone answering the party leg)."""
        return next((e["Channel"] for e in self.world.events_since(self.mark) if e.get("Event") == "BridgeEnter"
                     and e["Channel"].startswith(prefix)), None)

    def hold_music(self) -> list[str]:
        """The music-on-hold classes Asterisk started on the call's PBX side."""
        channel = self.channel()
        return [e.get("Class") for e in self.events() if e.get("Event") == "MusicOnHoldStart"
                and e.get("Channel") == channel]

    def hung_up(self, channel: str) -> bool:
        return any(e.get("Event") == "Hangup" and e.get("Channel") == channel
                   for e in self.world.events_since(self.mark))

    def ran(self, app: str, data: str | None = None) -> bool:
        """Asterisk ran dialplan application ``app`` (with ``data``) on one of the call's channels."""
        return any(e.get("Event") == "Newexten" and e.get("Application") == app
                   and (data is None or e.get("AppData") == data) for e in self.events())

    def dtmf(self, channel: str, digits: str) -> None:
        """Send DTMF out of ``channel`` (on a Local ``;2`` it reaches its ``;1`` as if pressed)."""
        for d in digits:
            self.world.ami.action("PlayDTMF", Channel=channel, Digit=d, Duration=120)
            time.sleep(0.25)

    def hangup(self, channel: str | None = None) -> None:
        self.world.ami.action("Hangup", Channel=channel or self.citizen())
