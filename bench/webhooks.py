"""Benchmark the Twilio entry webhook under gunicorn against a bare Flask endpoint.

    python -m bench.webhooks [--seconds 12] [--rounds 12] [--connections 100] [--workers 2]
                             [--tickets db|memory] [--generator auto|wrk|python] [--threads 1]

Both servers run in this run with the same gunicorn settings — the product's (``runtime/serving.py``;
``--workers`` overrides the worker count) — on this machine's cores, measured in alternating rounds (bare, app, bare, app, …: load
from anything else on the machine falls on both alike), loaded by the same generator with
``--connections`` concurrent connections and a new connection per request (as Twilio does).

The generator is ``wrk`` when it is on PATH (C, one thread by default: it leaves the cores to
the server), else a Python asyncio generator (which itself needs about a core: the figures then
mostly measure it). Every request is pre-built before the clock starts: each ``/twilio/voice``
request is a new signed call (its own CallSid, a valid ``X-Twilio-Signature`` for the exact URL),
from a pool larger than the run can use, so no CallSid repeats (``callsid_repeats`` says if one
did); wrk's Lua script (``bench/webhooks_wrk.lua``) only hands out the next raw request.

Besides req/s and latency it reports the server side's CPU per request (gunicorn workers, plus
Redis when the bench started it; ``cpu_ratio`` = bare's / the app's): on a machine shared with
other work, throughput swings with their load, CPU per request much less.

Uses ``REDIS_URL``, else starts its own Redis; ``DATABASE_URL``, else a throw-away SQLite file.
Last line: one JSON object (``req_per_s``, ``bare_req_per_s``, ``ratio``, ``p99_ms``, ``generator``, ...).
"""
from __future__ import annotations

import argparse
import asyncio
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
BARE_TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Start><Recording name="intake" track="inbound" />'
              '</Start><Enqueue waitUrl="wait">hold-general</Enqueue></Response>')
MAX_RATE = 9000  # req/s the pool is sized for (no CallSid may repeat within a run)


def bare_app():
    """The baseline: Flask returning fixed TwiML, nothing else."""
    from flask import Flask, Response

    app = Flask("bare")

    @app.post("/twilio/voice")
    def voice():
        return Response(BARE_TWIML, mimetype="application/xml")

    return app


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


async def _py_load(host, port, requests, connections, seconds):
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    it = iter(requests)

    async def worker():
        nonlocal errors
        while time.perf_counter() < deadline:
            req = next(it, None)
            if req is None:
                return
            t0 = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(req)
                data = await reader.read()
                writer.close()
            except OSError:
                errors += 1
                continue
            if not data.startswith(b"HTTP/1.1 200") and not data.startswith(b"HTTP/1.0 200"):
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, errors, time.perf_counter() - start


def _python(port, requests, connections, seconds) -> dict:
    lat, errors, elapsed = asyncio.run(_py_load("127.0.0.1", port, requests, connections, seconds))
    lat.sort()
    p = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None  # noqa: E731
    return {"req_per_s": round(len(lat) / elapsed, 1), "p50_ms": p(0.50), "p99_ms": p(0.99),
            "max_ms": p(1.0), "errors": errors, "requests": len(lat) + errors, "callsid_repeats": 0}


# -- servers ---------------------------------------------------------------------------------
def _serve(target: str, port: int, workers: int, env: dict) -> subprocess.Popen:
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    # the product's gunicorn settings (runtime/serving.py: sync workers, backlog, GC freeze after
    # start-up) for both servers; only the worker count is the bench's argument
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


def _load(port, reqs, args, seconds, generator, workdir) -> dict:
    if generator == "wrk":
        return _wrk(port, reqs, args.connections, seconds, args.threads, workdir)
    return _python(port, reqs, args.connections, seconds)


def _combine(runs: list[dict]) -> dict:
    """Rounds of one server: throughput over all of them, the median round's percentiles."""
    total = sum(r["requests"] for r in runs)
    seconds = sum(r["requests"] / r["req_per_s"] for r in runs if r["req_per_s"])
    mid = sorted(runs, key=lambda r: r["p99_ms"] or 0)[len(runs) // 2]
    return {"req_per_s": round(total / seconds, 1) if seconds else 0.0, "p50_ms": mid["p50_ms"],
            "p99_ms": mid["p99_ms"], "max_ms": max(r["max_ms"] or 0 for r in runs),
            "errors": sum(r["errors"] for r in runs), "requests": total,
            "callsid_repeats": sum(r["callsid_repeats"] for r in runs), "rounds": runs}


def _cpu_s(pids) -> float | None:
    """CPU seconds (user + system) used so far by ``pids`` (Linux /proc), None elsewhere."""
    total = 0.0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


def _workers(proc) -> list[int]:
    """The gunicorn master's worker processes."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _measure_both(env, args, generator, workdir, redis_pid=None) -> tuple[dict, dict]:
    """Both servers up at once (an idle sync worker costs nothing), measured in alternating
    rounds — bare, app, bare, app, … — so that load from anything else on the machine falls on
    both alike. Every round of the app gets CallSids never used before."""
    from runtime.redis_server import free_port

    ports = {"bare": free_port(), "app": free_port()}
    procs = {}
    stamp = int(time.time())
    try:
        procs["bare"] = _serve("bench.webhooks:bare_app()", ports["bare"], args.workers, env)
        procs["app"] = _serve("bench.webhooks:hotline_app()", ports["app"], args.workers, env)
        per_round = max(1, round(args.seconds / args.rounds))
        runs: dict = {"bare": [], "app": []}
        for name in ("bare", "app"):  # warm-up: every worker, every code path
            _load(ports[name], signed_requests("127.0.0.1", ports[name], 3000, f"w{name}{stamp}"), args, 1,
                  generator, workdir)
        # CPU the server side spends per request (its workers, and Redis when the bench runs it):
        # unlike req/s, hardly moved by whatever else the machine is running
        pids = {name: _workers(procs[name]) + ([redis_pid] if redis_pid else []) for name in procs}
        cpu = {"bare": 0.0, "app": 0.0}
        for i in range(args.rounds):
            for name in ("bare", "app"):
                reqs = signed_requests("127.0.0.1", ports[name], per_round * MAX_RATE + 1000, f"{name[0]}{i}r{stamp}")
                before = _cpu_s(pids[name])
                runs[name].append(_load(ports[name], reqs, args, per_round, generator, workdir))
                after = _cpu_s(pids[name])
                cpu[name] = None if None in (before, after, cpu[name]) else cpu[name] + after - before
        out = {name: _combine(runs[name]) for name in runs}
        for name in out:
            n = out[name]["requests"]
            out[name]["cpu_us_per_req"] = round(cpu[name] / n * 1e6) if cpu[name] is not None and n else None
        return out["bare"], out["app"]
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, 15)
        for proc in procs.values():
            proc.wait(10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per server, over all rounds")
    # short alternating rounds: a shared VM's speed drifts over seconds, and 1-s rounds spread
    # that drift over both servers alike (3 rounds of 2 s let it fall on one: docs/twilio.md)
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (bare, app, bare, app, ...)")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn workers for both servers (default: the product's, runtime/serving.py)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the server gets the cores)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="auto: wrk when installed (apt-get install wrk), else the Python generator")
    parser.add_argument("--tickets", choices=("db", "memory"), default="db",
                        help="db: tickets opened in DATABASE_URL on the voice path (the product); "
                             "memory: in-process stand-in, to measure the front-end alone")
    args = parser.parse_args(argv)
    from runtime import serving  # the product's gunicorn settings, for both servers

    if args.workers is None:
        args.workers = serving.default_workers()
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    if generator == "python":
        print("wrk not found: using the Python generator, which takes about a core itself "
              "(apt-get install wrk for honest figures)", file=sys.stderr)

    load_before = round(os.getloadavg()[0], 2)  # what else ran on the machine (the bench adds ~3 itself)
    embedded = None
    url = os.environ.get("REDIS_URL")
    workdir = tempfile.mkdtemp(prefix="bench-webhooks-")
    try:
        if not url:
            from runtime.redis_server import EmbeddedRedis

            embedded = EmbeddedRedis().start()
            url = embedded.url
        env = {**os.environ, "REDIS_URL": url, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
               "PYTHONPATH": str(ROOT), "BENCH_TICKETS": args.tickets,
               "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{workdir}/bench.db",
               "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-secret"}
        # create the ticket and console tables once, before two workers race to do it
        subprocess.run([sys.executable, "-c", "from bench.webhooks import hotline_app; hotline_app()"], cwd=ROOT,
                       env=env, check=True, stdout=subprocess.DEVNULL)
        bare, hot = _measure_both(env, args, generator, workdir,
                                  embedded.process.pid if embedded and embedded.process else None)
    finally:
        if embedded:
            embedded.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"req_per_s": hot["req_per_s"], "bare_req_per_s": bare["req_per_s"],
              "ratio": round(hot["req_per_s"] / bare["req_per_s"], 3) if bare["req_per_s"] else None,
              "p99_ms": hot["p99_ms"], "p50_ms": hot["p50_ms"], "bare_p99_ms": bare["p99_ms"],
              "bare_p50_ms": bare["p50_ms"], "errors": hot["errors"], "bare_errors": bare["errors"],
              "callsid_repeats": hot["callsid_repeats"], "generator": generator,
              "cpu_us_per_req": hot["cpu_us_per_req"], "bare_cpu_us_per_req": bare["cpu_us_per_req"],
              "cpu_ratio": (round(bare["cpu_us_per_req"] / hot["cpu_us_per_req"], 3)
                            if hot["cpu_us_per_req"] and bare["cpu_us_per_req"] else None),
              "connections": args.connections, "workers": args.workers, "worker_class": serving.worker_class,
              "seconds": args.seconds, "rounds": args.rounds, "tickets": args.tickets,
              "load_avg_1m_before": load_before, "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    for name, fig in (("bare Flask", bare), ("/twilio/voice", hot)):
        rounds = fig.pop("rounds")
        print(f"{name}: {fig}", file=sys.stderr)
        for i, r in enumerate(rounds, 1):
            print(f"  round {i}: {r['req_per_s']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"errors {r['errors']}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
