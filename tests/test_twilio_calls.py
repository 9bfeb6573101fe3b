"""A citizen's call through Twilio, from first ring to agent, transfers and survey.

Signed requests go to the Flask test client; TwiML is parsed as XML; the ACD is the real Redis
one; every Twilio REST request is captured by an injected HTTP client (no network).
"""
from __future__ import annotations

import time
from datetime import datetime

import pytest

from app import create_app
from call_routing.acd import Agent
from call_routing.rules import CHINA_TZ
from ivr.flow import MemoryTickets
from tests.acd_support import Clock
from tests.twilio_support import (ACCOUNT, API, TOKEN, RecordingHttpClient, SignedTwilio, call_params, query,
                                  said, verbs)

CALLER = "+8613812345678"


@pytest.fixture
def hotline(redis_url, rules_path):
    http = RecordingHttpClient()
    tickets = MemoryTickets()
    app = create_app({"RULES_PATH": str(rules_path), "REDIS_URL": redis_url, "TWILIO_AUTH_TOKEN": TOKEN,
                      "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_HTTP_CLIENT": http, "TWILIO_CALLER_ID": "+8612345",
                      "HOTLINE_SERVICES": {"tickets": tickets, "classify": None}})
    clock = Clock(datetime(2025, 6, 3, 10, 0, tzinfo=CHINA_TZ).timestamp())  # a Tuesday, in transition windows
    tw = app.extensions["twilio"]
    acd = app.extensions["acd"]
    acd.clock = tw["flow"].clock = clock

    class Hotline:
        pass

    h = Hotline()
    h.app, h.http, h.tickets, h.clock, h.acd, h.flow = app, http, tickets, clock, acd, tw["flow"]
    h.twilio = SignedTwilio(app.test_client())

    def seat(agent_id, skills, password=None):
        acd.save_agent(Agent(agent_id, f"坐席{agent_id}", skills, endpoints=(f"client:{agent_id}",)), password=password)
        acd.login(agent_id)

    def token(agent_id):
        r = app.test_client().post("/agent/api/login", json={"agent_id": agent_id, "password": "pw"})
        assert r.status_code == 200, r.data
        return {"Authorization": "Bearer " + r.get_json()["token"]}

    h.seat, h.token = seat, token
    return h


def start(h, sid, to="12345"):
    return h.twilio.twiml("/twilio/voice", call_params(sid, to, CALLER))


def wait(h, sid):
    return h.twilio.twiml("/twilio/wait", call_params(sid, CallStatus="in-progress", QueuePosition="1",
                                                     QueueTime="0"))


def connect(h, sid, agent="a1", to="12345"):
    """Caller queues, the ACD offers agent ``agent`` and the agent answers. Returns the agent leg SID."""
    start(h, sid, to)
    wait(h, sid)
    ring = h.http.posts("/Calls.json")[-1]
    agent_leg = h.app.extensions["twilio"]["legs"].get(sid)["agent_call"]  # the SID Twilio gave the ringing leg
    assert query(ring[1]["Url"])["agent"] == agent
    agent_twiml = h.twilio.twiml(f"/twilio/agent-answer?call={sid}&agent={agent}",
                                 {"CallSid": agent_leg, "CallStatus": "in-progress"})
    if agent_twiml.find("Dial/Conference") is not None:
        h.http.joined.setdefault(f"hotline-{sid}", set()).add(agent_leg)
    h.twilio.post("/twilio/conference-events", {"FriendlyName": f"hotline-{sid}", "ConferenceSid": "CF" + "1" * 32,
                                                "StatusCallbackEvent": "conference-start"})
    return agent_leg, agent_twiml


# -- each mode on arrival ------------------------------------------------------------------------

def test_a_caller_to_12345_is_queued_for_the_general_seats_with_no_menu_and_is_recorded(hotline):
    root = start(hotline, "CAmain1")
    assert verbs(root) == ["Say", "Start", "Enqueue"]  # one sentence of greeting, then the queue
    assert root.find("Start/Recording").get("recordingStatusCallback") == "recording"
    enqueue = root.find("Enqueue")
    assert enqueue.text == "hold-general" and enqueue.get("waitUrl") == "wait"
    assert root.find("Gather") is None  # never a menu before a human


def test_a_retired_number_in_its_transition_window_hears_the_merge_prompt_then_queues_for_its_domain(hotline):
    root = start(hotline, "CAmerge1", to="+8612301")
    assert verbs(root) == ["Say", "Start", "Enqueue"]
    say = root.find("Say")  # a voice that speaks Mandarin, never Twilio's default "man"
    assert "已并入12345" in said(root) and (say.get("voice"), say.get("language")) == ("Polly.Zhiyu", "cmn-CN")
    assert root.find("Enqueue").text == "hold-tourism"


def test_after_the_transition_window_a_retired_number_hears_the_after_text_and_still_reaches_a_seat(hotline):
    hotline.clock.now = datetime(2027, 3, 1, 10, 0, tzinfo=CHINA_TZ).timestamp()
    root = start(hotline, "CAmerge2", to="12301")
    assert "已停用" in said(root) and "已并入" not in said(root)
    assert root.find("Enqueue").text == "hold-tourism"


def test_a_dual_number_goes_straight_to_its_own_seat_group(hotline):
    root = start(hotline, "CAdual1", to="12348")
    assert verbs(root) == ["Say", "Start", "Enqueue"]  # the greeting, then its own seats
    assert root.find("Enqueue").text == "hold-legal"


def test_a_subcenter_number_is_dialled_with_the_ticket_and_falls_back_to_its_seat_group(hotline):
    root = start(hotline, "CAsub1", to="12360")
    dial = root.find("Dial")
    assert dial.get("action") == "dial-ended"
    sip = dial.find("Sip").text
    assert sip.startswith("sip:12360@subcenter-customs.example.gov.cn?X-Hotline-Ticket=T")
    back = hotline.twilio.twiml("/twilio/dial-ended", call_params("CAsub1", "12360", CALLER, CallStatus="in-progress",
                                                                  DialCallStatus="no-answer"))
    assert back.find("Enqueue").text == "hold-customs"


# -- waiting -------------------------------------------------------------------------------------

def test_a_waiting_caller_is_invited_to_speak_then_told_the_position_and_offered_a_callback(hotline):
    for n in range(3):
        start(hotline, f"CAahead{n}")
        wait(hotline, f"CAahead{n}")
    start(hotline, "CAme")
    held = wait(hotline, "CAme")
    assert verbs(held) == ["Play"] and held.find("Play").text == "/media/hold-music.wav"  # hold music, no seat free
    hotline.clock.advance(3)
    invite = wait(hotline, "CAme")
    gather = invite.find("Gather")
    assert gather.get("input") == "speech" and gather.get("language") == "zh-CN" and gather.get("action") == "heard"
    assert "简要说出" in said(gather)
    hotline.clock.advance(27)
    assert "您前面还有三位" in said(wait(hotline, "CAme"))
    hotline.clock.advance(30)
    offer = wait(hotline, "CAme").find("Gather")
    assert offer.get("input") == "dtmf" and offer.get("numDigits") == "1" and offer.get("action") == "pressed"
    assert "按1" in said(offer) and "排队位置不变" in said(offer)
    booked = hotline.twilio.twiml("/twilio/pressed", call_params("CAme", Digits="1"))
    assert verbs(booked) == ["Say", "Hangup"] and "预约回拨" in said(booked)
    call = hotline.acd.call("CAme")
    assert call["kind"] == "callback" and call["state"] == "waiting"  # keeps its place in line
    assert hotline.acd.position("CAme").position == 4


def test_emergency_words_heard_while_waiting_take_the_caller_out_of_the_queue_to_119(hotline):
    start(hotline, "CAfire")
    wait(hotline, "CAfire")
    left = hotline.twilio.twiml("/twilio/heard", call_params("CAfire", SpeechResult="楼下着火了，好大的烟"))
    assert verbs(left) == ["Leave"]
    out = hotline.twilio.twiml("/twilio/queue-exit", call_params("CAfire", QueueResult="leave"))
    assert verbs(out) == ["Say", "Dial"] and "119" in said(out)
    assert out.find("Dial/Number").text == "119"
    assert hotline.acd.call("CAfire")["state"] == "abandoned" or hotline.acd.position("CAfire").position == 0


def test_a_caller_who_hangs_up_in_queue_is_removed_once_even_when_twilio_retries(hotline):
    start(hotline, "CAgone")
    wait(hotline, "CAgone")
    for _ in range(2):
        r = hotline.twilio.post("/twilio/status", call_params("CAgone", CallStatus="completed"))
        assert r.status_code == 204
    assert hotline.acd.call("CAgone")["state"] == "abandoned"
    assert [e["e"] for e in hotline.acd.events() if e.get("call") == "CAgone"].count("abandon") == 1
    assert hotline.tickets.tickets[hotline.flow.state("CAgone").ticket]["status"] == "abandoned"


def test_the_recording_of_the_waiting_caller_goes_to_the_ticket_once(hotline):
    start(hotline, "CArec")
    params = call_params("CArec", RecordingStatus="completed", RecordingSid="RE1",
                         RecordingUrl="https://api.twilio.com/rec/RE1")
    for _ in range(2):
        assert hotline.twilio.post("/twilio/recording", params).status_code == 204
    ticket = hotline.flow.state("CArec").ticket
    assert hotline.tickets.tickets[ticket]["recordings"] == ["https://api.twilio.com/rec/RE1"]


# -- agent, conference, transfers, survey ------------------------------------------------------

def test_the_assigned_agent_is_rung_and_on_answer_the_caller_joins_a_conference_with_them(hotline):
    hotline.seat("a1", {"general": 50})
    agent_leg, agent_twiml = connect(hotline, "CAconn")
    url, ring = hotline.http.posts("/Calls.json")[0]
    assert url == f"{API}/Calls.json"
    assert ring["To"] == "client:a1" and ring["From"] == "+8612345" and str(ring["Timeout"]) == "20"
    assert ring["Url"] == "http://localhost/twilio/agent-answer?call=CAconn&agent=a1"
    assert ring["StatusCallback"] == "http://localhost/twilio/agent-status?call=CAconn&agent=a1"
    url, move = hotline.http.posts("/Calls/CAconn.json")[0]
    assert '<Stop><Recording name="intake" /></Stop>' in move["Twiml"]
    assert '<Conference' in move["Twiml"] and 'endConferenceOnExit="true"' in move["Twiml"]
    conf = agent_twiml.find("Dial/Conference")
    assert conf.text == "hotline-CAconn" and conf.get("endConferenceOnExit") == "false"
    assert "工单T" in said(agent_twiml)
    assert hotline.acd.call("CAconn")["state"] == "connected"


def test_an_agent_who_does_not_answer_is_skipped_and_the_next_agent_is_rung(hotline):
    hotline.seat("a1", {"general": 50})
    start(hotline, "CAmiss")
    wait(hotline, "CAmiss")
    hotline.seat("a2", {"general": 50})
    for _ in range(2):  # Twilio retries the status callback
        hotline.twilio.post("/twilio/agent-status?call=CAmiss&agent=a1", {"CallSid": "CAagentleg1",
                                                                          "CallStatus": "no-answer"})
    rings = [d["To"] for _, d in hotline.http.posts("/Calls.json")]
    assert rings == ["client:a1", "client:a2"]
    assert hotline.acd.agent("a1")["state"] == "paused"


def test_three_way_to_the_expert_group_then_the_agent_leaves_warm_and_the_caller_gets_the_survey(hotline):
    hotline.seat("a1", {"legal": 50}, password="pw")
    hotline.seat("e1", {"legal_expert": 50})
    connect(hotline, "CA3way", to="12348")
    auth = hotline.token("a1")
    client = hotline.app.test_client()
    r = client.post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=auth)
    assert r.status_code == 200 and r.get_json()["target"] == "client:e1"
    # reserved through the ACD: the expert seat rings for this call, the agent stays out of rotation
    assert hotline.acd.agent("e1")["state"] == "ringing" and hotline.acd.call("CA3way")["agent"] == "e1"
    assert (hotline.acd.agent("a1")["state"], hotline.acd.agent("a1")["reason"]) == ("paused", "three-way")
    assert not hotline.http.posts("/Calls.json")[1:]  # the expert is a participant, not a new agent call
    url, part = hotline.http.posts("/Participants.json")[0]
    assert url == f"{API}/Conferences/CF{'1' * 32}/Participants.json"
    assert part["To"] == "client:e1" and part["Label"] == "transfer" and part["EndConferenceOnExit"] == "false"
    assert part["StatusCallbackEvent"] == ["answered", "completed"]
    hotline.twilio.post("/twilio/transfer-status?call=CA3way", {"CallSid": "CAtransfer", "CallStatus": "in-progress"})
    assert hotline.acd.agent("e1")["state"] == "busy" and hotline.acd.call("CA3way")["state"] == "connected"
    assert client.post("/agent/api/twilio/leave", headers=auth).status_code == 200
    method, url, _ = hotline.http.requests[-1]
    assert method == "DELETE" and url.endswith(f"/Participants/{hotline.app.extensions['twilio']['legs'].get('CA3way')['agent_call']}.json")
    assert hotline.acd.agent("a1")["state"] == "wrapup"
    # the expert hangs up: the caller is alone and is taken to the survey
    hotline.twilio.post("/twilio/transfer-status?call=CA3way", {"CallSid": "CAtransfer", "CallStatus": "completed"})
    url, move = hotline.http.posts("/Calls/CA3way.json")[-1]
    assert move == {"Url": "http://localhost/twilio/survey-start", "Method": "POST"}
    hotline.twilio.twiml("/twilio/survey-start", call_params("CA3way", CallStatus="in-progress"))
    assert hotline.acd.call("CA3way")["state"] == "completed" and hotline.acd.agent("e1")["state"] == "wrapup"


def test_cold_transfer_drops_the_agent_when_the_target_answers(hotline):
    hotline.seat("a1", {"legal": 50}, password="pw")
    hotline.seat("e1", {"legal_expert": 50})
    connect(hotline, "CAcold", to="12348")
    auth = hotline.token("a1")
    r = hotline.app.test_client().post("/agent/api/twilio/cold", json={"kind": "expert"}, headers=auth)
    assert r.status_code == 200 and r.get_json()["mode"] == "cold"
    assert not any(m == "DELETE" for m, _, _ in hotline.http.requests)  # agent stays until the target answers
    hotline.twilio.post("/twilio/transfer-status?call=CAcold", {"CallSid": "CAt", "CallStatus": "in-progress"})
    assert [m for m, _, _ in hotline.http.requests].count("DELETE") == 1
    # the call goes on with the expert the ACD reserved; the agent wraps up
    call = hotline.acd.call("CAcold")
    assert (call["state"], call["agent"]) == ("connected", "e1")
    assert hotline.acd.agent("e1")["state"] == "busy" and hotline.acd.agent("a1")["state"] == "wrapup"


def test_cancelling_an_unanswered_transfer_hangs_up_the_target_and_keeps_caller_with_agent(hotline):
    hotline.seat("a1", {"legal": 50}, password="pw")
    hotline.seat("e1", {"legal_expert": 50})
    connect(hotline, "CAcancel", to="12348")
    auth = hotline.token("a1")
    client = hotline.app.test_client()
    client.post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=auth)
    target = hotline.app.extensions["twilio"]["legs"].get("CAcancel")["transfer_call"]
    r = client.post("/agent/api/twilio/cancel", headers=auth)
    assert r.status_code == 200
    url, body = hotline.http.posts(f"/Calls/{target}.json")[0]
    assert body == {"Status": "canceled"}
    # the target's own status callback afterwards changes nothing for the caller
    hotline.twilio.post("/twilio/transfer-status?call=CAcancel", {"CallSid": target, "CallStatus": "canceled"})
    assert not hotline.http.posts("/Calls/CAcancel.json")[1:]  # caller not moved: still with the agent
    assert hotline.acd.call("CAcancel")["state"] == "connected"
    # and a new transfer is possible
    assert client.post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=auth).status_code == 200


def test_after_the_agent_hangs_up_the_caller_rates_the_service_on_the_ticket(hotline):
    hotline.seat("a1", {"general": 50})
    agent_leg, _ = connect(hotline, "CAsurvey")
    for _ in range(2):
        hotline.twilio.post("/twilio/agent-status?call=CAsurvey&agent=a1", {"CallSid": agent_leg,
                                                                            "CallStatus": "completed"})
    moves = hotline.http.posts("/Calls/CAsurvey.json")
    assert moves[-1][1] == {"Url": "http://localhost/twilio/survey-start", "Method": "POST"} and len(moves) == 2
    q = hotline.twilio.twiml("/twilio/survey-start", call_params("CAsurvey", CallStatus="in-progress"))
    gather = q.find("Gather")
    assert gather.get("numDigits") == "1" and "满意请按1" in said(gather) and "不满意请按3" in said(gather)
    bye = hotline.twilio.twiml("/twilio/survey", call_params("CAsurvey", Digits="1"))
    assert verbs(bye) == ["Say", "Hangup"]
    ticket = hotline.flow.state("CAsurvey").ticket
    assert hotline.tickets.tickets[ticket]["survey"] == "satisfied"
    assert hotline.acd.call("CAsurvey")["state"] == "completed"


# -- Redis restarted empty while an agent is being rung -----------------------------------------

def test_a_caller_still_queued_when_redis_forgot_the_call_is_not_hung_up_and_is_queued_again(hotline, redis_url):
    import redis as redis_lib

    hotline.seat("a1", {"general": 50})
    start(hotline, "CAwipe")
    wait(hotline, "CAwipe")
    ring = hotline.http.posts("/Calls.json")[-1]
    agent_leg = f"CAagentleg{len(hotline.http.requests)}"
    assert query(ring[1]["Url"])["agent"] == "a1"
    redis_lib.Redis.from_url(redis_url).flushall()  # Redis restarted empty while the agent's phone rang
    hotline.http.running_conferences = []  # the caller is still holding in <Enqueue>
    agent_twiml = hotline.twilio.twiml("/twilio/agent-answer?call=CAwipe&agent=a1",
                                       {"CallSid": agent_leg, "CallStatus": "in-progress"})
    assert verbs(agent_twiml)[-1] == "Hangup" and "来电已结束" in said(agent_twiml)
    hotline.twilio.post("/twilio/agent-status?call=CAwipe&agent=a1", {"CallSid": agent_leg, "CallStatus": "completed"})
    assert hotline.http.posts("/Calls/CAwipe.json") == []  # no goodbye, no hang-up for the waiting citizen
    url, asked = [(u, d) for m, u, d in hotline.http.requests if m == "GET"][-1]  # Twilio was asked first
    assert url == f"{API}/Conferences.json"
    assert asked["FriendlyName"] == "hotline-CAwipe" and asked["Status"] == "in-progress"
    hold = wait(hotline, "CAwipe")  # the next wait poll registers the call again: it is queued, not silent
    assert "Hangup" not in verbs(hold)
    assert hotline.acd.call("CAwipe")["state"] == "waiting"
    hotline.seat("a1", {"general": 50})  # the agent's console signs the seat in again
    wait(hotline, "CAwipe")
    again = hotline.http.posts("/Calls.json")[-1][1]
    assert again["To"] == "client:a1" and query(again["Url"])["call"] == "CAwipe"


def test_a_caller_in_the_conference_when_redis_forgot_the_call_hears_goodbye_when_the_agent_hangs_up(
        hotline, redis_url):
    import redis as redis_lib

    hotline.seat("a1", {"general": 50})
    agent_leg, _ = connect(hotline, "CAgone")
    redis_lib.Redis.from_url(redis_url).flushall()
    hotline.twilio.post("/twilio/agent-status?call=CAgone&agent=a1", {"CallSid": agent_leg, "CallStatus": "completed"})
    url, move = hotline.http.posts("/Calls/CAgone.json")[-1]
    assert "感谢您的来电" in move["Twiml"] and "<Hangup" in move["Twiml"]  # not left alone in a silent conference


def test_a_conference_event_after_redis_forgot_the_call_does_not_hide_that_the_caller_is_alone(hotline, redis_url):
    import redis as redis_lib

    hotline.seat("a1", {"general": 50})
    agent_leg, _ = connect(hotline, "CApartial")
    r = redis_lib.Redis.from_url(redis_url)
    r.flushall()  # Redis restarted empty while the two talked...
    hotline.twilio.post("/twilio/conference-events", {"FriendlyName": "hotline-CApartial", "CallSid": agent_leg,
                                                       "ConferenceSid": "CF" + "7" * 32,
                                                       "StatusCallbackEvent": "participant-join"})
    assert r.hget("twilio:leg:CApartial", "conference_sid")  # ...and a conference event wrote one fact back
    assert 0 < r.ttl("twilio:leg:CApartial") <= 24 * 3600  # which expires like every call's facts
    hotline.twilio.post("/twilio/agent-status?call=CApartial&agent=a1", {"CallSid": agent_leg,
                                                                         "CallStatus": "completed"})
    url, move = hotline.http.posts("/Calls/CApartial.json")[-1]
    assert "感谢您的来电" in move["Twiml"] and "<Hangup" in move["Twiml"]  # not left alone in a silent conference


def test_a_late_wait_request_after_redis_forgot_a_caller_already_talking_does_not_ring_a_second_agent(
        hotline, redis_url):
    import redis as redis_lib

    hotline.seat("a1", {"general": 50})
    agent_leg, _ = connect(hotline, "CAlate")  # the agent's answer moved the caller into the conference
    rings = len(hotline.http.posts("/Calls.json"))
    redis_lib.Redis.from_url(redis_url).flushall()  # Redis restarted empty while the two talked
    hotline.seat("a2", {"general": 50})  # a second seat is free
    # a wait request Twilio sent just before the move reaches the app only now
    hold = wait(hotline, "CAlate")
    assert "Hangup" not in verbs(hold)  # Twilio discards it; the caller stays with a1
    assert hotline.acd.call("CAlate") is None  # not queued again...
    hotline.acd.tick()
    assert len(hotline.http.posts("/Calls.json")) == rings  # ...so no second agent is rung for them
    # when a1 hangs up, the caller is not left alone in the conference
    hotline.twilio.post("/twilio/agent-status?call=CAlate&agent=a1", {"CallSid": agent_leg, "CallStatus": "completed"})
    assert "<Hangup" in hotline.http.posts("/Calls/CAlate.json")[-1][1]["Twiml"]


def test_an_earlier_agent_legs_late_status_leaves_the_agent_now_ringing_alone(hotline):
    hotline.seat("a1", {"general": 50})
    start(hotline, "CAtwo")
    wait(hotline, "CAtwo")
    first = f"CAagentleg{len(hotline.http.requests)}"
    legs = hotline.app.extensions["twilio"]["legs"]
    legs.set("CAtwo", agent_call="CAagentleg-now", agent="a1")  # the call's agent is now on another leg
    for status in ("no-answer", "completed"):  # the earlier leg's callbacks come late
        hotline.twilio.post("/twilio/agent-status?call=CAtwo&agent=a1", {"CallSid": first, "CallStatus": status})
    assert legs.get("CAtwo")["agent_call"] == "CAagentleg-now"  # the ringing agent is still the call's
    assert hotline.http.posts("/Calls/CAtwo.json") == []  # and the caller was neither moved nor hung up


def test_an_agent_whose_answer_could_not_be_recorded_still_talks_and_the_caller_then_gets_the_survey(
        hotline, monkeypatch):
    hotline.seat("a1", {"general": 50})
    start(hotline, "CAhalf")
    wait(hotline, "CAhalf")
    agent_leg = f"CAagentleg{len(hotline.http.requests)}"

    def redis_died(call_id):
        raise ConnectionError("Redis went away while the agent answered")

    monkeypatch.setattr(hotline.flow, "agent_answered", redis_died)
    agent_twiml = hotline.twilio.twiml("/twilio/agent-answer?call=CAhalf&agent=a1",
                                       {"CallSid": agent_leg, "CallStatus": "in-progress"})
    assert agent_twiml.find("Dial/Conference").text == "hotline-CAhalf"  # joins the caller all the same
    assert "<Conference" in hotline.http.posts("/Calls/CAhalf.json")[0][1]["Twiml"]
    for _ in range(2):  # the agent hangs up; Twilio retries the callback
        hotline.twilio.post("/twilio/agent-status?call=CAhalf&agent=a1", {"CallSid": agent_leg,
                                                                          "CallStatus": "completed"})
    moves = hotline.http.posts("/Calls/CAhalf.json")
    assert moves[-1][1] == {"Url": "http://localhost/twilio/survey-start", "Method": "POST"} and len(moves) == 2



def test_an_agent_hang_up_the_app_never_acted_on_is_found_by_asking_twilio_and_the_caller_gets_the_survey(
        hotline):
    from ivr.twilio.calls import OfferListener

    hotline.seat("a1", {"general": 50})
    agent_leg, _ = connect(hotline, "CAunheard")
    tw = hotline.app.extensions["twilio"]
    listeners = [OfferListener(hotline.acd, tw["board"]) for _ in range(2)]  # two web processes
    sent = len(hotline.http.requests)
    assert listeners[0].check_hang_ups() == 0  # the agent still talks: Twilio says so, nothing moves
    running = ("GET", f"{API}/Conferences.json", {"Status": "in-progress", "PageSize": 200})
    # the agent's leg, and the running conferences (none whose agent the app does not know)
    assert hotline.http.requests[sent:] == [("GET", f"{API}/Calls/{agent_leg}.json", {}), running]
    hotline.acd.redis.delete("twilio:hang-up-check")  # the next period

    # the agent hangs up; the status callback is never acted on (Redis unreachable, the web
    # process gone: Twilio does not send it again)
    hotline.http.call_status[agent_leg] = "completed"
    sent = len(hotline.http.requests)
    assert [listener.check_hang_ups() for listener in listeners] == [1, 0]  # one process asks Twilio
    assert hotline.http.requests[sent:] == [
        ("GET", f"{API}/Calls/{agent_leg}.json", {}),
        ("POST", f"{API}/Calls/CAunheard.json", {"Url": "http://localhost/twilio/survey-start", "Method": "POST"}),
        running]
    hotline.twilio.post("/twilio/agent-status?call=CAunheard&agent=a1", {"CallSid": agent_leg,
                                                                          "CallStatus": "completed"})  # a late one
    hotline.acd.redis.delete("twilio:hang-up-check")
    assert tw["board"].missed_hang_ups() == 0
    assert [r for r in hotline.http.requests[sent + 2:] if r[0] != "GET"] == []  # neither moved the caller again
    q = hotline.twilio.twiml("/twilio/survey-start", call_params("CAunheard", CallStatus="in-progress"))
    assert "满意请按1" in said(q.find("Gather"))
    hotline.twilio.twiml("/twilio/survey", call_params("CAunheard", Digits="2"))
    assert hotline.tickets.tickets[hotline.flow.state("CAunheard").ticket]["survey"] == "basically_satisfied"
    assert hotline.acd.agent("a1")["state"] != "busy"

def test_a_caller_alone_after_redis_forgot_the_call_and_the_agents_hang_up_went_unheard_hears_goodbye(
        hotline, redis_url):
    import redis as redis_lib

    from ivr.twilio.calls import OfferListener

    hotline.seat("a1", {"general": 50})
    hotline.seat("a2", {"general": 50})
    agent_leg, _ = connect(hotline, "CAlost", agent="a1")
    connect(hotline, "CAtalks", agent="a2")
    redis_lib.Redis.from_url(redis_url).flushall()  # Redis restarted empty while both talked
    # the first agent hangs up; the status callback never reaches the app (its web process was down)
    hotline.http.joined["hotline-CAlost"].discard(agent_leg)
    board = hotline.app.extensions["twilio"]["board"]
    board.ALONE_AFTER_S = 0.2
    listener = OfferListener(hotline.acd, board)
    moves = len(hotline.http.posts("/Calls/CAlost.json"))
    assert listener.check_hang_ups() == 0  # seen alone once: it may be an agent joining this very moment
    hotline.acd.redis.delete("twilio:hang-up-check")  # the next period
    time.sleep(0.25)
    assert listener.check_hang_ups() == 1
    (_, move), = hotline.http.posts("/Calls/CAlost.json")[moves:]
    assert "感谢您的来电" in move["Twiml"] and "<Hangup" in move["Twiml"]  # not left in a silent conference
    assert len(hotline.http.posts("/Calls/CAtalks.json")) == 1  # the caller still talking was only moved in


def test_a_caller_seen_alone_just_before_the_agent_joins_stays_with_the_agent(hotline, redis_url):
    import redis as redis_lib

    from ivr.twilio.calls import OfferListener

    hotline.seat("a1", {"general": 50})
    agent_leg, _ = connect(hotline, "CAjoin")
    redis_lib.Redis.from_url(redis_url).flushall()
    joined = hotline.http.joined.pop("hotline-CAjoin")  # the caller moved in, the agent a moment away
    board = hotline.app.extensions["twilio"]["board"]
    board.ALONE_AFTER_S = 0.2
    listener = OfferListener(hotline.acd, board)
    assert listener.check_hang_ups() == 0
    hotline.http.joined["hotline-CAjoin"] = joined  # the agent is in
    time.sleep(0.25)
    hotline.acd.redis.delete("twilio:hang-up-check")
    assert listener.check_hang_ups() == 0
    hotline.http.joined["hotline-CAjoin"] = set()  # gone later: a first sighting again, not the old one
    hotline.acd.redis.delete("twilio:hang-up-check")
    assert listener.check_hang_ups() == 0
    assert len(hotline.http.posts("/Calls/CAjoin.json")) == 1


def test_when_twilio_cannot_list_its_conferences_the_check_moves_nobody_and_asks_again_later(hotline, redis_url):
    import redis as redis_lib

    from ivr.twilio.calls import OfferListener

    hotline.seat("a1", {"general": 50})
    agent_leg, _ = connect(hotline, "CAlater")
    redis_lib.Redis.from_url(redis_url).flushall()
    hotline.http.joined["hotline-CAlater"].discard(agent_leg)  # alone, and nothing knows the call
    board = hotline.app.extensions["twilio"]["board"]
    board.ALONE_AFTER_S = 0.0
    listener = OfferListener(hotline.acd, board)
    hotline.http.conferences_fail = True  # Twilio's API is in trouble: a warning, nobody moved
    assert listener.check_hang_ups() == 0
    assert hotline.http.posts("/Calls/CAlater.json")[-1][1]["Twiml"].count("<Conference") == 1
    assert not board.in_conference("CAlater")  # and a caller it cannot place is not moved on either
    hotline.http.conferences_fail = False  # Twilio answers again
    hotline.acd.redis.delete("twilio:hang-up-check")
    assert listener.check_hang_ups() == 0  # first sighting
    hotline.acd.redis.delete("twilio:hang-up-check")
    assert listener.check_hang_ups() == 1
    assert "感谢您的来电" in hotline.http.posts("/Calls/CAlater.json")[-1][1]["Twiml"]


def test_the_hold_music_twilio_plays_is_the_project_s_own_clip_served_without_a_signature(hotline):
    import io
    import wave

    r = hotline.app.test_client().get("/media/hold-music.wav")  # Twilio fetches media with a plain GET
    assert r.status_code == 200 and r.mimetype == "audio/wav"
    with wave.open(io.BytesIO(r.data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert 9 <= w.getnframes() / w.getframerate() <= 11  # one wait round
        frames = w.readframes(w.getnframes())
    assert max(abs(int.from_bytes(frames[i:i + 2], "little", signed=True)) for i in range(0, 16000, 2)) > 1000
