"""The FastAGI server: every handler for every call, in one long-lived process.

    python -m agi_scripts.fastagi_server --host 127.0.0.1 --port 4573 [--workers 512]

Asterisk connects once per AGI() call (``agi://127.0.0.1:4573/route_call``); the handler is
chosen by ``agi_network_script`` (route_call, queue_wait, transfer, survey). pyst2's own
fastagi is Python-2 only and its ``AGI()`` wants the main thread, so sessions run on a
bounded thread pool with :class:`ivr.asterisk.agi.AGIChannel` (no signals, a timeout on every
command). When every worker is busy and the waiting line is full, a new session is closed at
once — Asterisk's AGI() then returns and the dialplan's fallback reaches the general seats,
instead of the caller hearing silence.

A session takes a worker only once its whole AGI environment has arrived: until then the
accepting thread holds it in a :class:`HeaderGate` (no thread per connection), which closes a
connection whose environment is not complete within ``HEADER_DEADLINE_S`` or grows past
``MAX_HEADER_BYTES``, and, when ``MAX_PENDING`` connections are already waiting for theirs, the
oldest of them. Asterisk sends its environment at once (about 1 KB, within milliseconds of
connecting), so connections that trickle header lines cannot hold workers or starve real calls.

With ``HOTLINE_AMI`` set (``ami://hotline:SECRET@127.0.0.1:5038``) the server also follows
the agents' phones through the Asterisk manager (:class:`ivr.asterisk.pbx.PhoneWatcher`): a seat whose
phone is unregistered or on another call is never offered a call.

SIGHUP re-reads the rules now (they are also picked up within a second of an edit); calls
in flight finish on the rules they started with. SIGTERM/SIGINT stop accepting and let the
sessions in progress finish (up to ``--drain`` seconds).
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ivr.asterisk.agi import COMMAND_TIMEOUT_S, AGIChannel, Hangup, set_fallback

from . import HANDLERS
from .session import run

log = logging.getLogger("hotline.fastagi")

HEADER_DEADLINE_S = 3.0  # from connect to the blank line ending the AGI environment
MAX_HEADER_BYTES = 16 * 1024  # Asterisk's environment is about 1 KB
MAX_PENDING = 256  # connections waiting for their environment; beyond it the oldest is closed


class HeaderGate:
    """Connections whose AGI environment has not fully arrived, read without a thread each.

    :meth:`poll` returns the connections whose environment is complete, as ``(conn, env,
    rest)``; it closes those past their deadline or size and, above ``max_pending``, the
    oldest. ``closed`` counts why connections were closed."""

    def __init__(self, deadline_s: float = HEADER_DEADLINE_S, max_bytes: int = MAX_HEADER_BYTES,
                 max_pending: int = MAX_PENDING):
        self.deadline_s, self.max_bytes, self.max_pending = deadline_s, max_bytes, max_pending
        self.selector = selectors.DefaultSelector()  # the server registers its listening socket here too
        self._pending: dict[socket.socket, list] = {}  # conn -> [since, bytes]; oldest first
        self.closed = {"header_timeout": 0, "header_too_large": 0, "evicted": 0, "closed_early": 0}

    def add(self, conn: socket.socket) -> None:
        if len(self._pending) >= self.max_pending:
            self._drop(next(iter(self._pending)), "evicted")
        conn.setblocking(False)
        self._pending[conn] = [time.monotonic(), b""]
        self.selector.register(conn, selectors.EVENT_READ)

    def wait_s(self, most: float) -> float:
        """How long the caller may block before the oldest deadline passes."""
        if not self._pending:
            return most
        since = next(iter(self._pending.values()))[0]
        return max(0.0, min(most, since + self.deadline_s - time.monotonic()))

    def poll(self, ready) -> list:
        done = []
        for conn in ready:
            entry = self._pending.get(conn)
            if entry is None:
                continue
            try:
                chunk = conn.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._drop(conn, "closed_early")
                continue
            entry[1] += chunk
            head, sep, rest = entry[1].partition(b"\n\n")
            if sep:
                self._forget(conn)
                done.append((conn, parse_env(head), rest))
            elif len(entry[1]) > self.max_bytes:
                self._drop(conn, "header_too_large")
        now = time.monotonic()
        while self._pending:
            conn, (since, _) = next(iter(self._pending.items()))
            if now - since < self.deadline_s:
                break
            self._drop(conn, "header_timeout")
        return done

    def _forget(self, conn) -> None:
        self.selector.unregister(conn)
        del self._pending[conn]

    def _drop(self, conn, why: str) -> None:
        self._forget(conn)
        self.closed[why] += 1
        conn.close()

    def close(self) -> None:
        for conn in list(self._pending):
            self._drop(conn, "closed_early")
        self.selector.close()


def parse_env(head: bytes) -> dict:
    env = {}
    for line in head.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip():
            env[key.strip()] = value.strip()
    return env


def script_name(env: dict) -> str:
    """``agi://host:4573/route_call?x=1`` -> ``route_call``."""
    name = env.get("agi_network_script") or ""
    return name.split("?", 1)[0].strip("/").rsplit("/", 1)[-1]


def listen(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port), backlog=1024)


class FastAGIServer:
    def __init__(self, services, host: str = "127.0.0.1", port: int = 4573, workers: int = 512,
                 waiting: int | None = None, handlers=None, command_timeout: float = COMMAND_TIMEOUT_S,
                 sock: socket.socket | None = None):
        self.services = services
        self.handlers = dict(handlers or HANDLERS)
        self.command_timeout = command_timeout
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers + (workers if waiting is None else waiting))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fastagi")
        self._sock = sock or listen(host, port)
        self.address = self._sock.getsockname()
        self._stopping = threading.Event()
        self._thread = None
        self.gate = HeaderGate()
        self._gate_seen, self._gate_logged = 0, 0.0
        self.stats = {"sessions": 0, "refused": 0, "ok": 0, "hangup": 0, "timeout": 0, "error": 0}
        self._stats_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._sock.setblocking(False)
        gate = self.gate
        gate.selector.register(self._sock, selectors.EVENT_READ, "listen")
        try:
            while not self._stopping.is_set():
                ready = []
                for key, _ in gate.selector.select(gate.wait_s(0.5)):
                    if key.data == "listen":
                        self._accept_all(gate)
                    else:
                        ready.append(key.fileobj)
                for conn, env, rest in gate.poll(ready):
                    self._hand_over(conn, env, rest)
                self._log_gate(gate)
        finally:
            gate.close()

    def _accept_all(self, gate) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, socket.timeout):
                return
            except OSError as exc:
                if self._stopping.is_set() or exc.errno in (errno.EINVAL, errno.EBADF):
                    self._stopping.set()  # the listening socket was shut down (by us, or a sibling process stopping)
                    return
                log.warning("accept failed: %s", exc)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            gate.add(conn)

    def _hand_over(self, conn: socket.socket, env: dict, rest: bytes) -> None:
        conn.setblocking(True)
        if not self._slots.acquire(blocking=False):
            self._count("refused")
            log.warning("all %d workers busy and the waiting line full: session refused, dialplan falls back",
                        self.workers)
            conn.close()
            return
        self._pool.submit(self._session, conn, env, rest)

    def _log_gate(self, gate) -> None:
        """At most one line every 10 s about connections closed before their environment."""
        now = time.monotonic()
        if now - self._gate_logged < 10:
            return
        total = sum(gate.closed.values())
        if total > self._gate_seen:
            log.warning("closed %d connection(s) that sent no complete AGI environment so far (%s)",
                        total - self._gate_seen, ", ".join(f"{k} {v}" for k, v in gate.closed.items() if v))
            self._gate_seen, self._gate_logged = total, now

    def start(self) -> "FastAGIServer":
        self._thread = threading.Thread(target=self.serve_forever, name="fastagi-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 10.0) -> None:
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(drain_s)
        self._sock.close()
        self._pool.shutdown(wait=True, cancel_futures=False)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    # -- one session ------------------------------------------------------------------------
    def _session(self, conn: socket.socket, env: dict, rest: bytes = b"") -> None:
        self._count("sessions")
        try:
            try:
                agi = AGIChannel(conn.fileno(), conn.fileno(), timeout=self.command_timeout, env=env, buffered=rest)
            except (Hangup, OSError):
                return
            except Exception:  # a silent or garbled client
                log.warning("no valid AGI environment received; session closed")
                return
            name = script_name(agi.env)
            handler = self.handlers.get(name)
            if handler is None:
                log.error("no handler %r (have: %s); dialplan falls back", name, ", ".join(sorted(self.handlers)))
                set_fallback(agi, "unknown-script")
                self._count("error")
                return
            self._count(run(handler, agi, self.services))
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
            self._slots.release()


def keep_prompts(services, stop: threading.Event, every_s: float = 1.0) -> None:
    """Render the prompts of each new rules version into the prompts folder (only new or changed
    texts, as ``python -m ivr.prompts render``): a text edited in the rules editor, or on disk,
    is heard by the next caller instead of a silent gap until someone runs install.sh. Only
    where install.sh has rendered the folder (its manifest): this host is the Asterisk host."""
    from ivr.prompts import all_prompts, render

    done, failed = None, None
    while not stop.wait(every_s):
        version = None
        try:
            rules = services.rules.current()
            version = rules.version
            if version == done or not os.path.isfile(os.path.join(services.prompt_dir, "manifest.json")):
                continue
            counts = render(all_prompts(rules), services.prompt_dir, progress=None, jobs=1)
            done = version
            if counts["synthesized"] or counts["recorded"]:
                log.info("rules %s: %d new prompt(s) rendered into %s", version,
                         counts["synthesized"] + counts["recorded"], services.prompt_dir)
        except Exception as exc:  # noqa: BLE001 — never stop for this; tell the admin once per version
            if failed != version:
                log.warning("cannot render the prompts of rules %s into %s (%s): run agi_scripts/install.sh "
                            "(or python -m ivr.prompts render) on the Asterisk host", version,
                            services.prompt_dir, exc)
            failed = version


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agi_scripts.fastagi_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4573)
    parser.add_argument("--workers", type=int, default=512, help="concurrent AGI sessions (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=COMMAND_TIMEOUT_S,
                        help="seconds Asterisk may take to answer a command (default %(default)s)")
    parser.add_argument("--processes", type=int, default=1,
                        help="server processes sharing the port (one per core: Python threads share one core)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to let sessions finish on stop")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from call_routing.rules import RulesError
    from ivr.services import build

    try:
        build({"tickets": object(), "queue": object()})  # check the rules before listening
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror} (another FastAGI server? "
              f"choose another --port)", file=sys.stderr)
        return 1
    children = []
    for _ in range(max(1, args.processes) - 1):  # fork before any thread or connection exists
        pid = os.fork()
        if pid == 0:
            children = None
            break
        children.append(pid)
    if children:
        def forward(signum, _frame):
            for pid in children:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            if signum != signal.SIGHUP:
                stop.set()
    services = build()
    server = FastAGIServer(services, args.host, args.port, args.workers, command_timeout=args.timeout, sock=sock)
    stop = threading.Event()
    if children:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: (forward(signum, frame),
                                                      services.rules.reload() if signum == signal.SIGHUP else None))
    else:
        signal.signal(signal.SIGHUP, lambda *_: services.rules.reload())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    threading.Thread(target=services.warm, name="prefill-warm", daemon=True).start()  # calls go on meanwhile
    acd = getattr(services.flow.queue, "acd", None)
    if children is not None and acd is not None:  # one process follows the agents' phones (HOTLINE_AMI)
        from ivr.asterisk.pbx import run_in_background

        run_in_background(acd)
    if children is not None:  # one process keeps the prompts of new rules rendered
        threading.Thread(target=keep_prompts, args=(services, stop), name="prompts", daemon=True).start()
    log.info("FastAGI on %s:%d, handlers %s, rules %s", *server.address[:2], ", ".join(sorted(server.handlers)),
             services.rules.current().version)
    if children is not None:
        print(f"listening on {server.address[0]}:{server.address[1]} ({max(1, args.processes)} processes)", flush=True)
    stop.wait()
    log.info("stopping: letting %s s for sessions in progress", args.drain)
    server.stop(args.drain)
    for pid in children or ():
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

