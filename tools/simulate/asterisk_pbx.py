"""Asterisk, simulated: FastAGI sessions over TCP + the sample dialplan's continuation."""
from __future__ import annotations

import random
import re
import socket
import time

from tools.simulate.callers import CallRecord


class AGIRefused(Exception):
    pass


class SimAsterisk:
    def __init__(self, sim):
        self.sim = sim

    def session(self, rec: CallRecord, chan: dict, script: str, args=(), *, patience_until=None, rng=None) -> dict:
        """One ``AGI(agi://.../script,args)``; returns {"status": SUCCESS|FAILURE, ...} and updates ``chan``."""
        env = {"agi_network": "yes", "agi_network_script": script, "agi_request": f"agi://127.0.0.1/{script}",
               "agi_channel": f"PJSIP/carrier-{rec.id[-8:]}", "agi_language": "zh", "agi_type": "PJSIP",
               "agi_uniqueid": rec.id, "agi_version": "20.5.0", "agi_callerid": self.sim.caller_number(rec),
               "agi_calleridname": "unknown", "agi_callingpres": "0", "agi_dnid": rec.dialed, "agi_rdnis": "unknown",
               "agi_context": "hotline", "agi_extension": rec.dialed, "agi_priority": "5", "agi_enhanced": "0.0",
               "agi_accountcode": "", "agi_threadid": "1"}
        for i, a in enumerate(args, 1):
            env[f"agi_arg_{i}"] = a
        try:
            sock = socket.create_connection(self.sim.agi_address, timeout=2)
        except OSError:
            return {"status": "FAILURE"}
        sock.settimeout(30)
        hung_up = False
        try:
            rfile = sock.makefile("rb")
            sock.sendall("".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n")
            t0 = time.perf_counter()
            while True:
                line = rfile.readline()
                if not line:
                    break
                cmd = line.decode("utf-8", "replace").strip()
                if not cmd:
                    continue
                self.sim.stats.add("agi", time.perf_counter() - t0)
                reply = self._answer(rec, chan, cmd, patience_until, rng)
                if reply == "200 result=-1":
                    hung_up = True
                sock.sendall(reply.encode() + b"\n")
                t0 = time.perf_counter()
        except (OSError, ValueError) as exc:
            if not hung_up:
                return {"status": "FAILURE", "error": repr(exc)}
        finally:
            sock.close()
        return {"status": "HANGUP" if hung_up else "SUCCESS"}

    def _answer(self, rec, chan, cmd, patience_until, rng) -> str:
        if rec.outcome is None:  # what the caller hears until a person answers, in silences
            _heard(rec, chan, cmd)
        if chan.get("_dead"):
            return "511 Command Not Permitted on a dead channel or intercept routine"
        if cmd.startswith("SET VARIABLE"):
            m = re.match(r'SET VARIABLE (\S+) "(.*)"$', cmd) or re.match(r"SET VARIABLE (\S+) (.*)$", cmd)
            if m:
                chan[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\\\", "\\")
            return "200 result=1"
        if cmd.startswith("GET VARIABLE"):
            name = cmd.split(" ", 2)[2].strip('"')
            return f"200 result=1 ({chan[name]})" if chan.get(name) else "200 result=0"
        if cmd.startswith("STREAM FILE"):
            parts = cmd.split(" ")
            escape = parts[3].strip('"') if len(parts) > 3 else ""
            if "1" in escape and rec.behaviour == "callback" and chan.get("_offered_callback") is None and \
                    escape == "1":
                chan["_offered_callback"] = True
                return f"200 result={ord('1')} endpos=4000"
            if escape == "123":  # the survey question
                return f"200 result={ord(rng.choice('1112223'))} endpos=4000"
            return "200 result=0 endpos=8000"
        if cmd.startswith("WAIT FOR DIGIT"):
            ms = int(cmd.split(" ")[3]) if len(cmd.split(" ")) > 3 else 1000
            if patience_until is not None and time.monotonic() > patience_until:
                chan["_dead"] = True
                return "200 result=-1"
            time.sleep(min(ms / 1000.0, self.sim.tick_s))
            return "200 result=0"
        if cmd.startswith("RECORD FILE"):
            path = cmd.split(" ")[2].strip('"')
            self.sim.write_wav(rec.id, path + ".wav")
            if getattr(self.sim, "live", False):  # the live caller's words, as text (queue_wait reads them)
                chan["HOTLINE_HEARD"] = self.sim.words(rec)
            return "200 result=0 (timeout) endpos=8000"
        if cmd.startswith("CHANNEL STATUS"):
            return "200 result=6"
        return "200 result=0"

    def call(self, rec: CallRecord) -> None:
        """The sample dialplan, context by context (agi_scripts/extensions.conf.sample)."""
        sim = self.sim
        rng = random.Random(f"{sim.seed}-{rec.id}")
        patience_until = time.monotonic() + sim.patience(rec, rng)
        chan: dict = {}
        deadline = time.monotonic() + sim.call_timeout_s
        loops = 0
        fell_back = False  # the call ended in [hotline-fallback], whose h extension reports "fallback"

        def agi(script, *args):  # [hotline-agi]
            for k in ("HOTLINE_ACTION", "HOTLINE_TARGET", "HOTLINE_REASON", "HOTLINE_FALLBACK"):
                chan.pop(k, None)
            r = self.session(rec, chan, script, (chan.get("HOTLINE_CALL_ID", ""), *args),
                             patience_until=patience_until, rng=rng)
            if r["status"] == "HANGUP":
                return "gone"
            # as [hotline-agi]: a hand-off made stands whatever the status (a missing prompt file)
            if chan.get("HOTLINE_FALLBACK") or not chan.get("HOTLINE_ACTION"):
                chan["_why"] = f"{script}: AGISTATUS={r['status']} {r.get('error', '')}".strip()
                return "fallback"
            return chan["HOTLINE_ACTION"]

        action = agi("route_call")
        if chan.get("HOTLINE_TICKET"):
            rec.ticket = chan["HOTLINE_TICKET"]
        while time.monotonic() < deadline:
            if chan.get("HOTLINE_TICKET"):
                rec.ticket = chan["HOTLINE_TICKET"]
            if action == "queue":
                loops += 1
                action = agi("queue_wait")
                continue
            if action == "transfer":
                target, reason = chan.get("HOTLINE_TARGET", ""), chan.get("HOTLINE_REASON", "")
                if not target:
                    action = "fallback"
                    continue
                status = self._dial(rec, chan, target, reason, rng)
                if status == "GONE":
                    action = "gone"
                    continue
                action = agi("transfer", status)
                continue
            if action == "survey":
                agi("survey")
                rec.outcome = rec.outcome or "connected"
                break
            if action == "hangup":
                if rec.outcome is None:
                    rec.outcome = "callback" if chan.get("HOTLINE_REASON") == "callback" else "announced"
                break
            if action == "gone":  # the caller hung up (while waiting)
                rec.outcome = rec.outcome or "abandoned"
                break
            if action == "fallback":  # [hotline-fallback]: app_queue general seats, never silence
                fell_back = True
                rec.outcome = rec.outcome or "fallback"
                rec.detail = rec.detail or (f"AGI fallback ({chan.get('HOTLINE_FALLBACK') or 'no action'}; "
                                            f"{chan.get('_why', '')})")
                break
            rec.outcome = "fallback"  # exten i
            fell_back = True
            break
        else:
            rec.detail = "call timed out"
            sim.stats.error(f"{rec.id}: AGI call timed out")
            return
        if chan.get("HOTLINE_CALL_ID"):  # h extension -> [hotline-gone], or [hotline-fell-back]
            chan.pop("_dead", None)
            self.session(rec, chan, "transfer", (chan["HOTLINE_CALL_ID"], "fallback" if fell_back else "hangup"),
                         rng=rng)

    def _dial(self, rec, chan, target, reason, rng) -> str:
        """Dial(): an agent (rings, answers or not), an emergency line, a sub-center."""
        if reason == "agent":
            agent = self.sim.agent_by_endpoint(target)
            if agent is None and getattr(self.sim, "live", False):  # a person's seat: its demo phone rings
                from tools.simulate.live import demo_dial

                return demo_dial(self, rec, chan, target, rng)
            if agent is None or not agent.answers:
                if agent is not None:
                    agent.missed += 1
                time.sleep(self.sim.ring_timeout_s)
                return "NOANSWER"
            time.sleep(agent.rng.uniform(0.05, 0.3))
            # U(hotline-answered): the answering channel tells the ACD before the bridge
            self.session(rec, chan, "transfer", (chan.get("HOTLINE_CALL_ID", ""), "answered"), rng=rng)
            agent.calls += 1
            rec.agent = agent.id
            rec.outcome = rec.outcome or "connected"
            time.sleep(agent.talk_s())
            return "ANSWER"
        if target.lstrip("+") in ("110", "119", "120", "122"):
            rec.outcome = rec.outcome or "emergency"
        else:
            rec.outcome = rec.outcome or "subcenter"
        rec.detail = rec.detail or target
        time.sleep(rng.uniform(0.2, 0.8))
        return "ANSWER"


def _heard(rec, chan: dict, cmd: str) -> None:
    """Music on hold, prompts and the caller's own recording are sound; waiting for a key with the
    music off is silence (``rec.max_silence_s``, as for Twilio callers)."""
    if cmd.startswith("SET MUSIC"):
        chan["_music"] = cmd.split()[2:3] == ["on"]
        rec.silence_run = 0.0 if chan["_music"] else rec.silence_run
    elif cmd.startswith(("STREAM FILE", "RECORD FILE", "EXEC Playback")):
        rec.silence_run = 0.0
    elif cmd.startswith("WAIT FOR DIGIT") and not chan.get("_music"):
        parts = cmd.split()
        rec.silence_run += (int(parts[3]) if len(parts) > 3 and parts[3].lstrip("-").isdigit() else 1000) / 1000
        rec.max_silence_s = max(rec.max_silence_s, rec.silence_run)

