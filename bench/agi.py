"""Benchmark the Asterisk front-end: per-call cost of the AGI script vs the FastAGI server.

    python -m bench.agi [--agi-calls 10] [--seconds 3] [--clients 8]

Both paths run the same route_call handler on the same Redis ACD and SQLite tickets, with a
fake Asterisk answering every command at once. AGI: one process spawned per call, as
Asterisk's AGI() does. FastAGI: one server process, sequential calls for the per-call cost,
then ``--clients`` concurrent connections for calls routed per second. The call mix covers
12345, merged, dual and sub-center numbers. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ["12345", "12345", "12345", "12301", "12348", "12366", "12333", "96119"]


def env_bytes(i: int, network: bool) -> bytes:
    env = {"agi_request": "agi://127.0.0.1/route_call" if network else str(ROOT / "agi_scripts/route_call.py"),
           "agi_channel": f"PJSIP/carrier-{i:08x}", "agi_language": "zh", "agi_type": "PJSIP",
           "agi_uniqueid": f"bench-{os.getpid()}-{i}-{network}", "agi_callerid": f"1380013{i % 10000:04d}",
           "agi_dnid": NUMBERS[i % len(NUMBERS)], "agi_extension": NUMBERS[i % len(NUMBERS)],
           "agi_context": "hotline-in", "agi_priority": "2", "agi_enhanced": "0.0"}
    if network:
        env.update(agi_network="yes", agi_network_script="route_call")
    return ("".join(f"{k}: {v}\n" for k, v in env.items()) + "\n").encode()


def answer(line: bytes) -> bytes:
    if line.startswith(b"STREAM FILE"):
        return b"200 result=0 endpos=8000\n"
    return b"200 result=1\n"


def converse(read, write, i: int, network: bool) -> int:
    """Play Asterisk for one session; returns how many commands the script sent."""
    write(env_bytes(i, network))
    buf, n = b"", 0
    while True:
        chunk = read()
        if not chunk:
            return n
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                n += 1
                write(answer(line))


def agi_call(i: int, env: dict) -> int:
    proc = subprocess.Popen([sys.executable, str(ROOT / "agi_scripts/route_call.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd="/")
    fd_out, fd_in = proc.stdout.fileno(), proc.stdin.fileno()

    def write(data):
        try:
            os.write(fd_in, data)
        except BrokenPipeError:
            pass
    n = converse(lambda: os.read(fd_out, 4096), write, i, False)
    proc.stdin.close()
    proc.stdout.close()
    proc.wait()
    return n


def fastagi_call(address, i: int) -> int:
    with socket.create_connection(address) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return converse(lambda: s.recv(4096), s.sendall, i, True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_fastagi(env: dict, args) -> tuple[float, list, float]:
    """(mean ms per sequential call, samples, calls/s with concurrent clients) for one server run."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "agi_scripts.fastagi_server", "--port", str(port),
                               "--log-level", "ERROR", "--processes", str(args.processes)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE)
    try:
        server.stdout.readline()  # "listening on …"
        address = ("127.0.0.1", port)
        base = int(time.time() * 1000) % 10_000_000 * 1000
        for i in range(200):
            fastagi_call(address, base + i)
        samples = []
        for i in range(300):
            t1 = time.perf_counter()
            fastagi_call(address, base + 1000 + i)
            samples.append((time.perf_counter() - t1) * 1000)
        done = [0] * args.clients
        stop = time.perf_counter() + args.seconds

        def client(c):
            i = base + 100_000 * (c + 1)
            while time.perf_counter() < stop:
                fastagi_call(address, i)
                i += 1
                done[c] += 1
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        t2 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statistics.mean(samples), samples, sum(done) / (time.perf_counter() - t2)
    finally:
        server.terminate()
        server.wait(30)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agi-calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2, help="FastAGI server processes (default: one per core)")
    args = parser.parse_args(argv)

    from runtime.redis_server import EmbeddedRedis

    embedded = None
    url = os.environ.get("REDIS_URL")
    if not url:
        embedded = EmbeddedRedis().start()
        url = embedded.url
    tmp = tempfile.mkdtemp(prefix="bench-agi-")
    env = dict(os.environ, REDIS_URL=url, DATABASE_URL=os.environ.get("DATABASE_URL") or f"sqlite:///{tmp}/tickets.db",
               HOTLINE_PROMPTS=f"{tmp}/prompts", HOTLINE_RECORDINGS=f"{tmp}/rec", PYTHONPATH=str(ROOT),
               HOTLINE_LOG_LEVEL="ERROR")
    agi_call(0, env)  # warm the page cache and the ticket tables
    t0 = time.perf_counter()
    commands = [agi_call(i, env) for i in range(1, args.agi_calls + 1)]
    agi_ms = (time.perf_counter() - t0) * 1000 / args.agi_calls
    assert min(commands) >= 6, f"route_call sent too few commands: {commands}"
    try:
        full = measure_fastagi(env, args)
        routing = measure_fastagi(dict(env, HOTLINE_TICKETS="memory"), args)
    finally:
        if embedded:
            embedded.stop()
    fast_ms, samples, rate = full
    result = {"agi_ms_per_call": round(agi_ms, 1), "fastagi_ms_per_call": round(fast_ms, 2),
              "ratio": round(agi_ms / fast_ms, 1), "fastagi_calls_per_s": round(rate),
              "fastagi_p99_ms": round(sorted(samples)[int(len(samples) * 0.99) - 1], 2),
              "routing_only_ms_per_call": round(routing[0], 2), "routing_only_calls_per_s": round(routing[2]),
              "commands_per_call": round(statistics.mean(commands), 1), "clients": args.clients,
              "agi_calls": args.agi_calls}
    print(f"AGI script: {result['agi_ms_per_call']} ms/call (process spawn); FastAGI: "
          f"{result['fastagi_ms_per_call']} ms/call, {result['ratio']}x cheaper, "
          f"{result['fastagi_calls_per_s']} calls/s with {args.clients} concurrent clients; routing without "
          f"the ticket insert: {result['routing_only_ms_per_call']} ms/call, {result['routing_only_calls_per_s']} calls/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
