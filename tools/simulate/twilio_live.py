"""Live mode's Twilio (``python -m tools.simulate --live --front twilio|both``): the simulated
Twilio of a private run (:class:`~tools.simulate.twilio_cloud.SimTwilio`) playing Twilio for the
product that is already running.

- Webhooks are signed with the product's ``TWILIO_AUTH_TOKEN`` (this shell's environment must be
  the one the product runs with) and posted to its web address.
- The product's REST requests (agent legs, the caller moved into the conference, redirects,
  transfers) reach this process because the product runs with ``TWILIO_API_BASE`` naming it
  (loopback http; :func:`ivr.twilio.calls.api_http_client`): :class:`RestServer` answers them on
  that address as Twilio would, checking the account and token they carry.
- An agent leg to a seat the simulator does not play rings that seat's demo phone
  (:mod:`consoles.demo_phone`); 接听 answers the leg as a simulated seat's is answered, 挂断 ends
  it, 转接 is the product's own cold transfer (its REST requests come back here).
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from consoles.demo_phone import DemoPhone
from tools.simulate.live import CONVERSATION, LiveError
from tools.simulate.twilio_cloud import SimTwilio
from tools.simulate.twilio_rest import SimHttpClient, conference_sid

SETTINGS = ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_API_BASE")
OFFERED_WITHOUT_REST_S = 5.0  # a call offered to a seat this long with no REST request: the product is not pointed here


def settings() -> tuple[str, str, str, tuple[str, int]]:
    """token, account, API base and the address to serve it on, from this shell's environment."""
    from ivr.twilio.calls import check_api_base

    missing = [k for k in SETTINGS if not os.environ.get(k)]
    if missing:
        raise LiveError(f"--front twilio needs {', '.join(missing)} set here as the product runs with them "
                        "(e.g. TWILIO_API_BASE=http://127.0.0.1:8010 for both; docs/simulate.md)")
    try:
        api_base = check_api_base(os.environ["TWILIO_API_BASE"])
    except ValueError as exc:
        raise LiveError(str(exc)) from None
    parts = urlsplit(api_base)
    if parts.scheme != "http" or parts.path:
        raise LiveError(f"TWILIO_API_BASE={api_base}: the simulator serves its Twilio API at http://127.0.0.1:PORT "
                        "(no path); start the product and the simulator with such an address")
    return (os.environ["TWILIO_AUTH_TOKEN"], os.environ["TWILIO_ACCOUNT_SID"], api_base,
            (parts.hostname, parts.port or 80))


class RestServer:
    """Twilio's REST API over HTTP for the running product: :class:`SimHttpClient`'s answers."""

    def __init__(self, cloud: SimTwilio, address: tuple[str, int], account: str, token: str, recordings: str):
        client = SimHttpClient(cloud)
        expected = "Basic " + base64.b64encode(f"{account}:{token}".encode()).decode()
        owner = self
        self.requests = 0
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.headers.get("Authorization") != expected:
                    owner.refused += 1
                    return self._reply(401, json.dumps({"code": 20003, "status": 401,
                                                        "message": "Authenticate: not this account's SID and token"}))
                parts = urlsplit(self.path)
                if self.command == "GET" and "/Recordings/" in parts.path:  # media, as on api.twilio.com
                    return self._recording(os.path.join(recordings, os.path.basename(parts.path)))
                owner.requests += 1
                resp = client.request(self.command, self.path, params=dict(parse_qsl(parts.query)),
                                      data=dict(parse_qsl(body)))
                self._reply(resp.status_code, resp.text or "")

            def _recording(self, path: str):
                if not path.endswith(".wav") or not os.path.isfile(path):
                    return self._reply(404, json.dumps({"code": 20404, "status": 404, "message": "not found"}))
                with open(path, "rb") as f:
                    self._reply(200, f.read(), "audio/x-wav")

            def _reply(self, status: int, body: str | bytes, kind: str = "application/json"):
                raw = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args):
                pass

        try:
            self.server = ThreadingHTTPServer(address, Handler)
        except OSError as exc:
            raise LiveError(f"cannot serve the simulated Twilio API on {address[0]}:{address[1]} (TWILIO_API_BASE): "
                            f"{exc.strerror} — another simulator running?") from None
        self.server.daemon_threads = True


class LiveTwilio:
    """Mixed in before :class:`~tools.simulate.live.Live`: its Twilio callers (``--front twilio|both``)."""

    def start(self):
        twilio = settings() if self.front in ("twilio", "both") else None  # what is missing, before anything starts
        super().start()
        if twilio:
            try:
                start(self, *twilio)
            except BaseException:
                self.close()
                raise
        return self

    def person_leg(self, cloud: SimTwilio, sid: str, data: dict, cancelled: threading.Event) -> None:
        demo_leg(cloud, sid, data, cancelled)

    def webhook_refused(self, path: str, status: int, raw: bytes) -> None:
        refused(self, path, status, raw)


def start(sim, token: str, account: str, api_base: str, address: tuple[str, int]) -> None:
    """:meth:`LiveTwilio.start`: the simulated Twilio API on ``TWILIO_API_BASE``, and its watch."""
    sim.cloud = SimTwilio(sim, token, account)
    rest = sim.twilio_rest = RestServer(sim.cloud, address, account, token, sim.recordings)
    # what the caller said while waiting, as Twilio keeps it: on the API's host (the product
    # fetches it from there with its SID and token: TWILIO_RECORDING_HOSTS includes that host)
    sim.recording_url = lambda path: (f"{api_base}/2010-04-01/Accounts/{account}/Recordings/"
                                      + os.path.basename(path).removesuffix(".wav"))
    sim._spawn(rest.server.serve_forever, name="twilio-rest")
    sim._cleanup.append(rest.server.shutdown)
    sim._spawn(_watch, sim, rest, api_base, name="twilio-rest-watch")


def fail(sim, message: str) -> None:
    """Stop the run: one line says why (:func:`tools.simulate.cli._live` prints it)."""
    if not getattr(sim, "fatal", None):
        sim.fatal = message
    sim.stop.set()


def refused(sim, path: str, status: int, raw: bytes) -> None:
    """The product refused a webhook: no token there (503), or another token than this shell's (403)."""
    if status == 503 and b"TWILIO_AUTH_TOKEN" in raw:
        fail(sim, "the product runs without TWILIO_AUTH_TOKEN (its /twilio/ webhooks answer 503): start it with the "
                  "same TWILIO_AUTH_TOKEN, TWILIO_ACCOUNT_SID and TWILIO_API_BASE as this shell")
    elif status == 403:
        fail(sim, f"the product refused the signature of {path.split('?')[0]} (403): this shell's TWILIO_AUTH_TOKEN "
                  "is not the one the product runs with")


def _watch(sim, rest: RestServer, api_base: str) -> None:
    """The product offered a Twilio call to a seat but its REST request never came: it was not
    started with this TWILIO_API_BASE (it rang api.twilio.com, or nothing)."""
    offered: dict[str, float] = {}
    while not sim.stop.wait(1.0):
        if rest.refused:
            return fail(sim, "the product's Twilio REST requests carry another TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN "
                             "than this shell's: start both with the same")
        if rest.requests:
            return
        for rec in list(sim.records.values()):
            if rec.front != "twilio" or rec.ended is not None:
                continue
            try:
                n = int(sim.redis.hget(sim.acd.keys.call(rec.id), "offers") or 0)
            except Exception:
                continue
            if n and time.monotonic() - offered.setdefault(rec.id, time.monotonic()) > OFFERED_WITHOUT_REST_S:
                return fail(sim, f"the product offered a Twilio call to a seat but no REST request reached {api_base}: "
                                 f"start the product with TWILIO_API_BASE={api_base} (and the same TWILIO_AUTH_TOKEN "
                                 "and TWILIO_ACCOUNT_SID)")


def demo_leg(cloud: SimTwilio, sid: str, data: dict, cancelled: threading.Event) -> None:
    """An agent leg the product placed (``Calls.json``) to a seat a person plays: ring its demo
    phone; 接听 answers the leg (``agent-answer``, then the conference join), the caller's words
    arrive as text, 保持/恢复 as text, 挂断 ends the leg. The product ending the leg (the caller
    hung up while it rang, a transfer it completed) ends it too."""
    from call_routing.numbers import mask

    sim = cloud.sim
    url = urlsplit(data.get("Url", ""))
    q = dict(parse_qsl(url.query))
    seat, call_id = q.get("agent", ""), q.get("call", "")
    status_url = urlsplit(data.get("StatusCallback", ""))
    status_path = status_url.path + (f"?{status_url.query}" if status_url.query else "")

    def status(value: str, **extra) -> None:
        cloud.post(status_path, {"CallSid": sid, "CallStatus": value, "AccountSid": cloud.account, **extra})

    rec = sim.records.get(call_id)
    line = sim.rules().lines.get(rec.dialed) if rec else None
    phone = DemoPhone(sim.redis, seat)
    phone.ring(call_id, rec.dialed if rec else "", line.name if line else "",
               mask(sim.caller_number(rec)) if rec else "", front="twilio")
    ring_until = time.monotonic() + float(data.get("Timeout") or 20)
    answered, ended = False, "no-answer"
    while time.monotonic() < ring_until and not sim.stop.is_set():
        cmd = phone.next_command()
        if cancelled.is_set():
            ended = "canceled"
            break
        if cmd and cmd["action"] in ("answer", "hangup"):
            answered, ended = cmd["action"] == "answer", "busy"  # 挂断 while ringing: declined
            break
        time.sleep(0.2)
    if not answered:
        phone.hang_up()
        return status(ended)
    root = cloud.post(url.path + (f"?{url.query}" if url.query else ""),
                      {"CallSid": sid, "CallStatus": "in-progress", "AccountSid": cloud.account})
    conf = root.find("Dial/Conference") if root is not None else None
    if conf is None:  # "来电已结束": the caller left meanwhile
        phone.hang_up()
        return status("completed")
    cloud._member(conf.text, sid, True)
    cloud.post("/twilio/conference-events", {"FriendlyName": conf.text, "ConferenceSid": conference_sid(conf.text),
                                             "StatusCallbackEvent": "participant-join", "CallSid": sid})
    if rec is not None:
        rec.agent = seat
    phone.update(state="talking")
    heard = "".join(e.text or "" for e in root.iter("Say"))
    if heard:
        phone.say("系统", heard)  # what the seat hears on joining: line and ticket
    started = time.monotonic()
    lines = [sim.words(rec) if s is None else s for s in CONVERSATION] if rec else []
    next_line = time.monotonic() + 1.0
    give_up = time.monotonic() + sim.call_timeout_s
    seat_hung_up = False
    try:
        while time.monotonic() < give_up and not sim.stop.is_set():
            if cancelled.is_set():  # the product took the seat out (a completed transfer)
                phone.say("系统", "转接对象已接通，您已退出通话")
                time.sleep(1.0)
                if rec is not None:
                    rec.transferred = True
                    rec.detail = f"demo phone of {seat}: transferred"
                return
            cmd = phone.next_command()
            call = phone.call() or {}
            if cmd is None:
                if lines and call.get("state") == "talking" and time.monotonic() >= next_line:
                    phone.say("来电人", lines.pop(0))
                    next_line = time.monotonic() + 3.0
                time.sleep(0.2)
                continue
            if cmd["action"] == "hangup":
                seat_hung_up = True
                if rec is not None:
                    rec.detail = rec.detail or f"demo phone of {seat}: hung up by the seat"
                return
            if cmd["action"] == "hold":
                phone.update(state="held")
                phone.say("系统", "来电人正在听等待音乐")
            elif cmd["action"] == "resume":
                phone.update(state="talking")
                phone.say("来电人", "喂？还在吗？")
    finally:
        phone.hang_up()
        cloud._member(conf.text, sid, False)
        status("completed", CallDuration=str(int(time.monotonic() - started)))
        if seat_hung_up or not cancelled.is_set():
            with cloud.lock:
                box = cloud.inbox.get(call_id)
            if box is not None:
                box.put(("agent-left", None))
