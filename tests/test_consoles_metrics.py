"""Prometheus /metrics: open by default, a bearer token when METRICS_TOKEN is configured."""
from __future__ import annotations

import pytest

from tests.console_support import make_console_app


def test_metrics_are_open_when_no_token_is_configured(tmp_path, redis_url, monkeypatch):
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    client = make_console_app(tmp_path, redis_url).test_client()
    r = client.get("/metrics")
    assert r.status_code == 200 and "hotline_rules_info" in r.get_data(as_text=True)


@pytest.mark.parametrize("source", ["config", "env"])
def test_a_configured_token_is_required_as_a_bearer_token(tmp_path, redis_url, monkeypatch, source):
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    if source == "env":
        monkeypatch.setenv("METRICS_TOKEN", "scrape-secret-1")
        app = make_console_app(tmp_path, redis_url)
    else:
        app = make_console_app(tmp_path, redis_url, METRICS_TOKEN="scrape-secret-1")
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-secret-1"},
                    {"Authorization": "Bearer scrape-secret-1x"}, {"Authorization": "Bearer"}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert "hotline_" not in r.get_data(as_text=True)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})
    assert r.status_code == 200 and "hotline_rules_info" in r.get_data(as_text=True)


def test_the_dashboard_shows_each_background_process_in_chinese_with_its_restarts(tmp_path, redis_url, monkeypatch):
    import json

    from runtime.supervisor import STATE_KEY
    from tests.console_support import sign_in

    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    app = make_console_app(tmp_path, redis_url)
    r = app.extensions["acd"].redis
    r.hset(STATE_KEY, mapping={
        "worker": json.dumps({"name": "worker", "state": "running", "pid": 11, "restarts": 2, "since": 1765000000.0,
                              "last_exit": -9}),
        "timers": json.dumps({"name": "timers", "state": "restarting", "pid": None, "restarts": 0,
                              "since": 1765000000.0, "last_exit": 1})})
    client = app.test_client()
    sign_in(client, "super")
    procs = {p["name"]: p for p in client.get("/admin/api/dashboard").get_json()["processes"]}
    assert procs["worker"]["label"].startswith("后台任务") and procs["worker"]["state_label"] == "运行中"
    assert procs["timers"]["state_label"] == "已退出，等待重启" and procs["worker"]["restarts"] == 2
    assert procs["worker"]["since"] == "12月06日 13:46:40"  # China time, as a person reads it
    page = client.get("/admin/").get_data(as_text=True)
    assert "系统进程" in page and "排队计时" in page and "已退出，等待重启" in page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'hotline_process_up{process="timers"} 0.0' in metrics
    assert 'hotline_process_restarts{process="worker"} 2.0' in metrics


def test_without_a_token_metrics_are_served_to_this_machine_only(tmp_path, redis_url, monkeypatch):
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    client = make_console_app(tmp_path, redis_url).test_client()
    far = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert far.status_code == 403 and "METRICS_TOKEN" in far.get_data(as_text=True)
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200


def test_the_front_door_sends_people_to_sign_in_or_to_their_console(tmp_path, redis_url):
    from tests.console_support import sign_in

    app = make_console_app(tmp_path, redis_url)
    client = app.test_client()
    r = client.get("/")
    assert r.status_code == 302 and r.location.endswith("/login")
    sign_in(client, "agent1")
    assert client.get("/").location.endswith("/agent/")
    admin = app.test_client()
    sign_in(admin, "admin")
    assert admin.get("/").location.endswith("/admin/")
