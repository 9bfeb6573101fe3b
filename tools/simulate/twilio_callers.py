"""One citizen's Twilio call: webhooks from ``/twilio/voice`` to the survey, holding in ``<Enqueue>``."""
from __future__ import annotations

import queue as queue_mod
import random
import time
import xml.etree.ElementTree as ET

from ivr.twilio import twiml
from tools.simulate.callers import EMERGENCY_WORDS, MATTERS, CallRecord
from tools.simulate.twilio_rest import LIVE_LEGS


class CallerLeg:
    """Part of :class:`~tools.simulate.twilio_cloud.SimTwilio`: the caller's leg, following TwiML and REST moves."""

    def call(self, rec: CallRecord) -> None:
        box: queue_mod.Queue = queue_mod.Queue()
        with self.lock:
            self.inbox[rec.id] = box
        self._share(LIVE_LEGS, rec.id, True)
        base = {"CallSid": rec.id, "AccountSid": self.account, "To": rec.dialed, "From": self.sim.caller_number(rec),
                "Direction": "inbound"}
        try:
            self._call(rec, box, base)
        finally:
            with self.lock:
                self.inbox.pop(rec.id, None)
            self._share(LIVE_LEGS, rec.id, False)
            self._conference(twiml.conference_name(rec.id), False)  # moved into it but gone before joining

    def _call(self, rec: CallRecord, box, base) -> None:
        sim = self.sim
        rng = random.Random(f"{sim.seed}-{rec.id}")
        root = self.post("/twilio/voice", {**base, "CallStatus": "ringing"})
        deadline = time.monotonic() + sim.call_timeout_s
        patience = sim.patience(rec, rng)
        recorded = False
        while time.monotonic() < deadline:
            if root is None:
                return self._lost(rec, f"no TwiML from {self.last_path.get(rec.id, '?')}")
            verbs = [c.tag for c in root]
            if "Start" in verbs:
                recorded = True
            if "Enqueue" in verbs:
                root = self._hold(rec, box, base, patience, rng, deadline, root.find("Enqueue").text or "")
                if root is None:
                    break
                continue
            if "Dial" in verbs:
                dial = root.find("Dial")
                number = dial.findtext("Number")
                target = number or dial.findtext("Sip") or dial.findtext("Client") or ""
                if number and number in ("110", "119", "120", "122"):
                    rec.outcome = rec.outcome or "emergency"
                elif "Conference" not in [c.tag for c in dial]:
                    rec.outcome = rec.outcome or "subcenter"
                rec.detail = rec.detail or target
                time.sleep(rng.uniform(0.2, 0.8))  # the far end talks with the caller
                root = self.post("/twilio/" + dial.get("action", "dial-ended"),
                                 {**base, "CallStatus": "in-progress", "DialCallStatus": "completed"})
                continue
            if "Gather" in verbs:  # the survey after the conversation
                g = root.find("Gather")
                root = self.post("/twilio/" + g.get("action", "survey"),
                                 {**base, "CallStatus": "in-progress", "Digits": rng.choice("1112223")})
                continue
            if "Hangup" in verbs or not verbs:
                if rec.outcome is None and "已停用" in "".join(e.text or "" for e in root.iter("Say")):
                    rec.outcome = "announced"
                break
            return self._lost(rec, f"unexpected TwiML {verbs}")
        else:
            return self._lost(rec, "call timed out")
        if recorded:
            self._recording(rec, base)
        self.post("/twilio/status", {**base, "CallStatus": "completed"})
        if rec.outcome is None:
            self._lost(rec, "ended without an outcome")

    def _recording(self, rec: CallRecord, base) -> None:
        path = self.sim.write_wav(rec.id)
        self.post("/twilio/recording", {**base, "RecordingStatus": "completed", "RecordingSid": "RE" + rec.id[2:],
                                        "RecordingUrl": self.sim.recording_url(path), "RecordingDuration": "1"})

    def _hold(self, rec, box, base, patience, rng, deadline, queue_name):
        """In ``<Enqueue>``: ask ``wait`` every tick, follow Gather/Leave/Hangup and REST moves."""
        started = time.monotonic()
        waited = 0
        while time.monotonic() < deadline and not self.sim.stop.is_set():
            root = self.post("/twilio/wait", {**base, "CallStatus": "in-progress", "QueueSid": "QU" + "1" * 32,
                                             "QueuePosition": "1", "QueueTime": str(waited),
                                             "CurrentQueueSize": "1"})
            verbs = [c.tag for c in root] if root is not None else []
            if "Hangup" in verbs:
                said = "".join(e.text or "" for e in root.iter("Say"))
                if "回拨" in said:
                    rec.outcome = rec.outcome or "callback"
                return root
            if "Leave" in verbs:
                return self._queue_exit(rec, base, "leave")
            gather = root.find("Gather") if root is not None else None
            if gather is not None:
                action = gather.get("action")
                if action == "heard":
                    text = rng.choice(EMERGENCY_WORDS) if rec.behaviour == "emergency" else \
                        self.sim.words(rec) if getattr(self.sim, "live", False) else rng.choice(MATTERS)
                    r = self.post("/twilio/heard", {**base, "CallStatus": "in-progress", "SpeechResult": text,
                                                    "Confidence": "0.9"})
                    if r is not None and "Leave" in [c.tag for c in r]:
                        return self._queue_exit(rec, base, "leave")
                elif action == "pressed" and rec.behaviour == "callback":
                    r = self.post("/twilio/pressed", {**base, "CallStatus": "in-progress", "Digits": "1"})
                    if r is not None and "Hangup" in [c.tag for c in r]:
                        rec.outcome = "callback"
                        return r
            # hold for one round, unless Twilio is told to move the caller meanwhile
            try:
                kind, payload = box.get(timeout=self.sim.wait_tick_s)
            except queue_mod.Empty:
                waited = int(time.monotonic() - started)
                if time.monotonic() - started > patience:
                    rec.outcome = "abandoned"
                    self._queue_exit(rec, base, "hangup")
                    return ET.fromstring("<Response><Hangup/></Response>")
                continue
            if kind == "agent-left":  # an agent of a conference this caller has already left (e.g. moved
                continue              # on to the survey, whose failure queued them again): not alone
            return self._moved(rec, box, base, kind, payload, deadline)
        return None

    def _queue_exit(self, rec, base, result):
        return self.post("/twilio/queue-exit", {**base, "CallStatus": "in-progress" if result != "hangup" else
                                                "completed", "QueueResult": result, "QueueTime": "1"})

    def _moved(self, rec, box, base, kind, payload, deadline):
        """The app moved the caller by REST: into the conference (agent answered), then the survey."""
        joined: list[str] = []
        try:
            return self._follow_moves(rec, box, base, kind, payload, deadline, joined)
        finally:
            for conference in joined:
                self._conference(conference, False)

    def _follow_moves(self, rec, box, base, kind, payload, deadline, joined):
        alone_since = None
        while True:
            rec.moves.append(kind)
            if alone_since is not None and kind != "agent-left":
                rec.alone_s = max(rec.alone_s, time.monotonic() - alone_since)
            if kind == "twiml" and "<Conference" in (payload or ""):
                rec.outcome = rec.outcome or "connected"
                name = ET.fromstring(payload).findtext(".//Conference") or ""
                joined.append(name)
                self._conference(name, True)
            elif kind == "twiml":  # new TwiML for the caller (e.g. a goodbye)
                return ET.fromstring(payload)
            elif kind == "agent-left":
                alone_since = time.monotonic()
            elif kind == "redirect":
                return self.post(payload, {**base, "CallStatus": "in-progress"})
            elif kind == "hangup":
                return ET.fromstring("<Response><Hangup/></Response>")
            left = deadline - time.monotonic()
            if alone_since is not None:  # a caller alone in a conference hears silence and gives up
                left = min(left, alone_since + self.sim.alone_limit_s - time.monotonic())
            if left <= 0:
                return self._silence(rec, base) if alone_since is not None else None
            try:
                kind, payload = box.get(timeout=left)
            except queue_mod.Empty:
                return self._silence(rec, base) if alone_since is not None else None

    def _silence(self, rec, base):
        rec.silence = True
        rec.detail = ("left alone in the conference (silence) after the agent hung up; moves: "
                      + " > ".join(rec.moves[-8:]) + f"; last webhook {self.last_path.get(rec.id)}")
        self.sim.stats.error(f"{rec.id}: {rec.detail}")
        return ET.fromstring("<Response><Hangup/></Response>")

    def _lost(self, rec, why):
        rec.detail = why
        rec.outcome = None
        self.sim.stats.error(f"{rec.id}: {why}")

