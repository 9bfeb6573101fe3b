"""Benchmark the Twilio entry webhook ``POST /twilio/voice`` as the product serves it.

    python -m bench.webhooks [--seconds 10] [--connections 100] [--workers N] [--threads 1]
                             [--tickets db|memory]

The target (docs/twilio.md): ≥ 1,000 webhooks/s with p99 ≤ 100 ms at 100 concurrent
connections on a 2-core machine — ten times the busiest real centre's surge. The app runs
under gunicorn with the product's settings (``runtime/serving.py``; ``--workers`` overrides the
worker count), loaded by ``wrk`` (``apt-get install wrk``: C, one thread by default, so the
cores stay with the server) with a new connection per request, as Twilio does. Every request
is a new signed call (its own CallSid, a valid ``X-Twilio-Signature`` for the exact URL),
pre-built before the clock starts from a pool larger than the run can use
(``callsid_repeats`` says if one repeated); ``bench/webhooks_wrk.lua`` only hands out the next
raw request. A warm-up second goes first.

Uses ``REDIS_URL``, else starts its own Redis; ``DATABASE_URL``, else a throw-away SQLite file.
Last line: one JSON object (``req_per_s``, ``p50_ms``, ``p99_ms``, ``errors``, ``target_met``, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().with_name("webhooks_wrk.lua")
TOKEN = "bench-auth-token"
MAX_RATE = 9000  # req/s the pool is sized for (no CallSid may repeat within a run)


def hotline_app():
    import logging

    logging.basicConfig(level=logging.ERROR)
    from app import create_app

    if os.environ.get("BENCH_TICKETS") == "memory":  # isolates the front-end from the ticket database
        from ivr.flow import MemoryTickets

        return create_app({"HOTLINE_SERVICES": {"tickets": MemoryTickets()}})
    return create_app()


def signed_requests(host: str, port: int, n: int, prefix: str) -> list[bytes]:
    """``n`` raw HTTP requests to ``/twilio/voice``, each a new call signed for the exact URL."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TOKEN)
    url = f"http://{host}:{port}/twilio/voice"
    numbers = ["12345", "12345", "12345", "+8612301", "12348", "12333", "12360", "12315"]
    head = b"POST /twilio/voice HTTP/1.1\r\nHost: %s:%d\r\n" % (host.encode(), port)
    out = []
    for i in range(n):
        params = {"CallSid": f"CA{prefix}{i:030d}"[:34], "AccountSid": "AC" + "0" * 32,
                  "To": numbers[i % len(numbers)], "From": f"+86138{i % 100000000:08d}", "CallStatus": "ringing",
                  "Direction": "inbound"}
        body = urlencode(params).encode()
        sig = validator.compute_signature(url, params)
        out.append(head + b"X-Twilio-Signature: %s\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (sig.encode(), len(body), body))
    return out


# -- generators ------------------------------------------------------------------------------
def _wrk(port, requests, connections, seconds, threads, workdir) -> dict:
    """wrk with the pool split over its threads (one file each); figures from the Lua ``done``."""
    threads = max(1, min(threads, connections))
    base = Path(workdir) / f"pool-{port}-{len(requests)}-{time.monotonic_ns()}"
    for t in range(threads):
        Path(f"{base}.{t}").write_bytes(b"".join(r + b"\0" for r in requests[t::threads]))
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(LUA), f"http://127.0.0.1:{port}/twilio/voice", "--", str(base)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    for t in range(threads):
        Path(f"{base}.{t}").unlink(missing_ok=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    w = json.loads(line[len("WRK_JSON "):])
    errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["status_errors"] + w["timeouts"]
    ok = max(0, w["requests"] - w["status_errors"])
    return {"req_per_s": round(ok / (w["duration_us"] / 1e6), 1), "p50_ms": round(w["p50_us"] / 1000, 2),
            "p99_ms": round(w["p99_us"] / 1000, 2), "max_ms": round(w["max_us"] / 1000, 2), "errors": errors,
            "requests": w["requests"], "callsid_repeats": max(0, w["sent"] - len(requests))}


# -- servers ---------------------------------------------------------------------------------
def _serve(target: str, port: int, workers: int, env: dict) -> subprocess.Popen:
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    # the product's gunicorn settings (runtime/serving.py: sync workers, backlog, GC freeze after
    # start-up); only the worker count is the bench's argument
    proc = subprocess.Popen([gunicorn, "-c", "python:runtime.serving", "-w", str(workers), "-b", f"127.0.0.1:{port}",
                             "--log-level", "warning", target], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn {target} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(1.0)  # let every worker boot
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gunicorn {target} did not start")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn workers (default: the product's, runtime/serving.py)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the server gets the cores)")
    parser.add_argument("--tickets", choices=("db", "memory"), default="db",
                        help="db: tickets opened in DATABASE_URL on the voice path (the product); "
                             "memory: in-process stand-in, to measure the front-end alone")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    from runtime import serving
    from runtime.redis_server import EmbeddedRedis, free_port

    workers = args.workers or serving.default_workers()
    load_before = round(os.getloadavg()[0], 2)  # what else ran on the machine
    embedded, url = None, os.environ.get("REDIS_URL")
    workdir = tempfile.mkdtemp(prefix="bench-webhooks-")
    proc = None
    try:
        if not url:
            embedded = EmbeddedRedis().start()
            url = embedded.url
        env = {**os.environ, "REDIS_URL": url, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
               "PYTHONPATH": str(ROOT), "BENCH_TICKETS": args.tickets,
               "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{workdir}/bench.db",
               "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-secret"}
        # create the ticket and console tables once, before the workers race to do it
        subprocess.run([sys.executable, "-c", "from bench.webhooks import hotline_app; hotline_app()"], cwd=ROOT,
                       env=env, check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        proc = _serve("bench.webhooks:hotline_app()", port, workers, env)
        stamp = int(time.time())
        _wrk(port, signed_requests("127.0.0.1", port, 3000, f"w{stamp}"), args.connections, 1, args.threads,
             workdir)  # warm-up: every worker, every code path
        pool = signed_requests("127.0.0.1", port, int(args.seconds * MAX_RATE) + 1000, f"m{stamp}")
        fig = _wrk(port, pool, args.connections, args.seconds, args.threads, workdir)
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(10)
        if embedded:
            embedded.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"req_per_s": fig["req_per_s"], "p50_ms": fig["p50_ms"], "p99_ms": fig["p99_ms"],
              "max_ms": fig["max_ms"], "errors": fig["errors"], "callsid_repeats": fig["callsid_repeats"],
              "target_met": fig["req_per_s"] >= 1000 and fig["p99_ms"] <= 100 and fig["errors"] == 0,
              "generator": "wrk", "connections": args.connections, "workers": workers,
              "worker_class": serving.worker_class, "seconds": args.seconds, "tickets": args.tickets,
              "load_avg_1m_before": load_before, "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
