"""Sign-in, roles, CSRF and the audit log of the consoles (Flask test client, real Redis, SQLite)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consoles import bootstrap_admin
from tests.console_support import PASSWORDS, ROOT, csrf_of, form_csrf, make_console_app, sign_in

ADMIN_PAGES = ["/admin/rules", "/admin/rules/lines/12301", "/admin/rules/yaml", "/admin/rules/history",
               "/admin/users", "/admin/audit"]
STAFF_PAGES = ["/admin/", "/admin/api/dashboard"]
AGENT_PAGES = ["/agent/"]
POSTS = ["/admin/rules/yaml", "/admin/rules/lines/12301", "/admin/rules/drafts/1", "/admin/rules/drafts/1/publish",
         "/admin/rules/history/1/rollback", "/admin/users", "/admin/users/agent1", "/agent/seat/login",
         "/agent/seat/logout"]


@pytest.fixture
def app(tmp_path, redis_url):
    return make_console_app(tmp_path, redis_url)


def test_every_console_page_sends_a_stranger_to_the_sign_in_page(app):
    client = app.test_client()
    for path in ADMIN_PAGES + STAFF_PAGES + AGENT_PAGES:
        r = client.get(path)
        if path.startswith("/admin/api/"):
            assert r.status_code == 401, path
        else:
            assert r.status_code == 302 and "/login?next=" in r.location, path


def test_every_console_post_refuses_a_stranger_even_with_a_valid_csrf_token(app):
    client = app.test_client()
    token = csrf_of(client)
    for path in POSTS:
        r = client.post(path, data={"csrf_token": token})
        assert r.status_code == 401, path


def test_each_role_is_refused_the_pages_of_the_others(app):
    cases = {"super": (ADMIN_PAGES + AGENT_PAGES, STAFF_PAGES), "agent1": (ADMIN_PAGES + STAFF_PAGES, AGENT_PAGES),
             "admin": (AGENT_PAGES, ADMIN_PAGES + STAFF_PAGES)}
    for user, (refused, allowed) in cases.items():
        client = app.test_client()
        assert sign_in(client, user).status_code == 302
        for path in refused:
            r = client.get(path)
            assert r.status_code == 403, (user, path)
            if not path.startswith("/admin/api/"):
                assert "无权访问" in r.get_data(as_text=True)
        for path in allowed:
            assert client.get(path).status_code == 200, (user, path)
        token = csrf_of(client)
        for path in POSTS:
            expected = 403 if (path.startswith("/agent/") != (user == "agent1")) else None
            if expected:
                assert client.post(path, data={"csrf_token": token}).status_code == 403, (user, path)


def test_the_agent_api_ticket_endpoints_need_an_agent_token(app):
    client = app.test_client()
    assert client.get("/agent/api/ticket").status_code == 401
    assert client.post("/agent/api/ticket/confirm", json={}).status_code == 401
    sign_in(client, "agent1")  # a browser session is not an agent-API token
    assert client.get("/agent/api/ticket").status_code == 401


def test_a_post_without_the_session_csrf_token_is_refused_and_changes_nothing(app):
    client = app.test_client()
    sign_in(client, "admin")
    users_before = [u.username for u in app.extensions["console"].db.users()]
    form = {"username": "mallory", "password": "long-enough-pw", "role": "admin"}
    assert client.post("/admin/users", data=form).status_code == 400
    assert client.post("/admin/users", data={**form, "csrf_token": "forged"}).status_code == 400
    r = client.post("/admin/users", data=form, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 400 and "CSRF" in r.get_data(as_text=True)
    assert [u.username for u in app.extensions["console"].db.users()] == users_before
    # sign-in itself needs the token (login CSRF)
    other = app.test_client()
    assert other.post("/login", data={"username": "admin", "password": PASSWORDS["admin"]}).status_code == 400


def test_passwords_are_stored_hashed_and_a_wrong_one_is_refused_and_audited(app):
    db = app.extensions["console"].db
    user = db.user("admin")
    assert PASSWORDS["admin"] not in user.password_hash and user.password_hash.startswith(("scrypt:", "pbkdf2:"))
    client = app.test_client()
    r = sign_in(client, "admin", "wrong-password")
    assert r.status_code == 401 and "用户名或密码错误" in r.get_data(as_text=True)
    assert client.get("/admin/rules").status_code == 302
    failed = db.audit_entries(action="login.failed")
    assert failed and failed[0].actor == "admin"


def test_sign_in_sends_each_role_home_and_never_to_another_site(app):
    homes = {"admin": "/admin/", "super": "/admin/", "agent1": "/agent/"}
    for user, home in homes.items():
        assert sign_in(app.test_client(), user).location == home
    client = app.test_client()
    token = csrf_of(client)
    r = client.post("/login?next=//evil.example/x", data={"username": "admin", "password": PASSWORDS["admin"],
                                                          "csrf_token": token})
    assert r.location == "/admin/"


def test_a_disabled_user_loses_their_session_at_once(app):
    client = app.test_client()
    sign_in(client, "super")
    assert client.get("/admin/").status_code == 200
    app.extensions["console"].db.update_user("super", active=False)
    assert client.get("/admin/").status_code == 302


def _session_cookie(response) -> str | None:
    return next((h for h in response.headers.getlist("Set-Cookie") if h.startswith("session=")), None)


def test_signing_out_sticks_though_the_dashboard_asked_before_it_and_is_answered_after_it(app):
    """The dashboard asks for its figures every 5 s. The answer to a request sent before 退出 (or
    before another person signs in on the same browser) must not put the old session back: the
    browser keeps whatever cookie came last. So the cookie goes out only when the session
    changes — and at most once an hour to renew its 12 hours."""
    from consoles import auth

    client = app.test_client()
    assert _session_cookie(sign_in(client, "super"))
    for path in ("/admin/", "/admin/api/dashboard", "/admin/tickets"):
        r = client.get(path)
        assert r.status_code == 200 and _session_cookie(r) is None, path
    late = app.test_client()  # the poll in flight: the browser's cookie as it was when it was sent
    late.set_cookie("session", client.get_cookie("session").value)
    r = client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert r.status_code == 302 and "session=;" in _session_cookie(r)  # the browser forgets it
    r = late.get("/admin/api/dashboard")
    assert r.status_code == 200 and _session_cookie(r) is None, "the late answer signs nobody back in"
    assert client.get("/admin/").status_code == 302
    # in use all day (a wall screen's dashboard), the session is renewed once an hour
    assert sign_in(client, "super").status_code == 302
    with client.session_transaction() as session:
        session["renewed"] -= auth.SESSION_RENEW_S
    assert _session_cookie(client.get("/admin/api/dashboard"))
    assert _session_cookie(client.get("/admin/api/dashboard")) is None


def test_the_first_admin_gets_a_one_time_password_that_must_be_changed(tmp_path, redis_url, capsys):
    from consoles.db import ConsoleStore

    app = make_console_app(tmp_path, redis_url)
    # a fresh database: nobody yet

    fresh = ConsoleStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    password = bootstrap_admin(fresh)
    assert password and password in capsys.readouterr().out
    assert bootstrap_admin(fresh) is None  # only once
    app.extensions["console"].db = fresh
    client = app.test_client()
    assert sign_in(client, "admin", password).location == "/account/password"
    assert client.get("/admin/rules").location == "/account/password"
    html = client.get("/account/password").get_data(as_text=True)
    r = client.post("/account/password", data={"csrf_token": form_csrf(html), "old_password": password,
                                                "new_password": "a-new-pass-2026", "new_password2": "a-new-pass-2026"})
    assert r.status_code == 200 and "密码已修改" in r.get_data(as_text=True)
    assert client.get("/admin/rules").status_code == 200
    assert bootstrap_admin(ConsoleStore(f"sqlite:///{tmp_path / 'env.db'}"), "from-env-pass-1") is None
    assert ConsoleStore(f"sqlite:///{tmp_path / 'env.db'}").authenticate("admin", "from-env-pass-1") is not None


def test_user_changes_are_audited_with_who_when_and_a_before_after_diff(app):
    client = app.test_client()
    sign_in(client, "admin")
    token = csrf_of(client)
    r = client.post("/admin/users", data={"csrf_token": token, "username": "zhao", "password": "zhao-pass-123",
                                          "role": "agent", "display_name": "赵坐席"})
    assert r.status_code == 302
    r = client.post("/admin/users/zhao", data={"csrf_token": token, "role": "supervisor", "active": "1"})
    assert r.status_code == 302
    entries = app.extensions["console"].db.audit_entries()
    update = next(e for e in entries if e.action == "user.update")
    create = next(e for e in entries if e.action == "user.create")
    assert update.actor == "admin" and update.target == "zhao" and update.at is not None
    assert "角色：坐席 → 班长/质检" in update.diff  # in words, not the stored codes
    assert '"role": "agent"' in update.before and '"role": "supervisor"' in update.after
    assert create.before is None and "zhao" in create.after
    page = client.get(f"/admin/audit/{update.id}").get_data(as_text=True)
    assert "班长/质检" in page and "admin" in page


def test_the_users_command_creates_a_user_who_can_sign_in(app, tmp_path):
    env = {**os.environ, "DATABASE_URL": app.config["DATABASE_URL"]}
    out = subprocess.run([sys.executable, "-m", "consoles.users", "add", "qian", "--role", "supervisor",
                          "--password", "qian-pass-123"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "created supervisor qian" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "consoles.users", "add", "sun", "--role", "agent", "--password", "short"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "至少" in bad.stderr
    assert sign_in(app.test_client(), "qian", "qian-pass-123").location == "/admin/"
    assert app.extensions["console"].db.audit_entries(action="user.create")[0].actor.startswith("cli")


def _age_failed_sign_ins(db, minutes: int) -> None:
    """Time passes: the failed sign-ins recorded so far happened ``minutes`` ago."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from consoles.db import AuditEntry

    with db._session.begin() as s:
        s.execute(update(AuditEntry).where(AuditEntry.action == "login.failed")
                  .values(at=datetime.now(timezone.utc) - timedelta(minutes=minutes)))


def test_password_guessing_is_stopped_for_that_user_name_until_the_window_has_passed(app):
    db = app.extensions["console"].db
    guesser = app.test_client()
    for _ in range(5):
        assert sign_in(guesser, "admin", "guess").status_code == 401
    r = sign_in(guesser, "admin")  # even the right password: the account is throttled, not probed
    assert r.status_code == 429 and "登录失败次数过多，请15分钟后再试" in r.get_data(as_text=True)
    assert guesser.get("/admin/rules").status_code == 302  # not signed in
    throttled = db.audit_entries(action="login.throttled")
    assert throttled and throttled[0].actor == "admin" and throttled[0].address == "127.0.0.1"
    assert sign_in(app.test_client(), "agent1").status_code == 302  # other users are not locked out
    elsewhere = app.test_client()  # nor is the admin at their own desk: five guesses lock out only the guesser
    elsewhere.environ_base["REMOTE_ADDR"] = "10.0.0.8"
    assert sign_in(elsewhere, "admin").status_code == 302
    _age_failed_sign_ins(db, 16)
    assert sign_in(app.test_client(), "admin").status_code == 302


def test_guessing_one_password_from_many_addresses_is_stopped_too(tmp_path, redis_url):
    app = make_console_app(tmp_path, redis_url, LOGIN_MAX_FAILURES_PER_USER_ANYWHERE=8)
    for i in range(8):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"203.0.113.{i}"
        assert sign_in(client, "agent1", "guess").status_code == 401
    desk = app.test_client()
    desk.environ_base["REMOTE_ADDR"] = "10.0.0.21"
    assert sign_in(desk, "agent1").status_code == 429
    assert sign_in(desk, "admin").status_code == 302  # only that user name is held


def test_a_successful_sign_in_starts_the_count_of_failures_again(app):
    client = app.test_client()
    for _ in range(4):
        assert sign_in(client, "admin", "typo").status_code == 401
    assert sign_in(client, "admin").status_code == 302
    other = app.test_client()
    for _ in range(4):
        assert sign_in(other, "admin", "typo").status_code == 401
    assert sign_in(other, "admin").status_code == 302


def test_one_address_trying_many_user_names_is_stopped_but_other_addresses_are_not(tmp_path, redis_url):
    from consoles import auth

    assert auth.LOGIN_MAX_FAILURES_PER_ADDRESS == 100  # the default; a lower one here keeps the test short
    app = make_console_app(tmp_path, redis_url, LOGIN_MAX_FAILURES_PER_ADDRESS=20)
    sprayer = app.test_client()
    for i in range(20):
        assert sign_in(sprayer, f"user{i}", "123456").status_code == 401
    assert sign_in(sprayer, "admin").status_code == 429
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "10.0.0.8"
    assert sign_in(elsewhere, "admin").status_code == 302


def test_behind_a_proxy_the_throttle_and_the_audit_log_see_the_clients_own_address(tmp_path, redis_url):
    app = make_console_app(tmp_path, redis_url, PROXY_HOPS="1", LOGIN_MAX_FAILURES_PER_ADDRESS=20)
    proxy = {"REMOTE_ADDR": "10.0.0.1"}  # every request arrives from the reverse proxy
    sprayer = app.test_client()
    sprayer.environ_base.update(proxy, HTTP_X_FORWARDED_FOR="203.0.113.9")
    for i in range(20):
        assert sign_in(sprayer, f"user{i}", "123456").status_code == 401
    assert sign_in(sprayer, "admin").status_code == 429
    failed = app.extensions["console"].db.audit_entries(action="login.failed")
    assert {e.address for e in failed} == {"203.0.113.9"}
    colleague = app.test_client()  # behind the same proxy, another address: not locked out
    colleague.environ_base.update(proxy, HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert sign_in(colleague, "admin").status_code == 302


def test_a_proxy_hops_setting_that_is_not_a_number_is_named_at_start_up(tmp_path, redis_url):
    with pytest.raises(ValueError, match="PROXY_HOPS"):
        make_console_app(tmp_path, redis_url, PROXY_HOPS="one")


def test_the_session_cookie_is_httponly_samesite_and_carries_neither_the_csrf_token_nor_the_password_hash(
        app, tmp_path, redis_url, monkeypatch):
    import base64
    import json
    import zlib

    client = app.test_client()
    r = sign_in(client, "admin")
    cookie = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("session="))
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "secure" not in flags
    value = cookie.split(";")[0].split("=", 1)[1]
    payload = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    data = json.loads(zlib.decompress(raw) if value.startswith(".") else raw)  # what anyone holding it reads
    token = form_csrf(client.get("/admin/rules").get_data(as_text=True))
    password_hash = app.extensions["console"].db.user("admin").password_hash
    text = json.dumps(data)
    assert token not in text
    assert not any(password_hash[i:i + 8] in text for i in range(len(password_hash) - 7))
    # behind TLS the admin switches Secure on from the environment
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "1")
    (tmp_path / "tls").mkdir()
    secure_app = make_console_app(tmp_path / "tls", redis_url)
    r = sign_in(secure_app.test_client(), "admin")
    cookie = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("session="))
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_ids_too_large_for_the_database_are_not_found_not_a_server_error(app):
    client = app.test_client()
    sign_in(client, "admin")
    huge = "99999999999999999999999"
    for path in (f"/admin/tickets/{huge}", f"/admin/audit/{huge}", f"/admin/rules/drafts/{huge}",
                 f"/admin/rules/history/{huge}", f"/admin/tickets/{2**63}"):
        assert client.get(path).status_code == 404, path
    page = client.get(f"/admin/rules/yaml?draft={huge}")
    assert page.status_code == 200 and "lines:" in page.get_data(as_text=True)  # the rules in service, no draft
    assert client.get("/admin/tickets/1").status_code == 404  # an ordinary id still reaches the page


def test_the_seat_command_finds_the_redis_run_sh_started_or_says_what_to_do(tmp_path):
    import redis as redis_lib

    from runtime.redis_server import EmbeddedRedis

    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(REDIS_DATA_DIR=str(tmp_path / "redis"), DATABASE_URL=f"sqlite:///{tmp_path}/u.db")
    cmd = [sys.executable, "-m", "consoles.users", "seat", "a9", "--skills", "general:50", "--name", "王九"]
    none = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode != 0 and "start the product (./run.sh) first, or set REDIS_URL" in none.stderr
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server:  # as ./run.sh starts it
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        r = redis_lib.Redis.from_url(server.url, decode_responses=True)
        assert r.hget("acd:agent:a9", "name") == "王九" and r.hgetall("acd:agent:a9:skills") == {"general": "50"}
    assert not (tmp_path / "redis" / "url").exists()  # gone with the server


def _key_of_a_worker(path: str) -> str:
    from types import SimpleNamespace

    from consoles import _secret_key

    return _secret_key(SimpleNamespace(config={"SECRET_KEY_FILE": path}))


def test_web_workers_starting_together_sign_sessions_with_one_key(tmp_path, monkeypatch):
    """gunicorn starts its workers at once, and the first start makes the key: a worker that read
    it half-written signed with another key, and a sign-in page served by one worker was refused
    by the next (CSRF 校验失败)."""
    import multiprocessing

    monkeypatch.delenv("SECRET_KEY", raising=False)
    with multiprocessing.get_context("fork").Pool(8) as workers:
        for start in range(40):
            path = str(tmp_path / f"start{start}" / "secret_key")
            keys = workers.map(_key_of_a_worker, [path] * 8, chunksize=1)
            assert len(set(keys)) == 1 and len(keys[0]) == 64, (start, keys)
            assert os.stat(path).st_mode & 0o777 == 0o600
    assert not list(tmp_path.rglob("*.tmp"))  # no key left lying about


def test_a_refused_new_user_comes_back_as_typed_and_a_new_form_starts_with_the_least_role(app):
    import re

    client = app.test_client()
    sign_in(client, "admin")
    page = client.get("/admin/users").get_data(as_text=True)
    new = page.split("新建用户", 1)[1]
    assert re.search(r'<option value="agent" selected>坐席</option>', new)  # never 管理员 by default
    assert not re.search(r'<option value="admin" selected>', new)
    r = client.post("/admin/users", data={"csrf_token": csrf_of(client), "username": "agent1",  # already exists
                                          "password": "zhao-pass-123", "role": "supervisor",
                                          "display_name": "赵质检", "agent_id": "q7"})
    assert r.status_code == 422
    page = r.get_data(as_text=True)
    assert "用户 agent1 已存在" in page
    new = page.split("新建用户", 1)[1]
    assert 'name="username" required value="agent1"' in new and 'value="赵质检"' in new and 'value="q7"' in new
    assert re.search(r'<option value="supervisor" selected>班长/质检</option>', new)
    assert "zhao-pass-123" not in page  # the password is never sent back


@pytest.mark.parametrize("change", [{"active": "0"}, {"role": "supervisor", "active": "1"},
                                    {"role": "agent", "active": "1", "password": "new-agent-pass-1"}])
def test_an_agent_whose_account_is_disabled_changed_or_reset_loses_the_seat_and_its_api_token_at_once(app, change):
    """A console page already open holds an agent-API token: disabling the user must end it too,
    or a dismissed agent keeps taking calls and reading callers' numbers."""
    from call_routing.acd import Agent
    from tests.test_consoles_agent import seat_token

    acd = app.extensions["acd"]
    acd.save_agent(Agent("a1", "张坐席", {"legal": 50}, endpoints=("client:a1",)))
    acd.save_agent(Agent("e2", "专家2", {"legal_expert": 50}), password="expert-pw")
    other = app.test_client().post("/agent/api/login", json={"agent_id": "e2", "password": "expert-pw"}).get_json()
    agent = app.test_client()
    auth = seat_token(app, agent)
    agent.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    admin = app.test_client()
    sign_in(admin, "admin")
    page = admin.post("/admin/users/agent1", data={"csrf_token": csrf_of(admin), **change}, follow_redirects=True)
    assert "坐席 a1 已签出" in page.get_data(as_text=True)
    assert acd.agent("a1")["state"] == "offline"  # no more calls offered to the seat
    for path in ("/agent/api/me", "/agent/api/ticket"):
        assert agent.get(path, headers=auth).status_code == 401, path
    assert agent.post("/agent/api/state", json={"state": "ready"}, headers=auth).status_code == 401
    entry = app.extensions["console"].db.audit_entries(action="user.update")[0]
    assert "坐席 a1 已签出" in entry.summary
    # another seat's token is untouched
    assert app.test_client().get("/agent/api/me", headers={"Authorization": f"Bearer {other['token']}"}).status_code == 200
