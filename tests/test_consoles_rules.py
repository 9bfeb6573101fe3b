"""Rules editing by a telecom admin: validate, dry-run, publish, history, rollback, disk edits."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from call_routing.router import decide
from call_routing.rules_store import RulesStore
from consoles.rules_admin import PublishConflict
from consoles.rules_sync import CHANNEL, KEY, apply_published
from tests.console_support import ROOT, copy_rules, csrf_of, make_console_app, sign_in
from tests.twilio_support import call_params

OLD_PROMPT = "您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。"
NEW_PROMPT = "您拨打的12301旅游热线已并入12345，请稍候，正在为您转接旅游服务坐席。"
IN_WINDOW = "2026-07-01T09:00"


@pytest.fixture
def app(tmp_path, redis_url):
    return make_console_app(tmp_path, redis_url)


@pytest.fixture
def admin(app):
    client = app.test_client()
    sign_in(client, "admin")
    client.csrf = csrf_of(client)
    return client


def line_form(app, **changes):
    editor = app.extensions["console"].editor
    values = editor.line_values(editor.disk_text(), "12301")
    values.update(changes)
    values["base_sha"] = app.extensions["console"].editor.disk_sha()
    return values


def make_draft(admin, app, **changes) -> str:
    r = admin.post("/admin/rules/lines/12301", data={"csrf_token": admin.csrf, **line_form(app, **changes)})
    assert r.status_code == 302, r.get_data(as_text=True)
    return r.location.split("?")[0]


def dry_run(admin, draft_url, **form):
    return admin.post(draft_url, data={"csrf_token": admin.csrf, "to": "12301", "at": IN_WINDOW, **form})


def publish(admin, draft_url):
    return admin.post(draft_url + "/publish", data={"csrf_token": admin.csrf, "note": "新提示语"})


def test_the_rules_page_lists_every_line_with_mode_window_prompt_skill_and_target(admin, rules):
    html = admin.get("/admin/rules").get_data(as_text=True)
    rows = re.findall(r'<tr id="line-(\d+)">', html)
    assert set(rows) == set(rules.lines) | {rules.hotline.number}
    row_12301 = html.split('id="line-12301"')[1].split("</tr>")[0]
    assert "整体并入" in row_12301 and "2021-01-01 至 2026-12-31" in row_12301 and OLD_PROMPT in row_12301
    assert "旅游服务坐席" in row_12301 and "tourism" in row_12301
    sub = next(n for n, line in rules.lines.items() if line.mode == "subcenter")
    row_sub = html.split(f'id="line-{sub}"')[1].split("</tr>")[0]
    assert "设分中心" in row_sub and rules.lines[sub].subcenter_target in row_sub
    row_12348 = html.split('id="line-12348"')[1].split("</tr>")[0]
    assert "双号并行" in row_12348 and "专家：公共法律服务专家坐席" in row_12348


def test_yaml_errors_are_shown_at_their_line_exactly_as_the_check_command_reports_them(admin, app, tmp_path):
    text = app.extensions["console"].editor.disk_text()
    broken = text.replace("    skill: tourism\n", "    skill: tourisn\n", 1).replace(
        "      until: 2026-12-31", "      until: 2026-02-30", 1)
    r = admin.post("/admin/rules/yaml", data={"csrf_token": admin.csrf, "content": broken, "action": "validate"})
    assert r.status_code == 422
    html = r.get_data(as_text=True)
    bad = tmp_path / "check" / "transfer_rules.yaml"
    bad.parent.mkdir()
    copy_rules(bad.parent)
    bad.write_text(broken, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "call_routing", "check", str(bad)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    reported = re.findall(r":(\d+): (\S+): ", out.stdout)
    assert {f for _, f in reported} == {"lines.12396.transition.until", "lines.12301.skill"}
    for line, field in reported:
        assert re.search(rf"第 {line} 行</a> · <code>{re.escape(field)}</code>", html), (line, field)
    assert "坐席组「tourisn」不存在（已定义：general, " in html
    assert "「2026-02-30」不是有效的日期或时间（例：2021-01-01 或 2021-01-01 08:00）" in html
    # the draft button refuses an invalid file too: no draft is made
    r = admin.post("/admin/rules/yaml", data={"csrf_token": admin.csrf, "content": broken, "action": "draft"})
    assert r.status_code == 422 and not app.extensions["console"].db.drafts()


def test_a_line_edited_in_the_form_keeps_every_other_byte_of_the_file(admin, app):
    before = Path(app.config["RULES_PATH"]).read_text(encoding="utf-8")
    url = make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})
    draft = app.extensions["console"].db.draft(int(url.rsplit("/", 1)[1]))
    changed = [(a, b) for a, b in zip(before.splitlines(), draft.content.splitlines()) if a != b]
    assert len(before.splitlines()) == len(draft.content.splitlines())
    assert changed == [(f"      prompt: {OLD_PROMPT}", f"      prompt: {NEW_PROMPT}")]


def test_a_form_error_is_shown_next_to_its_field_with_its_line(admin, app):
    r = admin.post("/admin/rules/lines/12301", data={"csrf_token": admin.csrf,
                                                     **line_form(app, **{"transition.until": "2026-02-30"})})
    assert r.status_code == 422
    html = r.get_data(as_text=True)
    field = html.split('for="f-transition.until"')[1].split("</div>")[0]
    lines = app.extensions["console"].editor.disk_text().splitlines()
    line = lines.index("      until: 2026-12-31", lines.index('  "12301":')) + 1  # line 12301's own
    assert f"第 {line} 行" in field and "「2026-02-30」不是有效的日期或时间" in field


def test_dry_run_shows_the_drafts_decision_beside_the_running_one_and_is_required_before_publishing(admin, app):
    url = make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})
    r = publish(admin, url)  # not dry-run yet
    assert r.status_code == 302 and r.location.endswith(url)
    assert app.extensions["rules"].current().lines["12301"].transition.prompt == OLD_PROMPT
    r = dry_run(admin, url, caller="13812345678", heard="景区门票太贵了")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    draft_part, running_part = html.split('id="result-draft"')[1].split('id="result-running"')
    assert NEW_PROMPT in draft_part and "tourism" in draft_part and OLD_PROMPT not in draft_part
    assert OLD_PROMPT in running_part.split("</div>")[0]
    # in words: the mode, the group by name (with its id for the YAML), the steps, the time in China time
    shown = re.sub(r"<[^>]+>", " ", draft_part.split("</div>")[0])
    assert "方式  整体并入" in shown and "旅游服务坐席（tourism）" in shown and "进入排队" in shown
    assert "播放提示语" in shown and "07月01日 09:00" in shown and "T09:00" not in shown and "merge" not in shown
    # a number that is not a line says so (the router takes it as the 12345 main number); letters are refused
    html = dry_run(admin, url, to="12399").get_data(as_text=True)
    assert "号码 12399 不在规则中，来电按 12345 处理" in html
    assert "不在规则中" not in dry_run(admin, url).get_data(as_text=True)
    r = dry_run(admin, url, to="l2301")
    assert r.status_code == 422 and "被叫号码“l2301”无效：请只填数字" in r.get_data(as_text=True)
    # an emergency heard is routed by the draft the same way the router does
    r = dry_run(admin, url, heard="家里着火了")
    assert "119" in r.get_data(as_text=True).split('id="result-draft"')[1]


def test_publish_serves_new_calls_the_new_version_while_a_call_in_flight_keeps_its_rules(admin, app, redis_client):
    store = app.extensions["rules"]
    held = store.current()  # a call that started before the publish
    other_process = RulesStore(app.config["RULES_PATH"])  # e.g. the FastAGI server
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    url = make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})
    dry_run(admin, url)
    r = publish(admin, url)
    assert r.status_code == 302 and r.location.endswith("/admin/rules/history")
    new = store.current()
    assert new.version != held.version
    at = datetime.fromisoformat(IN_WINDOW)
    assert decide("12301", None, at, None, new).steps[0]["text"] == NEW_PROMPT
    assert decide("12301", None, at, None, held).steps[0]["text"] == OLD_PROMPT
    assert held.lines["12301"].transition.prompt == OLD_PROMPT
    deadline = time.monotonic() + 1.5
    while other_process.current().version != new.version and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other_process.current().version == new.version  # within a second, no restart
    assert redis_client.hget(KEY, "version").decode() == new.version
    message = None
    for _ in range(5):  # the first read may be the (ignored) subscribe confirmation
        message = message or pubsub.get_message(timeout=0.5)
    assert message and message["data"].decode() == new.version
    history = admin.get("/admin/rules/history").get_data(as_text=True)
    assert new.version in history and held.version in history and "使用中" in history
    entry = app.extensions["console"].db.audit_entries(action="rules.publish")[0]
    assert entry.actor == "admin" and f"-      prompt: {OLD_PROMPT}" in entry.diff and f"+      prompt: {NEW_PROMPT}" in entry.diff


def test_rollback_republishes_an_earlier_version_and_is_audited(admin, app):
    store = app.extensions["rules"]
    original = store.current().version
    url = make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})
    dry_run(admin, url)
    publish(admin, url)
    assert store.current().lines["12301"].transition.prompt == NEW_PROMPT
    versions = app.extensions["console"].db.versions()
    initial = next(v for v in versions if v.kind == "initial")
    page = admin.get(f"/admin/rules/history/{initial.id}").get_data(as_text=True)
    assert "回滚到此版本" in page
    r = admin.post(f"/admin/rules/history/{initial.id}/rollback", data={"csrf_token": admin.csrf, "note": "提示语有误"})
    assert r.status_code == 302
    assert store.current().version == original
    assert store.current().lines["12301"].transition.prompt == OLD_PROMPT
    latest = app.extensions["console"].db.latest_version()
    assert latest.kind == "rollback" and latest.restored_from == initial.id and latest.note == "提示语有误"
    entry = app.extensions["console"].db.audit_entries(action="rules.rollback")[0]
    assert entry.actor == "admin" and f"+      prompt: {OLD_PROMPT}" in entry.diff


def test_an_invalid_edit_on_disk_never_replaces_the_running_rules_and_is_shown_to_the_admin(admin, app):
    store = app.extensions["rules"]
    running = store.current()
    path = Path(app.config["RULES_PATH"])
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("    skill: tourism\n", "    skill: no_such_group\n", 1), encoding="utf-8")
    line = text.splitlines().index("    skill: tourism") + 1
    time.sleep(1.1)
    assert store.current() is running
    html = admin.get("/admin/rules").get_data(as_text=True)
    assert "未通过校验，因此没有生效" in html and f"第 {line} 行" in html and "no_such_group" in html
    editor = admin.get("/admin/rules/yaml").get_data(as_text=True)  # opens the broken file with its error
    assert "no_such_group" in editor and f'data-errors="{line}"' in editor
    assert "hotline_rules_file_invalid 1.0" in admin.get("/metrics").get_data(as_text=True)
    # publishing a fix on top of the broken file works (its base is what is on disk)
    assert not [v for v in app.extensions["console"].db.versions() if v.kind == "disk"]


def test_a_valid_edit_on_disk_is_picked_up_and_recorded_as_a_version(admin, app):
    store = app.extensions["rules"]
    admin.get("/admin/rules")  # first look: the initial version is recorded
    path = Path(app.config["RULES_PATH"])
    path.write_text(path.read_text(encoding="utf-8").replace(OLD_PROMPT, NEW_PROMPT), encoding="utf-8")
    time.sleep(1.1)
    assert store.current().lines["12301"].transition.prompt == NEW_PROMPT
    admin.get("/admin/rules")
    latest = app.extensions["console"].db.latest_version()
    assert latest.kind == "disk" and latest.version == store.current().version
    entry = app.extensions["console"].db.audit_entries(action="rules.disk_change")[0]
    assert entry.actor == "system" and NEW_PROMPT in entry.diff


def test_publishing_a_draft_made_before_someone_elses_change_is_refused(admin, app):
    url = make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})
    dry_run(admin, url)
    path = Path(app.config["RULES_PATH"])
    path.write_text(path.read_text(encoding="utf-8").replace("全国统一旅游资讯服务电话", "旅游服务热线"), encoding="utf-8")
    r = publish(admin, url)
    assert r.status_code == 302
    assert "已被修改" in admin.get(url).get_data(as_text=True)
    assert NEW_PROMPT not in path.read_text(encoding="utf-8")
    with pytest.raises(PublishConflict):
        editor = app.extensions["console"].editor
        editor.publish(editor.disk_text().replace("a", "a"), "admin", base_sha256="0" * 64)


def test_publishing_a_draft_that_no_longer_passes_says_why_in_chinese_at_its_line(admin, app):
    """The draft passed when it was made and dry-run; then the emergency keyword file beside the
    rules was broken on disk (a typo made by hand). Publishing is refused, and the admin reads why
    in Chinese — the file, the line, the key and what is allowed — never the checker's English."""
    import html as html_lib

    url = make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})
    assert dry_run(admin, url).status_code == 200
    rules_file = Path(app.config["RULES_PATH"])
    keywords = rules_file.parent / "emergency_keywords.yaml"
    text = keywords.read_text(encoding="utf-8")
    keywords.write_text(text.replace('"122":\n  words:', '"122":\n  wrds:', 1), encoding="utf-8")
    line = text.splitlines().index('"122":') + 2
    assert publish(admin, url).status_code == 302
    page = admin.get(url).get_data(as_text=True)
    said = html_lib.unescape(page.split('role="status">', 1)[1].split("</div>", 1)[0])
    assert said.startswith("草稿未通过校验，不能发布：")
    assert f"emergency_keywords.yaml 第 {line} 行 · 122.wrds：未知的键 wrds（可用：words, except, unless, possible）" in said
    assert not re.search(r"\b(unknown|key|allowed|missing|must|line)\b", said), said
    # the draft's own page lists the same problem at its line, and the rules in service are untouched
    problems = html_lib.unescape(page.split('id="problems"', 1)[1].split("</div>", 1)[0])
    assert f"第 {line} 行" in problems and "未知的键 wrds（可用：words, except, unless, possible）" in problems
    assert NEW_PROMPT not in rules_file.read_text(encoding="utf-8")
    assert app.extensions["rules"].current().lines["12301"].transition.prompt == OLD_PROMPT


def test_another_host_follows_published_versions_and_never_writes_an_invalid_one(admin, app, tmp_path, redis_client):
    other = tmp_path / "other-host"
    other.mkdir()
    other_rules = copy_rules(other)
    url = make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})
    dry_run(admin, url)
    publish(admin, url)
    version = app.extensions["rules"].current().version
    assert apply_published(redis_client, str(other_rules)) == version
    assert NEW_PROMPT in other_rules.read_text(encoding="utf-8")
    assert apply_published(redis_client, str(other_rules)) is None  # already equal
    redis_client.hset(KEY, mapping={"content": "hotline: [", "sha256": "x", "version": "bad"})
    assert apply_published(redis_client, str(other_rules)) is None
    assert NEW_PROMPT in other_rules.read_text(encoding="utf-8")


def test_the_rules_schema_for_the_yaml_editor_is_the_models_and_is_served_to_admins_only(admin, app):
    from call_routing import schema

    r = admin.get("/admin/rules/schema.json")
    assert r.status_code == 200 and r.is_json
    served = r.get_json()
    defs = served["$defs"]
    assert list(served["properties"]) == schema.RulesFile.keys() == ["hotline", "emergency", "skills", "lines", "queue"]
    (line,) = served["properties"]["lines"]["patternProperties"].values()  # keyed by service numbers
    by_mode = line["discriminator"]
    assert by_mode["propertyName"] == "mode" and set(by_mode["mapping"]) == {"merge", "dual", "subcenter"}
    merge = defs[by_mode["mapping"]["merge"].rsplit("/", 1)[1]]
    assert list(merge["properties"]) == schema.MergeLine.keys() == ["name", "department", "mode", "skill",
                                                                      "greeting", "transition", "after"]
    assert list(defs["Transition"]["properties"]) == ["from", "until", "prompt", "audio"]
    ring = defs["Queue"]["properties"]["ring_timeout_s"]
    assert (ring["type"], ring["minimum"], ring["maximum"]) == ("integer", 5, 120) and "秒" in ring["description"]
    assert defs["Skill"]["properties"]["after_hours"]["enum"] == ["overflow", "callback"]
    assert all(p.get("description") for d in defs.values() for p in d["properties"].values()), "every key explained"
    assert 'data-schema="/admin/rules/schema.json"' in admin.get("/admin/rules/yaml").get_data(as_text=True)
    assert app.test_client().get("/admin/rules/schema.json").status_code == 302  # a stranger: sign in first
    for user in ("super", "agent1"):
        client = app.test_client()
        sign_in(client, user)
        assert client.get("/admin/rules/schema.json").status_code == 403, user


def draft_without_tourism(admin, app) -> str:
    """The admin removes the tourism seat group in the YAML editor (12301 goes to the general
    group): the draft's URL."""
    from tests.console_support import form_csrf

    text = editor_text = app.extensions["console"].editor.disk_text()
    text = text.replace("  tourism:\n    name: 旅游服务坐席\n    hours: always\n    overflow: {to: general, after_s: 30}\n", "")
    text = text.replace("    skill: tourism\n", "    skill: general\n")
    assert text != editor_text
    page = admin.get("/admin/rules/yaml").get_data(as_text=True)
    r = admin.post("/admin/rules/yaml", data={"csrf_token": form_csrf(page), "content": text, "action": "draft",
                                              "base_sha": re.search(r'name="base_sha" value="([^"]+)"', page).group(1)})
    assert r.status_code == 302, r.get_data(as_text=True)
    return r.location


def test_a_draft_removing_a_seat_group_with_callers_waiting_and_seats_in_it_says_so_before_publishing(admin, app):
    from call_routing.acd import Agent

    acd = app.extensions["acd"]
    acd.save_agent(Agent("t1", "赵坐席", {"tourism": 50}, endpoints=("client:t1",)))
    acd.login("t1", "paused")
    acd.enqueue("tourism", "12301", "+8613812345678", call_id="CAtour")  # a caller waits for tourism
    html = admin.get(draft_without_tourism(admin, app)).get_data(as_text=True)
    warning = re.search(r'class="flash warn removed-skill"[^>]*>(.*?)</div>', html, re.S).group(1)
    assert "删除了坐席组「旅游服务坐席」" in warning and "1 位来电人在该组排队、1 个坐席" in warning
    # and where the caller goes: the general seats, keeping the place
    assert "这 1 位来电保留原排队位置和等待时间，约 10 秒内转入「12345综合坐席」" in warning
    # a draft that keeps every group says nothing of the kind
    assert "removed-skill" not in admin.get(make_draft(admin, app, **{"transition.prompt": NEW_PROMPT})).get_data(as_text=True)


def test_publishing_a_draft_that_removes_a_group_while_a_citizen_waits_in_it_never_strands_the_citizen(admin, app):
    """A citizen dialled 12301 and waits for the tourism seats; the admin removes the tourism group.
    The supervisor sees the caller at every moment, and the next general seat gets the call."""
    from acd_support import Clock
    from call_routing.acd import Agent
    from call_routing.acd.routing import REMOVED_GRACE_S
    from tests.test_consoles_agent import call_waiting, seat_token
    from tests.test_consoles_chinese import visible

    acd = app.extensions["acd"]
    acd.clock = clock = Clock(time.time())
    acd.save_agent(Agent("t1", "赵坐席", {"tourism": 50}, endpoints=("client:t1",)))
    acd.login("t1", "paused")  # the tourism seat is away
    acd.save_agent(Agent("a1", "张坐席", {"general": 10}, endpoints=("client:a1",)))
    agent = app.test_client()
    auth = seat_token(app, agent)  # the general seat is signed in, paused
    tw = call_waiting(app, "CAtour", to="12301", said=None)
    assert acd.call("CAtour")["queues"] == ["tourism"]
    acd.tick()
    draft_url = draft_without_tourism(admin, app)
    assert dry_run(admin, draft_url).status_code == 200
    r = publish(admin, draft_url)
    assert r.status_code == 302
    flashed = admin.get(r.location).get_data(as_text=True)
    assert "坐席组「旅游服务坐席」已撤销，其中排队的 1 位来电将保留排队位置转入「12345综合坐席」" in flashed
    assert "tourism" not in acd.rules.skills

    sup = app.test_client()
    sign_in(sup, "super")
    # at once: the caller is on the supervisor's page, under the removed group, labelled so
    snap = sup.get("/admin/api/dashboard").get_json()
    (waiting,) = snap["waiting"]
    assert waiting["skill_name"] == "已撤销的坐席组「旅游服务坐席」" and waiting["line_text"].startswith("12301")
    (row,) = [q for q in snap["queues"] if q["removed"]]
    assert (row["name"], row["waiting"]) == ("已撤销的坐席组「旅游服务坐席」", 1)
    assert snap["room"]["regrouped_text"] == \
        "已撤销的坐席组「旅游服务坐席」还有 1 位来电排队，数秒内将保留排队位置转入「12345综合坐席」。"
    before = visible(sup.get("/admin/").get_data(as_text=True))
    assert "该组已从规则中撤销，排队来电将保留排队位置转入「12345综合坐席」" in before

    # the ticker moves the caller to the general seats, keeping the time waited
    clock.advance(REMOVED_GRACE_S + 1)
    tw.twiml("/twilio/wait", call_params("CAtour", CallStatus="in-progress"))  # the caller is still on hold
    assert acd.tick()["regrouped"] == 1
    page = sup.get("/admin/").get_data(as_text=True)
    text = visible(page)
    assert "坐席组「旅游服务坐席」已从规则中撤销，其中 1 位排队来电已转入「12345综合坐席」，保留原排队位置" in text
    table = visible("<main>" + page.split('id="waiting"', 1)[1].split("</table>", 1)[0] + "</main>")
    assert "12345综合坐席" in table and "原坐席组「旅游服务坐席」已撤销" in table and "第 1 位" in table
    (waiting,) = sup.get("/admin/api/dashboard").get_json()["waiting"]
    assert waiting["waited_s"] >= REMOVED_GRACE_S + 1
    alerts = [a["text"] for a in sup.get("/admin/api/dashboard").get_json()["alerts"]]
    assert any("坐席组「旅游服务坐席」已从规则中撤销：其中排队的 1 位来电已转入「12345综合坐席」" in a for a in alerts)

    # the general seat takes calls again: it rings for the 12301 caller
    agent.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    me = agent.get("/agent/api/me", headers=auth).get_json()
    assert me["agent"]["state"] == "ringing" and me["call"]["id"] == "CAtour" and me["call"]["line"] == "12301"
