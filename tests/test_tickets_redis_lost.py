"""A Redis that restarts empty (a crash, no persistence) loses no citizen's ticket.

Until the ticket writer has written it, a ticket is only a draft in Redis, next to the call's
state and its rq jobs. These tests lose all of that at the worst moments — with a real Redis, the
real FastAGI server and the Twilio webhooks, tickets in a real SQLite — and look in the database:

* the caller hung up before the writer got to the draft, then Redis lost everything (draft,
  pending list, the call-end job): the end report had already written the row;
* the caller was still on the line when Redis lost the call and its draft: the end report
  rebuilds the ticket from what the PBX's channel still holds — the number the PBX was given,
  the line, the caller — or, for Twilio, whose number lived in Redis only, from the number
  dialed and the caller, under a new number. The history says the intake time is approximate;
* the call ended while Redis was down (its end report failed, or gave up after retrying): the
  ticket is written from the same facts without Redis.

``tests/test_faults.py`` does the same under load (Redis killed and restarted mid-queue).
"""
from __future__ import annotations

import pytest
import redis
from agi_peer import Peer, agi_env, fastagi_session
from rq import Queue, SimpleWorker

from call_routing.rules_store import RulesStore
from consoles.labels import event_view
from intake import jobs
from intake.jobs import CallTickets, write_pending_tickets
from intake.tickets import TicketDrafts, TicketStore
from runtime.redis_server import EmbeddedRedis
from tests.acd_support import agi_world

CALLER = "13812345678"


@pytest.fixture
def db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'tickets.db'}"
    monkeypatch.setenv("DATABASE_URL", url)  # the rq worker's ticket store
    jobs.close_resources()
    yield url
    jobs.close_resources()


def product_port(db, redis_url) -> CallTickets:
    """The product's ticket port: drafts in Redis, call ends as rq jobs on the hand-off queue."""
    conn = redis.Redis.from_url(redis_url)
    drafts = TicketDrafts(redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=3,
                                               socket_connect_timeout=2))
    port = CallTickets(TicketStore(db, drafts=drafts), Queue(jobs.SPEECH_QUEUE, connection=conn),
                       Queue(jobs.HANDOFF_QUEUE, connection=conn), drafts)
    port.redis = conn
    return port


@pytest.fixture
def product_tickets(db, redis_url):
    port = product_port(db, redis_url)
    yield port
    port.store.close()
    port.redis.close()


def pbx_on(port, rules_path, redis_url, tmp_path):
    return agi_world(RulesStore(rules_path), redis_url, tmp_path, workers=8, tickets=port)


@pytest.fixture
def pbx(product_tickets, rules_path, redis_url, tmp_path):
    world = pbx_on(product_tickets, rules_path, redis_url, tmp_path)
    yield next(world)
    next(world, None)


@pytest.fixture
def own_redis():
    """A Redis of this test's own, to be stopped (no persistence: it would come back empty)."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


def twilio_app(port, redis_url, rules_path):
    from app import create_app
    from tests.twilio_support import ACCOUNT, TOKEN, RecordingHttpClient, SignedTwilio

    app = create_app({"RULES_PATH": str(rules_path), "REDIS_URL": redis_url, "TWILIO_AUTH_TOKEN": TOKEN,
                      "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_HTTP_CLIENT": RecordingHttpClient(),
                      "TWILIO_CALLER_ID": "+8612345", "HOTLINE_SERVICES": {"tickets": port, "classify": None}})
    return SignedTwilio(app.test_client())


def in_database(db, call_id):
    """The call's ticket as the database holds it (no draft fallback), and its history."""
    store = TicketStore(db, drafts=None)
    try:
        t = store.by_call(call_id)
        return t, (store.events(t.id) if t else [])
    finally:
        store.close()


def route(pbx, uniqueid) -> tuple[Peer, str, str]:
    """``route_call`` on a new channel and the first queue tick: the caller waits in line."""
    channel = Peer()
    fastagi_session(pbx.server.address, agi_env("12345", caller=CALLER, uniqueid=uniqueid, network=True), channel)
    call_id, number = channel.variables["HOTLINE_CALL_ID"], channel.variables["HOTLINE_TICKET"]
    pbx.flow.wait(call_id)
    return channel, call_id, number


def h_extension(pbx, channel, call_id, what):
    """What the dialplan's ``h`` extension runs once the caller is gone (``hangup``; ``fallback``
    from [hotline-fallback]), on the caller's channel."""
    fastagi_session(pbx.server.address, agi_env("12345", caller=CALLER, uniqueid=call_id, script="transfer",
                                                args=(call_id, what), network=True), channel)


def run_call_end_jobs(conn):
    SimpleWorker([Queue(jobs.HANDOFF_QUEUE, connection=conn)], connection=conn).work(burst=True)


def test_a_call_over_before_redis_lost_its_data_keeps_its_ticket_though_the_writer_never_wrote_it(
        pbx, product_tickets, db):
    channel, call_id, number = route(pbx, "1700000201.1")
    assert in_database(db, call_id)[0] is None  # a draft only: the writer has not got to it
    h_extension(pbx, channel, call_id, "hangup")  # the caller gave up waiting
    product_tickets.redis.flushdb()  # Redis crashed and came back empty: draft, pending list, call-end job gone
    assert write_pending_tickets(product_tickets.store, product_tickets.drafts) == 0  # nothing left to write
    t, history = in_database(db, call_id)
    assert t is not None, "the ticket was lost with Redis"
    assert (str(t.id), t.entry_line, t.caller) == (number, "12345", CALLER)  # the number the PBX was given
    assert history[0]["kind"] == "opened" and history[0]["detail"] == {"entry_line": "12345"}  # its own draft


def test_a_caller_on_the_line_when_redis_restarted_empty_keeps_the_ticket_number_the_pbx_was_given(
        pbx, product_tickets, db):
    channel, call_id, number = route(pbx, "1700000202.1")
    product_tickets.redis.flushdb()  # Redis restarted empty: the call's state and its draft are gone
    # our AGI has nothing to go on: the dialplan's own seats serve the caller, then the call ends
    h_extension(pbx, channel, call_id, "fallback")
    t, history = in_database(db, call_id)
    assert t is not None, "the ticket was lost with Redis"
    assert (str(t.id), t.entry_line, t.caller, t.rules_version) == (
        number, "12345", CALLER, channel.variables["HOTLINE_RULES_VERSION"])
    opened = event_view(history[0])
    assert opened["what"] == "系统建单" and "补建" in opened["detail"] and "近似" in opened["detail"]
    run_call_end_jobs(product_tickets.redis)
    assert in_database(db, call_id)[0].call_outcome == "fallback"  # served by the fallback seats
    # a second report of the same end changes nothing
    h_extension(pbx, channel, call_id, "fallback")
    t2, history2 = in_database(db, call_id)
    assert t2.id == t.id and [e["kind"] for e in history2].count("opened") == 1


def test_a_twilio_caller_who_hangs_up_after_redis_restarted_empty_still_has_a_ticket(
        product_tickets, db, redis_url, rules_path):
    from tests.twilio_support import call_params

    twilio = twilio_app(product_tickets, redis_url, rules_path)
    caller = "+86" + CALLER
    twilio.twiml("/twilio/voice", call_params("CAlost", "12348", caller))
    twilio.twiml("/twilio/wait", call_params("CAlost", "12348", caller, CallStatus="in-progress"))
    assert in_database(db, "CAlost")[0] is None
    product_tickets.redis.flushdb()  # Redis restarted empty while the citizen held
    # the citizen hangs up before the next wait poll would have registered the call again
    twilio.post("/twilio/queue-exit", call_params("CAlost", "12348", caller, CallStatus="completed",
                                                  QueueResult="hangup"))
    twilio.post("/twilio/status", call_params("CAlost", "12348", caller, CallStatus="completed"))
    t, history = in_database(db, "CAlost")
    assert t is not None, "the ticket was lost with Redis"
    assert (t.entry_line, t.caller) == ("12348", caller)
    assert "近似" in event_view(history[0])["detail"]
    assert [e["kind"] for e in history].count("opened") == 1  # one ticket, however many reports


# -- the call ends while Redis is down (and it may come back empty) ------------------------------

def test_an_asterisk_end_report_given_up_while_redis_is_down_still_writes_the_ticket(
        db, own_redis, rules_path, tmp_path, monkeypatch):
    import importlib

    transfer = importlib.import_module("agi_scripts.transfer")  # the package's name is the handler
    monkeypatch.setattr(transfer, "END_REPORT_RETRY_S", 1.0)  # the h extension's report tries 8 s
    port = product_port(db, own_redis.url)
    world = pbx_on(port, rules_path, own_redis.url, tmp_path)
    pbx = next(world)
    try:
        channel, call_id, number = route(pbx, "1700000203.1")
        own_redis.stop()  # Redis down for longer than the report keeps trying
        h_extension(pbx, channel, call_id, "fallback")
        t, history = in_database(db, call_id)
        assert t is not None, "the ticket was lost with Redis"
        assert (str(t.id), t.entry_line, t.caller, t.call_outcome) == (number, "12345", CALLER, "fallback")
        assert "近似" in event_view(history[0])["detail"]
    finally:
        next(world, None)
        port.store.close()


def test_a_twilio_status_callback_that_fails_on_redis_down_still_writes_the_ticket(db, own_redis, rules_path):
    from tests.twilio_support import call_params

    port = product_port(db, own_redis.url)
    twilio = twilio_app(port, own_redis.url, rules_path)
    caller = "+86" + CALLER
    twilio.twiml("/twilio/voice", call_params("CAdown", "12345", caller))
    twilio.twiml("/twilio/wait", call_params("CAdown", "12345", caller, CallStatus="in-progress"))
    own_redis.stop()  # Redis down: the citizen hangs up meanwhile; Twilio sends the status once
    r = twilio.post("/twilio/status", call_params("CAdown", "12345", caller, CallStatus="completed"))
    assert r.status_code == 204
    t, history = in_database(db, "CAdown")
    assert t is not None, "the ticket was lost with Redis"
    assert (t.entry_line, t.caller) == ("12345", caller)
    assert "近似" in event_view(history[0])["detail"]
    port.store.close()
