"""The rq side of callbacks: the ACD's callback offers become jobs on the ``hotline`` queue and
the job dials through the configured :class:`~call_routing.acd.callbacks.CallbackDialer`.

The routing core (:mod:`call_routing.acd`) imports no rq: every process that builds an ACD
passes :func:`rq_dispatch` as its ``dispatch_callback``."""
from __future__ import annotations

import os

from call_routing.acd.callbacks import RQ_QUEUE, load_dialer, place_callback
from call_routing.acd.core import ACD


def rq_dispatch(acd: ACD, offer) -> None:
    """Start :func:`place_callback_job` for a callback offer on the rq ``hotline`` queue."""
    from rq import Queue

    Queue(RQ_QUEUE, connection=_rq_connection(acd)).enqueue(
        place_callback_job, offer.call_id, offer.n, acd.keys.prefix, job_id=callback_job_id(offer.call_id, offer.n))


def place_callback_job(call_id: str, offer: int, prefix: str = "acd") -> str:
    """The rq job: builds the ACD from REDIS_URL/RULES_PATH and the dialer from the environment."""
    from call_routing.rules import load_rules

    acd = ACD.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                       load_rules(os.environ.get("RULES_PATH") or None), prefix=prefix,
                       dispatch_callback=rq_dispatch)
    try:
        return place_callback(acd, call_id, offer, load_dialer())
    finally:
        acd.redis.close()


def callback_job_id(call_id: str, n: int) -> str:
    """rq job ids allow only letters, digits, ``_`` and ``-``: an Asterisk UNIQUEID
    (``1700000000.42``) has a dot, so anything else is hex-escaped (still one id per offer)."""
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-") else f"_{ord(ch):x}_" for ch in call_id)
    return f"acd-callback-{safe}-{n}"


def _rq_connection(acd):
    """The ACD's Redis without response decoding (rq stores pickled jobs), built once per ACD."""
    conn = getattr(acd, "_rq_connection", None)
    if conn is None:
        from runtime.redis_conn import same_redis

        conn = acd._rq_connection = same_redis(acd.redis, decode_responses=False)
    return conn
