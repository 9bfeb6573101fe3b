"""The agent console and the supervisor dashboard over a real call: Twilio webhooks (signed),
the Redis ACD, the SQLite ticket store; the agent acts through the same JSON API the page uses."""
from __future__ import annotations

import re

import pytest

from call_routing.acd import Agent
from tests.console_support import csrf_of, form_csrf, make_console_app, open_expert_seats, sign_in
from tests.twilio_support import SignedTwilio, call_params

CALLER = "+8613812345678"
SAID = "我想咨询一下法律援助怎么申请，我住在朝阳区幸福路12号"


@pytest.fixture
def app(tmp_path, redis_url):
    app = make_console_app(tmp_path, redis_url)
    acd = app.extensions["acd"]
    acd.save_agent(Agent("a1", "张坐席", {"legal": 50, "general": 10}, endpoints=("client:a1",)))
    acd.save_agent(Agent("e1", "法律专家", {"legal_expert": 50}, endpoints=("sip:expert1@pbx.example.gov.cn",),
                         expert=True))
    return app


def seat_token(app, client) -> dict:
    """The agent signs in, takes the seat (paused), and the page carries its agent-API token."""
    sign_in(client, "agent1")
    page = client.get("/agent/").get_data(as_text=True)
    assert "上岗" in page and "data-token" not in page
    r = client.post("/agent/seat/login", data={"csrf_token": form_csrf(page), "state": "paused"})
    assert r.status_code == 302
    page = client.get("/agent/").get_data(as_text=True)
    token = re.search(r'data-token="([^"]+)"', page).group(1)
    return {"Authorization": f"Bearer {token}"}


def call_waiting(app, sid="CAcitizen1", to="12348", said=SAID):
    tw = SignedTwilio(app.test_client())
    tw.twiml("/twilio/voice", call_params(sid, to, CALLER))
    tw.twiml("/twilio/wait", call_params(sid, CallStatus="in-progress"))
    if said:
        tw.post("/twilio/heard", call_params(sid, CallStatus="in-progress", SpeechResult=said))
    return tw


def answer(app, tw, sid="CAcitizen1", agent="a1"):
    """The agent picks up the leg the switchboard rang."""
    leg = app.extensions["twilio"]["legs"].get(sid)["agent_call"]
    tw.twiml(f"/twilio/agent-answer?call={sid}&agent={agent}", {"CallSid": leg, "CallStatus": "in-progress"})
    tw.post("/twilio/conference-events", {"FriendlyName": f"hotline-{sid}", "ConferenceSid": "CF" + "1" * 32,
                                          "StatusCallbackEvent": "conference-start"})


def on_a_call(app, sid="CAcitizen1"):
    """Agent a1 signed in and ready, talking to the citizen of ``sid``: (their client, their
    agent-API headers, the citizen's Twilio)."""
    client = app.test_client()
    auth = seat_token(app, client)
    tw = call_waiting(app, sid)
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    answer(app, tw, sid)
    return client, auth, tw


def test_an_agent_gets_the_call_with_its_prefilled_ticket_confirms_it_and_starts_a_three_way_transfer(app):
    acd = app.extensions["acd"]
    open_expert_seats(app)
    acd.login("e1")  # a free expert seat
    client = app.test_client()
    auth = seat_token(app, client)
    assert client.get("/agent/api/me", headers=auth).get_json()["agent"]["state"] == "paused"
    tw = call_waiting(app)
    assert client.get("/agent/api/ticket", headers=auth).get_json()["call"] is None
    r = client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    assert r.status_code == 200
    me = client.get("/agent/api/me", headers=auth).get_json()
    assert me["agent"]["state"] == "ringing" and me["call"]["line"] == "12348" and me["call"]["ticket"]
    data = client.get("/agent/api/ticket", headers=auth).get_json()
    t = data["ticket"]
    assert t["transcript"] == SAID and t["caller"] == CALLER  # agents see the caller in full
    assert t["fields"]["location"]["value"] == "朝阳区幸福路12号"
    assert t["fields"]["location"]["source"] == "machine" and not t["fields"]["location"]["confirmed"]
    assert t["fields"]["type"]["value"] == "consultation" and t["due_at"]
    assert data["transfers"] == [{"kind": "expert", "name": "公共法律服务专家坐席"}]  # one word: 坐席
    assert data["line_name"] == "全国公共法律服务专用电话"
    answer(app, tw)
    assert client.get("/agent/api/me", headers=auth).get_json()["agent"]["state"] == "busy"
    r = client.post("/agent/api/ticket/confirm", json={"edits": {"location": "朝阳区幸福路12号院3号楼",
                                                                 "summary": "咨询法律援助申请"}}, headers=auth)
    t = r.get_json()["ticket"]
    assert r.status_code == 200 and t["status"] == "confirmed" and not t["unconfirmed"]
    assert t["fields"]["location"] == {**t["fields"]["location"], "value": "朝阳区幸福路12号院3号楼",
                                       "source": "agent", "by": "a1"}
    assert t["fields"]["type"]["source"] == "machine" and t["fields"]["type"]["confirmed"]
    r = client.post("/agent/api/twilio/three-way", json={"kind": "expert"}, headers=auth)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["target"] == "sip:expert1@pbx.example.gov.cn"
    participant = app.test_http.posts("/Participants.json")[-1][1]
    assert participant["To"].startswith("sip:expert1@pbx.example.gov.cn")
    state = client.get("/agent/api/ticket", headers=auth).get_json()["transfer"]
    assert state["transfer_state"] == "ringing" and state["transfer_mode"] == "three_way"
    assert state["text"].startswith("三方转接：正在呼叫 专家坐席") and "sip:" not in state["text"], state
    r = client.post("/agent/api/twilio/cancel", json={}, headers=auth)
    assert r.status_code == 200
    assert client.get("/agent/api/ticket", headers=auth).get_json()["transfer"]["transfer_state"] is None


def test_an_agent_can_only_read_the_ticket_of_their_own_call(app):
    client = app.test_client()
    auth = seat_token(app, client)
    call_waiting(app)
    other = app.test_client()
    r = other.post("/agent/api/login", json={"agent_id": "e1", "password": "x"})
    assert r.status_code == 401
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    assert client.get("/agent/api/ticket", headers=auth).get_json()["ticket"]["caller"] == CALLER
    app.extensions["acd"].save_agent(Agent("e2", "专家2", {"legal_expert": 50}), password="expert-pw")
    token = other.post("/agent/api/login", json={"agent_id": "e2", "password": "expert-pw"}).get_json()["token"]
    r = other.get("/agent/api/ticket", headers={"Authorization": f"Bearer {token}"})
    assert r.get_json()["ticket"] is None


def test_seat_login_and_logout_are_audited_and_the_token_dies_with_the_seat(app):
    client = app.test_client()
    auth = seat_token(app, client)
    page = client.get("/agent/").get_data(as_text=True)
    client.post("/agent/seat/logout", data={"csrf_token": form_csrf(page)})
    assert client.get("/agent/api/me", headers=auth).status_code == 401
    assert app.extensions["acd"].agent("a1")["state"] == "offline"
    actions = [e.action for e in app.extensions["console"].db.audit_entries()]
    assert "seat.login" in actions and "seat.logout" in actions


def test_the_caller_number_is_masked_for_roles_that_must_not_see_it(app):
    call_waiting(app)
    ticket = app.extensions["console"].tickets.by_call("CAcitizen1")
    admin, supervisor = app.test_client(), app.test_client()
    sign_in(admin, "admin")
    sign_in(supervisor, "super")
    full = supervisor.get(f"/admin/tickets/{ticket.id}").get_data(as_text=True)
    masked = admin.get(f"/admin/tickets/{ticket.id}").get_data(as_text=True)
    assert CALLER in full
    assert CALLER not in masked and "138****5678" in masked


def test_the_dashboard_shows_queues_agents_kpis_supervision_and_the_hourly_chart(app):
    acd = app.extensions["acd"]
    client = app.test_client()
    auth = seat_token(app, client)
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    call_waiting(app, "CAone", said=None)  # offered to a1 at once
    call_waiting(app, "CAtwo", said=None)  # waits: a1 is ringing
    store = app.extensions["console"].tickets
    for sid, score in (("CAone", "satisfied"), ("CAtwo", "dissatisfied")):
        store.record_call_end(store.by_call(sid).id, "", survey=score)
    sup = app.test_client()
    sign_in(sup, "super")
    snap = sup.get("/admin/api/dashboard").get_json()
    legal = next(q for q in snap["queues"] if q["skill"] == "legal")
    assert legal["waiting"] == 1 and legal["longest_wait_s"] >= 0 and legal["agents"]["ringing"] == 1
    assert snap["today"]["total"]["offered"] == 2
    assert snap["today"]["lines"]["12348"]["offered"] == 2
    assert snap["today"]["lines"]["12348"]["satisfaction_rate"] == 0.5
    assert snap["today"]["hourly"][-1]["offered"] == 2
    html = sup.get("/admin/").get_data(as_text=True)
    assert "接通率" in html and "15秒接通率" in html and "呼损率" in html and "满意率" in html
    assert 'id="hourly-chart"' in html and "督办工单" in html
    metrics = sup.get("/metrics").get_data(as_text=True)
    assert 'hotline_queue_waiting{skill="legal"} 1.0' in metrics
    assert 'hotline_agents{skill="legal",state="ringing"} 1.0' in metrics
    assert 'hotline_calls_offered_today{line="12348"} 2.0' in metrics
    assert acd.agent("a1")["state"] == "ringing"


def test_the_dashboard_shows_how_often_agents_kept_what_the_pre_fill_filled(app):
    store = app.extensions["console"].tickets
    rules = app.extensions["rules"].current()
    filled = {"type": "consultation", "line": "12348", "emergency": None, "enterprise": False}
    for i, edits in enumerate(({}, {}, {"line": "12333"}, {"type": "help"})):  # two corrected by the agent
        t = store.attach_transcript(f"CAkept{i}", text="法律援助怎么申请", entry_line="12348", prefill=filled)
        store.confirm_fields(t.id, "a1", edits, rules=rules)
    store.attach_transcript("CAopen", text="法律援助怎么申请", entry_line="12348", prefill=filled)  # not yet confirmed
    failed = store.attach_transcript("CAdeaf", text=None, status="failed", entry_line="12348")  # nothing heard
    store.confirm_fields(failed.id, "a1", {"type": "help", "line": "12348"}, rules=rules)
    sup = app.test_client()
    sign_in(sup, "super")
    total = sup.get("/admin/api/dashboard").get_json()["today"]["total"]
    assert (total["prefill_confirmed"], total["prefill_type_rate"], total["prefill_line_rate"]) == (4, 0.75, 0.75)
    html = sup.get("/admin/").get_data(as_text=True)
    assert re.search(r"智能填单·热线准确率</span><strong[^>]*>75(\.0)?%<", html), html
    metrics = sup.get("/metrics").get_data(as_text=True)
    assert 'hotline_prefill_line_kept_today{line="total"} 0.75' in metrics


def test_supervision_flags_reach_the_dashboard(app):
    store = app.extensions["console"].tickets
    for i in range(10):  # ten callers about the same matter (督办)
        store.attach_transcript(f"CAsup{i}", text="小区暖气不热", entry_line="12345", caller=f"1390000{i:04d}",
                                prefill={"type": "complaint", "line": "12345", "location": "阳光小区"})
    sup = app.test_client()
    sign_in(sup, "super")
    data = sup.get("/admin/api/dashboard").get_json()["supervision"]
    assert data and data[0]["callers"] == 10 and len(data[0]["tickets"]) == 10
    assert "阳光小区" in sup.get("/admin/").get_data(as_text=True)


def test_csrf_protects_the_seat_forms(app):
    client = app.test_client()
    sign_in(client, "agent1")
    assert client.post("/agent/seat/login", data={"state": "ready"}).status_code == 400
    assert app.extensions["acd"].agent("a1")["state"] == "offline"
    assert client.post("/agent/seat/login", data={"state": "ready", "csrf_token": csrf_of(client)}).status_code == 302


def test_the_dashboard_says_in_words_when_a_group_is_unstaffed_and_when_a_caller_was_lost(app):
    import time

    acd = app.extensions["acd"]
    call_waiting(app, "CAghost", said=None)  # nobody on the legal seats: overflows, waits
    assert acd.call("CAghost")["state"] == "waiting"
    # the caller's front-end never asks again (its process died): the ticker takes the caller as lost
    assert acd.tick(time.time() + acd.lost_after_s + 5)["lost"] == 1
    sup = app.test_client()
    sign_in(sup, "super")
    alerts = sup.get("/admin/api/dashboard").get_json()["alerts"]
    texts = [a["text"] for a in alerts]
    ghost = app.extensions["console"].tickets.by_call("CAghost")
    ticket, number = ghost.id, ghost.number  # the id stays internal; people read the day's number
    # the ticket and the masked caller, never the CallSid
    assert any(f"工单 {number}，来电 138****5678（12348 全国公共法律服务专用电话，坐席组「" in t
               and "无响应，按呼损处理；有来电号码的已登记回拨" in t for t in texts), texts
    assert any(f"无坐席在岗：工单 {number}，来电 138****5678" in t and "已按规则溢出到其他坐席组或登记回拨" in t
               for t in texts), texts
    assert all(a["ticket"] == str(ticket) and a["ticket_number"] == number for a in alerts)
    html = sup.get("/admin/").get_data(as_text=True)
    assert "CAghost" not in html and "{'t'" not in html  # sentences, not raw records
    assert f'href="/admin/tickets/{ticket}"' in html and "138****5678" in html
    assert acd.call("CAghost")["kind"] == "callback"  # and the citizen will be called back
    metrics = sup.get("/metrics").get_data(as_text=True)
    assert 'hotline_calls_lost_today{line="12348"} 1.0' in metrics  # for the operators' alerting


def test_ticket_edits_that_are_not_short_text_are_refused_naming_the_field_and_change_nothing(app):
    """Over a real socket: ``edits`` must be an object of short values — a list was a 500, a
    1.5 MB summary or a nested object was stored in the ticket as it came."""
    import requests

    from tests.console_support import served

    client, auth, tw = on_a_call(app)
    before = client.get("/agent/api/ticket", headers=auth).get_json()["ticket"]["fields"]
    with served(app) as base:
        def confirm(edits):
            return requests.post(base + "/agent/api/ticket/confirm", json={"edits": edits}, headers=auth, timeout=10)

        r = confirm(["summary", "x"])
        assert r.status_code == 400 and "edits" in r.json()["error"]
        r = confirm({"summary": "x" * 1_500_000, "location": "朝阳区"})
        assert r.status_code == 400 and "摘要" in r.json()["error"] and "地点" not in r.json()["error"]
        r = confirm({"subject": {"a": [1, 2, {"b": None}]}})
        assert r.status_code == 400 and "事项" in r.json()["error"]
        assert confirm({"summary": "咨询法律援助申请"}).status_code == 200
    after = client.get("/agent/api/ticket", headers=auth).get_json()["ticket"]["fields"]
    assert after["summary"]["value"] == "咨询法律援助申请"
    assert [after[k]["value"] for k in ("subject", "location")] == [before[k]["value"] for k in ("subject", "location")]
