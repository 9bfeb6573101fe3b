"""ACD command line.

    python -m call_routing.acd tick [--every 1.0]     apply the ACD timers forever (overflow,
                                                      ring/wrap-up timeouts, heartbeats, callbacks)
    python -m call_routing.acd kpi [--since ISO] [--until ISO]   KPIs from the queue log as JSON

Both read ``REDIS_URL`` and ``RULES_PATH`` (rules edits are picked up while ticking).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime

from call_routing.rules import CHINA_TZ
from call_routing.rules_store import RulesStore
from intake.callback_jobs import rq_dispatch  # the one import above the core: this command is an entry point
from runtime.redis_conn import redis_client

from .core import ACD


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=CHINA_TZ)).timestamp()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m call_routing.acd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tick = sub.add_parser("tick", help="apply the ACD timers every --every seconds")
    tick.add_argument("--every", type=float, default=1.0)
    kpi = sub.add_parser("kpi", help="print KPIs from the queue log")
    kpi.add_argument("--since")
    kpi.add_argument("--until")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    acd = ACD(redis_client(decode_responses=True),
              RulesStore(os.environ.get("RULES_PATH") or None), dispatch_callback=rq_dispatch)
    if args.command == "kpi":
        print(json.dumps(acd.kpis(_ts(args.since), _ts(args.until)), ensure_ascii=False))
        return 0
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        run_ticks(acd, args.every, lambda: bool(stopping))
    except KeyboardInterrupt:
        pass
    return 0


MAX_BACKOFF_S = 30.0


def run_ticks(acd, every: float, stopping, sleep=time.sleep) -> None:
    """Tick until ``stopping()``. Redis unreachable (restarting, failing over) is waited out,
    retrying with a doubling pause up to :data:`MAX_BACKOFF_S` and one log line per outage,
    never a dead timer process (ring timeouts, overflow and callbacks would stop with it)."""
    import redis

    log = logging.getLogger("hotline.acd")
    backoff = 0.0
    while not stopping():
        started = time.monotonic()
        try:
            done = acd.tick()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not backoff:
                log.error("Redis unreachable (%s): ACD timers paused, retrying", exc)
            backoff = min(MAX_BACKOFF_S, backoff * 2 if backoff else every)
            sleep(backoff)
            continue
        if backoff:
            log.warning("Redis reachable again: ACD timers running")
            backoff = 0.0
        if any(done.values()):
            log.info("tick: %s", done)
        sleep(max(0.0, every - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main())
