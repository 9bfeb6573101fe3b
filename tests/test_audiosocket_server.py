"""The AudioSocket server (agi_scripts/audiosocket.py) against hostile peers over real TCP, with
the real Redis of the fixtures; what Asterisk streams through it is in tests/test_pbx_speech.py."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from agi_scripts.audiosocket import ID_WITHIN_S, KIND_UUID, AudioSocketServer, frame


@pytest.fixture
def server(redis_url, rules_path, monkeypatch):
    from ivr.services import build
    from tests.fake_recognizer import Recognizer

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RULES_PATH", str(rules_path))
    srv = AudioSocketServer(build({"recognizer": Recognizer}), port=0, max_streams=2).start()
    yield srv
    srv.stop()


def test_peers_trickling_their_id_a_byte_at_a_time_lose_their_slot_within_the_id_deadline(server):
    """Both slots taken by peers that send their id frame one byte every half second (19 bytes:
    10 s, the socket timeout alone never fires): cut off after ID_WITHIN_S, a real stream is served."""
    stop = threading.Event()
    closed_after = []

    def trickle():
        began = time.monotonic()
        with socket.create_connection(server.address) as s:
            for byte in frame(KIND_UUID, uuid.uuid4().bytes):
                try:
                    s.sendall(bytes([byte]))
                    if s.recv(1, socket.MSG_DONTWAIT) == b"":
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    break
                if stop.wait(0.5):
                    return
            closed_after.append(time.monotonic() - began)

    attackers = [threading.Thread(target=trickle, daemon=True) for _ in range(2)]
    for t in attackers:
        t.start()
    try:
        time.sleep(ID_WITHIN_S + 1.5)
        uid = server.ids.issue("CAreal")
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(frame(KIND_UUID, uuid.UUID(uid).bytes))
            s.recv(3)  # the call is not waiting in any queue: served, then hung up
    finally:
        stop.set()
        for t in attackers:
            t.join(5)
    assert len(closed_after) == 2 and max(closed_after) < ID_WITHIN_S + 1.5
    assert server.stats["streams"] == 1 and server.stats["refused"] == 0


def test_connections_that_send_nothing_take_no_stream_slot_and_at_most_max_pending_wait(server, monkeypatch):
    """Five strangers that connect and send nothing, against 2 stream slots and MAX_PENDING 4: the
    oldest is closed at once, and a stream with an issued id is still served."""
    from agi_scripts import audiosocket

    monkeypatch.setattr(audiosocket, "MAX_PENDING", 4, raising=False)
    strangers = [socket.create_connection(server.address, timeout=2) for _ in range(5)]
    try:
        assert strangers[0].recv(1) == b""  # closed well before ID_WITHIN_S
        uid = server.ids.issue("CAreal")
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(frame(KIND_UUID, uuid.UUID(uid).bytes))
            s.recv(3)
        assert server.stats["streams"] == 1 and server.stats["refused"] == 0 and server.evicted == 2
    finally:
        for s in strangers:
            s.close()


def test_running_out_of_file_descriptors_for_a_moment_does_not_stop_the_server_accepting(server):
    """Connections beyond the process's open-file limit make accept() fail (EMFILE): the server
    logs it and goes on accepting once descriptors are free again (its accept thread used to die)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    clients = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 6, hard))
    try:
        for _ in range(12):  # each takes one descriptor here and one in the server, until none is left
            try:
                clients.append(socket.create_connection(server.address, timeout=1))
            except OSError:
                break
        time.sleep(1.0)  # the server meets EMFILE on accept meanwhile
    finally:
        for c in clients:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    time.sleep(ID_WITHIN_S + 0.5)  # the connections it did accept are let go
    uid = server.ids.issue("CAafter")
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(frame(KIND_UUID, uuid.UUID(uid).bytes))
        s.recv(3)
    deadline = time.monotonic() + 3
    while server.stats["streams"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats["streams"] == 1
