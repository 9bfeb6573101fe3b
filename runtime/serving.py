"""How the web app is served: the gunicorn settings ``python app.py`` uses, shared with
``bench.webhooks`` so that the benchmark measures the product as it runs.

    gunicorn -c python:runtime.serving 'app:create_app()'

Figures behind each setting: docs/twilio.md (Benchmark).
"""
from __future__ import annotations

import gc
import os


def default_workers() -> int:
    """``WEB_WORKERS``, else one sync worker per core plus one. Every webhook waits on Redis for
    part of its time (a round trip per request); the extra worker runs in those gaps. On the
    2-core machine of the benchmark, 3 workers served ≈ 12 % more calls per second than 2, and 5
    fewer than 2 (more processes contending for two cores)."""
    return int(os.environ.get("WEB_WORKERS") or (os.cpu_count() or 1) + 1)


workers = default_workers()
worker_class = "sync"  # gunicorn's plain worker: ≥ 1,000 webhooks/s, p99 ≤ 100 ms needs nothing more (docs/twilio.md)
backlog = 2048


def post_worker_init(worker) -> None:
    """Take what the worker built at start-up (Flask, the rules, Twilio's library: ≈ 95,000
    objects, all living as long as the process) out of the cyclic garbage collector. A full
    collection over them took ≈ 54 ms — a stall every caller queued on that worker waited
    through, once every few thousand requests (it set the p99 of ``/twilio/voice``); frozen,
    a full collection takes well under a millisecond. Objects made later are collected as usual.

    Then the app's warm-ups (``app.extensions["warm_up"]``, e.g. the pre-fill classifier: ≈ 0.5 s
    to load the machine's cached model, over a minute to learn it on a new machine) run in a background thread, so that the first caller whose words
    are heard does not wait for them while holding a worker."""
    gc.freeze()
    warm_ups = list(getattr(getattr(worker, "wsgi", None), "extensions", {}).get("warm_up", ()))
    if warm_ups:
        import threading

        threading.Thread(target=_run, args=(warm_ups,), name="warm-up", daemon=True).start()


def _run(warm_ups) -> None:
    import logging

    for warm in warm_ups:
        try:
            warm()
        except Exception:  # a warm-up is an optimisation: the first request builds it instead
            logging.getLogger("hotline.serving").exception("warm-up %r failed", warm)
