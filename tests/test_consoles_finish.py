"""办结 from the agent console: the agent finishes their call's confirmed ticket with the result;
the POST needs the session's CSRF token, is audited, and queues the signed hand-off."""
from __future__ import annotations

from tests.console_support import csrf_of, form_csrf, sign_in
from tests.test_consoles_agent import CALLER, answer, app, call_waiting, seat_token  # noqa: F401  (fixture)


class RecordingQueue:
    """Stands in for the rq hand-off queue: remembers what was enqueued."""

    def __init__(self):
        self.jobs = []

    def enqueue(self, func, **kwargs):
        self.jobs.append((func, kwargs))


def talking_with_ticket(app, client):
    auth = seat_token(app, client)
    tw = call_waiting(app)
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    answer(app, tw)
    ticket = client.get("/agent/api/ticket", headers=auth).get_json()["ticket"]
    return auth, ticket["id"]


def finish(client, csrf, **body):
    headers = {"Accept": "application/json"}
    if csrf:
        headers["X-CSRF-Token"] = csrf
    return client.post("/agent/ticket/finish", json=body, headers=headers)


def test_the_agent_finishes_the_confirmed_ticket_the_hand_off_is_queued_and_audited(app):
    queue = app.extensions["twilio"]["flow"].tickets.handoff_queue = RecordingQueue()
    store = app.extensions["console"].tickets
    client = app.test_client()
    auth, ticket_id = talking_with_ticket(app, client)
    page = client.get("/agent/").get_data(as_text=True)
    assert 'id="btn-finish"' in page and "办理结果" in page and 'data-csrf="' in page
    csrf = form_csrf(page)
    # not confirmed yet: refused, nothing changes
    r = finish(client, csrf, result="已告知法律援助申请流程")
    assert r.status_code == 409 and "不能办结" in r.get_json()["error"]
    client.post("/agent/api/ticket/confirm", json={"edits": {"summary": "咨询法律援助申请"}}, headers=auth)
    # without the CSRF token: 400, still confirmed
    r = finish(client, None, result="已告知法律援助申请流程")
    assert r.status_code == 400 and store.get(ticket_id).status == "confirmed"
    # without a result / someone else's ticket: refused
    assert finish(client, csrf, result="  ").status_code == 400
    assert finish(client, csrf, result="已办理", ticket=ticket_id + 1000).status_code == 409
    assert store.get(ticket_id).status == "confirmed" and queue.jobs == []
    r = finish(client, csrf, result="已告知法律援助申请流程及所需材料", ticket=ticket_id)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["ticket"]["status"] == "finished"
    t = store.get(ticket_id)
    assert (t.status, t.result) == ("finished", "已告知法律援助申请流程及所需材料")
    assert queue.jobs == [("intake.jobs.hand_off", {**queue.jobs[0][1], "ticket_id": ticket_id})]
    (entry,) = app.extensions["console"].db.audit_entries(action="ticket.finish")
    assert (entry.actor, entry.target) == ("agent1", f"ticket:{t.display_number}")
    assert "已告知法律援助申请流程及所需材料" in entry.after and "状态：已确认 → 已办结" in entry.diff
    # finished once: a second 办结 is refused and queues nothing
    assert finish(client, csrf, result="再次办结").status_code == 409 and len(queue.jobs) == 1


def test_the_plain_form_works_without_javascript_and_other_roles_are_refused(app):
    app.extensions["twilio"]["flow"].tickets.handoff_queue = RecordingQueue()
    client = app.test_client()
    auth, ticket_id = talking_with_ticket(app, client)
    client.post("/agent/api/ticket/confirm", json={"edits": {}}, headers=auth)
    csrf = form_csrf(client.get("/agent/").get_data(as_text=True))
    r = client.post("/agent/ticket/finish", data={"csrf_token": csrf, "result": "已答复"})
    assert r.status_code == 302
    page = client.get("/agent/").get_data(as_text=True)
    ticket = app.extensions["console"].tickets.get(ticket_id)
    assert ticket.status == "finished"
    assert f"工单 {ticket.display_number} 已办结" in page  # the number people read, not the row id
    assert f"工单 {ticket_id} " not in page
    supervisor = app.test_client()
    sign_in(supervisor, "super")
    r = supervisor.post("/agent/ticket/finish", data={"csrf_token": csrf_of(supervisor), "result": "x"})
    assert r.status_code == 403
