"""The agent console's WebRTC softphone against the real Asterisk 22 and headless Chromium.

The lab's Asterisk (tests/pbx_world.py) gains what docs/asterisk.md gives an admin: its HTTP
server on loopback with the SIP WebSocket (``/ws``), a ``protocol = ws`` PJSIP transport, and the
seat's WebRTC endpoint exactly as ``python -m consoles.softphone pjsip SEAT`` prints it (DTLS with a
self-signed certificate made in the test's temp dir). The product's web app runs with
``SOFTPHONE_WS_URL``; Chromium (fake microphone, no permission prompt) signs in as the agent:

* the page registers the seat's endpoint — Asterisk itself lists the contact over ``transport=ws``;
* a citizen's call routed by the dialplan to that seat rings in the browser, caller masked,
  with the call's ticket from the INVITE's ``X-Hotline-Ticket``;
* 接听 answers: Asterisk bridges the citizen with ``PJSIP/seat7101-…``, the channel is Up and
  Asterisk receives the browser's audio over DTLS-SRTP; 保持 / 恢复通话 are Asterisk's Hold /
  Unhold of that channel (the caller hears the hold music meanwhile); 挂断 ends it.

Settings that cannot work stop the app with a line naming the setting (no Asterisk needed).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from call_routing.acd import Agent

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = "/usr/bin/chromedriver"
_missing = [what for what, ok in (("chromium", CHROMIUM), ("chromedriver", os.path.exists(DRIVER)),
                                  ("selenium", importlib.util.find_spec("selenium")),
                                  ("openssl", shutil.which("openssl"))) if not ok]
browser_needed = pytest.mark.skipif(bool(_missing), reason="softphone browser test needs " + ", ".join(_missing))

# screenshots never into the checkout: HOTLINE_TEST_ARTIFACTS, else the temp dir
ARTIFACTS = Path(os.environ.get("HOTLINE_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "hotline-artifacts") / "softphone"
SECRET = "softphone-test-secret-0123456789"
SEAT, ENDPOINT = "7101", "seat7101"
CITIZEN = "13812345678"


# -- settings: no Asterisk needed ---------------------------------------------------------------
def test_softphone_settings_that_cannot_work_stop_the_app_naming_the_setting(redis_url, tmp_path):
    from tests.console_support import make_console_app

    with pytest.raises(ValueError, match="SOFTPHONE_WS_URL must be a ws:// or wss:// URL"):
        make_console_app(tmp_path, redis_url, SOFTPHONE_WS_URL="https://pbx.example.cn/ws", SOFTPHONE_SECRET=SECRET)
    with pytest.raises(ValueError, match="SOFTPHONE_SECRET must be set too"):
        make_console_app(tmp_path, redis_url, SOFTPHONE_WS_URL="wss://pbx.example.cn:8089/ws")


def test_the_softphone_shows_only_for_a_pjsip_seat_on_a_configured_site(redis_url, tmp_path):
    from tests.console_support import make_console_app, sign_in

    def page(app, endpoints):
        app.extensions["acd"].save_agent(Agent("a1", "张坐席", {"general": 50}, endpoints=endpoints))
        client = app.test_client()
        sign_in(client, "agent1")
        return client.get("/agent/").get_data(as_text=True)

    (tmp_path / "plain").mkdir()
    (tmp_path / "site").mkdir()
    plain = make_console_app(tmp_path / "plain", redis_url)
    assert 'id="softphone"' not in page(plain, ("PJSIP/agent1001",))
    site = make_console_app(tmp_path / "site", redis_url,
                            SOFTPHONE_WS_URL="wss://pbx.example.cn:8089/ws", SOFTPHONE_SECRET=SECRET)
    html = page(site, ("PJSIP/agent1001",))
    assert 'data-uri="sip:agent1001@pbx.example.cn"' in html and "网页电话" in html and "未注册" in html
    # the password Asterisk gets from `consoles.softphone pjsip` for the same endpoint
    from consoles.softphone import pjsip_endpoints, sip_password

    assert f'data-password="{sip_password(SECRET, "agent1001")}"' in html
    assert f"password = {sip_password(SECRET, 'agent1001')}" in pjsip_endpoints(
        [{"id": "a1", "endpoints": ["PJSIP/agent1001"]}], SECRET)
    assert 'id="softphone"' not in page(site, ("client:a1",))  # a Twilio seat: no SIP phone


def test_the_pjsip_command_refuses_a_seat_without_a_pjsip_endpoint(redis_url, tmp_path):
    from call_routing.acd import ACD
    from call_routing.rules_store import RulesStore
    from tests.console_support import ROOT

    ACD.from_url(redis_url, RulesStore(str(ROOT / "transfer_rules.yaml"))).save_agent(
        Agent("a9", "坐席a9", {"general": 50}, endpoints=("client:a9",)))
    env = dict(os.environ, REDIS_URL=redis_url, SOFTPHONE_SECRET=SECRET, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "consoles.softphone", "pjsip", "a9"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "seat a9 has no PJSIP/<name> endpoint" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "consoles.softphone", "pjsip", "a9"], cwd=tmp_path, timeout=60,
                         env=dict(env, SOFTPHONE_SECRET=""), capture_output=True, text=True)
    assert out.returncode == 1 and "SOFTPHONE_SECRET must be set" in out.stderr, out.stderr


# -- the real thing -------------------------------------------------------------------------------
WS_TRANSPORT = """
[softphone-ws]            ; SIP over WebSocket: the http.conf server's /ws
type = transport
protocol = ws
bind = 127.0.0.1
"""


def enable_webrtc(world, tmp_path) -> str:
    """The lab's Asterisk as docs/asterisk.md sets it up for softphones; returns the WS URL."""
    from bench.asterisk_lab import free_port, wait_until

    lab = world.lab
    if "Running" not in lab.rx("module show like res_srtp"):
        pytest.skip("softphone test skipped: Asterisk's res_srtp is not loaded (apt-get install libsrtp2-1)")
    cert, key = tmp_path / "dtls.crt", tmp_path / "dtls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    port = free_port()
    (lab.run / "http.conf").write_text(f"[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = {port}\n")
    lab.rx("module reload http")
    assert f"Bound to 127.0.0.1:{port}" in lab.rx("http show status")
    # the seat's endpoint as the admin's command prints it
    env = dict(world.product.env, SOFTPHONE_SECRET=SECRET)
    out = subprocess.run([sys.executable, "-m", "consoles.softphone", "pjsip", SEAT, "--context", "lab-agent",
                          "--dtls-cert", str(cert), "--dtls-key", str(key)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (lab.run / "pjsip_softphones.conf").write_text(WS_TRANSPORT + "\n" + out.stdout)
    pjsip = lab.run / "pjsip.conf"
    if "pjsip_softphones.conf" not in pjsip.read_text():
        pjsip.write_text(pjsip.read_text() + "\n#include pjsip_softphones.conf\n")
    lab.rx("module reload res_pjsip.so")
    wait_until(lambda: "webrtc" in lab.rx(f"pjsip show endpoint {ENDPOINT}").lower()
               and "softphone-ws" in lab.rx("pjsip show transports"), 10, 0.2, "the WebRTC endpoint and ws transport")
    return f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
def console(pbx, tmp_path):
    """The product's web app on the world's Redis and database, with the softphone configured."""
    from werkzeug.serving import make_server

    from app import create_app

    pbx.acd.save_agent(Agent(SEAT, "赵坐席", {"legal": 50}, endpoints=(f"PJSIP/{ENDPOINT}",)))  # the admin's seat
    ws_url = enable_webrtc(pbx, tmp_path)
    app = create_app({"RULES_PATH": str(pbx.rules_path), "REDIS_URL": pbx.redis_url,
                      "DATABASE_URL": pbx.product.env["DATABASE_URL"], "SECRET_KEY": "softphone-test-key",
                      "SOFTPHONE_WS_URL": ws_url, "SOFTPHONE_SECRET": SECRET})
    app.extensions["console"].db.add_user("agent7101", "agent-pass-7101", "agent", agent_id=SEAT,
                                          display_name="赵坐席")
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    app.base_url = f"http://127.0.0.1:{httpd.server_port}"
    yield app
    httpd.shutdown()
    thread.join(5)


@pytest.fixture
def chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1000", "--lang=zh-CN",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def text_of(driver, element_id) -> str:
    return driver.execute_script("var e = document.getElementById(arguments[0]); return e ? e.textContent : '';",
                                 element_id)


def wait_text(driver, element_id, want, timeout=15):
    from bench.asterisk_lab import wait_until

    return wait_until(lambda: want in text_of(driver, element_id), timeout, 0.1,
                      f"#{element_id} to say {want!r} (it says {text_of(driver, element_id)!r})")


def shot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def click(driver, element_id):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, element_id).click()


def channel_state(world, channel: str) -> str | None:
    """The state Asterisk's ``core show channels concise`` gives ``channel`` (Ring, Ringing, Up, …)."""
    for line in world.lab.rx("core show channels concise").splitlines():
        fields = line.split("!")
        if fields[0] == channel:
            return fields[4]
    return None


def audio_received(world, channel: str) -> int:
    """RTP packets Asterisk received on ``channel`` (``pjsip show channelstats``: Receive Count)."""
    name = channel.split("/", 1)[1]
    for line in world.lab.rx("pjsip show channelstats").splitlines():
        fields = line.split()
        if name in fields:
            at = fields.index(name)
            return int(fields[at + 3])
    return 0


@browser_needed
@pytest.mark.pbx
def test_an_agent_registers_in_the_browser_and_answers_holds_and_hangs_up_a_routed_call(pbx, console, chromium):
    from selenium.webdriver.common.by import By

    from bench.asterisk_lab import wait_until

    world, d = pbx, chromium
    d.get(console.base_url + "/login")
    d.find_element(By.ID, "username").send_keys("agent7101")
    d.find_element(By.ID, "password").send_keys("agent-pass-7101")
    click(d, "login-button")
    wait_until(lambda: "/login" not in d.current_url, 10, 0.1, "sign-in")
    d.get(console.base_url + "/agent/")

    # the page registers the seat's endpoint: Asterisk holds a contact over the WebSocket
    wait_text(d, "sp-reg", "已注册")
    # (the CLI cuts the URI at "transpor…"; Avail: the browser answered Asterisk's qualify over the socket)
    contact = re.compile(rf"Contact:\s+{ENDPOINT}/sip:\S+;transpor\S*\s+\S+\s+Avail")
    wait_until(lambda: contact.search(world.lab.rx("pjsip show contacts")), 10, 0.2,
               "Asterisk to list the browser's contact as available")
    contact_id = world.ami.action("Getvar", Variable=f"PJSIP_AOR({ENDPOINT},contact)").get("Value")
    uri = world.ami.action("Getvar", Variable=f"PJSIP_CONTACT({contact_id},uri)").get("Value")
    assert ";transport=ws" in uri, (contact_id, uri)
    click(d, "seat-login-ready")  # 上岗并就绪
    wait_until(lambda: (world.acd.agent(SEAT) or {}).get("state") == "ready", 10, 0.1, "the seat to be ready")

    # a citizen calls the legal line: the dialplan rings the seat's endpoint, the browser rings
    call = world.call("12348", caller=CITIZEN)
    wait_text(d, "sp-status", "来电振铃中", timeout=25)
    ticket = call.var("HOTLINE_TICKET")
    assert text_of(d, "sp-caller") == "138****5678" and CITIZEN not in d.page_source
    assert ticket and f"工单 {ticket}" in text_of(d, "sp-ticket")
    def dialed():
        return next((e["DestChannel"] for e in call.events() if e.get("Event") == "DialBegin"
                     and e.get("DestChannel", "").startswith(f"PJSIP/{ENDPOINT}-")), None)
    leg = wait_until(dialed, 5, 0.05, "Asterisk to dial the seat's endpoint")
    assert channel_state(world, leg) == "Ringing"
    shot(d, "1-ringing")

    # 接听: Asterisk bridges the citizen with the browser's channel, Up, and hears the browser
    click(d, "sp-answer")
    assert call.bridged_with(f"PJSIP/{ENDPOINT}-", timeout=15) == leg
    assert channel_state(world, leg) == "Up"
    wait_text(d, "sp-status", "通话中")
    wait_until(lambda: audio_received(world, leg) > 25, 10, 0.2, "Asterisk to receive the browser's audio")
    wait_until(lambda: (world.acd.agent(SEAT) or {}).get("state") == "busy", 10, 0.1, "the ACD to see the seat talking")

    # 保持 / 恢复通话: Asterisk's own Hold and Unhold of the agent's channel
    mark = len(world.ami.events)
    click(d, "sp-hold")
    wait_until(lambda: any(e.get("Event") == "Hold" and e.get("Channel") == leg for e in world.events_since(mark)),
               10, 0.05, "Asterisk to see the softphone hold the call")
    citizen_side = call.channel()  # the channel bridged with the agent: the caller hears the hold music
    wait_until(lambda: any(e.get("Event") == "MusicOnHoldStart" and e.get("Channel") == citizen_side
                           and e.get("Class") == "hotline" for e in world.events_since(mark)), 10, 0.05,
               "the product's hold music (class hotline) for the caller")
    wait_text(d, "sp-status", "已保持")
    shot(d, "2-held")
    click(d, "sp-hold")
    wait_until(lambda: any(e.get("Event") == "Unhold" and e.get("Channel") == leg
                           for e in world.events_since(mark)), 10, 0.05, "Asterisk to see the call resumed")
    wait_text(d, "sp-status", "通话中")

    # 挂断: the agent's leg ends in Asterisk, the page says so
    click(d, "sp-hangup")
    wait_until(lambda: call.hung_up(leg), 10, 0.05, "the agent's WebRTC leg to end")
    wait_text(d, "sp-status", "通话已结束")
