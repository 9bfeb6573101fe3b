"""The agent's side on a real Asterisk 22: the ACD follows the agents' phones as Asterisk sees
them (a phone never registered, a phone on another call), and the agent console starts,
cancels and leaves three-way transfers on Asterisk (AMI), with the ticket popped in the console.

The product's AMI user is the one agi_scripts/install.sh --ami-secret wrote; the FastAGI server
follows the phones (HOTLINE_AMI). What happened on the PBX is read from Asterisk's events.
"""
from __future__ import annotations

import shutil
import time

import pytest

from bench.asterisk_lab import wait_until
from tests.test_pbx_pjsip import AGENT_PHONE_UAS, Sipp, start_phone

pytestmark = pytest.mark.pbx


def seat_state(world, agent_id):
    agent = world.acd.agent(agent_id) or {}
    return agent.get("state"), agent.get("reason")


def paused_and_passed_over(world, agent_id: str, why: str):
    """The seat is paused for ``why``; a caller then waits in line instead of ringing it."""
    wait_until(lambda: seat_state(world, agent_id) == ("paused", why), 10, 0.1, f"the seat paused: {why}")
    call = world.call("12345")
    call_id = call.call_id()
    # the greeting, then the queue (a loaded machine takes seconds): waiting, and still waiting a
    # moment later — never offered to the paused seat
    wait_until(lambda: (world.acd.call(call_id) or {}).get("state") == "waiting", 20, 0.2, "the caller in line")
    time.sleep(2)
    assert world.acd.call(call_id)["state"] == "waiting"
    return call


def test_a_phone_that_never_registered_is_never_offered_a_call(pbx):
    world = pbx
    world.seat("7002", {"general": 50}, endpoint="PJSIP/agent7002")
    call = paused_and_passed_over(world, "7002", "phone-offline")
    assert not any(e.get("Event") == "Newchannel" and e["Channel"].startswith("PJSIP/agent7002")
                   for e in world.events_since(call.mark))
    # signing in again while the phone is still offline: paused at once, never ready for a moment
    world.acd.logout("7002")
    world.acd.login("7002")
    assert seat_state(world, "7002") == ("paused", "phone-offline")
    world.seat("7003", {"general": 50})
    call.bridged_with("Local/7003@lab-agent", timeout=20)


@pytest.mark.skipif(shutil.which("sipp") is None, reason="real-PBX SIP test skipped: no sipp")
def test_a_phone_on_another_call_is_paused_until_it_hangs_up(pbx, tmp_path):
    world = pbx
    phone = Sipp(tmp_path, "agent7001", AGENT_PHONE_UAS, world.lab.phone_port,
                 "-m", "2", "-timeout", "60", "-recv_timeout", "50000")
    try:
        start_phone(world, phone)
        world.seat("7001", {"general": 50}, endpoint="PJSIP/agent7001")
        wait_until(lambda: (world.acd.agent("7001") or {}).get("state") == "ready", 5, 0.1, "the seat ready")
        # the agent makes a call of their own on that phone
        mark = len(world.ami.events)
        world.ami.action("Originate", Channel="PJSIP/agent7001", Application="Wait", Data="60", Async="true",
                         ChannelId="own-7001")
        call = paused_and_passed_over(world, "7001", "phone-busy")
        # the own call ends: the seat is ready again and takes the caller on that phone
        world.ami.action("Hangup", Channel="/^PJSIP\\/agent7001-/")
        call.bridged_with("PJSIP/agent7001-", timeout=20)
        assert [e for e in world.events_since(mark) if e.get("Event") == "DeviceStateChange"
                and e.get("Device") == "PJSIP/agent7001" and e.get("State") == "INUSE"]
    finally:
        phone.stop()


# -- the console ------------------------------------------------------------------------------------
@pytest.fixture
def console(pbx, tmp_path):
    from app import create_app

    world = pbx
    app = create_app({"REDIS_URL": world.redis_url, "RULES_PATH": str(world.rules_path),
                      "DATABASE_URL": world.product.env["DATABASE_URL"], "HOTLINE_AMI": world.ami_url,
                      "TESTING": True, "SECRET_KEY": "test"})
    return app.test_client()


def agent_token(world, client, agent_id: str, skills: dict) -> dict:
    world.seat(agent_id, skills, password="pass-" + agent_id)
    r = client.post("/agent/api/login", json={"agent_id": agent_id, "password": "pass-" + agent_id})
    assert r.status_code == 200, r.get_json()
    return {"Authorization": "Bearer " + r.get_json()["token"]}


def test_the_console_pops_the_ticket_and_runs_a_three_way_on_asterisk(pbx, console):
    world = pbx
    auth = agent_token(world, console, "7010", {"legal": 50})
    world.seat("7011", {"legal_expert": 50})
    call = world.call("12348")
    leg = call.bridged_with("Local/7010@lab-agent")
    ticket = call.first_var("HOTLINE_TICKET")
    caller = call.channel()

    def console_view():
        r = console.get("/agent/api/ticket", headers=auth)
        body = r.get_json() or {}
        return body if r.status_code == 200 and body.get("ticket") else None
    view = wait_until(console_view, 20, 0.2, "the ticket in the agent console")
    assert str(view["ticket"]["id"]) == ticket and view["front_end"] == "asterisk"
    assert view["call"]["line"] == "12348"
    # 三方转接 to the expert seats from the console: caller, agent and expert in one conference
    r = console.post("/agent/api/asterisk/three-way", json={"kind": "expert"}, headers=auth)
    assert r.status_code == 200 and r.get_json()["status"] == "ringing", r.get_json()
    party = wait_until(lambda: next((c for c in call.conference() if "@hotline-party-" in c), None), 15, 0.05,
                       "the expert's leg in the conference")
    wait_until(lambda: call.conference() == {caller, leg, party}, 15, 0.05, "all three in the conference")
    wait_until(lambda: call.bridged("Local/7011@lab-agent"), 15, 0.05, "the expert to answer")
    wait_until(lambda: (console_view() or {}).get("transfer", {}) and
               console_view()["transfer"]["transfer_state"] == "joined", 10, 0.2, "the console to show it joined")
    assert console_view()["transfer"]["text"].startswith("三方转接：已接通 专家坐席"), console_view()["transfer"]
    # 取消转接: the expert is dropped, the caller stays with the agent
    r = console.post("/agent/api/asterisk/cancel", headers=auth)
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled", r.get_json()
    wait_until(lambda: call.conference() == {caller, leg}, 15, 0.05, "caller and agent alone again")
    wait_until(lambda: seat_state(world, "7011")[0] == "ready", 15, 0.1, "the expert free again (after wrap-up)")
    # again, and this time the agent leaves the caller with the expert (退出三方)
    r = console.post("/agent/api/asterisk/three-way", json={"kind": "expert"}, headers=auth)
    assert r.status_code == 200 and r.get_json()["status"] == "ringing", r.get_json()
    second = wait_until(lambda: next((c for c in call.conference() if "@hotline-party-" in c and c != party), None),
                        15, 0.05, "the second party leg")
    wait_until(lambda: (console_view() or {}).get("transfer") and
               console_view()["transfer"]["transfer_state"] == "joined", 15, 0.2, "the expert to join")
    r = console.post("/agent/api/asterisk/leave", headers=auth)
    assert r.status_code == 200, r.get_json()
    wait_until(lambda: call.conference() == {caller, second}, 15, 0.05, "caller and expert together")
    wait_until(lambda: seat_state(world, "7010")[0] in ("wrapup", "ready"), 10, 0.1, "the agent wraps up")


def test_the_console_refuses_a_three_way_with_no_expert_free_and_nothing_changes(pbx, console):
    world = pbx
    auth = agent_token(world, console, "7020", {"legal": 50})
    call = world.call("12348")
    leg = call.bridged_with("Local/7020@lab-agent")
    wait_until(lambda: seat_state(world, "7020")[0] == "busy", 10, 0.1, "the agent talking")
    r = console.post("/agent/api/asterisk/three-way", json={"kind": "expert"}, headers=auth)
    assert r.get_json()["status"] == "refused" and "专家坐席暂无空闲" in r.get_json()["error"]
    time.sleep(1)
    assert not call.conference() and not call.hung_up(leg)


def test_a_three_way_when_the_asterisk_manager_cannot_be_reached_gives_the_expert_back(pbx, console):
    # the console's switchboard cannot reach Asterisk's manager (AMI down, a firewall change):
    # the agent reads why in words, the expert seat reserved for the transfer is free again at
    # once (not held until a ring timeout), and the caller stays with the agent as they were
    world = pbx
    auth = agent_token(world, console, "7030", {"legal": 50})
    world.seat("7031", {"legal_expert": 50})
    call = world.call("12348")
    leg = call.bridged_with("Local/7030@lab-agent")
    wait_until(lambda: seat_state(world, "7030")[0] == "busy", 10, 0.1, "the agent talking")
    console.application.extensions["asterisk"].url = "ami://hotline:wrong@127.0.0.1:9"  # nothing listens there
    r = console.post("/agent/api/asterisk/three-way", json={"kind": "expert"}, headers=auth)
    assert r.status_code == 502 and r.get_json()["error"].startswith("电话交换机（Asterisk）暂时连不上"), r.get_json()
    assert "Errno" not in r.get_json()["error"] and "ami://" not in r.get_json()["error"]
    assert seat_state(world, "7031")[0] == "ready"  # the reservation went back
    view = console.get("/agent/api/ticket", headers=auth).get_json()
    assert not (view.get("transfer") or {}).get("transfer_state"), view.get("transfer")
    time.sleep(1)
    assert not call.conference() and not call.hung_up(leg)
