"""The callers: who dials which line, how they behave (the run's scenario), what they say."""
from __future__ import annotations

import os
import random
import struct
import time
import wave
from dataclasses import dataclass, field

EMERGENCY_WORDS = ("楼下着火了，好大的烟", "有人晕倒了，叫救护车", "我被抢劫了")
MATTERS = ("我想问一下公积金贷款最多能贷多少", "小区门口的路灯坏了好几天了", "我要投诉楼下饭店噪音扰民",
           "社保卡丢了怎么补办", "景区门票乱收费", "孩子上学的户口问题想咨询一下", "")
LINES = ("12345",) * 12 + ("12301", "12348", "12333", "12315", "12329", "12319", "12360")


@dataclass
class CallRecord:
    id: str
    front: str
    dialed: str
    behaviour: str  # patient | impatient | callback | emergency
    outcome: str | None = None  # connected | subcenter | abandoned | callback | emergency | fallback | announced
    detail: str = ""
    ticket: str | None = None
    agent: str | None = None
    transferred: bool = False
    silence: bool = False  # heard silence (alone in a conference, nothing said) before giving up
    alone_s: float = 0.0  # the longest a caller stayed alone in a conference before the app moved them
    moves: list = field(default_factory=list)  # what Twilio was told to do with the caller, in order (reports)
    max_silence_s: float = 0.0  # the longest silence heard before a person answered (Twilio TwiML)
    silence_run: float = 0.0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None



class Callers:
    """The scenario of a :class:`~tools.simulate.run.Simulation`: its callers and their behaviours."""

    def _plan(self) -> list[CallRecord]:
        fronts = {"twilio": ["twilio"], "agi": ["agi"], "both": ["twilio", "agi"]}[self.front]
        out = []
        for i in range(self.n):
            front = fronts[i % len(fronts)]
            roll = self.rng.random()
            behaviour = "patient"
            acc = 0.0
            for name, share in self.shares.items():
                acc += share
                if roll < acc:
                    behaviour = name
                    break
            dialed = self.rng.choice(LINES)
            if behaviour == "emergency" and front == "agi":
                dialed = self.rng.choice(("110", "119", "120", "122"))  # FastAGI cannot hear: dialled directly
            cid = f"CA{self.seed:08x}{i:024x}" if front == "twilio" else f"{1700000000 + self.seed}.{i}"
            out.append(CallRecord(cid, front, dialed, behaviour))
        return out

    def caller_number(self, rec: CallRecord) -> str:
        import zlib

        return f"+86139{zlib.crc32(rec.id.encode()) % 10**8:08d}"
    def patience(self, rec: CallRecord, rng) -> float:
        return rng.uniform(1.5, 5.0) if rec.behaviour == "impatient" else self.call_timeout_s

    def wants_transfer(self, call_id: str) -> bool:
        rec = self.records.get(call_id)
        if rec is None or rec.dialed not in self._expert_lines:
            return False
        return random.Random(f"{self.seed}-t-{call_id}").random() < min(1.0, self.transfer_share * 6)

    def write_wav(self, call_id: str, path: str | None = None, seconds: float = 0.5) -> str:
        """What the caller said, as the PBX records it: 8 kHz 16-bit mono (low noise, no model needed)."""
        path = path or os.path.join(self.recordings, f"{call_id}.wav")
        rng = random.Random(call_id)
        frames = b"".join(struct.pack("<h", rng.randint(-300, 300)) for _ in range(int(8000 * seconds)))
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(frames)
        return path
