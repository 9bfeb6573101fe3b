"""Offers made in other processes (the ACD ticker, another web worker, the rq worker) reach the
Twilio front-end: each web process's offer listener rings the offered agent, exactly once across
all processes. Real processes, a real Redis, Twilio REST recorded (no network)."""
from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from acd_support import make_acd
from app import create_app
from call_routing.acd import Agent
from ivr.flow import MemoryTickets
from tests.twilio_support import ACCOUNT, TOKEN, RecordingHttpClient, SignedTwilio, call_params, query

ROOT = Path(__file__).resolve().parent.parent


def front_end(redis_url, rules_path, **extra):
    http = RecordingHttpClient()
    app = create_app({"RULES_PATH": str(rules_path), "REDIS_URL": redis_url, "TWILIO_AUTH_TOKEN": TOKEN,
                      "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_HTTP_CLIENT": http,
                      "HOTLINE_SERVICES": {"tickets": MemoryTickets(), "classify": None}, **extra})
    return app, http


def waiting_calls(app, n, prefix):
    tw = SignedTwilio(app.test_client())
    sids = [f"CA{prefix}{i:03d}" for i in range(n)]
    for sid in sids:
        tw.twiml("/twilio/voice", call_params(sid))
        tw.twiml("/twilio/wait", call_params(sid, CallStatus="in-progress"))
    return sids


def rung_calls(r) -> Counter:
    return Counter(query(line.split(" ", 2)[2])["call"] for line in r.lrange("test:rings", 0, -1))


def test_offers_made_by_another_process_ring_the_agent_exactly_once_across_web_processes(redis_url, rules_path,
                                                                                       rules):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    app, http = front_end(redis_url, rules_path)  # where the calls came in (its listener is off)
    sids = waiting_calls(app, 12, "x")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "twilio_listener_proc.py"), redis_url,
                               str(rules_path), "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        # "the ticker / the agent API in another worker": an ACD with no front-end hooks at all
        other = make_acd(redis_url, rules)
        for i in range(len(sids)):
            other.save_agent(Agent(f"ag{i}", f"坐席{i}", {"general": 5}, endpoints=(f"client:ag{i}",)))
            assert other.login(f"ag{i}").offers  # each login takes the head of the queue
        deadline = time.time() + 15
        while sum(rung_calls(r).values()) < len(sids) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # would a second ring come?
        rings = rung_calls(r)
        assert rings == Counter({sid: 1 for sid in sids})
        assert not http.posts("/Calls.json")  # the process without a listener rang nobody
        # the flow knows whom it rang: the agent-answer webhook connects the caller
        leg = app.extensions["twilio"]["legs"].get(sids[0])
        assert leg["agent"] == other.call(sids[0])["agent"] and leg["agent_call"].startswith("CAagentleg")
        # a re-offer after a no-answer is a new offer (n = 2): rung once more, by one process
        other.save_agent(Agent("spare", "备岗", {"general": 5}, endpoints=("client:spare",)))
        other.login("spare", state="paused")
        other.ready("spare")
        result = other.no_answer(sids[0])
        assert [(o.call_id, o.agent_id, o.n) for o in result.offers] == [(sids[0], "spare", 2)]
        deadline = time.time() + 10
        while rung_calls(r)[sids[0]] < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert rung_calls(r)[sids[0]] == 2 and sum(rung_calls(r).values()) == len(sids) + 1
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(10)


def test_an_offer_whose_message_was_lost_is_rung_by_the_sweep_once(redis_url, rules_path, rules):
    app, http = front_end(redis_url, rules_path)
    (sid,) = waiting_calls(app, 1, "lost")
    other = make_acd(redis_url, rules)
    other.save_agent(Agent("a9", "坐席", {"general": 5}, endpoints=("client:a9",)))
    other.login("a9")  # offered while nobody listened: the pub/sub message is gone
    assert not http.posts("/Calls.json")
    listener = app.extensions["twilio"]["listener"]
    assert listener.sweep() == 1
    assert listener.sweep() == 0  # claimed: never rung again
    ring = http.posts("/Calls.json")
    assert len(ring) == 1 and ring[0][1]["To"] == "client:a9" and query(ring[0][1]["Url"])["call"] == sid


def test_the_listener_starts_with_the_first_twilio_request_of_a_process_and_stops(redis_url, rules_path, rules):
    app, http = front_end(redis_url, rules_path, TWILIO_OFFER_LISTENER="1")
    listener = app.extensions["twilio"]["listener"]
    assert not listener.running
    (sid,) = waiting_calls(app, 1, "lazy")
    assert listener.running
    try:
        time.sleep(0.3)  # subscribed
        other = make_acd(redis_url, rules)
        other.save_agent(Agent("a7", "坐席", {"general": 5}, endpoints=("client:a7",)))
        other.login("a7")
        deadline = time.time() + 5
        while not http.posts("/Calls.json") and time.time() < deadline:
            time.sleep(0.02)
        assert [d["To"] for _, d in http.posts("/Calls.json")] == ["client:a7"]
    finally:
        listener.stop()
    assert not listener.running


@pytest.mark.parametrize("flag", ["0", "off"])
def test_the_listener_can_be_turned_off(redis_url, rules_path, flag):
    app, _ = front_end(redis_url, rules_path, TWILIO_OFFER_LISTENER=flag)
    waiting_calls(app, 1, f"off{flag}")
    assert not app.extensions["twilio"]["listener"].running
