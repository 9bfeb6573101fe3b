"""A stand-in streaming recognizer for EAGI tests (HOTLINE_RECOGNIZER=fake_recognizer:Recognizer).

Asserting transcripts of synthetic speech is meaningless (DESIGN.md §5); this one "hears" a
fixed sentence once it has received one second of 8 kHz audio, so the test checks what the
call does with it.
"""
import os

HEARD = os.environ.get("FAKE_HEARD", "楼下着火了，有人被困在里面")


class Recognizer:
    def __init__(self):
        self.received = 0

    def accept(self, pcm: bytes):
        self.received += len(pcm)
        return HEARD if self.received >= 16000 else None

    def final(self):
        return ""
