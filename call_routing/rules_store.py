"""The rules a running process routes with, picked up from disk without a restart.

Every web worker, FastAGI server and rq worker holds one :class:`RulesStore`. ``current()``
is cheap: at most once per ``check_interval`` it looks at the rules file and the keyword file
it names (size and modification time); when either changed, the new files are validated and
swapped in only if valid. An invalid edit never replaces the running rules: the problems are
logged and kept in ``last_problems`` for the admin pages, and calls keep flowing on the last
good version. A call holds the :class:`Rules` object it started with, so calls in flight
finish on their version.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .rules import DEFAULT_RULES_PATH, Problem, Rules, RulesError, check_rules

log = logging.getLogger("hotline.rules")


class RulesStore:
    def __init__(self, path: str | os.PathLike | None = None, check_interval: float = 1.0, clock=time.monotonic):
        self.path = Path(path or os.environ.get("RULES_PATH") or DEFAULT_RULES_PATH)
        self.check_interval = check_interval
        self._clock = clock
        self._lock = threading.RLock()  # reloads run one at a time: the last to run read the newest file
        self.last_problems: list[Problem] = []
        rules, problems = check_rules(self.path)
        if problems:
            raise RulesError(problems)
        self._rules = rules
        self._stamp = self._file_stamp()
        self._next_check = clock() + check_interval

    def current(self) -> Rules:
        """The rules to route a new call with."""
        if self._clock() >= self._next_check:
            self._maybe_reload()
        return self._rules

    def _file_stamp(self):
        stamp = []
        for p in (self.path, self._keywords_path()):
            try:
                st = p.stat()
                stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def _keywords_path(self) -> Path:
        return Path(self._rules.keywords_path)

    def _maybe_reload(self) -> None:
        with self._lock:
            if self._clock() < self._next_check:
                return  # another thread just checked
            self._next_check = self._clock() + self.check_interval
            if self._file_stamp() != self._stamp:
                self.reload()  # takes the new stamp itself

    def reload(self) -> bool:
        """Validate the files now; swap them in if valid. Returns whether the rules changed.

        Serialised with the periodic check: a check that read the file just before an admin's
        publish or rollback can no longer swap its older rules in after the publish's reload."""
        with self._lock:
            self._stamp = self._file_stamp()
            return self._reload()

    def _reload(self) -> bool:
        rules, problems = check_rules(self.path)
        if problems:
            if [str(p) for p in problems] != [str(p) for p in self.last_problems]:
                log.error("rules file %s is invalid; still routing with version %s:\n%s", self.path,
                          self._rules.version, "\n".join(str(p) for p in problems))
            self.last_problems = problems
            return False
        self.last_problems = []
        if rules.version == self._rules.version:
            return False
        log.info("rules %s: version %s replaces %s", self.path, rules.version, self._rules.version)
        self._rules = rules
        return True
