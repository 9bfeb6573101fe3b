"""A caller our AGI lost (the FastAGI server down or hung: the dialplan's own [hotline-fallback]
seats take them) is released from the Redis ACD when that call ends — over a real FastAGI socket
with the real ACD: not kept in line for the seats, not called back as a lost call."""
from __future__ import annotations

import pytest
from agi_peer import Peer, agi_env, fastagi_session

from call_routing.rules_store import RulesStore
from tests.acd_support import agi_world, events
from test_agi_dialplan import contexts


@pytest.fixture
def world(rules_path, redis_url, tmp_path):
    yield from agi_world(RulesStore(rules_path), redis_url, tmp_path, workers=8)


def waiting_caller(w, uid) -> str:
    route = fastagi_session(w.server.address, agi_env("12345", uniqueid=uid, network=True), Peer())
    call_id = route.variables["HOTLINE_CALL_ID"]
    w.flow.wait(call_id)  # the first tick of queue_wait: in line in the ACD
    assert w.acd.call(call_id)["state"] == "waiting"
    return call_id


def fell_back_call_ended(w, call_id) -> Peer:
    """What [hotline-fallback]'s h extension runs once the call is over."""
    return fastagi_session(w.server.address, agi_env("12345", uniqueid=call_id, script="transfer",
                                                     args=(call_id, "fallback"), network=True), Peer())


def test_the_dialplan_reports_a_call_served_by_its_fallback_seats_only_once_it_is_over():
    ctx = contexts()
    fallback = ctx["hotline-fallback"]
    assert "AGI(" not in " ".join(fallback)  # nothing that can stall a caller on the way to a seat
    assert "exten => h,1,Gosub(hotline-fell-back,s,1)" in fallback
    assert "AGI(${HOTLINE_AGI}/transfer,${HOTLINE_CALL_ID},fallback)" in " ".join(ctx["hotline-fell-back"])


def test_a_caller_served_by_the_fallback_seats_leaves_the_acd_without_a_callback(world):
    call_id = waiting_caller(world, "1700000001.1")
    # our AGI fails; the caller is served by the dialplan's general seats and hangs up
    fell_back_call_ended(world, call_id)
    call = world.acd.call(call_id)
    assert call["state"] == "left" and not world.acd.redis.zcard(world.acd.keys.queue("general"))
    assert [e["reason"] for e in events(world.acd, "leave", call_id)] == ["fallback"]
    assert not events(world.acd, "abandon", call_id)  # not a lost call (呼损)
    world.clock.advance(600)
    assert world.acd.tick()["lost"] == 0
    assert world.tickets.tickets[call["ticket"]]["status"] == "fallback"


def test_a_callback_booked_while_the_caller_was_with_the_fallback_seats_is_cancelled(world):
    call_id = waiting_caller(world, "1700000002.1")
    world.clock.advance(world.acd.lost_after_s + 1)  # a long talk at the fallback seats: looks lost
    assert world.acd.tick()["lost"] == 1 and world.acd.call(call_id)["kind"] == "callback"
    fell_back_call_ended(world, call_id)
    assert world.acd.call(call_id)["state"] == "left"
    assert not world.acd.redis.keys(world.acd.keys.cb_by_caller("*"))  # the citizen will not be rung back


def test_a_call_that_ends_while_redis_restarts_still_leaves_the_acd(rules_path, tmp_path):
    """Issue 16: a Redis outage sends the AGI calls to the fallback seats; the report of a call that
    ends before Redis is back (its h extension) keeps trying, so the ACD does not keep a ghost of
    that caller in line for its seats."""
    import tempfile
    import threading

    from runtime.redis_server import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="hl-") as data:  # a short path: the socket sits in it
        server = EmbeddedRedis(data_dir=data).start()
        world = agi_world(RulesStore(rules_path), server.url, tmp_path, workers=8)
        w = next(world)
        again = []
        try:
            call_id = waiting_caller(w, "1700000003.1")
            server.stop()  # Redis down (its data kept on disk) …
            back = threading.Timer(1.5, lambda: again.append(EmbeddedRedis(data_dir=data).start()))
            back.start()  # … and up again at the same address 1.5 s later
            fell_back_call_ended(w, call_id)  # the caller's fallback call ended meanwhile
            back.join()
            assert again[0].url == server.url
            assert w.acd.call(call_id)["state"] == "left"
            assert [e["reason"] for e in events(w.acd, "leave", call_id)] == ["fallback"]
        finally:
            next(world, None)
            for s in again:
                s.stop()
