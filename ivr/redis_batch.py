"""Writes of one webhook in one Redis round trip, with as little work around it as possible.

A call's first request writes the ticket draft, the call state and the Twilio leg: six
commands. Through a redis-py pipeline each costs its own generic packing and its own reply
object in the web worker — on the hot path that was most of the time spent around Redis.
:class:`OneTrip` has the pipeline methods the call path uses (``set``, ``hset``, ``expire``,
``rpush``), writes the commands in RESP here (redis-py's general packer costs about three
times as much per argument), sends them in one write and reads their replies in one go. The
connection is one of the client's pool — or, with ``own_connection=True`` (a web worker's hot
path: few threads, many requests), the calling thread's own, made with the client's connection
settings (host or Unix socket, db, password, TLS, timeouts): no pool lock and no readiness poll
per request. A connection found dead (a Redis restart) is replaced once, as redis-py's retry
would; any other failure drops the connection, so a half-read reply never leaks into the next
command.

    pipe = one_trip(client)      # a OneTrip for a redis.Redis, else client.pipeline()
    pipe.set("k", "v", ex=60)
    pipe.hset("h", mapping={"a": 1})
    pipe.execute()

``send()`` writes the commands and returns a :class:`Sent` whose ``wait()`` reads the replies
later (``execute()`` is both at once): the entry webhook answers Twilio in between. On a
thread's own connection several writes may be in flight; a ``wait()`` reads the replies of the
earlier ones first, whoever forgot them. Between :func:`hold_writes` and :func:`release_writes` (the web server's
batch worker) the writes of several webhooks go to Redis together, in one system call.

Like a non-transactional pipeline it is not atomic: a command that fails (e.g. WRONGTYPE) does
not stop the others; every reply is read, then ``execute`` raises the first error. ``execute``
returns the number of commands run, not their replies (nobody on the call path reads them).
Measured (bench/webhooks.py, docs/twilio.md): the same commands as arguments of one
``EVALSHA`` of a Lua loop — the previous design — cost Redis ≈ 60 µs per call against ≈ 35 µs
sent plainly, for ≈ 10 µs less parsing in the worker.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque

log = logging.getLogger("hotline.redis")


class OneTrip:
    """A pipeline look-alike sent in one write, its replies read in one go (see the module's doc)."""

    def __init__(self, client, own_connection: bool = False):
        self.client = client
        self.own_connection = own_connection
        self.encoding = client.connection_pool.connection_kwargs.get("encoding") or "utf-8"
        self.packed: list[bytes] = []  # one RESP command each, in order

    def __len__(self) -> int:
        return len(self.packed)

    def command(self, name: str, key, *args) -> "OneTrip":
        self.packed.append(pack_command((name, key, *args), self.encoding))
        return self

    def set(self, name, value, ex=None, px=None, nx=False, xx=False) -> "OneTrip":
        args = [value]
        if ex is not None:
            args += ("EX", int(ex.total_seconds()) if hasattr(ex, "total_seconds") else ex)
        if px is not None:
            args += ("PX", int(px.total_seconds() * 1000) if hasattr(px, "total_seconds") else px)
        if nx:
            args.append("NX")
        if xx:
            args.append("XX")
        return self.command("SET", name, *args)

    def hset(self, name, key=None, value=None, mapping=None, items=None) -> "OneTrip":
        pieces: list = []
        if key is not None:
            pieces += (key, value)
        if mapping:
            for pair in mapping.items():
                pieces += pair
        if items:
            pieces += items
        if not pieces:
            raise ValueError("'hset' with no key value pairs")
        return self.command("HSET", name, *pieces)

    def expire(self, name, time) -> "OneTrip":
        return self.command("EXPIRE", name, int(time.total_seconds()) if hasattr(time, "total_seconds") else time)

    def rpush(self, name, *values) -> "OneTrip":
        return self.command("RPUSH", name, *values)

    def execute(self) -> int:
        return self.send().wait()

    def send(self) -> "Sent":
        """Write the queued commands now; :meth:`Sent.wait` reads their replies. In between the
        caller may do other work (answer its HTTP request) while Redis runs them: by the time
        the replies are read they are usually there, and the thread does not sleep waiting."""
        packed, self.packed = self.packed, []
        return Sent(self, b"".join(packed), len(packed))

    def _write(self, packed: bytes, retry: bool = True):
        """A pool connection's write (``own_connection`` writes go through :func:`_send_own`)."""
        from redis.exceptions import ConnectionError

        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command((packed,), check_health=True)
        except ConnectionError:
            self._release(conn, dead=True)
            if not retry:
                raise
            return self._write(packed, retry=False)  # the connection was dead: once more on a new one
        except BaseException:
            self._release(conn, dead=True)
            raise
        return conn

    def _release(self, conn, dead: bool = False) -> None:
        pool = self.client.connection_pool  # (a pool connection: own ones go through _send_own)
        if dead:
            _drop(pool, conn)
        pool.release(conn)


class Sent:
    """Commands of a :class:`OneTrip` written to Redis (or, while writes are held — :func:`hold_writes` —,
    to be written with the others of the batch), their replies not read yet.

    On a thread's own connection several may be in flight: their replies come back in the order
    they were written, and :meth:`wait` reads those of every earlier one first (whoever forgot
    to); a connection found dead sends every unread one again, in order, on a new one."""

    __slots__ = ("trip", "packed", "n", "conn", "unsent", "error")

    def __init__(self, trip: OneTrip, packed: bytes, n: int):
        self.trip, self.packed, self.n = trip, packed, n
        self.conn, self.unsent, self.error = None, False, None
        if not n:
            return
        if not trip.own_connection:
            self.conn = trip._write(packed)
        elif getattr(_BATCH, "deferring", False):
            self.unsent = True
            _BATCH.unsent.append(self)
        else:
            _send_own(trip.client.connection_pool, [self])

    def wait(self, retry: bool = True) -> int:
        """Read every reply (none is left for the next command); raise the first error. A
        connection that died meanwhile (a Redis restart) is replaced and the commands sent once
        more, as redis-py's retry would."""
        if self.unsent:
            flush_deferred()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if not self.trip.own_connection:
            return self._wait_pooled(retry)
        return _read_own(self.trip.client.connection_pool, self, retry)

    def _read(self, conn):
        """This write's replies; the first command error, or None."""
        from redis.exceptions import ResponseError

        failed = None
        for _ in range(self.n):
            try:
                conn.read_response()
            except ResponseError as exc:
                failed = failed or exc
        return failed

    def _wait_pooled(self, retry: bool) -> int:
        from redis.exceptions import ConnectionError

        conn, self.conn = self.conn, None
        if conn is None:  # nothing was sent, or the replies were read already
            return 0
        try:
            failed = self._read(conn)
        except ConnectionError:
            self.trip._release(conn, dead=True)
            if not retry:
                raise
            self.conn = self.trip._write(self.packed, retry=False)
            return self._wait_pooled(retry=False)
        except BaseException:
            self.trip._release(conn, dead=True)
            raise
        self.trip._release(conn)
        if failed is not None:  # the connection is in step: only the command failed
            raise failed
        return self.n


_LOCALS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pool -> threading.local
_LOCALS_LOCK = threading.Lock()
_BATCH = threading.local()  # deferring: bool; unsent: Sents of the batch, in order


def hold_writes() -> None:
    """From now on, this thread's own-connection writes are held back until
    :func:`release_writes` (or the first :meth:`Sent.wait`, or :func:`flush_deferred`) writes
    them all at once, in order: one system call and one wake-up of Redis for the whole batch.
    The web server's batch worker (:mod:`ivr.batch_worker`) runs several call starts this way
    and answers none of them before their writes are out: no answer leaves before its writes
    are in Redis's socket."""
    if not getattr(_BATCH, "deferring", False):
        _BATCH.deferring, _BATCH.unsent = True, []


def release_writes() -> None:
    """Stop holding writes back and write those held."""
    _BATCH.deferring = False
    flush_deferred()


def flush_deferred() -> None:
    """Write this thread's held-back writes now. A failure is logged and kept by each write of
    the batch, which raises it at its :meth:`Sent.wait`."""
    unsent = getattr(_BATCH, "unsent", None)
    if not unsent:
        return
    _BATCH.unsent = []
    by_pool: dict = {}
    for sent in unsent:
        sent.unsent = False
        by_pool.setdefault(sent.trip.client.connection_pool, []).append(sent)
    for pool, sents in by_pool.items():
        try:
            _send_own(pool, sents)
        except Exception as exc:  # noqa: BLE001 - every one of them raises it at its wait()
            log.error("Redis: a batch of %d writes could not be sent: %r", len(sents), exc)
            for sent in sents:
                sent.error = exc


def _local(pool):
    local = _LOCALS.get(pool)
    if local is None:
        with _LOCALS_LOCK:
            local = _LOCALS.setdefault(pool, threading.local())
    return local


def _send_own(pool, sents: list, retry: bool = True) -> None:
    """Write ``sents`` in one go on this thread's connection; they join its unread ones."""
    from redis.exceptions import ConnectionError

    local = _local(pool)
    try:
        conn = _connection(pool)
        conn.send_packed_command((b"".join(s.packed for s in sents),), check_health=False)
    except ConnectionError:
        # Redis restarted (or is not there yet): the unread writes on the old connection may
        # be lost with it — they go again, in order, before these, on a new one
        stale = _forget(pool, local)
        if not retry:
            raise
        return _send_own(pool, stale + sents, retry=False)
    except BaseException:
        _forget(pool, local)
        raise
    for sent in sents:
        sent.conn = conn
    local.fifo.extend(sents)


def _read_own(pool, sent: Sent, retry: bool) -> int:
    from redis.exceptions import ConnectionError

    local = _local(pool)
    conn = sent.conn
    if conn is None or getattr(local, "conn", None) is not conn:
        return 0  # read already (by a later write's wait), or never sent
    while local.fifo:
        head = local.fifo[0]
        try:
            failed = head._read(conn)
        except ConnectionError:
            stale = _forget(pool, local)
            if not retry:
                raise
            _send_own(pool, stale, retry=False)
            return _read_own(pool, sent, retry=False)
        except BaseException:
            _forget(pool, local)
            raise
        local.fifo.popleft()
        head.conn = None
        if head is sent:
            if failed is not None:  # the connection is in step: only the command failed
                raise failed
            return sent.n
        if failed is not None:
            log.error("Redis: a write whose replies nobody read failed: %s", failed)
    return 0


def _forget(pool, local) -> list:
    """Drop this thread's connection; the writes whose replies were not read yet."""
    stale = list(getattr(local, "fifo", ()))
    for sent in stale:
        sent.conn = None
    conn = getattr(local, "conn", None)
    if conn is not None:
        _drop(pool, conn)
    local.fifo = deque()
    return stale


_PID = os.getpid()  # os.getpid() is a system call; this process's id, kept up to date across forks


def _forked() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _connection(pool):
    """This thread's connection for ``pool``'s server (a new one after a fork): a :class:`_Wire`
    over a connected redis-py connection where it can, else the redis-py connection itself."""
    local = _local(pool)
    conn = getattr(local, "conn", None)
    if conn is None or local.pid != _PID:
        local.fifo = deque()  # a forked child never reads its parent's replies: its own line
        conn = _Wire.over(pool.connection_class(**pool.connection_kwargs))
        local.conn, local.pid = conn, _PID
    return conn


class _Wire:
    """A web worker's own Redis connection, spoken to with one system call per write and per
    read. redis-py connects it (address, AUTH, SELECT, client name: the client's settings); then
    its socket is used directly: blocking, with the client's socket timeout set in the kernel
    (``SO_SNDTIMEO``/``SO_RCVTIMEO``) instead of Python's — which polls the socket before every
    send and every receive, two more system calls per call start — and the replies parsed by
    hiredis as they come. TLS connections and a missing hiredis keep redis-py's own path."""

    __slots__ = ("conn", "sock", "reader")

    def __init__(self, conn, sock, reader):
        self.conn, self.sock, self.reader = conn, sock, reader

    @classmethod
    def over(cls, conn):
        try:
            import hiredis
        except ImportError:  # pragma: no cover - hiredis is a requirement
            return conn
        import socket
        import ssl
        import struct

        conn.connect()
        sock = conn._sock
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return conn
        timeout = sock.gettimeout()
        if timeout is not None:
            sec = int(timeout)
            tv = struct.pack("ll", sec, int((timeout - sec) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.settimeout(None)
        from redis.exceptions import ResponseError

        return cls(conn, sock, hiredis.Reader(replyError=ResponseError))

    def send_packed_command(self, command, check_health: bool = False) -> None:
        from redis.exceptions import ConnectionError

        try:
            for item in command:
                self.sock.sendall(item)
        except OSError as exc:  # a timeout (EAGAIN), a reset, a closed server
            raise ConnectionError(f"Redis: writing failed: {exc!r}") from exc

    def read_response(self):
        reply = self.reader.gets()
        while reply is False:
            from redis.exceptions import ConnectionError

            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise ConnectionError(f"Redis: reading failed: {exc!r}") from exc
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.reader.feed(data)
            reply = self.reader.gets()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def disconnect(self) -> None:
        self.conn.disconnect()


def _drop(pool, conn) -> None:
    conn.disconnect()
    local = _LOCALS.get(pool)
    if local is not None and getattr(local, "conn", None) is conn:
        local.conn = None


def pack_command(args, encoding: str = "utf-8") -> bytes:
    """One command in RESP, encoded as redis-py encodes arguments (str, bytes, int, float).
    Text and integers (the call path's arguments) are laid out as one string, encoded once."""
    parts = []
    for a in args:
        t = type(a)
        if t is int:
            a = str(a)
        elif t is not str:
            return _pack_any(args, encoding)
        parts.append(f"${len(a)}\r\n{a}\r\n")
    text = "".join(parts)
    if not text.isascii():  # lengths must count the encoded bytes
        return _pack_any(args, encoding)
    return f"*{len(args)}\r\n{text}".encode()


def _pack_any(args, encoding: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        t = type(a)
        if t is str:
            b = a.encode(encoding)
        elif t is int:
            b = b"%d" % a
        elif t is bytes:
            b = a
        elif t is float:
            b = repr(a).encode()
        elif isinstance(a, (bytes, memoryview)):
            b = bytes(a)
        elif isinstance(a, bool) or not isinstance(a, (str, int, float)):
            from redis.exceptions import DataError

            raise DataError(f"Invalid input of type: '{type(a).__name__}'. Convert to a bytes, string, int or "
                            "float first.")
        else:  # subclasses of str, int, float
            b = (str(a) if not isinstance(a, float) else repr(a)).encode(encoding)
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def one_trip(client, own_connection: bool = False):
    """A :class:`OneTrip` over a ``redis.Redis`` client; anything else gets its own
    ``pipeline(transaction=False)`` (fakes, clusters)."""
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a requirement
        return client.pipeline(transaction=False)
    if type(client) is redis.Redis:
        return OneTrip(client, own_connection)
    return client.pipeline(transaction=False)
