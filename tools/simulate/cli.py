"""The command: ``python -m tools.simulate`` (a private run, ``--fault`` runs, ``--live`` into ./run.sh)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from tools.simulate.figures import print_report
from tools.simulate.run import Simulation

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.simulate", description="``python -m tools.simulate`` — synthetic "
                                "calls through the whole product, no phone line needed.")
    p.add_argument("--calls", type=int, default=None, help="how many callers (default 50; --live: 5)")
    p.add_argument("--front", choices=("twilio", "agi", "both"), default=None,
                   help="which front-end the callers use (default both; --live: agi, the product's FastAGI port; "
                        "twilio needs the product run with TWILIO_API_BASE, docs/simulate.md)")
    p.add_argument("--agents", type=int, default=None, help="simulated seats (default calls/10, 4..100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lazy-agents", type=int, default=0, help="seats that never answer")
    p.add_argument("--ramp", type=float, default=None, help="seconds over which the calls arrive")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-call lines")
    p.add_argument("--processes", action="store_true",
                   help="run the web app (gunicorn, 2 workers) and the FastAGI server (2 processes) as their own "
                        "processes, as deployed (default: threads of this process; automatic above 200 calls)")
    p.add_argument("--wait-tick", type=int, default=None, help="seconds between Twilio wait-URL rounds "
                   "(default 1, 2 with --processes)")
    p.add_argument("--live", action="store_true", help="place the calls into the product already running "
                   "(./run.sh: its FastAGI port, Redis and database); seats signed in to the agent console answer "
                   "them on the demo phone (see tools/simulate/live.py)")
    p.add_argument("--gap", type=float, default=3.0, help="--live: seconds between two callers (default 3)")
    p.add_argument("--patience", type=float, default=600.0, help="--live: how long a caller waits for a person")
    p.add_argument("--line", default=None, help="--live: the number every caller dials (default: a mix of lines)")
    from tools.simulate.faults import FaultRun, fault_arg

    p.add_argument("--fault", action="append", type=fault_arg, default=[], metavar="KIND@SECOND[xN]",
                   help="kill-worker, kill-timers, kill-fastagi, kill-redis, slow-http, trickle-agi at SECOND "
                        "(repeatable; runs the product as supervised processes; docs/simulate.md)")
    args = p.parse_args(argv)
    if args.live:
        return _live(args)
    args.calls = args.calls or 50
    args.front = args.front or "both"
    logging.basicConfig(level=logging.ERROR, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    processes = args.processes or args.calls > 200 or bool(args.fault)
    cls, extra = (FaultRun, {"faults": args.fault}) if args.fault else (Simulation, {})
    with cls(args.calls, args.front, args.agents, args.seed, lazy_agents=args.lazy_agents,
             ramp_s=args.ramp, progress=not args.quiet, processes=processes,
             wait_tick_s=args.wait_tick or (2 if processes else 1), **extra) as sim:
        result = sim.run()
        if args.quiet:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print_report(sim, result)
    return 0 if result["lost"] == 0 and result["tickets_missing"] == 0 else 1


def live_simulation(calls: int = 5, agents: int = 0, *, gap_s: float = 3.0, patience_s: float = 600.0,
                    progress: bool = True, seed: int | None = None, front: str = "agi",
                    line: str | None = None) -> Simulation:
    """Patient callers into the running product (:mod:`tools.simulate.live`)."""
    from tools.simulate.live import Live
    from tools.simulate.twilio_live import LiveTwilio

    class LiveSimulation(LiveTwilio, Live, Simulation):
        pass

    # call ids like Asterisk's UNIQUEID (<epoch>.<n>): new ones at every run into the same Redis
    seed = seed if seed is not None else int(time.time()) - 1700000000
    sim = LiveSimulation(calls, front, max(1, agents), seed, emergency_share=0, callback_share=0,
                         abandon_share=0, transfer_share=0, ramp_s=gap_s * calls, progress=progress,
                         call_timeout_s=patience_s)
    sim.agent_count, sim.line = agents, line
    return sim


def _live(args) -> int:
    from tools.simulate.live import LiveError

    logging.basicConfig(level=logging.ERROR, format="%(name)s %(levelname)s %(message)s")
    calls = args.calls or 5
    try:
        with live_simulation(calls, args.agents or 0, gap_s=args.gap, patience_s=args.patience,
                             progress=not args.quiet, front=args.front or "agi", line=args.line) as sim:
            print(f"{calls} simulated callers into the running product, one every {args.gap:g} s; "
                  "answer them in the agent console (演示电话). Ctrl-C stops.", file=sys.stderr, flush=True)
            result = sim.run()
            if sim.fatal:
                raise LiveError(sim.fatal)
    except LiveError as exc:
        print(f"python -m tools.simulate --live: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_report(sim, result)
    return 0 if result["lost"] == 0 and result["tickets_missing"] == 0 else 1
