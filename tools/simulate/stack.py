"""Setting up the stack: Redis, the rules, the tickets, the product's servers and workers, the seats."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from intake.callback_jobs import rq_dispatch
from tools.simulate.agents import PASSWORD, SimAgent, activate
from tools.simulate.twilio_cloud import SimTwilio
from tools.simulate.twilio_rest import ACCOUNT, TOKEN, SimHttpClient

ROOT = Path(__file__).resolve().parent.parent.parent


def _PooledServer(host, port, app, threads):
    """Werkzeug's server with a bounded pool of request threads (like gunicorn's gthread
    worker): a web process never runs more requests at once than it has threads."""
    from concurrent.futures import ThreadPoolExecutor

    from werkzeug.serving import BaseWSGIServer

    class Server(BaseWSGIServer):
        multithread = True
        request_queue_size = 1024

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="web")

        def _work(self, request, client_address):
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

        def process_request(self, request, client_address):
            self.pool.submit(self._work, request, client_address)

    return Server(host, port, app)


class Servers:
    """The product's parts a run needs: the web app and the FastAGI server (threads, or their own
    processes as deployed), the rq worker, the ticket writer, the ACD ticker."""

    def _start_processes(self) -> None:
        import redis as redis_lib

        from call_routing.acd import ACD
        from runtime.redis_server import free_port
        from call_routing.rules_store import RulesStore

        self.rules_store = RulesStore(self.rules_path)
        self.acd = ACD(redis_lib.Redis.from_url(self.redis_url, decode_responses=True), self.rules_store,
                       dispatch_callback=rq_dispatch)
        self.acd.ring_timeout_s = self.ring_timeout_s + 3
        self.app = None
        self.cloud = SimTwilio(self)
        self.web_port, agi_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        env = dict(os.environ, TWILIO_OFFER_LISTENER="1", SIM_WAIT_TICK_S=str(self.wait_tick_s),
                   PYTHONPATH=str(ROOT), HOTLINE_REDIS_CONNECTIONS="512")
        self._launch({
            "web": [sys.executable, "-m", "gunicorn", "-w", str(self.web_workers), "-k", "gthread", "--threads", "16",
                    "--backlog", "2048", "-b", f"127.0.0.1:{self.web_port}", "--log-level", "error",
                    "tools.simulate:web_app()"],
            "fastagi": [sys.executable, "-m", "agi_scripts.fastagi_server", "--host", "127.0.0.1", "--port",
                        str(agi_port), "--processes", "2", "--workers", str(self.agi_workers), "--timeout", "30",
                        "--log-level", "ERROR"]}, env)
        self.agi_address = ("127.0.0.1", agi_port)
        self.agi_server = self.agi_services = None
        deadline = time.monotonic() + 60
        for port, path in ((self.web_port, "/healthz"), (agi_port, None)):
            while True:
                if time.monotonic() > deadline:
                    raise RuntimeError("the web app or the FastAGI server did not start")
                try:
                    if path:
                        if self.http("GET", path)[0] == 200:
                            break
                    else:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                except OSError:
                    pass
                time.sleep(0.2)
        self._spawn(self.cloud.follow, self.redis_url, self.stop, name="twilio-rest")

    def _launch(self, commands: dict[str, list[str]], env: dict) -> None:
        """Start the product's processes (name -> command); :mod:`.faults` supervises them instead."""
        for command in commands.values():
            self._children.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   cwd=ROOT, env=env))

    def _start_web(self) -> None:
        from app import create_app

        self.cloud = SimTwilio(self)
        self.rest = SimHttpClient(self.cloud)
        self.app = create_app({"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_HTTP_CLIENT": self.rest,
                               "TWILIO_CALLER_ID": "+8612345", "TWILIO_WAIT_TICK_S": self.wait_tick_s,
                               "SECRET_KEY": "sim-" + str(self.seed), "ADMIN_PASSWORD": None})
        for warm in self.app.extensions.get("warm_up", ()):  # as the server does once a worker has started
            warm()
        self.acd = self.app.extensions["acd"]
        self.rules_store = self.app.extensions["rules"]
        self.acd.ring_timeout_s = self.ring_timeout_s + 3  # the ticker is the backstop for lost statuses
        self.server = _PooledServer("127.0.0.1", 0, self.app, self.web_threads)
        self.web_port = self.server.server_port
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        self._spawn(self.server.serve_forever, name="web")
        self._cleanup.append(self.server.shutdown)

    def _start_agi(self) -> None:
        from agi_scripts.fastagi_server import FastAGIServer
        from ivr.services import build

        self.agi_services = build()
        self.agi_services.warm()  # as the FastAGI server does at start
        self.agi_server = FastAGIServer(self.agi_services, "127.0.0.1", 0, workers=self.agi_workers,
                                       command_timeout=30).start()
        self.agi_address = self.agi_server.address[:2]
        self._cleanup.append(lambda: self.agi_server.stop(2))

    def _start_workers(self) -> None:
        import redis as redis_lib
        from rq import Queue, SimpleWorker

        from call_routing.acd.callbacks import RQ_QUEUE

        from intake import jobs
        from intake.tickets import TicketDrafts

        from rq.timeouts import TimerDeathPenalty

        class ThreadWorker(SimpleWorker):
            death_penalty_class = TimerDeathPenalty  # SIGALRM works in the main thread only

            def _install_signal_handlers(self):  # not the main thread
                pass

            def work(self, *args, **kwargs):
                # rq leaves the worker's pub/sub thread running when Redis fails under it (at start,
                # once subscribed; at teardown, which registers the death before unsubscribing): in
                # a fault run it then retried in this process for good, an ERROR line every 2 s in
                # the log of every later test of the process
                try:
                    return super().work(*args, **kwargs)
                finally:
                    thread = getattr(self, "pubsub_thread", None)
                    if thread is not None and thread.is_alive():  # as rq's unsubscribe, less its UNSUBSCRIBE
                        thread.stop()
                        thread.join(timeout=1)
                        try:
                            self.pubsub.close()
                        except Exception:
                            pass

        conn = redis_lib.Redis.from_url(self.redis_url)
        self.rq_queues = [Queue(name, connection=conn) for name in (jobs.SPEECH_QUEUE, RQ_QUEUE, jobs.HANDOFF_QUEUE)]

        def work():
            while not self.stop.is_set():
                try:
                    w = ThreadWorker(self.rq_queues, connection=conn)
                    w.work(burst=True, with_scheduler=False, logging_level="WARNING")
                except Exception as exc:
                    self.stats.error(f"rq worker: {exc!r}")
                self.stop.wait(0.2)

        self.store = jobs.ticket_store(self.db_url)
        self.drafts = TicketDrafts(redis_lib.Redis.from_url(self.redis_url, decode_responses=True))
        if self.store.drafts is None:
            self.store._drafts = self.drafts
        self._spawn(work, name="rq-worker")
        self._spawn(jobs.ticket_writer_loop, self.stop, self.store, self.drafts, name="ticket-writer")

        def ticker():
            while not self.stop.is_set():
                try:
                    self.acd.tick()
                except Exception as exc:
                    self.stats.error(f"tick: {exc!r}")
                self.stop.wait(0.5)

        self._spawn(ticker, name="acd-tick")



class Stack(Servers):
    """Start and stop everything a run needs; the seats the admin configures."""

    def _rules_copy(self) -> str:
        """The shipped rules with compressed queue timings (invitation, announcements, callback offer)."""
        text = (ROOT / "transfer_rules.yaml").read_text("utf-8")
        text = re.sub(r"announce_every_s: *\d+", "announce_every_s: 10", text)
        text = re.sub(r"callback_offer_after_s: *\d+", "callback_offer_after_s: 3", text)
        path = os.path.join(self.dir, "transfer_rules.yaml")
        Path(path).write_text(text, "utf-8")
        shutil.copy(ROOT / "emergency_keywords.yaml", os.path.join(self.dir, "emergency_keywords.yaml"))
        return path

    def _serve_recordings(self) -> None:
        """Twilio's media host, for the simulated calls' recordings: the worker downloads each
        ``RecordingUrl`` from here (the app accepts them from this host only)."""
        import functools
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=self.recordings))
        self.recording_port = server.server_address[1]
        self._spawn(server.serve_forever, name="recordings")
        self._cleanup.append(server.shutdown)

    def recording_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.recording_port}/{os.path.basename(path)}"

    def start(self):
        self.dir = self.workdir or tempfile.mkdtemp(prefix="hotline-sim-")
        if not self.workdir:
            self._cleanup.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.recordings = os.path.join(self.dir, "recordings")
        os.makedirs(self.recordings, exist_ok=True)
        self._serve_recordings()
        if not self.redis_url:
            from runtime.redis_server import EmbeddedRedis

            self.redis_server = EmbeddedRedis().start()
            self.redis_url = self.redis_server.url
            self._cleanup.append(self.redis_server.stop)
        else:
            self.redis_server = None
        self.rules_path = self._rules_copy()
        self.db_url = f"sqlite:///{os.path.join(self.dir, 'tickets.db')}"
        env = {"REDIS_URL": self.redis_url, "DATABASE_URL": self.db_url, "RULES_PATH": self.rules_path,
               "HOTLINE_INVITE_AFTER_S": "1", "HOTLINE_RECORDINGS": self.recordings,
               "HOTLINE_PROMPTS": os.path.join(self.dir, "prompts"), "HOTLINE_WAIT_SESSION_S": "20",
               "HOTLINE_CALLBACK_DIALER": "tools.simulate:callback_dialer", "TWILIO_OFFER_LISTENER": "1",
               "SPEECH_RETRY_S": "1,1", "HANDOFF_RETRY_S": "1",
               "TWILIO_RECORDING_HOSTS": f"http://127.0.0.1:{self.recording_port}"}
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        activate(self)
        from intake import jobs

        jobs.close_resources()  # a fresh store for this database
        if self.processes:
            self._start_processes()
        else:
            self._start_web()
            self._start_agi()
        self._start_workers()

        self._expert_lines = {n for n in self.rules().lines if self._has_expert(n)}
        for i in range(self.agent_count):
            aid = f"sim{i:03d}"
            self.agents[aid] = SimAgent(self, aid, answers=i >= self.lazy_agents)
            self.ensure_agent(aid)
        for agent in self.agents.values():
            if not agent.login():
                raise RuntimeError(f"agent {agent.id} could not sign in")
            self._spawn(agent.loop, self.stop, name=f"agent-{agent.id}")
        return self

    def _has_expert(self, number: str) -> bool:
        from call_routing.router import three_way

        try:
            return bool(three_way(self.rules(), number, "expert").get("skill"))
        except Exception:
            return False

    def rules(self):
        return self.rules_store.current()

    def _spawn(self, target, *args, name=None) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def close(self) -> None:
        self.stop.set()
        try:
            if self.app is not None:
                self.app.extensions["twilio"]["listener"].stop(2)
        except Exception:
            pass
        for t in self._threads:
            if t.name in ("ticket-writer", "rq-worker", "acd-tick"):
                t.join(3)
        for child in self._children:
            child.terminate()
        for child in self._children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for fn in reversed(self._cleanup):
            try:
                fn()
            except Exception:
                pass
        for k, v in getattr(self, "_saved_env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from intake import jobs

        jobs.close_resources()
        activate(None)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def agent_by_endpoint(self, target: str) -> SimAgent | None:
        m = re.search(r"(?:sip:|client:)?(sim\d+)", target or "")
        return self.agents.get(m.group(1)) if m else None

    def ensure_agent(self, agent_id: str) -> None:
        from call_routing.acd import Agent

        try:
            if self.acd.agent(agent_id) is None:
                rules = self.rules()
                expert = int(agent_id[3:]) % 4 == 1  # every fourth seat is also an expert seat
                skills = {s: 50 for s in rules.skills if expert or not rules.skills[s].expert}
                self.acd.save_agent(Agent(agent_id, f"模拟坐席{agent_id}", skills,
                                          endpoints=(self.agents[agent_id].endpoint,)), password=PASSWORD)
        except Exception:
            pass
