"""Twilio: missed-call callbacks placed through the REST API (agent first, then the citizen, each
outcome back to the ACD, never dialed twice), expert three-way transfers reserved through the
ACD, and the survey and emergency exits in the queue log."""
from __future__ import annotations

from call_routing.acd.callbacks import PLACED, place_callback
from ivr.twilio.calls import TwilioCallbackDialer
from tests.test_twilio_calls import CALLER, connect, hotline, start, wait  # noqa: F401  (fixture)
from tests.twilio_support import API, call_params, query, said, verbs


def missed_call(h, sid="CAmissed"):
    """A caller waits 30 s with nobody free and hangs up: a missed-call callback keeps the place."""
    start(h, sid)
    wait(h, sid)
    h.clock.advance(30)
    h.twilio.post("/twilio/status", call_params(sid, CallStatus="completed"))
    call = h.acd.call(sid)
    assert (call["kind"], call["state"]) == ("callback", "waiting")
    return sid


def dialer_for(h):
    return TwilioCallbackDialer(account_sid=h.app.config["TWILIO_ACCOUNT_SID"], auth_token="t",
                                caller_id="+8612345", http_client=h.http, redis_client=h.acd.redis)


def offered_callback(h, sid):
    h.acd.dispatch_callback = None  # the test runs the rq job's function itself
    h.seat("a1", {"general": 50})
    offer = h.acd.call(sid)
    assert (offer["state"], offer["agent"], offer["offers"]) == ("ringing", "a1", 1)
    return 1


def test_a_callback_rings_the_agent_first_then_the_citizen_and_connects_them(hotline):
    h = hotline
    sid = missed_call(h)
    n = offered_callback(h, sid)
    rings_before = len(h.http.posts("/Calls.json"))
    assert place_callback(h.acd, sid, n, dialer_for(h)) == PLACED
    assert place_callback(h.acd, sid, n, dialer_for(h)) == "already_dialed"  # a duplicated rq job
    agent_ring = h.http.posts("/Calls.json")[rings_before:]
    assert len(agent_ring) == 1  # dialed once
    url, body = agent_ring[0]
    assert url == f"{API}/Calls.json" and body["To"] == "client:a1" and body["From"] == "+8612345"
    assert query(body["Url"]) == {"call": sid, "n": "1", "agent": "a1"}
    assert body["Url"].startswith("http://localhost/twilio/callback-agent?")
    assert query(body["StatusCallback"])["leg"] == "agent"
    # the agent answers: the citizen is dialed (once, even when Twilio retries the webhook)
    for _ in range(2):
        agent_twiml = h.twilio.twiml(f"/twilio/callback-agent?call={sid}&n=1&agent=a1",
                                     {"CallSid": "CAcbagent", "CallStatus": "in-progress"})
    citizen_ring = h.http.posts("/Calls.json")[rings_before + 1:]
    assert len(citizen_ring) == 1 and citizen_ring[0][1]["To"] == CALLER
    assert query(citizen_ring[0][1]["Url"]) == {"call": sid, "n": "1"}
    assert "回拨来电" in said(agent_twiml)
    assert agent_twiml.find("Dial/Conference").text == f"hotline-{sid}-cb1"
    assert h.acd.call(sid)["state"] == "ringing"  # not connected until the citizen answers
    # the citizen answers: a short sentence, then the same conference; the ACD connects the call
    citizen = h.twilio.twiml(f"/twilio/callback-citizen?call={sid}&n=1", {"CallSid": "CAcbcitizen",
                                                                         "CallStatus": "in-progress"})
    assert verbs(citizen) == ["Say", "Dial"] and "预约的回拨已接通" in said(citizen)
    assert citizen.find("Dial/Conference").text == f"hotline-{sid}-cb1"
    assert h.acd.call(sid)["state"] == "connected" and h.acd.agent("a1")["state"] == "busy"
    # the citizen hangs up (Twilio retries): completed once, the agent wraps up
    for _ in range(2):
        h.twilio.post(f"/twilio/callback-status?call={sid}&n=1&leg=citizen", {"CallSid": "CAcbcitizen",
                                                                             "CallStatus": "completed"})
    h.twilio.post(f"/twilio/callback-status?call={sid}&n=1&leg=agent", {"CallSid": "CAcbagent",
                                                                       "CallStatus": "completed"})
    assert h.acd.call(sid)["state"] == "completed" and h.acd.agent("a1")["state"] == "wrapup"
    k = h.acd.kpis()["total"]
    assert (k["callbacks_connected"], k["abandoned"]) == (1, 1)
    assert [e["e"] for e in h.acd.events() if e.get("call") == sid].count("connect") == 1


def test_a_citizen_who_does_not_answer_is_retried_later_from_the_same_place_and_the_agent_released(hotline):
    h = hotline
    sid = missed_call(h)
    n = offered_callback(h, sid)
    place_callback(h.acd, sid, n, dialer_for(h))
    agent_leg = h.app.extensions["twilio"]["legs"].get(sid)["cb_agent_call"]
    h.twilio.twiml(f"/twilio/callback-agent?call={sid}&n=1&agent=a1", {"CallSid": agent_leg})
    for _ in range(2):
        h.twilio.post(f"/twilio/callback-status?call={sid}&n=1&leg=citizen", {"CallSid": "CAcbcitizen",
                                                                             "CallStatus": "no-answer"})
    call = h.acd.call(sid)
    assert (call["state"], call["attempts"]) == ("retry", 1)
    assert h.acd.agent("a1")["state"] == "ready"
    url, body = h.http.posts(f"/Calls/{agent_leg}.json")[-1]  # the agent's waiting leg is hung up
    assert body == {"Status": "completed"}
    assert [e["e"] for e in h.acd.events() if e.get("call") == sid].count("cbfail") == 1


def test_an_agent_who_does_not_answer_the_callback_is_paused_and_it_goes_to_the_next_seat(hotline):
    h = hotline
    sid = missed_call(h)
    n = offered_callback(h, sid)
    place_callback(h.acd, sid, n, dialer_for(h))
    h.seat("a2", {"general": 50})
    for _ in range(2):
        h.twilio.post(f"/twilio/callback-status?call={sid}&n=1&leg=agent", {"CallSid": "CAcbagent",
                                                                           "CallStatus": "no-answer"})
    assert h.acd.agent("a1")["state"] == "paused"
    call = h.acd.call(sid)
    assert (call["state"], call["agent"], call["offers"]) == ("ringing", "a2", 2)
    # a late webhook of the first offer changes nothing
    stale = h.twilio.twiml(f"/twilio/callback-agent?call={sid}&n=1&agent=a1", {"CallSid": "CAcbagent"})
    assert verbs(stale) == ["Say", "Hangup"]
    assert not [d for _, d in h.http.posts("/Calls.json") if d.get("To") == CALLER]


def test_no_free_expert_refuses_the_three_way_and_leaves_the_call_with_the_agent(hotline):
    h = hotline
    h.seat("a1", {"legal": 50}, password="pw")
    connect(h, "CAnoexp", to="12348")
    r = h.app.test_client().post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=h.token("a1"))
    assert r.status_code == 409 and r.get_json()["error"] == "专家坐席暂无空闲，请稍后再试"
    assert not h.http.posts("/Participants.json")
    assert h.acd.call("CAnoexp")["state"] == "connected" and h.acd.agent("a1")["state"] == "busy"
    assert not [e for e in h.acd.events() if e["e"] in ("transfer", "callback")]


def test_an_expert_who_does_not_answer_gives_the_call_back_to_the_agent(hotline):
    h = hotline
    h.seat("a1", {"legal": 50}, password="pw")
    h.seat("e1", {"legal_expert": 50})
    connect(h, "CAexpmiss", to="12348")
    client, auth = h.app.test_client(), h.token("a1")
    assert client.post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=auth).status_code == 200
    part = h.http.posts("/Participants.json")[0][1]
    assert query(part["StatusCallback"])["expert"] == "e1"
    for _ in range(2):
        h.twilio.post("/twilio/transfer-status?call=CAexpmiss", {"CallSid": "CAtransfer1", "CallStatus": "no-answer"})
    assert (h.acd.call("CAexpmiss")["agent"], h.acd.agent("a1")["state"]) == ("a1", "busy")
    assert h.acd.agent("e1")["state"] == "paused"  # like any seat that misses a call
    # the agent may try again once the expert is back
    h.acd.ready("e1")
    assert client.post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=auth).status_code == 200
    # cancelled while ringing: the expert is free again at once
    assert client.post("/agent/api/twilio/cancel", headers=auth).status_code == 200
    assert h.acd.agent("e1")["state"] == "ready" and h.acd.agent("a1")["state"] == "busy"


def test_the_caller_hanging_up_during_a_three_way_frees_both_seats(hotline):
    h = hotline
    h.seat("a1", {"legal": 50}, password="pw")
    h.seat("e1", {"legal_expert": 50})
    connect(h, "CAexpgone", to="12348")
    h.app.test_client().post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=h.token("a1"))
    h.twilio.post("/twilio/transfer-status?call=CAexpgone", {"CallSid": "CAtransfer1", "CallStatus": "in-progress"})
    h.twilio.post("/twilio/status", call_params("CAexpgone", CallStatus="completed"))
    assert h.acd.agent("a1")["state"] == "wrapup" and h.acd.agent("e1")["state"] == "wrapup"
    assert h.acd.call("CAexpgone")["state"] == "completed"


def test_the_survey_key_goes_to_the_queue_log_and_the_satisfaction_kpi(hotline):
    h = hotline
    h.seat("a1", {"general": 50})
    agent_leg, _ = connect(h, "CAsat")
    h.twilio.post("/twilio/agent-status?call=CAsat&agent=a1", {"CallSid": agent_leg, "CallStatus": "completed"})
    h.twilio.twiml("/twilio/survey-start", call_params("CAsat", CallStatus="in-progress"))
    for _ in range(2):
        h.twilio.twiml("/twilio/survey", call_params("CAsat", Digits="2"))
    k = h.acd.kpis()
    assert (k["total"]["surveyed"], k["total"]["survey_2"], k["total"]["satisfaction_rate"]) == (1, 1, 1.0)
    assert k["lines"]["12345"]["survey_2"] == 1


def test_emergency_words_take_the_caller_out_without_a_missed_call_callback(hotline):
    h = hotline
    start(h, "CAfire2")
    wait(h, "CAfire2")
    h.clock.advance(60)  # long enough for a missed-call callback if this were a hang-up
    left = h.twilio.twiml("/twilio/heard", call_params("CAfire2", SpeechResult="楼下着火了，好大的烟"))
    assert verbs(left) == ["Leave"]
    call = h.acd.call("CAfire2")
    assert call["state"] == "left" and call["kind"] == "live"
    k = h.acd.kpis()["total"]
    assert (k["left_emergency"], k["abandoned"], k["callbacks"]) == (1, 0, 0)


def _connected_callback(h, sid):
    n = offered_callback(h, sid)
    assert place_callback(h.acd, sid, n, dialer_for(h)) == PLACED
    h.twilio.twiml(f"/twilio/callback-agent?call={sid}&n=1&agent=a1", {"CallSid": "CAcbagent",
                                                                        "CallStatus": "in-progress"})
    citizen = h.twilio.twiml(f"/twilio/callback-citizen?call={sid}&n=1", {"CallSid": "CAcbcitizen",
                                                                         "CallStatus": "in-progress"})
    return citizen.find("Dial").get("action")


def test_after_a_callback_the_agent_hangs_up_and_the_citizen_rates_the_service(hotline):
    h = hotline
    sid = missed_call(h, "CAcbsurvey")
    action = _connected_callback(h, sid)
    assert action == f"callback-survey?call={sid}&n=1"  # relative to the citizen's TwiML URL
    h.twilio.post(f"/twilio/callback-status?call={sid}&n=1&leg=agent", {"CallSid": "CAcbagent",
                                                                       "CallStatus": "completed"})
    # the conference ended with the citizen still on the line: the satisfaction question
    q = h.twilio.twiml(f"/twilio/{action}", {"CallSid": "CAcbcitizen", "CallStatus": "in-progress",
                                             "DialCallStatus": "completed"})
    gather = q.find("Gather")
    assert gather.get("numDigits") == "1" and "满意请按1" in said(gather)
    assert gather.get("action") == f"callback-survey?call={sid}&n=1&step=rate"
    for _ in range(2):  # Twilio retries: rated once
        bye = h.twilio.twiml(f"/twilio/{gather.get('action')}", {"CallSid": "CAcbcitizen", "Digits": "1",
                                                                 "CallStatus": "in-progress"})
    assert verbs(bye) == ["Say", "Hangup"]
    assert h.tickets.tickets[h.flow.state(sid).ticket]["survey"] == "satisfied"
    k = h.acd.kpis()["total"]
    assert (k["surveyed"], k["survey_1"], k["callbacks_connected"]) == (1, 1, 1)


def test_a_citizen_who_hangs_up_after_the_callback_is_not_asked_and_nothing_is_rated(hotline):
    h = hotline
    sid = missed_call(h, "CAcbgone")
    action = _connected_callback(h, sid)
    h.twilio.post(f"/twilio/callback-status?call={sid}&n=1&leg=citizen", {"CallSid": "CAcbcitizen",
                                                                         "CallStatus": "completed"})
    after = h.twilio.twiml(f"/twilio/{action}", {"CallSid": "CAcbcitizen", "CallStatus": "completed"})
    assert verbs(after) == []
    assert h.acd.kpis()["total"]["surveyed"] == 0


def test_no_survey_for_a_callback_the_citizen_never_answered(hotline):
    h = hotline
    sid = missed_call(h, "CAcbnever")
    n = offered_callback(h, sid)
    assert place_callback(h.acd, sid, n, dialer_for(h)) == PLACED
    q = h.twilio.twiml(f"/twilio/callback-survey?call={sid}&n=1", {"CallSid": "CAcbcitizen",
                                                                   "CallStatus": "in-progress"})
    assert verbs(q) == ["Say", "Hangup"] and q.find("Gather") is None
    rated = h.twilio.twiml(f"/twilio/callback-survey?call={sid}&n=1&step=rate", {"CallSid": "CAcbcitizen",
                                                                                 "Digits": "3"})
    assert verbs(rated) == ["Say", "Hangup"] and h.acd.kpis()["total"]["surveyed"] == 0
