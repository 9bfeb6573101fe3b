"""End to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against
the app served for real on a free port, with the Redis of the fixtures and a SQLite file.

Citizens' calls arrive as signed Twilio webhooks over HTTP; Twilio's REST side is a recording
client (no network). Screenshots of every page go to $HOTLINE_TEST_ARTIFACTS/consoles/ (default: the temp dir).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import re
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlparse

import pytest

from call_routing.acd import Agent
from tests.console_support import PASSWORDS, ROOT, make_console_app, open_expert_seats

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = "/usr/bin/chromedriver"
_missing = [what for what, ok in (("chromium (apt install chromium)", CHROMIUM),
                                  ("chromedriver (apt install chromium-driver)", os.path.exists(DRIVER)),
                                  ("selenium (pip install selenium)", importlib.util.find_spec("selenium")))
            if not ok]
pytestmark = pytest.mark.skipif(bool(_missing), reason="end-to-end browser tests need " + ", ".join(_missing))

# never into the checkout: HOTLINE_TEST_ARTIFACTS, else the temp dir
ARTIFACTS = Path(os.environ.get("HOTLINE_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "hotline-artifacts") / "consoles"
OLD_PROMPT = "您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。"
NEW_PROMPT = "您拨打的12301旅游热线已并入12345，请稍候，正在为您转接旅游服务坐席。"
CALLER = "+8613812345678"
SAID = "我想咨询一下法律援助怎么申请，我住在朝阳区幸福路12号"


@pytest.fixture(scope="module")
def server(redis_server_url, tmp_path_factory):
    import redis
    from werkzeug.serving import make_server

    redis.Redis.from_url(redis_server_url).flushdb()
    here = tmp_path_factory.mktemp("e2e")
    app = make_console_app(here, redis_server_url, HOTLINE_RECORDINGS=str(here / "recordings"))
    for warm in app.extensions.get("warm_up", ()):  # as gunicorn's workers do once started
        warm()                                     # (runtime/serving.py): the pre-fill loaded
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    app.base_url = f"http://127.0.0.1:{httpd.server_port}"
    yield app
    httpd.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", "--lang=zh-CN",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # never Selenium Manager
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


# -- helpers -------------------------------------------------------------------------------------
def shot(driver, name):
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_for(driver, condition, timeout=10, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def sign_in(driver, base, user, password=None):
    driver.delete_all_cookies()
    driver.get(base + "/login")
    by_id(driver, "username").send_keys(user)
    by_id(driver, "password").send_keys(password or PASSWORDS[user])
    by_id(driver, "login-button").click()
    wait_for(driver, lambda d: "/login" not in d.current_url, what="sign-in")


def set_field(driver, element, value):
    """Set an input's value the way a user's typing ends (also for datetime-local inputs)."""
    driver.execute_script("arguments[0].value = arguments[1];"
                          "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
                          "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));", element, value)


class Twilio:
    """Posts webhooks to the running app exactly as Twilio does: form params + X-Twilio-Signature."""

    def __init__(self, base):
        import requests
        from twilio.request_validator import RequestValidator

        from tests.twilio_support import TOKEN

        self.base, self.session, self.validator = base, requests.Session(), RequestValidator(TOKEN)

    def post(self, path, params):
        url = self.base + path
        r = self.session.post(url, data=params, headers={"X-Twilio-Signature":
                                                         self.validator.compute_signature(url, params)}, timeout=10)
        assert r.status_code in (200, 204), (path, r.status_code, r.text)
        return r

    def said(self, path, params) -> str:
        root = ET.fromstring(self.post(path, params).text)
        return "".join(e.text or "" for e in root.iter("Say"))


def call(sid, to, **extra):
    from tests.twilio_support import call_params

    return call_params(sid, to, CALLER, **extra)


# -- the admin -----------------------------------------------------------------------------------
def test_an_admin_fixes_a_broken_rule_dry_runs_publishes_and_rolls_back_while_calls_flow(server, browser):
    base, d = server.base_url, browser
    twilio = Twilio(base)
    flow = server.extensions["twilio"]["flow"]
    d.get(base + "/admin/")
    shot(d, "01-login")
    sign_in(d, base, "admin")
    shot(d, "02-dashboard-admin")
    old_version = server.extensions["rules"].current().version

    # a caller rings 12301 before the change: the old transition prompt
    assert OLD_PROMPT in twilio.said("/twilio/voice", call("CAbefore", "12301"))

    d.get(base + "/admin/rules")
    assert "12301" in by_id(d, "line-12301").text
    shot(d, "03-rules")
    css(d, "#line-12301 .edit-line").click()
    wait_for(d, lambda d: "/admin/rules/lines/12301" in d.current_url, what="line form")
    set_field(d, by_id(d, "f-transition.prompt"), NEW_PROMPT)
    set_field(d, by_id(d, "f-transition.until"), "2026-02-30")  # a slip of the finger
    by_id(d, "check-line").click()
    error = wait_for(d, lambda d: d.find_elements("css selector", ".field.invalid .error-text"), what="field error")
    assert re.search(r"第 \d+ 行", error[0].text) and "2026-02-30" in error[0].text
    assert "校验未通过" in by_id(d, "problems").text
    shot(d, "04-line-error")
    set_field(d, by_id(d, "f-transition.until"), "2026-12-31")  # fixed after reading the error
    by_id(d, "check-line").click()
    wait_for(d, lambda d: "/admin/rules/drafts/" in d.current_url, what="draft page")
    assert "校验通过" in by_id(d, "draft-valid").text
    assert NEW_PROMPT in by_id(d, "diff").text
    assert d.find_elements("id", "publish-blocked")  # no publish before a dry-run
    shot(d, "05-draft")

    set_field(d, by_id(d, "dr-to"), "12301")
    set_field(d, by_id(d, "dr-caller"), "13812345678")
    set_field(d, by_id(d, "dr-at"), "2026-07-01T09:00")
    set_field(d, by_id(d, "dr-heard"), "景区门票价格不合理")
    by_id(d, "dry-run").click()
    wait_for(d, lambda d: d.find_elements("id", "result-draft"), what="dry-run result")
    assert NEW_PROMPT in by_id(d, "result-draft").text and "tourism" in by_id(d, "result-draft").text
    assert OLD_PROMPT in by_id(d, "result-running").text
    shot(d, "06-dry-run")
    set_field(d, by_id(d, "publish-note"), "12301过渡期提示语改短")
    by_id(d, "publish").click()
    wait_for(d, lambda d: urlparse(d.current_url).path.rstrip("/") == "/admin/rules/history",
             what="history after publish")
    new_version = server.extensions["rules"].current().version
    assert new_version != old_version and new_version in by_id(d, "running-version").text
    assert "已发布规则版本" in d.page_source
    shot(d, "07-history-after-publish")

    # a new call uses the new prompt; the call already in progress kept the version it started with
    assert NEW_PROMPT in twilio.said("/twilio/voice", call("CAafter", "12301"))
    assert flow.state("CAbefore").rules_version == old_version
    assert flow.state("CAafter").rules_version == new_version
    twilio.post("/twilio/wait", call("CAbefore", "12301", CallStatus="in-progress"))  # still served
    tickets = server.extensions["console"].tickets
    assert tickets.by_call("CAbefore").rules_version == old_version

    # rollback restores it
    initial = next(v for v in server.extensions["console"].db.versions() if v.version == old_version)
    css(d, f"#version-{initial.id} .view-version").click()
    wait_for(d, lambda d: d.find_elements("id", "rollback"), what="version page")
    shot(d, "08-version")
    set_field(d, by_id(d, "rollback-note"), "恢复原提示语")
    by_id(d, "rollback").click()
    # the version page's own URL is under /admin/rules/history/ too: wait for the list and its message
    wait_for(d, lambda d: urlparse(d.current_url).path.rstrip("/") == "/admin/rules/history" and "已回滚" in d.page_source,
             what="history after rollback")
    assert server.extensions["rules"].current().version == old_version
    assert "已回滚" in d.page_source
    shot(d, "09-history-after-rollback")
    assert OLD_PROMPT in twilio.said("/twilio/voice", call("CArolledback", "12301"))

    # the whole-file editor shows an error at its line; the audit log has every change
    d.get(base + "/admin/rules/yaml")
    content = by_id(d, "content")
    text = content.get_attribute("value")
    set_field(d, content, text.replace("    skill: tourism\n", "    skill: tourisn\n", 1))
    by_id(d, "validate").click()
    wait_for(d, lambda d: d.find_elements("id", "problems"), what="YAML problems")
    line = text.splitlines().index("    skill: tourism") + 1
    assert f"第 {line} 行" in by_id(d, "problems").text and "tourisn" in by_id(d, "problems").text
    assert css(d, "#gutter .err").text == str(line)
    shot(d, "10-yaml-error")
    d.get(base + "/admin/audit")
    audit = by_id(d, "audit").text
    assert "发布规则" in audit and "回滚规则" in audit and "rules.publish" not in audit
    shot(d, "11-audit")
    for sid in ("CAbefore", "CAafter", "CArolledback"):  # the callers hang up
        twilio.post("/twilio/status", call(sid, "12301", CallStatus="completed"))


def test_the_yaml_editor_explains_the_key_under_the_cursor_and_completes_the_keys_allowed_there(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    base, d = server.base_url, browser
    sign_in(d, base, "admin")
    d.get(base + "/admin/rules/yaml")
    content = by_id(d, "content")
    text = content.get_attribute("value")
    caret = "arguments[0].focus(); arguments[0].setSelectionRange(arguments[1], arguments[1]);"
    d.execute_script(caret, content, text.index("  ring_timeout_s:") + 4)
    ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()  # a key pressed on the line: its hint
    wait_for(d, lambda d: "queue.ring_timeout_s" in by_id(d, "yaml-hint").text, what="the hint of ring_timeout_s")
    assert "秒" in by_id(d, "yaml-hint").text and "5–120" in by_id(d, "yaml-hint").text
    general = text.index("    name: 12345综合坐席\n")
    d.execute_script(caret, content, text.index("\n", general))
    ActionChains(d).send_keys(Keys.ENTER, "    after_h").perform()  # a new key typed under skills.general
    wait_for(d, lambda d: by_id(d, "yaml-complete").is_displayed(), what="the completion list")
    assert [li.text for li in d.find_elements("css selector", "#yaml-complete li")] == ["after_hours"]
    shot(d, "18-yaml-completion")
    ActionChains(d).send_keys(Keys.TAB).perform()
    wait_for(d, lambda d: "skills.general.after_hours" in by_id(d, "yaml-hint").text, what="the completed key's hint")
    assert "overflow | callback" in by_id(d, "yaml-hint").text
    assert "    after_hours: " in content.get_attribute("value").split("\n")
    shot(d, "19-yaml-hint")


# -- the agent -----------------------------------------------------------------------------------
def test_an_agent_takes_a_call_with_its_prefilled_ticket_confirms_it_and_starts_a_three_way_transfer(server, browser):
    base, d = server.base_url, browser
    open_expert_seats(server)
    acd = server.extensions["acd"]
    acd.save_agent(Agent("a1", "张坐席", {"legal": 50}, endpoints=("client:a1",)))
    acd.save_agent(Agent("e1", "法律专家", {"legal_expert": 50}, endpoints=("sip:expert1@pbx.example.gov.cn",),
                         expert=True))
    acd.login("e1")
    twilio = Twilio(base)

    sign_in(d, base, "agent1")
    assert "/agent/" in d.current_url
    shot(d, "12-agent-seat-login")
    by_id(d, "seat-login-paused").click()
    wait_for(d, lambda d: by_id(d, "seat-state").text == "小休", what="seat paused")
    shot(d, "13-agent-paused")

    twilio.post("/twilio/voice", call("CAlegal", "12348"))
    twilio.post("/twilio/wait", call("CAlegal", "12348", CallStatus="in-progress"))
    twilio.post("/twilio/heard", call("CAlegal", "12348", CallStatus="in-progress", SpeechResult=SAID))

    by_id(d, "btn-ready").click()
    wait_for(d, lambda d: by_id(d, "seat-state").text == "来电振铃", what="the call ringing")
    wait_for(d, lambda d: by_id(d, "t-transcript").get_attribute("value") == SAID, what="pre-filled ticket")
    assert by_id(d, "t-location").get_attribute("value") == "朝阳区幸福路12号"
    assert by_id(d, "call-line").text == "12348" and by_id(d, "call-caller").text == "138****5678"
    marked = [e.text for e in d.find_elements("css selector", "#ticket .src.machine")]
    assert "机器填写" in marked and len(marked) >= 3
    assert by_id(d, "t-due").text
    shot(d, "14-agent-ringing-prefilled")

    leg = server.extensions["twilio"]["legs"].get("CAlegal")["agent_call"]  # the agent picks up
    twilio.post("/twilio/agent-answer?call=CAlegal&agent=a1", {"CallSid": leg, "CallStatus": "in-progress"})
    twilio.post("/twilio/conference-events", {"FriendlyName": "hotline-CAlegal", "ConferenceSid": "CF" + "2" * 32,
                                              "StatusCallbackEvent": "conference-start"})
    wait_for(d, lambda d: by_id(d, "seat-state").text == "通话中", what="connected")
    location = by_id(d, "t-location")
    location.clear()
    location.send_keys("朝阳区幸福路12号院3号楼")
    by_id(d, "btn-confirm").click()
    wait_for(d, lambda d: by_id(d, "ticket-status").text.startswith("已确认"), what="ticket confirmed")
    ticket = server.extensions["console"].tickets.by_call("CAlegal")
    assert ticket.status == "confirmed" and ticket.fields["location"]["value"] == "朝阳区幸福路12号院3号楼"
    assert ticket.fields["location"]["source"] == "agent"
    shot(d, "15-agent-confirmed")

    wait_for(d, lambda d: d.find_elements("id", "btn-3way-expert") and by_id(d, "btn-3way-expert").is_enabled(),
             what="three-way button")
    by_id(d, "btn-3way-expert").click()
    wait_for(d, lambda d: "三方转接" in by_id(d, "transfer-state").text, what="transfer under way")
    # who is rung, in words: the expert group and the expert's name, never the SIP address
    text = by_id(d, "transfer-state").text
    assert text.startswith("三方转接：正在呼叫 专家坐席") and "（法律专家）" in text and "sip:" not in text, text
    wait_for(d, lambda d: by_id(d, "seat-state").text == "三方通话", what="seat shown in the three-way call")
    assert by_id(d, "btn-cancel-transfer").is_displayed()
    assert server.test_http.posts("/Participants.json")[-1][1]["To"].startswith("sip:expert1@pbx.example.gov.cn")
    shot(d, "16-agent-three-way")

    # the supervisor sees it all on the dashboard
    sign_in(d, base, "super")
    wait_for(d, lambda d: d.find_elements("css selector", "#hourly-chart rect"), what="hourly chart")
    assert "接通率" in by_id(d, "kpi-total").text
    served = by_id(d, "updated-at").text
    wait_for(d, lambda d: by_id(d, "updated-at").text != served, what="the dashboard's 5-second refresh")
    alerts = [li.text for li in d.find_elements("css selector", "#alerts li")]
    assert alerts and all(t and "{" not in t and "undefined" not in t for t in alerts), alerts  # redrawn as sentences
    board = by_id(d, "agents").text  # the seat board, redrawn by the same refresh
    assert "张坐席" in board and "三方通话" in board and "12348" in board
    shot(d, "17-dashboard-supervisor")

    # the supervisor finds the call's ticket in the list (line + the caller's last 4 digits) and opens it
    by_id(d, "nav-tickets").click()
    wait_for(d, lambda d: d.find_elements("id", "ticket-filters"), what="ticket list")
    from selenium.webdriver.support.ui import Select

    Select(css(d, "#ticket-filters select[name=line]")).select_by_value("12348")
    css(d, "#ticket-filters input[name=caller]").send_keys("5678")
    by_id(d, "ticket-search").click()
    wait_for(d, lambda d: "caller=5678" in d.current_url, what="filtered list")
    rows = d.find_elements("css selector", "#ticket-list tbody tr[id^=ticket-row-]")
    assert [r.get_attribute("id") for r in rows] == [f"ticket-row-{ticket.id}"]
    assert "138****5678" in rows[0].text and "咨询" in rows[0].text
    shot(d, "18-ticket-list")
    css(d, f"#ticket-row-{ticket.id} a").click()
    wait_for(d, lambda d: d.current_url.rstrip("/").endswith(f"/admin/tickets/{ticket.id}"), what="ticket page")
    fields = by_id(d, "ticket-fields").text
    assert "朝阳区幸福路12号院3号楼" in fields and "坐席修改" in fields
    assert "系统建单" in by_id(d, "ticket-events").text and "已确认" in by_id(d, "ticket-status").text
    shot(d, "19-ticket-page")

    # 质检: the call's whole recording, stored on its ticket (as the worker does: test_call_recordings.py);
    # the supervisor's player seeks into it, asking for byte ranges; the listen is audited once
    from tests.test_call_recordings import tone_wav

    recordings = Path(server.config["HOTLINE_RECORDINGS"])
    recordings.mkdir(exist_ok=True)
    (recordings / "CAlegal.wav").write_bytes(tone_wav(20.0))
    rec = server.extensions["console"].tickets.add_call_recording("CAlegal", file="CAlegal.wav", ref="CAlegal.wav",
                                                                  source="twilio", keep_days=30, seconds=20.0)
    asked, inner = [], server.wsgi_app  # what Chromium asked of the recording, and the answers

    def watched(environ, start_response):
        if environ["PATH_INFO"].endswith(f"/recordings/{rec.id}.wav"):
            def answered(status, headers, *rest):
                asked.append((environ.get("HTTP_RANGE"), int(status.split()[0])))
                return start_response(status, headers, *rest)
            return inner(environ, answered)
        return inner(environ, start_response)

    server.wsgi_app = watched
    try:
        for second in (15, 5):  # listens, then listens again after reloading the page (a new player)
            d.refresh()
            player = css(d, "#ticket-recordings audio")
            assert "30 分钟内重复收听只记一次" in by_id(d, "ticket-recordings").text
            sought = d.execute_async_script("""
                const a = arguments[0], second = arguments[1], done = arguments[2];
                a.addEventListener('error', () => done({error: a.error && a.error.code}), {once: true});
                a.addEventListener('loadedmetadata', () => {
                  const seekable = [];
                  for (let i = 0; i < a.seekable.length; i++) seekable.push([a.seekable.start(i), a.seekable.end(i)]);
                  a.addEventListener('seeked', () => done({seekable, at: a.currentTime}), {once: true});
                  a.currentTime = second;
                }, {once: true});
                a.load();""", player, second)
            # without byte ranges Chromium finds nothing seekable ([[0, 0]]) and stays at 0
            assert sought == {"seekable": [[0, 20]], "at": second}, (sought, asked)
            wait_for(d, lambda d: d.execute_script("return arguments[0].readyState", player) >= 2,
                     what=f"the audio at {second} s")
    finally:
        server.wsgi_app = inner
    assert len(asked) >= 2 and all(r and r.startswith("bytes=") and status == 206 for r, status in asked), asked
    shot(d, "20-ticket-recording-sought")
    listens = [e for e in server.extensions["console"].db.audit_entries(50, "recording.listen")
               if e.target == f"ticket:{ticket.display_number}"]
    assert [e.actor for e in listens] == ["super"]


# -- the supervisor's room at a glance ---------------------------------------------------------------
def test_the_dashboard_redraws_every_figure_marks_a_possible_emergency_and_says_when_its_figures_are_stale(
        server, browser):
    base, d = server.base_url, browser
    twilio = Twilio(base)
    sign_in(d, base, "super")
    d.get(base + "/admin/")
    assert "12319" not in by_id(d, "line-kpis").text
    served = by_id(d, "updated-at").text
    # a caller rings 12319 after the page was drawn, and the pre-fill hears a possible 119
    twilio.post("/twilio/voice", call("CAsmoke", "12319"))
    twilio.post("/twilio/wait", call("CAsmoke", "12319", CallStatus="in-progress"))
    queued = time.monotonic()
    server.extensions["acd"].prioritise("CAsmoke", "119")
    wait_for(d, lambda d: by_id(d, "updated-at").text != served and "12319" in by_id(d, "line-kpis").text,
             timeout=15, what="the per-line figures redrawn by the 5-second refresh")
    row = next(r.text for r in d.find_elements("css selector", "#line-kpis tbody tr") if r.text.startswith("12319"))
    assert row.split()[2] == "1", row  # 呼入 1
    first = css(d, "#waiting tbody tr")
    assert "可能紧急（119）" in first.text and "urgent" in first.get_attribute("class")
    assert by_id(d, "room-urgent").text.split()[-1] == "1" and "urgent" in by_id(d, "room-urgent").get_attribute("class")
    shot(d, "21-dashboard-possible-emergency")
    # the session ends (expired, signed out elsewhere): the figures on screen are old, and the page says so
    assert not by_id(d, "stale").is_displayed()
    d.delete_all_cookies()
    wait_for(d, lambda d: by_id(d, "stale").is_displayed(), timeout=15, what="the stale-figures warning")
    assert "数据未能更新" in by_id(d, "stale").text and "登录已失效" in by_id(d, "stale").text
    assert by_id(d, "updated-at").text in by_id(d, "stale").text
    shot(d, "22-dashboard-stale")
    # the caller hangs up having waited longer than a missed call's threshold (10 s): kept as a
    # missed-call callback, ahead of the 12319 seats' callers; an admin closes it here, so the
    # room is empty again for the tests that follow (the wait: the page's two refreshes above
    # usually take about 10 s, and a shorter wait is a plain abandoned call — session 19's CI)
    acd = server.extensions["acd"]
    time.sleep(max(0.0, acd.abandon_callback_after_s + 1 - (time.monotonic() - queued)))
    twilio.post("/twilio/status", call("CAsmoke", "12319", CallStatus="completed"))
    assert acd.call("CAsmoke")["kind"] == "callback" and "housing_construction" in acd.call("CAsmoke")["queues"]
    assert acd.leave("CAsmoke", "admin").status == "ok"


def seat_ready_in_the_browser(server, d, agent_id, name):
    """A customs seat (no call of these tests goes there) whose agent signs in and clicks 就绪."""
    n = agent_id[1:]
    server.extensions["acd"].save_agent(Agent(agent_id, name, {"customs": 50}, endpoints=(f"client:{agent_id}",)))
    server.extensions["console"].db.add_user(f"agent{n}", f"agent{n}-pass-123", "agent", agent_id=agent_id,
                                             display_name=name)
    sign_in(d, server.base_url, f"agent{n}", f"agent{n}-pass-123")
    wait_for(d, lambda d: d.find_elements("id", "seat-login-ready"), what="the seat login")
    by_id(d, "seat-login-ready").click()
    wait_for(d, lambda d: d.find_elements("id", "seat-state") and by_id(d, "seat-state").text == "就绪",
             what="seat ready")


def test_an_agent_whose_seat_the_system_signed_out_is_brought_back_to_seat_login_with_the_reason(server, browser):
    d, acd = browser, server.extensions["acd"]
    seat_ready_in_the_browser(server, d, "a7", "周坐席")
    acd.logout("a7", "heartbeat")  # the heartbeats stopped (network, a sleeping laptop): the ACD signs the seat out
    wait_for(d, lambda d: d.find_elements("id", "seat-login-ready"), timeout=10, what="back to 上岗")
    assert "系统已自动将坐席签出。请重新上岗。" in d.find_element("css selector", "main").text
    shot(d, "23-agent-signed-out-by-the-system")
    by_id(d, "seat-login-ready").click()
    wait_for(d, lambda d: d.find_elements("id", "seat-state") and by_id(d, "seat-state").text == "就绪",
             what="seat ready again")
    assert acd.agent("a7")["state"] == "ready"
    acd.logout("a7")


def test_an_agent_console_whose_page_cannot_run_its_timers_still_beats_so_the_seat_is_kept(server, browser):
    # Chrome throttles a hidden tab's timers to one wake-up a minute, longer than the ACD's
    # 30-second heartbeat timeout: an agent working in another window would be signed out. The
    # heartbeat runs in a worker, so it keeps its pace while the page itself runs nothing (here:
    # its one thread held busy for 15 s, which headless Chromium does for real).
    d, acd = browser, server.extensions["acd"]
    seat_ready_in_the_browser(server, d, "a9", "郑坐席")
    before = acd.redis.zscore(acd.keys.beats(), "a9")
    frozen = threading.Thread(target=d.execute_script,
                              args=("var end = Date.now() + 15000; while (Date.now() < end) {}",))
    frozen.start()
    time.sleep(11.5)  # the page has run nothing for 11 s: a beat is due every 10 s
    during = acd.redis.zscore(acd.keys.beats(), "a9")
    frozen.join(30)
    assert during is not None and during > before, "no heartbeat reached the ACD while the page was frozen"
    acd.tick()
    assert acd.agent("a9")["state"] == "ready"
    acd.logout("a9")


def test_an_open_console_follows_an_admin_who_shortens_the_heartbeat_timeout_and_keeps_its_seat(server, browser):
    # The page was loaded under a 30-second timeout (a beat every 10 s). An admin shortens the
    # timeout to 10 s while agents work: a console still beating every 10 s would be signed out
    # between two beats. Each beat's answer carries the new pace, and the console follows it.
    d, acd = browser, server.extensions["acd"]
    seat_ready_in_the_browser(server, d, "a6", "钱坐席")
    path = server.extensions["rules"].path
    before = path.read_text(encoding="utf-8")
    assert "heartbeat_timeout_s: 30" in before
    try:
        path.write_text(before.replace("heartbeat_timeout_s: 30", "heartbeat_timeout_s: 10", 1), encoding="utf-8")
        deadline = time.monotonic() + 10
        while acd.heartbeat_timeout_s != 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert acd.heartbeat_timeout_s == 10
        beats, until = [], time.monotonic() + 25  # the beat already due brings the new pace
        while time.monotonic() < until:
            at = acd.redis.zscore(acd.keys.beats(), "a6")
            if not beats or at != beats[-1]:
                beats.append(at)
            acd.tick()  # as the ACD's timers do: a seat silent for 10 s is signed out
            assert acd.agent("a6")["state"] == "ready", "the console lost its seat"
            time.sleep(0.1)
        gaps = [round(b - a, 1) for a, b in zip(beats, beats[1:])][-3:]  # the last three, at the new pace
        assert len(gaps) == 3 and max(gaps) < 5, f"beats {gaps} s apart under a 10-second timeout"
    finally:
        path.write_text(before, encoding="utf-8")
        deadline = time.monotonic() + 10
        while acd.heartbeat_timeout_s != 30 and time.monotonic() < deadline:
            time.sleep(0.2)
    acd.logout("a6")


def test_an_agent_typing_in_the_ticket_when_wrap_up_ends_by_itself_keeps_the_edits_and_confirms_them(server, browser):
    base, d = server.base_url, browser
    acd = server.extensions["acd"]
    acd.save_agent(Agent("a8", "吴坐席", {"housing_construction": 50}, endpoints=("client:a8",)))
    server.extensions["console"].db.add_user("agent8", "agent8-pass-123", "agent", agent_id="a8", display_name="吴坐席")
    twilio = Twilio(base)
    sign_in(d, base, "agent8", "agent8-pass-123")
    wait_for(d, lambda d: d.find_elements("id", "seat-login-ready"), what="the seat login")
    by_id(d, "seat-login-ready").click()
    twilio.post("/twilio/voice", call("CAhouse", "12319"))
    twilio.post("/twilio/wait", call("CAhouse", "12319", CallStatus="in-progress"))
    twilio.post("/twilio/heard", call("CAhouse", "12319", CallStatus="in-progress", SpeechResult="我家楼上漏水，物业不管"))
    wait_for(d, lambda d: by_id(d, "seat-state").text == "来电振铃", what="the call ringing")
    leg = server.extensions["twilio"]["legs"].get("CAhouse")["agent_call"]
    twilio.post("/twilio/agent-answer?call=CAhouse&agent=a8", {"CallSid": leg, "CallStatus": "in-progress"})
    twilio.post("/twilio/status", call("CAhouse", "12319", CallStatus="completed", CallDuration="80"))
    wait_for(d, lambda d: by_id(d, "seat-state").text == "话后整理", what="wrap-up")
    summary = by_id(d, "t-summary")
    summary.send_keys("楼上住户漏水，物业不予处理")  # the agent writes the summary…
    acd.wrapup_done("a8")  # …while 话后整理 runs out (the ACD's wrapup_max_s)
    wait_for(d, lambda d: by_id(d, "seat-state").text == "就绪", what="ready again")
    time.sleep(2)  # a few polls later the ticket and what was typed are still there
    assert by_id(d, "ticket").is_displayed() and by_id(d, "t-summary").get_attribute("value") == "楼上住户漏水，物业不予处理"
    shot(d, "24-agent-edits-kept-after-wrap-up")
    by_id(d, "btn-confirm").click()
    wait_for(d, lambda d: "工单已确认" in by_id(d, "agent-msg").text, what="confirmed")
    ticket = server.extensions["console"].tickets.by_call("CAhouse")
    assert ticket.status == "confirmed" and ticket.fields["summary"]["value"] == "楼上住户漏水，物业不予处理"
    acd.logout("a8")
