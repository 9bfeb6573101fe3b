"""Connections a stream server has accepted but that have not yet said who they are (an
AudioSocket id frame, a Media Streams ``start``): they hold no stream slot, and at most a
number of them wait at once — one more cuts the oldest off. Asterisk and Twilio send their
opening message at once, so only strangers that send nothing grow old here."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Pending:
    def __init__(self, what: str):
        self.what = what  # for the log: "AudioSocket connections without an id"
        self._cut: dict = {}  # connection -> what ends its read at once; oldest first
        self._lock = threading.Lock()
        self.evicted = 0  # connections cut off to make room

    def add(self, conn, cut: Callable[[], None], most: int) -> None:
        """``conn`` waits; when ``most`` already wait, the oldest is cut off (``cut`` ends its read)."""
        with self._lock:
            oldest = next(iter(self._cut.items())) if len(self._cut) >= most else None
            if oldest is not None:
                del self._cut[oldest[0]]
            self._cut[conn] = cut
        if oldest is not None:
            self.evicted += 1
            log.warning("%d %s: the oldest closed", most, self.what)
            try:
                oldest[1]()
            except OSError:
                pass

    def __len__(self) -> int:
        return len(self._cut)

    def done(self, conn) -> None:
        """``conn`` said who it is, or is gone."""
        with self._lock:
            self._cut.pop(conn, None)
