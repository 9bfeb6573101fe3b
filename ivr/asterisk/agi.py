"""Steps -> AGI commands, spoken over any pair of file descriptors, from any thread.

pyst2 0.5.1 knows the AGI commands but not how to live in a server (DESIGN.md §5): its
``AGI()`` installs a SIGHUP handler (main thread only), reads ``sys.stdin``, writes ``str``,
prints debug lines to stderr, has no timeout, and reports a hangup three different ways.
:class:`AGIChannel` keeps pyst2's command methods and replaces only the transport:

- no signals: a plain AGI script marks a SIGHUP with :meth:`AGIChannel.mark_hangup`;
- line I/O on a raw fd (pipe or socket) with a per-command timeout (:class:`CommandTimeout`);
- every hangup form — ``200 result=-1`` (``AGIAppError``), a bare ``HANGUP`` line, ``511``,
  EOF, SIGHUP — becomes one exception, :class:`Hangup`;
- ``_quote`` escapes quotes and backslashes; debug goes to ``logging`` (off by default).

:func:`play_steps` and :func:`hand_back` render a flow :class:`~ivr.flow.Turn` into commands.
"""
from __future__ import annotations

import logging
import os
import select
import time

from asterisk.agi import AGI, AGIAppError, AGIHangup, AGIInvalidCommand, AGIUnknownError, AGIUsageError, re_code, re_kv

from ivr import prompts

log = logging.getLogger("hotline.agi")

#: How long Asterisk may take to answer a command, beyond the command's own duration.
COMMAND_TIMEOUT_S = 10.0
#: Channel variables handed back to the dialplan (DESIGN.md §4) — a contract.
CONTRACT_VARIABLES = ("HOTLINE_ACTION", "HOTLINE_TARGET", "HOTLINE_SKILL", "HOTLINE_LINE", "HOTLINE_TICKET",
                      "HOTLINE_RULES_VERSION")
#: Set when a handler could not finish: the dialplan sends the caller to the general seats.
FALLBACK_VARIABLE = "HOTLINE_FALLBACK"


class Hangup(AGIHangup):
    """The caller is gone (result=-1 on a command that reports hangups, HANGUP, 511, EOF, SIGHUP)."""


class ResultHangup(Hangup):
    """``200 result=-1``: a hangup — or, for STREAM FILE, possibly a missing sound file."""


class CommandTimeout(AGIAppError):
    """Asterisk did not answer a command in time; the session is abandoned."""


class ReplyTooLong(CommandTimeout):
    """Asterisk's answer runs past :data:`MAX_REPLY_LINE` bytes or :data:`MAX_USAGE_LINES`
    lines: no Asterisk answers so; the session is abandoned as for a timeout."""


#: Longest reply line accepted (Asterisk's are short: ``200 result=1 (value)``; a variable's
#: value is at most a few KB). Beyond it the peer is not Asterisk, or is broken.
MAX_REPLY_LINE = 64 * 1024
#: Most lines of a ``520-`` usage answer (Asterisk's longest usage text is about 40 lines).
MAX_USAGE_LINES = 200


class _Null:
    def write(self, _):
        return 0

    def flush(self):
        pass


class LineIO:
    """Unbuffered-enough line reader/writer over a raw fd, with a deadline per read.

    Works for pipes (fd 0/1 of an AGI script) and sockets (``sock.fileno()``) alike, so the
    AGI script and the FastAGI server run the very same code.
    """

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = b""
        self.timeout: float | None = COMMAND_TIMEOUT_S

    def readline(self) -> str:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY_LINE:
                self._buffer = b""
                raise ReplyTooLong(f"a line from Asterisk longer than {MAX_REPLY_LINE} bytes")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                    raise CommandTimeout(f"no answer from Asterisk within {self.timeout:.1f} s")
            try:
                chunk = os.read(self.read_fd, 4096)
            except ConnectionResetError:
                chunk = b""
            if not chunk:  # EOF: Asterisk closed the session
                line, self._buffer = self._buffer, b""
                return line.decode("utf-8", "replace")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace") + "\n"

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        while data:
            try:
                n = os.write(self.write_fd, data)
            except (BrokenPipeError, ConnectionResetError):
                raise Hangup("Asterisk closed the session") from None
            data = data[n:]

    def flush(self) -> None:
        pass


class AGIChannel(AGI):
    """A pyst2 ``AGI`` without signals, stdin or stderr: usable from any thread."""

    def __init__(self, read_fd: int, write_fd: int, timeout: float = COMMAND_TIMEOUT_S,
                 env_timeout: float = 5.0, env: dict | None = None, buffered: bytes = b""):
        """``env``: the AGI environment when it was already read (the FastAGI server's
        header gate), with ``buffered`` the bytes that came after it."""
        # Deliberately not calling AGI.__init__: it installs a signal handler and reads sys.stdin.
        self.io = LineIO(read_fd, write_fd)
        self.io._buffer = buffered
        self.stdin = self.stdout = self.io
        self.stderr = _Null()
        self._got_sighup = False
        self.timeout = timeout
        self.hung_up = False
        self.env = {}
        if env is not None:
            self.env = dict(env)
        else:
            self.io.timeout = env_timeout
            self._get_agi_env()
        self.io.timeout = timeout

    # -- transport --------------------------------------------------------------------
    def _get_agi_env(self):
        while True:
            line = self.io.readline()
            if not line:
                raise Hangup("session closed before the AGI environment was complete")
            line = line.strip()
            if not line:
                break
            key, _, value = line.partition(":")
            if key.strip():
                self.env[key.strip()] = value.strip()

    def mark_hangup(self, *_):
        """For a SIGHUP handler in an AGI script's main thread: the next command raises Hangup."""
        self._got_sighup = True

    def test_hangup(self):
        if self._got_sighup or self.hung_up:
            self.hung_up = True
            raise Hangup("caller hung up")

    def _quote(self, string):
        text = str(string).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        return f'"{text}"'

    def execute(self, command, *args, extra_s: float = 0.0):
        """Send one command and parse its answer; ``extra_s`` widens the timeout for long ones."""
        self.test_hangup()
        self.io.timeout = None if self.timeout is None else self.timeout + extra_s
        try:
            self.send_command(command, *args)
            return self.get_result()
        except Hangup:
            self.hung_up = True
            raise
        except AGIAppError as exc:
            if isinstance(exc, CommandTimeout):
                raise
            # pyst2's result=-1 (and its hangup subclasses): for the commands we send it
            # means the channel is gone.
            self.hung_up = True
            raise Hangup(str(exc)) from exc
        finally:
            self.io.timeout = self.timeout

    def get_result(self, stdin=None):
        line = self.io.readline()
        if not line:
            raise Hangup("Asterisk closed the session")
        line = line.strip()
        if line == "HANGUP":  # FastAGI: Asterisk announces the hangup on its own line
            raise Hangup("HANGUP")
        m = re_code.search(line)
        try:
            code = int(m.group(1))
        except (AttributeError, ValueError):
            raise AGIUnknownError(0, f"unreadable answer from Asterisk: {line[:80]!r}") from None
        response = m.group(2)
        if code == 200:
            result = {"result": ("", "")}
            for key, value, data in re_kv.findall(response):
                result[key] = (value, data)
                if data == "hangup" or (key == "result" and value == "-1"):
                    raise ResultHangup(f"hangup ({line})")
            return result
        if code == 511:  # "Command Not Permitted on a dead channel"
            raise Hangup("511 dead channel")
        if code == 510:
            raise AGIInvalidCommand(response)
        if code == 520:
            usage = [line]
            while True:
                more = self.io.readline()
                if not more:
                    raise Hangup("Asterisk closed the session")
                usage.append(more.strip())
                if more.startswith("520"):
                    break
                if len(usage) > MAX_USAGE_LINES:
                    raise ReplyTooLong(f"a usage answer from Asterisk longer than {MAX_USAGE_LINES} lines")
            raise AGIUsageError("\n".join(usage))
        raise AGIUnknownError(code, "Unhandled code or undefined response")

    # -- commands we use, with timeouts sized to what they do -------------------------
    def stream(self, sound: str, escape_digits: str = "") -> str:
        """STREAM FILE; returns the digit that interrupted it ('' if none).

        A missing sound file also answers ``result=-1``, like a hangup: CHANNEL STATUS tells
        them apart (a dead channel answers 511/HANGUP/-1), so a missing prompt is skipped
        and logged instead of dropping a caller who is still there.
        """
        try:
            res = self.execute("STREAM FILE", sound, self._quote(escape_digits), extra_s=120)["result"][0]
        except ResultHangup:
            self.hung_up = False
            self.execute("CHANNEL STATUS")  # raises Hangup when the caller is really gone
            log.warning("prompt %s could not be played (missing sound file?)", sound)
            return ""
        return chr(int(res)) if res not in ("", "0") else ""

    def set_var(self, name: str, value) -> None:
        self.execute("SET VARIABLE", name, self._quote("" if value is None else value))

    def get_var(self, name: str) -> str:
        result = self.execute("GET VARIABLE", self._quote(name))
        return result["result"][1] if result["result"][0] == "1" else ""

    def wait_digit(self, timeout_ms: int) -> str:
        res = self.execute("WAIT FOR DIGIT", int(timeout_ms), extra_s=timeout_ms / 1000)["result"][0]
        return chr(int(res)) if res not in ("", "0") else ""

    def music(self, on: bool, moh_class: str = "hotline") -> None:
        self.execute("SET MUSIC", "on" if on else "off", moh_class)

    def record(self, path: str, max_ms: int, silence_s: int = 3, beep: bool = False) -> bool:
        """RECORD FILE (wav, '#' stops it), ending after ``silence_s`` of silence. False when
        Asterisk could not record (``result=-1`` with the caller still there: the folder is
        missing or not writable for Asterisk): logged, and the caller simply keeps waiting."""
        args = [path, "wav", self._quote("#"), int(max_ms)] + (["BEEP"] if beep else []) + ["s=%d" % silence_s]
        try:
            self.execute("RECORD FILE", *args, extra_s=max_ms / 1000)
        except ResultHangup:
            self.hung_up = False
            self.execute("CHANNEL STATUS")  # raises Hangup when the caller is really gone
            log.error("Asterisk could not record %s.wav (is the folder there and writable by Asterisk?)", path)
            return False
        return True


# ---------------------------------------------------------------------------------------
# Rendering a flow turn


def sound_of(step, prompt_dir: str) -> list[str]:
    """The sound files (no extension) that speak one ``say``/``play`` step."""
    if step["do"] == "play":
        return [os.path.splitext(step["file"])[0]]
    parts = step.get("parts") or (step["text"],)
    return [prompts.sound_path(prompt_dir, text) for text in parts]


def play_steps(agi: AGIChannel, steps, prompt_dir: str, escape_digits: str = "") -> str:
    """Speak every ``say``/``play`` step in order; other steps are the dialplan's business.

    Returns the first DTMF digit that interrupted a prompt ('' when none).
    """
    for step in steps:
        if step["do"] not in ("say", "play"):
            continue
        for sound in sound_of(step, prompt_dir):
            digit = agi.stream(sound, escape_digits)
            if digit:
                return digit
    return ""


def hand_back(agi: AGIChannel, turn) -> None:
    """Set the contract variables (DESIGN.md §4) from a turn's hand-off."""
    for name, value in turn.variables().items():
        agi.set_var(name, value)


def set_fallback(agi: AGIChannel, reason: str) -> None:
    """Best effort: tell the dialplan to use its safe fallback. Never raises."""
    try:
        agi.timeout = 2.0
        agi.set_var(FALLBACK_VARIABLE, reason)
    except Exception:  # the channel or the session is already gone: the dialplan falls through anyway
        pass


# ---------------------------------------------------------------------------------------
# EAGI: the caller's audio on fd 3 (pyst2 never reads it)

EAGI_FD = 3
EAGI_RATE = 8000  # signed 16-bit little-endian mono


class EAGIAudio:
    """Reads the caller's audio from an EAGI script's fd 3.

    Asterisk writes audio there only while the AGI is idle (no command running), so the
    queue-wait loop listens for a second, then asks the ACD, then listens again.
    """

    def __init__(self, fd: int = EAGI_FD):
        self.fd = fd
        self.closed = False

    @staticmethod
    def available(fd: int = EAGI_FD) -> bool:
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    def read(self, seconds: float) -> bytes:
        """Up to ``seconds`` of audio (less if fd 3 closes: the caller hung up)."""
        chunks = []
        deadline = time.monotonic() + seconds
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                break
            chunk = os.read(self.fd, 3200)  # 200 ms at 8 kHz
            if not chunk:
                self.closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)
