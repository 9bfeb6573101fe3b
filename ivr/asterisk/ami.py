"""A small Asterisk Manager Interface (AMI) client: actions, their event lists, and events.

    ami = AMI.connect("127.0.0.1", 5038, "hotline", "secret")
    ami.action("Redirect", Channel="PJSIP/carrier-00000001", Context="hotline-conf", Exten="caller",
               Priority=1)
    _, contacts = ami.action_list("PJSIPShowContacts")
    ami.on_event(lambda event: ...)          # every event, on the reader thread

One socket, one reader thread. Each action carries its own ActionID; its response (and, for
list actions, the events up to ``EventList: Complete``) is handed to the caller waiting for
it. Used by the product to see agents' phones (device and contact state) and to move calls
from outside the channels (three-way transfers started in the agent console), and by the
real-PBX tests to see what Asterisk did.
"""
from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections import deque

log = logging.getLogger("hotline.ami")

MAX_MESSAGE = 256 * 1024  # a manager message larger than this is a broken peer
MAX_KEPT_EVENTS = 100_000


class AMIError(RuntimeError):
    """Asterisk answered ``Response: Error`` (the message says why), or the link broke."""


class _Pending:
    def __init__(self, is_list: bool):
        self.done = threading.Event()
        self.response: dict | None = None
        self.events: list[dict] = []
        self.is_list = is_list


class AMI:
    def __init__(self, sock: socket.socket, timeout: float = 10.0, keep_events: bool = False):
        self._sock = sock
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._listeners = []
        self.events: deque | None = deque(maxlen=MAX_KEPT_EVENTS) if keep_events else None
        self.closed = threading.Event()
        self.banner = ""
        self._reader = threading.Thread(target=self._read_loop, name="ami-reader", daemon=True)

    @classmethod
    def connect(cls, host: str, port: int, username: str, secret: str, timeout: float = 10.0,
                events: bool = True, keep_events: bool = False) -> "AMI":
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        sock.settimeout(None)
        ami = cls(sock, timeout, keep_events)
        ami.banner = ami._read_banner()
        ami._reader.start()
        ami.action("Login", Username=username, Secret=secret, Events="on" if events else "off")
        return ami

    # -- sending ----------------------------------------------------------------------------
    def _send(self, name: str, fields: dict, is_list: bool) -> tuple[str, _Pending]:
        action_id = f"h{next(self._ids)}"
        pending = _Pending(is_list)
        with self._lock:
            if self.closed.is_set():
                raise AMIError("AMI connection closed")
            self._pending[action_id] = pending
        lines = [f"Action: {name}", f"ActionID: {action_id}"]
        for key, value in fields.items():
            for one in value if isinstance(value, (list, tuple)) else (value,):
                text = str(one)
                if "\r" in text or "\n" in text:
                    raise ValueError(f"AMI field {key} has a line break")
                lines.append(f"{key}: {text}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        with self._send_lock:
            self._sock.sendall(data)
        return action_id, pending

    def _wait(self, action_id: str, pending: _Pending, timeout: float | None) -> _Pending:
        if not pending.done.wait(self.timeout if timeout is None else timeout):
            with self._lock:
                self._pending.pop(action_id, None)
            raise AMIError(f"no answer from Asterisk within {self.timeout if timeout is None else timeout} s")
        if pending.response is None:
            raise AMIError("AMI connection closed")
        if pending.response.get("Response", "").lower() == "error":
            raise AMIError(pending.response.get("Message", "error"))
        return pending

    def action(self, name: str, timeout: float | None = None, **fields) -> dict:
        """Send an action and return its response; :class:`AMIError` on ``Response: Error``."""
        action_id, pending = self._send(name, fields, False)
        return self._wait(action_id, pending, timeout).response

    def action_list(self, name: str, timeout: float | None = None, **fields) -> tuple[dict, list[dict]]:
        """An action answered with a list of events (``EventList: start`` … ``Complete``)."""
        action_id, pending = self._send(name, fields, True)
        pending = self._wait(action_id, pending, timeout)
        return pending.response, pending.events

    def command(self, cli: str, timeout: float | None = None) -> str:
        """A CLI command's output (``Action: Command``)."""
        response = self.action("Command", timeout=timeout, Command=cli)
        return response.get("Output", "")

    def on_event(self, listener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        if not self.closed.is_set():
            try:
                self._send("Logoff", {}, False)
            except (OSError, AMIError):
                pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ----------------------------------------------------------------------------
    def _read_banner(self) -> str:
        self._buf = b""
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise AMIError("Asterisk closed the manager connection before its banner")
            self._buf += chunk
            if len(self._buf) > 1024:
                raise AMIError("not an Asterisk manager port")
        line, self._buf = self._buf.split(b"\r\n", 1)
        if not line.startswith(b"Asterisk Call Manager"):
            raise AMIError(f"not an Asterisk manager port: {line[:60]!r}")
        return line.decode("utf-8", "replace")

    def _read_loop(self) -> None:
        buf = self._buf
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > MAX_MESSAGE and b"\r\n\r\n" not in buf:
                        log.error("AMI message over %d bytes: connection dropped", MAX_MESSAGE)
                        return
                raw, buf = buf.split(b"\r\n\r\n", 1)
                self._dispatch(parse_message(raw))
        except OSError:
            return
        finally:
            self.closed.set()
            with self._lock:
                pending, self._pending = self._pending, {}
            for p in pending.values():
                p.done.set()

    def _dispatch(self, msg: dict) -> None:
        action_id = msg.get("ActionID")
        if action_id is not None:
            with self._lock:
                pending = self._pending.get(action_id)
            if pending is not None:
                if "Response" in msg:
                    pending.response = msg
                    if not pending.is_list or msg.get("EventList", "").lower() != "start" or \
                            msg["Response"].lower() == "error":
                        self._finish(action_id, pending)
                    return
                if "Event" in msg and pending.is_list:
                    if msg.get("EventList", "").lower() == "complete":
                        self._finish(action_id, pending)
                    else:
                        pending.events.append(msg)
                    return
        if "Event" in msg:
            if self.events is not None:
                self.events.append(msg)
            for listener in list(self._listeners):
                try:
                    listener(msg)
                except Exception:  # a listener's bug must not stop the reader
                    log.exception("AMI event listener failed on %s", msg.get("Event"))

    def _finish(self, action_id: str, pending: _Pending) -> None:
        with self._lock:
            self._pending.pop(action_id, None)
        pending.done.set()


def parse_message(raw: bytes) -> dict:
    """``Key: value`` lines; a ``Command`` action's output lines are joined under ``Output``."""
    msg: dict = {}
    output = []
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            key, sep, value = line.partition(":")
        if not sep:
            if line:
                output.append(line)
            continue
        if key == "Output":
            output.append(value)
        elif key in msg and key == "ChanVariable":
            msg[key] += "\n" + value
        else:
            msg.setdefault(key, value)
    if output:
        msg["Output"] = "\n".join(output)
    return msg
