"""The AudioSocket server: each waiting caller's voice, live, into the recogniser and the flow.

    python -m agi_scripts.audiosocket --host 127.0.0.1 --port 9092

Over FastAGI no audio reaches the product while ``queue_wait`` plays the hold music. So when
the dialplan's ``HOTLINE_AUDIOSOCKET`` global names this server, ``queue_wait`` (once per call)
issues a one-time id and has Asterisk originate ``AudioSocket/<host:port>/<id>`` into
``[hotline-listen]``, which runs ``ChanSpy(<the caller's channel>,qoEu)``: Asterisk connects
here and sends the id, then what the caller says (``o``: only the caller's side, never the
hold music or the prompts) as 20 ms frames of 8 kHz 16-bit PCM (res_audiosocket's protocol:
a byte of kind, two of length, the payload; 0x01 id, 0x10 audio, 0x00 hang-up, 0xff error).

Each stream goes through :class:`ivr.services.LiveListener`: an utterance is ``flow.heard``
the moment the caller stops — an emergency becomes the transfer ``queue_wait`` carries out at
its next tick (≤ 1 s), a matter goes to the ticket. Once the call is answered, transferred or
over, the server sends the hang-up and Asterisk closes the channel.

What is refused: a connection whose first frame is not an id this product issued (ids live
in the shared Redis for 30 s until claimed, once) or is not whole within ``ID_WITHIN_S`` of
connecting (bytes trickled in one at a time do not hold a stream slot), a frame longer than
``MAX_PAYLOAD`` or not whole within ``FRAME_WITHIN_S``, connections still waiting for their id
beyond ``MAX_PENDING`` (the oldest is closed; a stream takes a slot only once its id is claimed), a
stream without any frame for ``SILENT_S``, more than ``--max-streams`` streams at once. ChanSpy
sends only the frames the caller's channel carries, so a gap in them is silence: it is fed to
the recogniser as such (up to ``MAX_PAD_S``), which then ends the utterance on time.
"""
from __future__ import annotations

import argparse
import logging
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid

from runtime.pending import Pending

log = logging.getLogger("hotline.audiosocket")

KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_AUDIO, KIND_ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
MAX_PAYLOAD = 8192  # Asterisk sends 320 bytes (20 ms); the protocol allows 65535
ID_WITHIN_S = 3.0  # from connect to the end of the id frame, however the bytes trickle in
FRAME_WITHIN_S = 5.0  # once a frame is ready to read, the whole of it (Asterisk sends each at once)
SILENT_S = 600.0  # no frame at all for this long: the stream is dead
GAP_S = 0.1  # no frame for this long is silence on the line (ChanSpy sends only frames the channel carries)
MAX_PAD_S = 1.0  # silence fed to the recogniser per gap: enough to end any utterance
CHECK_EVERY_S = 1.0  # is the call still waiting?
MAX_PENDING = 256  # connections not yet past their id frame (no stream slot yet); beyond it the oldest is closed
PENDING_S = 30  # an issued id not claimed by then is void; a live stream keeps its call's mark this fresh
PREFIX = "hotline:audiosocket:"
LIVE = "live"  # the value of a call's mark while its stream is connected


class ProtocolError(Exception):
    """What was wrong with the bytes a peer sent, for the log."""


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


def _read_exact(sock: socket.socket, n: int, deadline: float, what: str) -> bytes:
    """``n`` bytes, all of them by ``deadline`` (a peer trickling a byte at a time is cut off)."""
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProtocolError(f"{what} not complete in time ({len(data)} of {n} bytes)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(data))
        except socket.timeout:
            raise ProtocolError(f"{what} not complete in time ({len(data)} of {n} bytes)") from None
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def read_frame(sock: socket.socket, within_s: float = FRAME_WITHIN_S, deadline: float | None = None
               ) -> tuple[int, bytes]:
    """One frame, whole within ``within_s`` of its first byte being awaited (or by ``deadline``)."""
    deadline = time.monotonic() + within_s if deadline is None else deadline
    kind, length = struct.unpack(">BH", _read_exact(sock, 3, deadline, "frame header"))
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"frame of kind 0x{kind:02x} with {length} bytes (at most {MAX_PAYLOAD})")
    return kind, _read_exact(sock, length, deadline, f"frame of kind 0x{kind:02x}") if length else b""


class Ids:
    """One-time AudioSocket ids in the shared Redis: ``id -> call`` until the stream claims it,
    and ``call -> id`` while it streams (so a call gets one stream, and a new one ≤ 30 s after
    its stream died)."""

    def __init__(self, client):
        self.r = client

    def issue(self, call_id: str) -> str | None:
        """A new id for the call, or None when the call already streams (or is being connected)."""
        uid = str(uuid.uuid4())
        if not self.r.set(PREFIX + "call:" + call_id, uid, nx=True, ex=PENDING_S):
            return None
        self.r.set(PREFIX + uid, call_id, ex=PENDING_S)
        return uid

    def claim(self, uid: str) -> str | None:
        pipe = self.r.pipeline()
        pipe.get(PREFIX + uid)
        pipe.delete(PREFIX + uid)
        call_id = pipe.execute()[0]
        return call_id.decode() if isinstance(call_id, bytes) else call_id

    def streaming(self, call_id: str) -> None:
        """The call's stream is connected and heard (claimed): :meth:`live` says so."""
        self.r.set(PREFIX + "call:" + call_id, LIVE, ex=PENDING_S)

    def live(self, call_id: str) -> bool:
        """Whether the caller is heard right now (``queue_wait`` then listens without recording)."""
        value = self.r.get(PREFIX + "call:" + call_id)
        return (value.decode() if isinstance(value, bytes) else value) == LIVE

    def alive(self, call_id: str) -> None:
        self.r.expire(PREFIX + "call:" + call_id, PENDING_S)

    def done(self, call_id: str) -> None:
        self.r.delete(PREFIX + "call:" + call_id)


def dial_string(address: str, uid: str, channel: str) -> str:
    """The ``Originate`` arguments that stream ``channel``'s caller to ``address`` under ``uid``."""
    return f"AudioSocket/{address}/{uid},exten,hotline-listen,s,1,10,av(HOTLINE_SPY={channel})"


class AudioSocketServer:
    def __init__(self, services, host: str = "127.0.0.1", port: int = 9092, max_streams: int = 256,
                 sock: socket.socket | None = None):
        self.services = services
        client = getattr(services.flow.calls, "client", None)
        if client is None:
            raise RuntimeError("the AudioSocket server needs the shared Redis (set REDIS_URL)")
        if services.recognizer is None:
            raise RuntimeError("the AudioSocket server needs a speech model (set VOSK_MODEL_PATH)")
        self.ids = Ids(client)
        self._slots = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams
        self._sock = sock or socket.create_server((host, port), backlog=256)
        self._sock.settimeout(0.5)
        self.address = self._sock.getsockname()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"streams": 0, "refused": 0, "heard": 0}
        self.pending = Pending("AudioSocket connections without an id")

    def start(self) -> "AudioSocketServer":
        self._thread = threading.Thread(target=self.serve_forever, name="audiosocket-accept", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                # out of descriptors (EMFILE) or memory for a moment: the next accept may succeed
                log.warning("AudioSocket accept failed: %s; accepting again shortly", exc)
                self._stopping.wait(0.1)
                continue
            self.pending.add(conn, lambda conn=conn: conn.shutdown(socket.SHUT_RDWR), MAX_PENDING)
            threading.Thread(target=self._serve, args=(conn,), name="audiosocket", daemon=True).start()

    @property
    def evicted(self) -> int:
        """Connections without an id closed to make room."""
        return self.pending.evicted

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2)
        self._sock.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._stream(conn)
        except (ProtocolError, EOFError, OSError) as exc:
            log.warning("AudioSocket stream closed: %s", exc or type(exc).__name__)
        except Exception:
            log.exception("AudioSocket stream failed")
        finally:
            self.pending.done(conn)
            conn.close()

    def _stream(self, conn: socket.socket) -> None:
        try:
            kind, payload = read_frame(conn, deadline=time.monotonic() + ID_WITHIN_S)
        finally:
            self.pending.done(conn)
        if kind != KIND_UUID or len(payload) != 16:
            raise ProtocolError(f"first frame is kind 0x{kind:02x} with {len(payload)} bytes, not an id")
        uid = str(uuid.UUID(bytes=payload))
        call_id = self.ids.claim(uid)
        if not call_id:
            conn.sendall(frame(KIND_HANGUP))
            raise ProtocolError(f"id {uid} was not issued for a waiting call (or is used up)")
        if not self._slots.acquire(blocking=False):  # only a stream with an issued id takes a slot
            self.stats["refused"] += 1
            conn.sendall(frame(KIND_HANGUP))
            raise ProtocolError(f"all {self.max_streams} stream slots busy: call {call_id} not heard")
        try:
            self._listen(conn, call_id, uid)
        finally:
            self._slots.release()

    def _listen(self, conn: socket.socket, call_id: str, uid: str) -> None:
        from ivr.services import LiveListener

        self.stats["streams"] += 1
        self.ids.streaming(call_id)
        log.info("call %s: streaming (id %s)", call_id, uid)
        listener = LiveListener(self.services, call_id, "audiosocket")
        check_at = time.monotonic() + CHECK_EVERY_S
        heard_at = time.monotonic()  # of the last frame
        padded = 0.0  # silence fed since then
        try:
            while True:
                if not select.select([conn], [], [], GAP_S)[0]:
                    # ChanSpy sends only the frames the caller's channel carries: a gap is silence,
                    # and the recogniser needs that silence to end the utterance
                    now = time.monotonic()
                    if now - heard_at > SILENT_S:
                        raise ProtocolError(f"no audio for {SILENT_S:.0f} s")
                    if padded < MAX_PAD_S:
                        gap = min(now - heard_at, MAX_PAD_S) - padded
                        kind, payload = KIND_AUDIO, bytes(int(gap * 8000) * 2)
                        padded += gap
                    else:
                        kind, payload = None, b""
                else:
                    kind, payload = read_frame(conn)
                    heard_at, padded = time.monotonic(), 0.0
                if kind == KIND_AUDIO:
                    turn = listener.feed(payload)
                    if turn is not None:
                        self.stats["heard"] += 1
                        log.info("call %s: heard %d characters after %.1f s of audio", call_id,
                                 len(listener.heard[-1]), listener.audio_s)
                        if turn.action != "queue":
                            log.info("call %s: %s heard while waiting (%s)", call_id, turn.action, turn.reason)
                            break
                elif kind == KIND_HANGUP:
                    return
                elif kind == KIND_ERROR:
                    raise ProtocolError(f"Asterisk reported error 0x{payload.hex() or '00'}")
                if time.monotonic() >= check_at:
                    if not listener.listening():
                        break
                    self.ids.alive(call_id)
                    check_at = time.monotonic() + CHECK_EVERY_S
            conn.sendall(frame(KIND_HANGUP))  # answered, transferred or over: Asterisk closes the channel
        finally:
            listener.close()
            self.ids.done(call_id)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agi_scripts.audiosocket", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--max-streams", type=int, default=256, help="callers heard at once (default %(default)s)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ivr.services import build

    services = build()
    try:
        sock = socket.create_server((args.host, args.port), backlog=256)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror} (choose another --port)", file=sys.stderr)
        return 1
    try:
        server = AudioSocketServer(services, max_streams=args.max_streams, sock=sock)
    except RuntimeError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    from ivr.services import SpeechStream

    if services.recognizer is SpeechStream:
        from intake.speech import preload

        preload()  # the model and one recognizer now, not when the first caller speaks
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    # the pre-fill learns meanwhile (a minute on a new machine): streams are taken at once, the
    # router acts on emergency words without it, as the FastAGI server does
    threading.Thread(target=services.warm, name="prefill-warm", daemon=True).start()
    log.info("AudioSocket server on %s:%d", *server.address[:2])
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
