"""``python -m intake.worker`` — the rq worker for speech → ticket and hand-off jobs.

Before taking a job it loads everything a job needs once: the rules and pre-fill data, the
ticket store, and the Vosk model when ``VOSK_MODEL_PATH`` is set (about 1.5 s and 500 MB —
never per job). Jobs run in the worker's own process (``SimpleWorker``) so the model stays
loaded; ``--fork`` forks a work horse per job instead.

A thread beside the jobs deletes full-call recordings past their keep date every 10 minutes
(``hotline.recording.keep_days``; ``--burst``: once, first); the ticket says 录音已过保存期.

A worker that was killed (SIGKILL, OOM, power) leaves its job "started" in Redis. On start,
and at every maintenance pass, this worker re-queues jobs whose worker is gone — a dead
process on this host, or a worker whose heartbeat expired — using rq's own abandoned-job
handling, so the job's retries and failure callback apply.

SIGTERM or SIGINT: finish the current job, then stop (a second signal stops at once).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.registry import StartedJobRegistry

from intake import jobs
from runtime.redis_conn import redis_client

log = logging.getLogger("hotline.worker")
MAINTENANCE_INTERVAL_S = 30


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_gone(connection: Redis, worker_name: str) -> bool:
    if not worker_name:
        return False
    data = connection.hgetall(Worker.redis_worker_namespace_prefix + worker_name)
    if not data:
        return True  # its heartbeat key expired
    host = (data.get(b"hostname") or b"").decode()
    pid = int(data.get(b"pid") or 0)
    return host == socket.gethostname() and pid > 0 and not _pid_alive(pid)


def recover_abandoned_jobs(connection: Redis, queues: list[Queue], me: str | None = None) -> list[str]:
    """Re-queue (or fail, when out of retries) jobs started by workers that are gone."""
    recovered = []
    for queue in queues:
        registry = StartedJobRegistry(queue=queue)
        for entry in connection.zrange(registry.key, 0, -1):
            composite = entry.decode()
            job_id, _, execution_id = composite.partition(":")
            try:
                execution = Execution.fetch(execution_id, job_id, connection)
            except ValueError:
                continue  # execution expired: rq's own cleanup will see the entry expire
            if execution.worker_name == me or not _worker_gone(connection, execution.worker_name):
                continue
            connection.zadd(registry.key, {composite: 0}, xx=True)
            recovered.append(job_id)
            log.warning("job %s was running on worker %s, which is gone: handing it back to rq", job_id,
                        execution.worker_name)
        if recovered:
            registry.cleanup(timestamp=1)  # only our entries have a score this low
    return recovered


class _Recovering:
    def run_maintenance_tasks(self):
        recover_abandoned_jobs(self.connection, self.queues, self.name)
        super().run_maintenance_tasks()


class HotlineWorker(_Recovering, SimpleWorker):
    pass


class ForkingHotlineWorker(_Recovering, Worker):
    pass


def preload() -> None:
    """Load the rules, the ticket store and (if configured) the speech model; start learning the
    pre-fill. The worker listens at once: callbacks and hand-offs never wait for the learning (a
    minute on a new machine, when no cached model is there); transcriptions wait for it."""
    jobs.prefill_classifier().warm_in_background()
    jobs.ticket_store()
    if os.environ.get("VOSK_MODEL_PATH"):
        try:
            from intake import speech
        except ImportError as exc:
            log.warning("VOSK_MODEL_PATH is set but speech recognition is not installed (%s): "
                        "recordings will be flagged for manual entry", exc)
            return
        if speech.model_available():
            log.info("speech model loaded from %s", os.environ["VOSK_MODEL_PATH"])
        else:
            log.warning("speech model at %s could not be loaded: recordings will be flagged for manual entry",
                        os.environ["VOSK_MODEL_PATH"])
    else:
        log.warning("VOSK_MODEL_PATH is not set: no transcripts, recordings will be flagged for manual entry")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intake.worker", description=__doc__.split("\n")[0])
    from call_routing.acd.callbacks import RQ_QUEUE as CALLBACK_QUEUE

    # speech first (the ticket must be ready when the agent picks up), then callbacks, then hand-offs
    parser.add_argument("queues", nargs="*", default=[jobs.SPEECH_QUEUE, CALLBACK_QUEUE, jobs.HANDOFF_QUEUE])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    parser.add_argument("--fork", action="store_true", help="run each job in a forked work horse")
    parser.add_argument("--name", help="worker name (default: rq's)")
    parser.add_argument("--no-scheduler", action="store_true", help="do not run retries' backoff scheduler")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    connection = redis_client(args.url)  # REDIS_SENTINELS: the primary, followed across failovers
    queues = [Queue(name, connection=connection) for name in args.queues]
    try:
        preload()
    except Exception as exc:  # bad rules or database: say so, do not take jobs
        log.error("cannot start: %s", exc)
        return 1
    cls = ForkingHotlineWorker if args.fork else HotlineWorker
    worker = cls(queues, connection=connection, name=args.name, maintenance_interval=MAINTENANCE_INTERVAL_S)
    recovered = recover_abandoned_jobs(connection, queues, worker.name)
    if recovered:
        log.info("re-queued %d job(s) left by dead workers", len(recovered))
    # the ticket writer: rows for the tickets the call path numbered and drafted in Redis
    import threading

    from intake.tickets import TicketDrafts

    drafts = TicketDrafts(redis_client(args.url, decode_responses=True))
    store = jobs.ticket_store()
    if store.drafts is None:
        store._drafts = drafts
    jobs.requeue_unwritten(drafts)
    stop = threading.Event()
    writer = threading.Thread(target=jobs.ticket_writer_loop, args=(stop, store, drafts), name="ticket-writer",
                              daemon=True)
    sweeper = threading.Thread(target=jobs.recording_sweeper_loop, args=(stop,), name="recording-sweeper", daemon=True)
    if args.burst:
        jobs.write_pending_tickets(store, drafts)
        jobs.sweep_call_recordings()
    else:
        writer.start()
        sweeper.start()
    try:
        worker.work(burst=args.burst, with_scheduler=not args.no_scheduler, logging_level=args.log_level)
    finally:
        stop.set()
        if writer.is_alive():
            writer.join(3)
        if args.burst:
            jobs.write_pending_tickets(store, drafts)
        drafts.r.connection_pool.disconnect()
        jobs.close_resources()
        connection.connection_pool.disconnect()
        log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
