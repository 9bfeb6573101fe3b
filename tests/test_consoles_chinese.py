"""The consoles in Chinese, for the people in the room (issue 17): the ticket page and the ticket
list, the dashboard's alerts, seat board and waiting callers, and the agent console's words.

What a person reads is checked as a person would: Chinese labels, values in words, China times
written 12月06日 14:05 — never None/False, an ISO stamp, a dict or a CallSid."""
from __future__ import annotations

import html as html_lib
import json
import re
from datetime import datetime, timedelta

import pytest

from call_routing.acd import Agent
from call_routing.rules import CHINA_TZ
from tests.console_support import make_console_app, sign_in
from tests.test_consoles_agent import CALLER, answer, call_waiting, on_a_call, seat_token

CN_TIME = re.compile(r"\d{2}月\d{2}日 \d{2}:\d{2}")
ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


@pytest.fixture
def app(tmp_path, redis_url):
    app = make_console_app(tmp_path, redis_url)
    acd = app.extensions["acd"]
    acd.save_agent(Agent("a1", "张坐席", {"legal": 50, "general": 10}, endpoints=("client:a1",)))
    return app


def visible(page: str) -> str:
    """The text of the page's <main> as a person sees it (no tags, no scripts)."""
    main = page.split("<main>", 1)[1].split("</main>", 1)[0]
    main = re.sub(r"<script.*?</script>", "", main, flags=re.S)
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", main))


def assert_human(text: str) -> None:
    for word in ("None", "False", "True", "null", "undefined", "unknown", "{", "}", "[", "]"):
        assert word not in text, f"{word!r} on the page: {text}"
    assert not ISO.search(text), ISO.search(text).group(0)


def prefill(**over) -> dict:
    fields = {"type": "complaint", "line": "12348", "skill": "legal", "department": "司法局", "emergency": None,
              "enterprise": False, "location": "朝阳区幸福路12号", "unit": None, "subject": "法律援助",
              "numbers": {"id_cards": ["110101199003078515"], "id_cards_valid": [True], "phones": ["13900001111"],
                          "amounts": [5000]}}
    fields.update(over)
    return fields


def staff(app, who="super"):
    client = app.test_client()
    sign_in(client, who)
    return client


# -- the ticket page ---------------------------------------------------------------------------------
def test_the_ticket_page_reads_in_chinese_with_words_for_values_and_china_times(app):
    store = app.extensions["console"].tickets
    rules = app.extensions["rules"].current()
    t = store.attach_transcript("CApage", text="我要投诉法律援助中心不受理，我的电话13900001111", entry_line="12348",
                                caller=CALLER, prefill=prefill())
    store.confirm_fields(t.id, "a1", {"location": "朝阳区幸福路12号院", "summary": "投诉法律援助不受理"}, rules=rules)
    store.extend(t.id, 3, "需现场核实", "a1")
    store.finish(t.id, "a1", "已转司法局核实处理")
    for who, number, phone in (("super", CALLER, "13900001111"), ("admin", "138****5678", "139****1111")):
        page = staff(app, who).get(f"/admin/tickets/{t.id}")
        assert page.status_code == 200
        text = visible(page.get_data(as_text=True))
        assert_human(text)
        for label in ("来电号码", "来电热线", "受理时间", "办结时限", "诉求类型", "归属热线", "坐席组", "地点", "企业诉求",
                      "提到的号码", "紧急联动", "处理记录"):
            assert label in text, label
        assert number in text and phone in text  # the caller masked for admins, like the numbers said
        assert "投诉" in text and "12348 全国公共法律服务专用电话" in text and "公共法律服务坐席" in text
        assert "已办结" in text and "延长 3 个工作日" in text and "办理结果：已转司法局核实处理" in text
        assert "电话 " in text and "金额 5000元" in text  # the numbers said, as a short list
        assert re.search(r"企业诉求\s+(\S+)", text).group(1) == "否"  # a boolean in words
        for event in ("系统建单", "语音预填", "坐席确认", "延期", "办结"):
            assert event in text, event
        assert "地点：朝阳区幸福路12号 → 朝阳区幸福路12号院" in text
        assert len(CN_TIME.findall(text)) >= 5
    missing = staff(app).get("/admin/tickets/99999999")
    assert missing.status_code == 404
    assert "返回我的工作台" in visible(missing.get_data(as_text=True)) and "返回登录" not in missing.get_data(as_text=True)
    assert staff(app).get("/admin/tickets/99999999999999999999999").status_code == 404  # no 500


def test_numbers_said_are_masked_everywhere_on_the_ticket_page_for_admins(app, tmp_path):
    """Admins never read a caller's number — nor one said in the call, typed in the summary or the
    result, or heard in the whole call's recording (its transcript and the history's entry)."""
    store = app.extensions["console"].tickets
    rules = app.extensions["rules"].current()
    t = store.attach_transcript("CAsaid", text="我的电话13900001111，路灯坏了", entry_line="12345", caller=CALLER,
                                prefill=prefill(line="12345", skill="general"))
    store.confirm_fields(t.id, "a1", {"summary": "路灯坏了，回电13900001111"}, rules=rules)
    store.finish(t.id, "a1", "已电话13900001111告知维修时间")
    rec = store.add_call_recording("CAsaid", file="CAsaid.wav", ref="CAsaid.wav", source="twilio", keep_days=30,
                                   seconds=40.0)
    store.call_recording_transcribed(rec.id, "您好12345，我的电话是13900001111，身份证110101199003078515", "ok")
    admin = visible(staff(app, "admin").get(f"/admin/tickets/{t.id}").get_data(as_text=True))
    assert "13900001111" not in admin and "110101199003078515" not in admin and CALLER[3:] not in admin
    assert "回电139****1111" in admin and "已电话139****1111告知维修时间" in admin  # the words stay, masked
    assert "我的电话是139****1111，身份证1101**********8515" in admin
    # the recording of the matter said while waiting is not the whole call's: no "录音 无" above a recording
    assert re.search(r"诉求录音\s+无", admin) and not re.search(r"(?<!诉求)录音\s+无", admin)
    supervisor = visible(staff(app, "super").get(f"/admin/tickets/{t.id}").get_data(as_text=True))
    assert "回电13900001111" in supervisor and "我的电话是13900001111" in supervisor  # they call back


# -- the ticket list -------------------------------------------------------------------------------
@pytest.fixture
def tickets(app):
    """A few tickets written through the store: days, lines, types, statuses, a 督办 wave, one overdue."""
    store = app.extensions["console"].tickets
    rules = app.extensions["rules"].current()
    now = datetime.now(CHINA_TZ)
    made = {}
    made["old"] = store.open_ticket("CAold", "12301", "+8613700001234", at=now - timedelta(days=40))
    made["tourism"] = store.attach_transcript("CAtour", text="景区门票太贵", entry_line="12301", caller="+8613700002222",
                                              prefill=prefill(type="complaint", line="12301", skill="tourism",
                                                              location="景区"))
    made["done"] = store.attach_transcript("CAdone", text="咨询法律援助", entry_line="12348", caller="+8613700003333",
                                           prefill=prefill(type="consultation"))
    store.confirm_fields(made["done"].id, "a1", {}, rules=rules)
    store.finish(made["done"].id, "a1", "已答复")
    for i in range(10):  # ten callers on one matter: 督办
        made[f"wave{i}"] = store.attach_transcript(f"CAwave{i}", text="小区暖气不热", entry_line="12345",
                                                   caller=f"+86139000{i:05d}",
                                                   prefill=prefill(type="complaint", line="12345", skill="general",
                                                                   location="阳光小区"))
    return made


def ids_on(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'id="ticket-row-(\d+)"', page)]


def test_the_ticket_list_filters_newest_first_and_links_each_ticket(app, tickets):
    sup = staff(app)
    page = sup.get("/admin/tickets").get_data(as_text=True)
    assert 'id="nav-tickets"' in page and "工单查询" in page
    assert "12345 12345" not in page and ">12301 全国统一旅游资讯服务电话</option>" in page
    listed = ids_on(page)
    assert len(listed) == 13 and listed[-1] == tickets["old"].id  # newest first
    text = visible(page)
    assert_human(text)
    for heading in ("工单编号", "受理时间", "来电热线", "来电号码", "诉求类型", "状态", "办结时限", "督办"):
        assert heading in text
    assert "+8613700002222" not in page and "137****2222" in text  # masked in the list, for everyone
    assert f'href="/admin/tickets/{tickets["tourism"].id}"' in page

    def find(**q):
        r = sup.get("/admin/tickets", query_string=q)
        assert r.status_code == 200, visible(r.get_data(as_text=True))
        return set(ids_on(r.get_data(as_text=True)))

    assert find(id=tickets["done"].number) == {tickets["done"].id}
    assert find(id=tickets["done"].number.replace("-", "").replace("-000", "-")) == {tickets["done"].id}
    today = datetime.now(CHINA_TZ).strftime("%Y%m%d")
    numbers = [int(m) for m in re.findall(rf">{today}-(\d{{4}})</a>", page)]
    assert sorted(numbers) == list(range(1, 13))  # today's 12 in the list: 0001..0012, whatever the ids
    assert tickets["old"].number.endswith("-0001") and not tickets["old"].number.startswith(today)
    assert str(tickets["done"].id) not in visible(page).split()
    assert find(line="12301") == {tickets["old"].id, tickets["tourism"].id}
    assert find(type="consultation") == {tickets["done"].id}
    assert find(status="finished") == {tickets["done"].id}
    assert find(overdue="1") == {tickets["old"].id}
    assert find(supervision="1") == {tickets[f"wave{i}"].id for i in range(10)}
    assert find(caller="2222") == {tickets["tourism"].id}
    old_day = tickets["old"].created_at.astimezone(CHINA_TZ).date().isoformat()
    assert find(day=old_day) == {tickets["old"].id}
    assert find(line="12345", supervision="1", caller="00003") == {tickets["wave3"].id}  # supervisors: more digits
    one = visible(sup.get("/admin/tickets", query_string={"id": tickets["old"].number}).get_data(as_text=True))
    assert "已超期" in one and "待处理" in one
    assert "没有符合条件的工单" in visible(sup.get("/admin/tickets?line=12348&type=praise").get_data(as_text=True))


def test_the_ticket_list_pages_through_fifty_at_a_time(app):
    store = app.extensions["console"].tickets
    now = datetime.now(CHINA_TZ)
    for i in range(55):
        store.open_ticket(f"CAmany{i}", "12345", f"+86138000{i:05d}", at=now - timedelta(minutes=i))
    sup = staff(app)
    first = sup.get("/admin/tickets").get_data(as_text=True)
    assert len(ids_on(first)) == 50 and "共 55 张工单，第 1 / 2 页" in visible(first) and 'id="page-next"' in first
    second = sup.get("/admin/tickets?page=2").get_data(as_text=True)
    assert len(ids_on(second)) == 5 and not set(ids_on(first)) & set(ids_on(second))
    assert len(store.search(per_page=10_000)[0]) == 55  # the store bounds a page too (at most 200)


@pytest.mark.parametrize("query, words", [
    ("id=abc", "工单编号“abc”不是有效的编号"),
    ("id=99999999999999999999999", "不是有效的编号"),
    ("day=2025-13-45", "日期“2025-13-45”无法识别"),
    ("day=yesterday", "无法识别"),
    ("line=99999", "没有热线“99999”"),
    ("type=bribe", "没有诉求类型“bribe”"),
    ("status=lost", "没有工单状态“lost”"),
    ("caller=12", "来电号码"),
    ("page=0", "页码“0”无效"),
    ("page=-1", "无效"),
])
def test_the_ticket_list_refuses_bad_values_with_a_message_in_chinese(app, query, words):
    r = staff(app).get(f"/admin/tickets?{query}")
    assert r.status_code == 400
    text = visible(r.get_data(as_text=True))
    assert words in text and 'id="ticket-list"' not in r.get_data(as_text=True)


def test_admins_search_callers_by_the_last_four_digits_only_and_agents_have_no_list(app, tickets):
    admin = staff(app, "admin")
    assert admin.get("/admin/tickets?caller=2222").status_code == 200
    r = admin.get("/admin/tickets?caller=13700002222")
    assert r.status_code == 400 and "只能按后4位查询" in visible(r.get_data(as_text=True))
    agent = app.test_client()
    sign_in(agent, "agent1")
    assert agent.get("/admin/tickets").status_code == 403


# -- the dashboard ---------------------------------------------------------------------------------
def test_the_dashboard_boards_the_seats_and_lists_the_callers_waiting(app):
    client = app.test_client()
    auth = seat_token(app, client)
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    tw = call_waiting(app, "CAfirst", said=None)  # rings a1
    call_waiting(app, "CAsecond", said=None)  # waits behind
    sup = staff(app)
    snap = sup.get("/admin/api/dashboard").get_json()
    (seat,) = snap["agents"]
    assert (seat["name"], seat["state_text"], seat["line_text"]) == ("张坐席", "来电振铃", "12348 全国公共法律服务专用电话")
    assert seat["ticket"] and re.fullmatch(r"\d+秒|\d+分\d{2}秒", seat["in_state_text"])
    (waiting,) = snap["waiting"]
    second = app.extensions["console"].tickets.by_call("CAsecond")
    assert waiting["line_text"] == "12348 全国公共法律服务专用电话" and waiting["position"] == 1
    assert waiting["callback_text"] == "在线等待" and waiting["caller"] == "138****5678"
    assert waiting["ticket"] == str(second.id) and re.fullmatch(r"\d+秒", waiting["waited_text"])
    assert waiting["ticket_number"] == second.number and re.fullmatch(r"\d{8}-\d{4}", second.number)
    first = app.extensions["console"].tickets.by_call("CAfirst")
    assert seat["ticket_number"] == first.number
    assert CN_TIME.search(snap["at_text"])
    answer(app, tw, "CAfirst")
    seat = sup.get("/admin/api/dashboard").get_json()["agents"][0]
    assert seat["state_text"] == "通话中" and seat["answered_today"] == 1
    page = sup.get("/admin/").get_data(as_text=True)
    text = visible(page)
    assert_human(text)
    assert "坐席状态" in text and "排队来电" in text and "张坐席" in text and "今日接听" in text
    assert "第 1 位" in text and "在线等待" in text and "座席" not in text
    assert f'href="/admin/tickets/{seat["ticket"]}"' in page


def test_a_possible_emergency_waiting_is_on_top_of_the_callers_waiting_and_marked_on_the_seat_board(app):
    client = app.test_client()
    auth = seat_token(app, client)  # the seat is paused: every caller waits
    for sid in ("CAfirst", "CAsecond", "CAsmoke"):
        call_waiting(app, sid, said=None)
    app.extensions["acd"].prioritise("CAsmoke", "119")  # what the flow does when the pre-fill hears 冒黑烟
    sup = staff(app)
    waiting = sup.get("/admin/api/dashboard").get_json()["waiting"]
    smoke = app.extensions["console"].tickets.by_call("CAsmoke")
    assert [w["ticket"] for w in waiting][0] == str(smoke.id)
    assert [w["urgent_text"] for w in waiting] == ["可能紧急（119）", "", ""]
    room = sup.get("/admin/api/dashboard").get_json()["room"]  # the room at a glance, on top of the page
    assert (room["waiting_text"], room["urgent"]) == ("3", 1) and re.fullmatch(r"\d+秒", room["longest_wait_text"])
    page = sup.get("/admin/").get_data(as_text=True)
    top = visible("<main>" + page.split('id="room-now"', 1)[1].split('id="kpi-total"', 1)[0] + "</main>")
    assert re.search(r"当前排队\s+3\s+最长等待\s+\d+秒\s+可能紧急（排队中）\s+1", top), top
    table = page.split('id="waiting"', 1)[1].split("</table>", 1)[0]
    rows = [visible("<main>" + r + "</main>") for r in re.findall(r"<tr\b.*?</tr>", table, re.S)]
    assert "紧急" in rows[0] and "可能紧急（119）" in rows[1] and "可能紧急" not in rows[2] + rows[3]
    general = next(q for q in sup.get("/admin/api/dashboard").get_json()["queues"] if q["skill"] == "general")
    assert (general["waiting"], general["longest_wait_text"]) == (0, "—")  # the seat's other group: nobody, not 0秒
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)  # the seat hears it first
    (seat,) = sup.get("/admin/api/dashboard").get_json()["agents"]
    assert seat["state_text"] == "来电振铃" and seat["urgent_text"] == "可能紧急（119）"
    board = page_text(sup.get("/admin/").get_data(as_text=True).split('id="agents"', 1)[1].split("</table>", 1)[0])
    assert "可能紧急（119）" in board


def test_a_seat_that_missed_a_call_is_shown_paused_in_words(app):
    acd = app.extensions["acd"]
    acd.login("a1")
    call_waiting(app, "CAmissed", said=None)
    acd.no_answer("CAmissed")
    (seat,) = staff(app).get("/admin/api/dashboard").get_json()["agents"]
    assert seat["state_text"] == "小休（未接听自动小休）"


# -- the agent console -----------------------------------------------------------------------------
def test_the_agent_console_speaks_of_seats_skills_pauses_and_queues_in_chinese(app):
    client = app.test_client()
    sign_in(client, "agent1")
    page = client.get("/agent/").get_data(as_text=True)
    text = visible(page)
    assert "坐席组：公共法律服务坐席、12345综合坐席" in text and "legal" not in text and "（50）" not in text
    assert "座席" not in page
    auth = seat_token(app, client)
    page = client.get("/agent/").get_data(as_text=True)
    words = re.search(r'<script id="agent-labels" type="application/json">(.*?)</script>', page, re.S).group(1)
    words = json.loads(words)
    assert words["pause_reasons"]["no-answer"] == "未接听自动小休" and words["agent_states"]["paused"] == "小休"
    assert words["statuses"]["confirmed"] == "已确认"
    assert "座席" not in page and "我的坐席组排队" in visible(page)
    assert ">12345政务服务便民热线</option>" in page and "12345 12345" not in page  # the number said once
    assert ">12348 全国公共法律服务专用电话</option>" in page
    call_waiting(app, "CAq1")  # a1 is paused: the caller waits in the legal queue
    me = client.get("/agent/api/me", headers=auth).get_json()
    legal = me["queues"][0]
    assert (legal["name"], legal["waiting"]) == ("公共法律服务坐席", 1)
    assert re.fullmatch(r"\d+秒", legal["longest_wait_text"]) and me["queues"][1]["name"] == "12345综合坐席"
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    ticket = client.get("/agent/api/ticket", headers=auth).get_json()["ticket"]
    assert ticket["status_text"] == "待处理" and CN_TIME.fullmatch(ticket["due_text"])
    assert ticket["number"] == app.extensions["console"].tickets.get(ticket["id"]).number
    assert CN_TIME.fullmatch(ticket["contact_due_text"])
    refused = client.post("/agent/api/wrapup/done", headers=auth).get_json()["error"]
    assert refused.startswith("现在不能这样操作") and "bad_state" not in refused


def test_a_seat_signed_out_by_the_system_is_offered_seat_login_again_with_the_reason(app):
    client = app.test_client()
    auth = seat_token(app, client)
    client.post("/agent/api/state", json={"state": "ready"}, headers=auth)
    app.extensions["acd"].logout("a1", "heartbeat")  # what the ACD timers do when the heartbeats stop
    page = client.get("/agent/").get_data(as_text=True)
    assert 'id="seat-login"' in page and 'id="agent-app"' not in page  # not a console stuck at 离线
    assert "系统已自动将坐席签出。请重新上岗。" in visible(page)
    assert client.get("/agent/api/me", headers=auth).status_code == 401  # the page's old token is gone
    assert "系统已自动将坐席签出" not in visible(client.get("/agent/").get_data(as_text=True))  # said once
    seat_token(app, client)  # 上岗 works at once
    assert app.extensions["acd"].agent("a1")["state"] == "paused"


def test_an_agent_who_clicks_seat_logout_during_a_call_keeps_the_call_and_its_ticket_until_it_ends(app):
    from tests.console_support import form_csrf
    from tests.twilio_support import call_params

    client, auth, tw = on_a_call(app, "CAlast")
    csrf = form_csrf(client.get("/agent/").get_data(as_text=True))
    page = client.post("/agent/seat/logout", data={"csrf_token": csrf}, follow_redirects=True).get_data(as_text=True)
    assert 'id="agent-app"' in page and "本通来电结束后自动下岗。请继续处理当前来电和工单。" in visible(page)
    ticket = client.get("/agent/api/ticket", headers=auth).get_json()["ticket"]
    assert ticket and ticket["number"] == app.extensions["console"].tickets.by_call("CAlast").number
    tw.post("/twilio/status", call_params("CAlast", CallStatus="completed", CallDuration="60"))
    assert app.extensions["acd"].agent("a1")["state"] == "offline"
    page = client.get("/agent/").get_data(as_text=True)
    assert 'id="seat-login"' in page and "通话已结束，坐席已按您的要求下岗。" in visible(page)
    page = client.post("/agent/seat/logout", data={"csrf_token": csrf}, follow_redirects=True).get_data(as_text=True)
    assert "已下岗。" in visible(page)


def test_with_the_queue_redis_down_the_consoles_say_so_in_chinese_and_the_ticket_list_still_works(tmp_path):
    from runtime.redis_server import EmbeddedRedis

    server = EmbeddedRedis()
    server.__enter__()
    try:
        app = make_console_app(tmp_path, server.url)
        sup, agent = staff(app), staff(app, "agent1")
    finally:
        server.__exit__(None, None, None)  # the ACD's Redis goes away under the running consoles
    for client, path in ((sup, "/admin/"), (agent, "/agent/")):
        r = client.get(path)
        text = visible(r.get_data(as_text=True))
        assert r.status_code == 503 and "排队系统（Redis）暂时无法连接" in text, (path, text)
        assert "Internal Server Error" not in r.get_data(as_text=True)
    r = sup.get("/admin/api/dashboard")  # what the dashboard's refresh reads: JSON, in words
    assert r.status_code == 503 and "排队系统（Redis）暂时无法连接" in r.get_json()["error"]
    assert sup.get("/admin/tickets").status_code == 200  # tickets live in the database


# -- every console page, as every role, with real data ----------------------------------------------
_HIDDEN = re.compile(r"<(script|style|pre|textarea)\b.*?</\1>", re.S | re.I)  # pre/textarea: the rules file itself
_REPR = re.compile(r"(?<![A-Za-z])(None|False|True)(?![A-Za-z])|\{'|\[\]")
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_IDENT = re.compile(r"(?<![A-Za-z0-9_.@:/-])[a-z][a-z0-9]*(?:[._][a-z][a-z0-9]*)+(?![A-Za-z0-9_])")
#: addresses, file names and commands people know
_NOT_IDENT = re.compile(r"\S+@\S+|sips?:\S+|\S+\.(?:yaml|wav|db)\b|python -m \S+")
#: values the system stores that a person must never read as such (codes, states, roles, kinds)
_CODES = ("open", "manual_entry", "confirmed", "finished", "handed_off", "pending", "ready", "busy", "paused",
          "offline", "ringing", "wrapup", "waiting", "supervisor", "agent", "initial", "publish", "rollback", "disk",
          "completed", "abandoned", "consultation", "complaint", "help", "report", "login", "logout", "merge",
          "dual", "subcenter", "main", "emergency", "machine", "system", "speech")


def page_text(html: str) -> str:
    """What a person reads on a page: no scripts, styles, tags or attributes (the rules file shown
    as source — the YAML editor, diffs — is the file itself and left out)."""
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", _HIDDEN.sub(" ", html)))


def not_for_people(text: str, rules) -> list[str]:
    """English field names, internal codes and Python values in ``text``."""
    found = [m.group(0) for m in _REPR.finditer(text)] + _STAMP.findall(text)
    text = _NOT_IDENT.sub(" ", text)
    found += _IDENT.findall(text)
    codes = "|".join(list(_CODES) + sorted(rules.skills, key=len, reverse=True))
    found += re.findall(rf"(?<![A-Za-z0-9_])(?:{codes})(?![A-Za-z0-9_])", text)
    return found


def console_pages(app) -> list[str]:
    """Every page of the consoles a browser GETs (JSON, media, recordings, metrics and static files aside)."""
    skip = ("/static", "/media", "/metrics", "/healthz")
    return sorted({r.rule for r in app.url_map.iter_rules() if "GET" in r.methods and not r.rule.startswith(skip)
                   and "/api/" not in r.rule and not r.rule.endswith((".json", ".wav"))})


@pytest.fixture
def lived_in(app, tickets):
    """A console that has been used: a call answered, its ticket confirmed and finished, the
    call ended; a user created; rules published and rolled back; a draft left; sign-ins."""
    from tests.console_support import csrf_of, form_csrf
    from tests.twilio_support import call_params

    agent, auth, tw = on_a_call(app, "CAlived")
    assert agent.post("/agent/api/ticket/confirm", json={"edits": {"summary": "咨询法律援助"}},
                      headers=auth).status_code == 200
    csrf = form_csrf(agent.get("/agent/").get_data(as_text=True))
    r = agent.post("/agent/ticket/finish", json={"result": "已告知申请流程"},
                   headers={"Accept": "application/json", "X-CSRF-Token": csrf})
    assert r.status_code == 200, r.get_data(as_text=True)
    tw.post("/twilio/status", call_params("CAlived", CallStatus="completed", CallDuration="95"))
    admin = staff(app, "admin")
    token = csrf_of(admin)
    assert admin.post("/admin/users", data={"csrf_token": token, "username": "zhao", "password": "zhao-pass-123",
                                            "role": "supervisor", "display_name": "赵质检"}).status_code == 302
    editor = app.extensions["console"].editor
    values = editor.line_values(editor.disk_text(), "12301")
    values.update({"transition.prompt": "12301旅游热线已并入12345，正在为您转接。", "base_sha": editor.disk_sha()})
    draft = admin.post("/admin/rules/lines/12301", data={"csrf_token": token, **values}).location.split("?")[0]
    admin.post(draft, data={"csrf_token": token, "to": "12301", "at": "2026-07-01T09:00"})
    assert admin.post(draft + "/publish", data={"csrf_token": token, "note": "新提示语"}).status_code == 302
    first = app.extensions["console"].db.versions()[-1]
    assert admin.post(f"/admin/rules/history/{first.id}/rollback",
                      data={"csrf_token": token, "note": "回到原提示语"}).status_code == 302
    values = editor.line_values(editor.disk_text(), "12348")
    values.update({"name": "公共法律服务热线", "base_sha": editor.disk_sha()})
    left = admin.post("/admin/rules/lines/12348", data={"csrf_token": token, **values}).location.split("?")[0]
    sign_in(app.test_client(), "super", "wrong-password-1")  # a failed sign-in
    db = app.extensions["console"].db
    return {"<int:ticket_id>": str(app.extensions["console"].tickets.by_call("CAlived").id),
            "<int:entry_id>": str(db.audit_entries(action="rules.publish")[0].id),
            "<int:draft_id>": left.rsplit("/", 1)[1], "<int:version_id>": str(first.id),
            "<number>": "12301", "<agent_id>": "a1"}


def test_every_console_page_reads_in_chinese_for_every_role(app, lived_in):
    rules = app.extensions["rules"].current()
    seen, problems = {}, {}
    for who in ("admin", "super", "agent1"):
        client = app.test_client()
        sign_in(client, who)
        for rule in console_pages(app):
            url = rule
            for param, value in lived_in.items():
                url = url.replace(param, value)
            assert "<" not in url, f"{rule}: a new page with a parameter this test does not fill yet"
            r = client.get(url, follow_redirects=True)
            if r.status_code in (401, 403):
                continue
            assert r.status_code == 200, (who, url, r.status_code)
            seen.setdefault(rule, []).append(who)
            bad = not_for_people(page_text(r.get_data(as_text=True)), rules)
            if bad:
                problems[(who, url)] = sorted(set(bad))
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    # every page was read by someone, and each role's own pages by that role
    assert set(seen) == set(console_pages(app)), set(console_pages(app)) - set(seen)
    assert seen["/admin/audit"] == ["admin"] and "super" in seen["/admin/"] and "agent1" in seen["/agent/"]


def test_the_audit_history_and_version_pages_speak_in_actions_and_human_times(app, lived_in):
    admin = staff(app, "admin")
    audit = page_text(admin.get("/admin/audit").get_data(as_text=True))
    for words in ("发布规则", "回滚规则", "创建用户", "办结工单", "登录失败", "坐席上岗", "登录"):
        assert words in audit, words
    assert "班长/质检" in audit and "rules.publish" not in audit  # the role in words, the action too
    # what was done to: the ticket's number, the rules file by name, the user — no id, no path
    ticket = app.extensions["console"].tickets.get(int(lived_in["<int:ticket_id>"]))
    assert f"工单 {ticket.display_number}" in audit and "转接规则（transfer_rules.yaml）" in audit
    assert "用户 super" in audit and "ticket:" not in audit and "/transfer_rules.yaml" not in audit
    history = page_text(admin.get("/admin/rules/history").get_data(as_text=True))
    assert "发布" in history and "回滚" in history and CN_TIME.search(history)
    version = page_text(admin.get(f"/admin/rules/history/{lived_in['<int:version_id>']}").get_data(as_text=True))
    assert CN_TIME.search(version) and not _STAMP.search(version)


@pytest.mark.parametrize("action, target, words", [
    ("seat.login", "2001", "坐席 2001"),
    ("rules.disk_change", "/etc/hotline/transfer_rules.yaml", "转接规则（transfer_rules.yaml）"),
    ("ticket.finish", "57", "工单（记录 57）"),  # written before the entry kept the ticket's number
    ("login.failed", "", "—"),
])
def test_what_an_audit_entry_was_done_to_is_said_as_the_admin_knows_it(action, target, words):
    from consoles.labels import audit_target

    assert audit_target(action, target) == words


# -- what goes wrong reads in Chinese too ------------------------------------------------------------
def test_an_address_that_is_no_page_and_a_wrong_way_in_answer_in_chinese(app):
    client = staff(app)
    for url, method, code in (("/admin/tickets/20251206-0001", "get", 404),  # a ticket number typed as the id
                              ("/no/such/page", "get", 404), ("/logout", "get", 405)):
        r = getattr(client, method)(url)
        text = page_text(r.get_data(as_text=True))
        assert r.status_code == code and re.search(r"[\u4e00-\u9fff]{4}", text), (url, text)
        for english in ("Not Found", "Method Not Allowed", "requested URL"):
            assert english not in text, (url, text)
    r = client.post("/admin/api/nothing", json={})
    assert r.status_code == 404 and "找不到" in r.get_json()["error"]
    # Twilio's webhooks keep their own answers (TwiML or a plain status), never a console page
    assert "返回我的工作台" not in app.test_client().get("/twilio/nothing").get_data(as_text=True)


@pytest.mark.parametrize("reason, words", [
    ("empty file (0 bytes)", "录音为空"),
    ("no audio in the recording (0 samples)", "录音为空"),
    ("recording download refused: HTTP 404", "录音下载失败"),
    ("recording too long: 3900 s (limit 3600 s)", "录音过长"),
    ("speech job failed: OSError: [Errno 28] No space left on device", "语音识别任务失败"),
    ("cannot open recording: No such file or directory", "录音无法读取"),
])
def test_why_a_ticket_waits_for_manual_entry_is_said_in_words_never_the_engineers_text(reason, words):
    from consoles.labels import manual_reason_text

    text = manual_reason_text(reason)
    assert words in text and not re.search(r"[A-Za-z]{3}", text), text


def test_what_the_live_speech_servers_heard_is_signed_speech_not_a_seat():
    from consoles.labels import actor_text

    assert actor_text("audiosocket") == actor_text("twilio-stream") == "语音识别（实时）"
    assert actor_text("a1").endswith(" a1")  # a seat is still a seat


@pytest.mark.parametrize("transfer, words", [
    ({"transfer_state": "ringing", "transfer_mode": "three_way", "transfer_target": "subcenter"},
     "三方转接：正在呼叫 分中心 海关12360分中心"),  # Asterisk names the kind
    ({"transfer_state": "handed", "transfer_mode": "three_way", "transfer_target": "expert", "transfer_agent": "e1"},
     "三方转接：已转交，您已退出 专家坐席 法律专家坐席（周律师）"),
    ({"transfer_state": "joined", "transfer_mode": "cold", "transfer_target": "sip:12360@subcenter.example.gov.cn"},
     "直接转出：已接通 分中心 海关12360分中心"),  # Twilio names the address rung
])
def test_a_transfer_under_way_is_told_in_words_with_who_is_rung(transfer, words):
    from consoles.labels import transfer_text

    options = ({"kind": "expert", "skill": "legal_expert", "name": "法律专家坐席"},  # as conference_options gives them
               {"kind": "subcenter", "number": "sip:12360@subcenter.example.gov.cn", "name": "海关12360分中心"})
    assert transfer_text(transfer, options, "周律师" if transfer.get("transfer_agent") else None) == words


def test_a_field_too_long_is_named_in_words(app):
    agent, auth, _ = on_a_call(app, "CAlong")
    r = agent.post("/agent/api/ticket/confirm", json={"edits": {"summary": "长" * 2001}}, headers=auth)
    assert r.status_code == 400 and r.get_json()["error"].startswith("摘要须为不超过"), r.get_json()
