"""The demo phone's API (consoles/demo_phone.py): a seat's buttons reach the simulated network as
commands, in the order pressed, only when the call is in a state that allows them; one seat never
sees or moves another's call. The whole path in a browser: tests/test_newcomer.py."""
from __future__ import annotations

from consoles.demo_phone import DemoPhone
from test_acd_api import acd, client  # noqa: F401  (fixtures: the app on the test's Redis, seats 7001 and 7002)


def token(client, agent):
    r = client.post("/agent/api/login", json={"agent_id": agent, "password": f"s3cret-{agent}"})
    return {"Authorization": "Bearer " + r.get_json()["token"]}


def test_the_seat_answers_holds_and_hangs_up_a_ringing_simulated_call(client, acd):
    me = token(client, "7001")
    assert client.get("/agent/api/demo-phone", headers=me).get_json() == {"call": None}
    network = DemoPhone(acd.redis, "7001")
    network.ring("1765000000.1", "12345", "政务服务便民热线", "139****2396", "20261206-0001")
    call = client.get("/agent/api/demo-phone", headers=me).get_json()["call"]
    assert (call["state"], call["caller"], call["ticket"]) == ("ringing", "139****2396", "20261206-0001")
    # ringing: hold makes no sense yet
    r = client.post("/agent/api/demo-phone/hold", headers=me)
    assert r.status_code == 409 and "正在振铃" in r.get_json()["error"]
    assert client.post("/agent/api/demo-phone/answer", headers=me).status_code == 200
    assert network.next_command() == {"action": "answer"}
    network.update(state="talking")
    network.say("来电人", "小区门口的路灯坏了")
    assert client.get("/agent/api/demo-phone", headers=me).get_json()["call"]["said"][0]["text"] == "小区门口的路灯坏了"
    assert client.post("/agent/api/demo-phone/hold", headers=me).status_code == 200
    assert client.post("/agent/api/demo-phone/hangup", headers=me).status_code == 200
    assert [network.next_command(), network.next_command(), network.next_command()] == [
        {"action": "hold"}, {"action": "hangup"}, None]
    network.hang_up()
    r = client.post("/agent/api/demo-phone/hangup", headers=me)
    assert r.status_code == 409 and "没有来电" in r.get_json()["error"]


def test_bad_requests_are_refused_with_a_reason_and_other_seats_calls_are_out_of_reach(client, acd):
    me, other = token(client, "7001"), token(client, "7002")
    network = DemoPhone(acd.redis, "7001")
    network.ring("1765000000.2", "12333", "人社服务热线", "138****5678")
    network.update(state="talking")
    r = client.post("/agent/api/demo-phone/transfer", headers=me, json={"kind": "mayor"})
    assert r.status_code == 400 and "分中心或专家坐席" in r.get_json()["error"]
    r = client.post("/agent/api/demo-phone/explode", headers=me)
    assert r.status_code == 404 and "没有这个操作" in r.get_json()["error"]
    assert client.post("/agent/api/demo-phone/answer").status_code == 401  # no token
    assert client.get("/agent/api/demo-phone", headers=other).get_json() == {"call": None}
    assert client.post("/agent/api/demo-phone/hangup", headers=other).status_code == 409
    assert client.post("/agent/api/demo-phone/transfer", headers=me, json={"kind": "subcenter"}).status_code == 200
    assert network.next_command() == {"action": "transfer", "kind": "subcenter"}
    assert network.next_command() is None  # nothing from the other seat's presses
