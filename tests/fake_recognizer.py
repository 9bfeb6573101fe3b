"""A stand-in streaming recognizer for EAGI tests (HOTLINE_RECOGNIZER=fake_recognizer:Recognizer).

Asserting transcripts of synthetic speech is meaningless (DESIGN.md §5); this one "hears" a
fixed sentence once it has received one second of 8 kHz audio, so the test checks what the
call does with it.
"""
import os

HEARD = os.environ.get("FAKE_HEARD", "楼下着火了，有人被困在里面")


SPEECH_ONLY = os.environ.get("FAKE_SPEECH_ONLY") == "1"  # count only frames with a voice in them


class Recognizer:
    def __init__(self):
        self.received = 0

    def accept(self, pcm: bytes):
        if SPEECH_ONLY and max((abs(s) for s in memoryview(pcm).cast("h")), default=0) < 1000:
            return None  # silence (or the padding of a gap): nobody speaks yet
        self.received += len(pcm)
        return HEARD if self.received >= 16000 else None

    def final(self):
        return ""
