"""Twilio Media Streams: each waiting caller's voice, live, into the recogniser and the flow.

    python -m ivr.twilio.media --host 127.0.0.1 --port 8001

With ``TWILIO_MEDIA_STREAM_URL`` set (``wss://hotline.example.gov.cn/twilio/media``, the
public address nginx passes to this server), the TwiML that queues a caller starts
``<Start><Stream url="…"><Parameter name="token" value="…"/></Stream></Start>``: Twilio opens
a WebSocket here and sends JSON messages — ``connected``, ``start`` (the call, the parameters,
the media format), ``media`` (20 ms of 8 kHz mu-law, base64) and ``stop``.

Each stream goes through :class:`ivr.services.LiveListener`: an utterance is ``flow.heard``
the moment the caller stops — the words go to the ticket; an emergency is carried out at once:
the call is redirected out of ``<Enqueue>`` with the REST API to ``/twilio/emergency``, which
says the notice and dials the emergency line, as a speech ``<Gather>`` would have. Once the
call is answered, transferred or over, the server closes the stream.

What is refused (close code 1008): a stream whose ``start`` does not come within
``START_WITHIN_S`` or carries no valid token — HMAC-SHA256 of the CallSid under
``TWILIO_AUTH_TOKEN``, so only the TwiML this product wrote opens a stream, and only for its
own call — a call the flow does not know, audio that is not 8 kHz mu-law,
more messages than ``MAX_RATE`` a second since the start plus ``MAX_BURST`` (Twilio sends 50 a second;
the burst absorbs a network or server stall, whose backlog arrives at once), a stream longer than ``MAX_STREAM_S``;
messages over ``MAX_MESSAGE`` bytes close it with 1009, more than ``--max-streams`` streams
at once are refused (1013). A stream takes its slot only once its start is checked: of the
connections still waiting for theirs, at most ``MAX_PENDING``, the oldest closed beyond it —
strangers who connect and send nothing never take a caller's place.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

from ivr.twilio.twiml import stream_token
from runtime.pending import Pending

log = logging.getLogger("hotline.twilio.media")

PATH = "/twilio/media"
MAX_MESSAGE = 8 * 1024  # a media message is ≈ 400 bytes
START_WITHIN_S = 5.0
SILENT_S = 10.0  # Twilio sends a frame every 20 ms, silence included
MAX_RATE = 100  # messages per second over the stream (twice Twilio's 50) ...
MAX_BURST = 500  # ... plus 10 s of audio at once: a stall's backlog, not a flood
MAX_STREAM_S = 4 * 3600
MAX_PENDING = 256  # connections not yet past a valid start (no stream slot yet); beyond it the oldest is closed
CHECK_EVERY_S = 1.0


def token_valid(auth_token: str, call_sid: str, token) -> bool:
    return isinstance(token, str) and hmac.compare_digest(stream_token(auth_token, call_sid), token)


class Refused(Exception):
    """Why a stream is closed, for the log and the close frame."""


class MediaStreamServer:
    def __init__(self, services, auth_token: str, on_emergency, host: str = "127.0.0.1", port: int = 8001,
                 max_streams: int = 256):
        """``on_emergency(call_id, turn)`` moves the call to the emergency line (REST)."""
        from websockets.sync.server import serve

        if services.recognizer is None:
            raise RuntimeError("the media-stream server needs a speech model (set VOSK_MODEL_PATH)")
        if not auth_token:
            raise RuntimeError("the media-stream server needs TWILIO_AUTH_TOKEN (it checks each stream's token)")
        self.services, self.auth_token, self.on_emergency = services, auth_token, on_emergency
        self._slots = threading.BoundedSemaphore(max_streams)
        # max_queue=None: a stream refused mid-flood is closed at once (with a bounded queue, the
        # paused reader would hold the close handshake until close_timeout); the rate bound and
        # MAX_MESSAGE keep what one stream buffers small
        self.server = serve(self._handle, host, port, max_size=MAX_MESSAGE, max_queue=None, close_timeout=2,
                            process_request=self._admit, compression=None)
        self.address = self.server.socket.getsockname()
        self.pending = Pending("media connections without a start")
        self.stats = {"streams": 0, "refused": 0, "heard": 0}

    def start(self) -> "MediaStreamServer":
        threading.Thread(target=self.server.serve_forever, name="media-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def _admit(self, connection, request):
        if request.path.split("?", 1)[0] != PATH:
            return connection.respond(404, "not found\n")
        return None

    def _handle(self, ws) -> None:
        try:
            call_id = self._pending_start(ws)
            if not self._slots.acquire(blocking=False):  # only a stream with a valid token takes a slot
                self.stats["refused"] += 1
                ws.close(1013, "too many streams")
                return
            try:
                self._stream(ws, call_id)
            finally:
                self._slots.release()
        except Refused as exc:
            self.stats["refused"] += 1
            log.warning("media stream refused: %s", exc)
            ws.close(1008, str(exc)[:120])
        except TimeoutError:
            log.warning("media stream closed: nothing received for %s s", SILENT_S)
            ws.close(1008, "silent")
        except Exception as exc:
            from websockets.exceptions import ConnectionClosed

            if not isinstance(exc, ConnectionClosed):
                log.exception("media stream failed")
                ws.close(1011, "error")

    @property
    def evicted(self) -> int:
        """Connections without a start closed to make room."""
        return self.pending.evicted

    def _pending_start(self, ws) -> str:
        """The call of a checked ``start``; until then the connection waits among the pending
        (:class:`runtime.pending.Pending`, at most ``MAX_PENDING``)."""
        self.pending.add(ws, lambda: ws.socket.shutdown(socket.SHUT_RDWR), MAX_PENDING)
        try:
            return self._checked_start(ws)
        finally:
            self.pending.done(ws)

    def _start(self, ws) -> dict:
        """The ``start`` message, checked (a ``connected`` may come first)."""
        deadline = time.monotonic() + START_WITHIN_S
        for _ in range(3):
            try:
                message = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                raise Refused(f"no start within {START_WITHIN_S:.0f} s") from None
            except (ValueError, RecursionError):
                raise Refused("a message that is not JSON (or nests too deep)") from None
            if not isinstance(message, dict):
                raise Refused("a message that is not a JSON object")
            if message.get("event") == "start":
                start = message.get("start")
                if not isinstance(start, dict):
                    raise Refused("start without its start object")
                return start
            if message.get("event") != "connected":
                raise Refused(f"{str(message.get('event'))[:20]!r} before start")
        raise Refused("no start")

    def _checked_start(self, ws) -> str:
        """The call whose stream this is: a valid token for it, mu-law at 8 kHz, a call the flow knows."""
        from ivr.flow import CallNotFound

        start = self._start(ws)
        call_id = start.get("callSid")
        params = start.get("customParameters")
        token = params.get("token") if isinstance(params, dict) else None
        if not isinstance(call_id, str) or not token_valid(self.auth_token, call_id, token):
            raise Refused(f"no valid token for call {str(call_id)[:64]!r}")  # a stranger's text: quoted
        fmt = start.get("mediaFormat")
        fmt = fmt if isinstance(fmt, dict) else {"encoding": str(fmt)[:40]}
        if fmt.get("encoding") != "audio/x-mulaw" or str(fmt.get("sampleRate")) != "8000":
            raise Refused(f"audio {str(fmt.get('encoding'))[:40]!r} at {str(fmt.get('sampleRate'))[:20]!r} Hz "
                          f"(expected audio/x-mulaw, 8000)")
        try:
            self.services.flow.state(call_id)
        except CallNotFound:
            raise Refused(f"call {call_id} is not known") from None
        return call_id

    def _stream(self, ws, call_id: str) -> None:
        from ivr.services import LiveListener
        from intake.speech import decode_ulaw

        self.stats["streams"] += 1
        log.info("call %s: streaming", call_id)
        listener = LiveListener(self.services, call_id, "twilio-stream")
        began = check_at = time.monotonic()
        count = 0
        try:
            while True:
                raw = ws.recv(timeout=SILENT_S)
                now = time.monotonic()
                count += 1
                if count > MAX_BURST + MAX_RATE * (now - began):
                    raise Refused(f"more than {MAX_RATE} messages a second")
                if now - began > MAX_STREAM_S:
                    raise Refused(f"stream longer than {MAX_STREAM_S // 3600} h")
                try:
                    message = json.loads(raw)
                    event = message.get("event")
                except (ValueError, AttributeError, RecursionError):
                    raise Refused("a message that is not a JSON object") from None
                if event == "stop":
                    return
                if event == "media":
                    media = message.get("media")
                    if not isinstance(media, dict):
                        raise Refused("media without its media object")
                    if media.get("track", "inbound") != "inbound":
                        continue
                    try:
                        pcm = decode_ulaw(base64.b64decode(media.get("payload") or "", validate=True)).tobytes()
                    except (binascii.Error, TypeError, ValueError):
                        raise Refused("media payload is not base64") from None
                    turn = listener.feed(pcm)
                    if turn is not None:
                        self.stats["heard"] += 1
                        if turn.action == "transfer":
                            log.warning("call %s: emergency heard on the media stream", call_id)
                            self.on_emergency(call_id, turn)
                            break
                if now >= check_at:
                    if not listener.listening():
                        break
                    check_at = now + CHECK_EVERY_S
            ws.close(1000, "done")
        finally:
            listener.close()


def rest_mover(services, config: dict):
    """``on_emergency`` for the real thing: mark the call's pending move, then redirect it (REST)
    to ``/twilio/emergency`` at the call's own base URL."""
    from ivr.twilio.calls import Legs, Switchboard, api_http_client
    from ivr.twilio.webhooks import remember_emergency

    client = services.flow.calls.client
    legs = Legs(client)
    board = Switchboard(services.flow, None, legs, account_sid=config.get("TWILIO_ACCOUNT_SID"),
                        auth_token=config.get("TWILIO_AUTH_TOKEN"), caller_id=None,
                        public_url=config.get("TWILIO_PUBLIC_URL"),
                        http_client=config.get("TWILIO_HTTP_CLIENT") or api_http_client(config.get("TWILIO_API_BASE")))

    def move(call_id: str, turn) -> None:
        remember_emergency(legs, call_id, turn)
        board.client.calls(call_id).update(url=board.url(call_id, "emergency"), method="POST")
    return move


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.twilio.media", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-streams", type=int, default=256, help="callers heard at once (default %(default)s)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ivr.services import SpeechStream, build

    services = build()
    if getattr(services.flow.calls, "client", None) is None:
        print("cannot start: the media-stream server needs the shared Redis (set REDIS_URL)", file=sys.stderr)
        return 1
    config = {k: os.environ.get(k) for k in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PUBLIC_URL",
                                             "TWILIO_API_BASE")}
    try:
        server = MediaStreamServer(services, config["TWILIO_AUTH_TOKEN"], rest_mover(services, config),
                                   args.host, args.port, args.max_streams)
    except (RuntimeError, ValueError) as exc:  # ValueError: TWILIO_API_BASE refused
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror} (choose another --port)", file=sys.stderr)
        return 1
    if services.recognizer is SpeechStream:
        from intake.speech import preload

        preload()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    # the pre-fill learns meanwhile (a minute on a new machine): streams are taken at once, the
    # router acts on emergency words without it, as the FastAGI server does
    threading.Thread(target=services.warm, name="prefill-warm", daemon=True).start()
    log.info("Twilio media streams on ws://%s:%d%s", *server.address[:2], PATH)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
