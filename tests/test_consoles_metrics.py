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
