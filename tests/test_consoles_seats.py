"""Seats on a web page: an admin sets a seat's groups and levels (the ACD's profile), with the
ACD's rule that groups change only while the seat is signed out, audited; others may not."""
from __future__ import annotations

import pytest

from tests.console_support import form_csrf, make_console_app, sign_in


@pytest.fixture
def app(tmp_path, redis_url):
    return make_console_app(tmp_path, redis_url)


def _admin(app):
    client = app.test_client()
    sign_in(client, "admin")
    return client


def test_an_admin_creates_a_seat_with_its_groups_and_the_acd_offers_it_those_calls(app):
    client = _admin(app)
    page = client.get("/admin/seats/new").get_data(as_text=True)
    assert "坐席组" in page and "公共法律服务坐席" in page and "12345综合坐席" in page  # by name, in 坐席
    r = client.post("/admin/seats/new", data={"csrf_token": form_csrf(page), "id": "a77", "name": "赵七",
                                               "endpoints": "sip:a77@pbx.example.gov.cn", "on-general": "1",
                                               "level-general": "60", "on-legal": "1", "level-legal": "80"})
    assert r.status_code == 302 and r.location.endswith("/admin/seats")
    seat = app.extensions["acd"].agent("a77")
    assert seat["name"] == "赵七" and seat["skills"] == {"general": 60, "legal": 80}
    assert seat["endpoints"] == ["sip:a77@pbx.example.gov.cn"]
    listing = client.get("/admin/seats").get_data(as_text=True)
    assert "赵七" in listing and "（80）" in listing and "legal" not in listing.split("<tbody>")[1]  # names, not ids
    entry = app.extensions["console"].db.audit_entries(action="seat.update")[0]
    assert entry.target == "a77" and '"legal": 80' in entry.after


def test_a_seat_signed_in_keeps_its_groups_until_it_signs_out_and_bad_levels_are_named(app):
    acd = app.extensions["acd"]
    client = _admin(app)
    page = client.get("/admin/seats/new").get_data(as_text=True)
    client.post("/admin/seats/new", data={"csrf_token": form_csrf(page), "id": "a78", "on-general": "1",
                                          "level-general": "50"})
    acd.login("a78")
    page = client.get("/admin/seats/a78").get_data(as_text=True)
    r = client.post("/admin/seats/a78", data={"csrf_token": form_csrf(page), "on-legal": "1", "level-legal": "40"})
    assert r.status_code == 422 and "请坐席先签出" in r.get_data(as_text=True)
    assert acd.agent("a78")["skills"] == {"general": 50}
    acd.logout("a78")
    r = client.post("/admin/seats/a78", data={"csrf_token": form_csrf(page), "on-legal": "1", "level-legal": "300",
                                              "on-general": "1", "level-general": "70"})
    html = r.get_data(as_text=True)
    assert r.status_code == 422 and "公共法律服务坐席：级别“300”无效，须为1到99的整数" in html
    assert "至少选择一个坐席组" not in html  # a group was chosen: only its level is wrong
    # the form comes back as typed: both groups ticked, with the levels typed
    assert 'name="on-legal" value="1" checked' in html and 'name="level-legal" value="300"' in html
    assert 'name="on-general" value="1" checked' in html and 'name="level-general" value="70"' in html
    assert acd.agent("a78")["skills"] == {"general": 50}  # nothing saved
    r = client.post("/admin/seats/new", data={"csrf_token": form_csrf(page), "id": "bad id!", "on-general": "1"})
    assert r.status_code == 422 and "坐席号只能用" in r.get_data(as_text=True)
    assert client.get("/admin/seats/nobody").status_code == 404


def test_only_admins_see_or_change_seats(app):
    for user in ("super", "agent1"):
        client = app.test_client()
        sign_in(client, user)
        assert client.get("/admin/seats").status_code == 403
        assert client.post("/admin/seats/new", data={"id": "x"}).status_code in (400, 403)
