"""Live mode: simulated callers into the product that is already running (``./run.sh``).

    python -m tools.simulate --live [--calls 5] [--agents 0] [--gap 3] [--front agi|twilio|both] [--line 12345]

Nothing is started here. The callers are FastAGI sessions to the product's own FastAGI port
(``FASTAGI_BIND``, default 127.0.0.1:4573), exactly as its Asterisk would open them, so the calls
go through the product's routing, its ACD in its own Redis (the address ``./run.sh`` writes under
``var/``, or ``REDIS_URL``), its worker and its ticket database; they appear on its dashboard
and in its agent consoles. A caller says its matter as text when invited to (``HOTLINE_HEARD``),
so its ticket is pre-filled the way speech would fill it.

Who answers: ``--agents N`` simulated seats (``sim000``…, signed in through the agent API), and
every person signed in to the agent console — a call put through to a seat that is not simulated
rings that seat's **demo phone** in the browser (:mod:`consoles.demo_phone`): 接听, 保持, 转接, 挂断
there, with the caller's words arriving as text. A caller waits up to ``--patience`` seconds
(default 600) for a person.

With ``--front twilio`` (or ``both``) the callers are Twilio calls: signed webhooks to the
product's web address, its REST requests answered here (:class:`tools.simulate.twilio_live.LiveTwilio`;
the product runs with ``TWILIO_API_BASE`` naming this process).
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from urllib.parse import urlsplit

from consoles.demo_phone import DemoPhone
from tools.simulate.callers import CallRecord
from tools.simulate.stack import ROOT

# what the simulated caller says to the person who answers, after its matter
CONVERSATION = ("喂，您好。", None, "具体情况我刚才也说了，麻烦您帮忙处理一下。", "好的，谢谢，那我等你们回复。")
MATTERS_BY_LINE = {
    "12345": ("小区门口的路灯坏了好几天了，晚上很黑，在朝阳区幸福路12号", "我要投诉楼下饭店晚上噪音扰民，地址是海淀区学院路8号",
              "我想咨询一下公积金贷款最多能贷多少"),
    "12333": ("公司拖欠了我三个月工资，我想问问怎么维权",),
    "12301": ("我在景区被强制购物了，导游还威胁我们",),
    "12348": ("我想申请法律援助，对方欠钱不还",),
    "12315": ("我在网上买的电饭锅是假货，商家不给退",),
}


class LiveError(RuntimeError):
    """The running product cannot be reached: one line saying where it was looked for."""


def _address(setting: str, default: str) -> tuple[str, int]:
    value = os.environ.get(setting) or default
    if value == "off":
        raise LiveError(f"{setting}=off: the running product has no FastAGI server; live calls need it")
    host, _, port = value.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "*") else host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        raise LiveError(f"{setting}={value!r} is not host:port") from None


def web_address() -> tuple[str, int]:
    """Where the running product's web app answers: ``HOTLINE_URL``, else ``BIND`` (default :8000)."""
    url = os.environ.get("HOTLINE_URL")
    if url:
        parts = urlsplit(url)
        return parts.hostname or "127.0.0.1", parts.port or 80
    return _address("BIND", "0.0.0.0:8000")


class Live:
    """Mixed into :class:`~tools.simulate.run.Simulation` by :class:`LiveSimulation`: the product's own parts."""

    live = True

    def start(self):
        from rq import Queue

        from call_routing.acd import ACD
        from call_routing.acd.callbacks import RQ_QUEUE
        from call_routing.rules_store import DEFAULT_RULES_PATH, RulesStore
        from intake import jobs
        from intake.callback_jobs import rq_dispatch
        from intake.tickets import TicketDrafts
        from runtime.redis_conn import redis_client

        host, self.web_port = web_address()
        self.web_host = host
        self.agi_address = _address("FASTAGI_BIND", "127.0.0.1:4573")
        try:
            status, _ = self.http("GET", "/healthz")
        except OSError as exc:
            raise LiveError(f"no product answers at http://{host}:{self.web_port} ({exc.strerror or exc}): "
                            "start it first (./run.sh), or set BIND/HOTLINE_URL to where it runs") from None
        if status != 200:
            raise LiveError(f"the product at http://{host}:{self.web_port} is not healthy (/healthz {status})")
        self.redis = redis_client(self.redis_url, decode_responses=True)  # the product's (REDIS_URL, Sentinel, ./run.sh's)
        self.rules_store = RulesStore(os.environ.get("RULES_PATH") or DEFAULT_RULES_PATH)
        self.acd = ACD(self.redis, self.rules_store, dispatch_callback=rq_dispatch)
        conn = redis_client(self.redis_url)
        self.rq_queues = [Queue(name, connection=conn) for name in (jobs.SPEECH_QUEUE, RQ_QUEUE, jobs.HANDOFF_QUEUE)]
        self.drafts = TicketDrafts(self.redis)
        self.db_url = os.environ.get("DATABASE_URL") or f"sqlite:///{ROOT / 'var' / 'hotline.db'}"
        self.dir = tempfile.mkdtemp(prefix="hotline-live-")  # the callers' recordings (Twilio's media host)
        self._cleanup.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.recordings = self.dir
        self._expert_lines = set()
        self.base_url = f"http://127.0.0.1:{self.web_port}"  # where webhooks go, as signed (sim.http's address)
        self.fatal = None  # why the run stopped early, one line (tools.simulate.twilio_live.fail)
        for i in range(self.agent_count):
            aid = f"sim{i:03d}"
            from tools.simulate.agents import SimAgent

            self.agents[aid] = SimAgent(self, aid)
            self.ensure_agent(aid)
            if not self.agents[aid].login():
                raise LiveError(f"simulated seat {aid} could not sign in to the running product")
            self._spawn(self.agents[aid].loop, self.stop, name=f"agent-{aid}")
        return self

    def close(self) -> None:
        self.stop.set()
        for agent in self.agents.values():  # the simulated seats leave the running product's board
            if agent.token:
                try:
                    agent.api("/agent/api/logout")
                except OSError:
                    pass
        for fn in reversed(self._cleanup):  # the simulated Twilio API
            fn()

    line = None  # --line: every caller dials this number (default: the lines as a private run's)

    def _plan(self) -> list[CallRecord]:
        plan = super()._plan()
        for rec in plan if self.line else ():
            rec.dialed = self.line
        return plan

    def words(self, rec: CallRecord) -> str:
        rng = random.Random(f"{self.seed}-said-{rec.id}")
        return rng.choice(MATTERS_BY_LINE.get(rec.dialed) or MATTERS_BY_LINE["12345"])


def demo_dial(asterisk, rec: CallRecord, chan: dict, target: str, rng) -> str:
    """Dial() of a seat whose phone is a person's demo phone: ring it, then the conversation as
    text until the seat hangs up, transfers, or the caller runs out of patience. Returns DIALSTATUS."""
    sim = asterisk.sim
    seat = target.split(":", 1)[-1].split("@", 1)[0]
    call_id = chan.get("HOTLINE_CALL_ID", rec.id)
    rules = sim.rules()
    line = rules.lines.get(rec.dialed)
    from call_routing.numbers import mask

    phone = DemoPhone(sim.redis, seat)
    phone.ring(call_id, rec.dialed, line.name if line else "", mask(sim.caller_number(rec)),
               chan.get("HOTLINE_TICKET", ""))
    ring_until = time.monotonic() + float(chan.get("HOTLINE_AGENT_RING_S") or 20)
    answered = False
    while time.monotonic() < ring_until and not sim.stop.is_set():
        cmd = phone.next_command()
        if cmd and cmd["action"] == "answer":
            answered = True
            break
        if cmd and cmd["action"] == "hangup":  # declined
            break
        time.sleep(0.2)
    if not answered:
        phone.hang_up()
        return "NOANSWER" if time.monotonic() >= ring_until else "BUSY"
    asterisk.session(rec, chan, "transfer", (call_id, "answered"), rng=rng)
    rec.agent, rec.outcome = seat, rec.outcome or "connected"
    phone.update(state="talking")
    lines = [sim.words(rec) if s is None else s for s in CONVERSATION]
    next_line = time.monotonic() + 1.0
    give_up = time.monotonic() + sim.call_timeout_s
    try:
        while time.monotonic() < give_up and not sim.stop.is_set():
            cmd = phone.next_command()
            call = phone.call() or {}
            if cmd is None and lines and call.get("state") == "talking" and time.monotonic() >= next_line:
                phone.say("来电人", lines.pop(0))
                next_line = time.monotonic() + 3.0
            if cmd is None:
                time.sleep(0.2)
                continue
            action = cmd["action"]
            if action == "hangup":
                rec.detail = rec.detail or f"demo phone of {seat}: hung up by the seat"
                return "ANSWER"
            if action == "hold":
                phone.update(state="held")
                phone.say("系统", "来电人正在听等待音乐")
            elif action == "resume":
                phone.update(state="talking")
                phone.say("来电人", "喂？还在吗？")
            elif action == "transfer":
                from call_routing.router import three_way

                try:
                    party = three_way(rules, rec.dialed, cmd.get("kind", ""))
                except LookupError as exc:
                    phone.say("系统", f"不能转接：{exc}")
                    continue
                phone.say("系统", f"已接通{party.get('name') or party.get('number') or ''}，三方通话中，坐席退出后由对方继续")
                time.sleep(1.0)
                rec.outcome = "subcenter" if cmd.get("kind") == "subcenter" else rec.outcome
                rec.transferred = True
                rec.detail = f"demo phone of {seat}: transferred ({cmd.get('kind')})"
                return "ANSWER"
        rec.detail = rec.detail or f"demo phone of {seat}: the caller hung up"
        return "ANSWER"
    finally:
        phone.hang_up()

