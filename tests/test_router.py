"""How calls are routed: every legacy number, window edges, number forms, emergencies."""
from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from call_routing.numbers import mask, service_number
from call_routing.router import emergency_assessment, decide, emergency_heard, three_way
from call_routing.rules import CHINA_TZ, load_rules

IN_WINDOW = datetime(2024, 6, 1, 10, 0, tzinfo=CHINA_TZ)
AFTER_WINDOW = datetime(2027, 3, 1, 10, 0, tzinfo=CHINA_TZ)
ROOT = Path(__file__).resolve().parent.parent
#: what every caller of 12345 and of a dual line hears first (one sentence, no menu)
GREETING = {"do": "say", "text": "您好，这里是12345政务服务便民热线，正在为您接通坐席。", "language": "zh-CN"}


def legacy_lines(data_dir):
    with open(data_dir / "legacy_lines.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def steps(decision):
    return [dict(s) for s in decision.steps]


def test_the_shipped_rules_hold_every_legacy_number_of_the_state_council_list(rules, data_dir):
    rows = legacy_lines(data_dir)
    assert len(rows) == 32
    for row in rows:
        line = rules.lines[row["number"]]
        assert (line.mode, line.name, line.department) == (row["mode"], row["name"], row["department"])
        assert (line.expert_skill is not None) == (row["expert_seats"] == "yes"), row["number"]
    assert sorted(l.mode for l in rules.lines.values()).count("merge") == 13
    assert [l.mode for l in rules.lines.values()].count("dual") == 14
    assert [l.mode for l in rules.lines.values()].count("subcenter") == 5


@pytest.mark.parametrize("row", legacy_lines(__import__("pathlib").Path(__file__).parent / "data"),
                         ids=lambda r: r["number"])
def test_each_legacy_number_gets_its_mode_and_steps(rules, row):
    number = row["number"]
    line = rules.lines[number]
    d = decide(number, "13800138000", IN_WINDOW, None, rules)
    assert d.line == number and d.mode == row["mode"] and d.rules_version == rules.version
    if row["mode"] == "merge":
        assert steps(d) == [
            {"do": "say", "text": line.transition.prompt, "language": "zh-CN"},
            {"do": "enqueue", "skill": line.skill, "line": number},
        ]
        assert number in line.transition.prompt and "12345" in line.transition.prompt
    elif row["mode"] == "dual":
        assert steps(d) == [GREETING, {"do": "enqueue", "skill": line.skill, "line": number}]
        experts = [t for t in d.transfers if t["kind"] == "expert"]
        assert bool(experts) == (row["expert_seats"] == "yes")
        if experts:
            assert rules.skills[experts[0]["skill"]].expert
    else:
        assert steps(d) == [{"do": "say", "text": f"您好，这里是12345政务服务便民热线，正在为您转接{line.subcenter_name}。",
                             "language": "zh-CN"},  # the line's own greeting
                            {"do": "transfer", "number": line.subcenter_target, "name": line.subcenter_name,
                             "fallback_skill": line.skill}]
        assert [t["kind"] for t in d.transfers] == ["subcenter"]


def test_12345_greets_in_one_sentence_and_goes_straight_to_the_general_seats_without_a_menu(rules):
    d = decide("12345", "13800138000", IN_WINDOW, None, rules)
    assert (d.line, d.mode) == ("12345", "main")
    assert steps(d) == [GREETING, {"do": "enqueue", "skill": "general", "line": "12345"}]


def test_a_line_may_have_its_own_greeting_and_every_line_has_one_by_default(tmp_path):
    text = (ROOT / "transfer_rules.yaml").read_text("utf-8")
    text = text.replace("  greeting: 您好，这里是12345政务服务便民热线，正在为您接通坐席。\n", "")  # not written: the default
    text = text.replace("    mode: dual\n    skill: legal\n",
                        "    mode: dual\n    skill: legal\n    greeting: 您好，这里是12348法律服务热线。\n")
    (tmp_path / "transfer_rules.yaml").write_text(text, "utf-8")
    shutil.copy(ROOT / "emergency_keywords.yaml", tmp_path / "emergency_keywords.yaml")
    rules = load_rules(tmp_path / "transfer_rules.yaml")
    assert steps(decide("12345", None, IN_WINDOW, None, rules))[0] == GREETING
    assert steps(decide("12348", None, IN_WINDOW, None, rules))[0]["text"] == "您好，这里是12348法律服务热线。"
    assert steps(decide("12369", None, IN_WINDOW, None, rules))[0] == GREETING


def test_an_unknown_number_is_treated_as_the_main_hotline(rules):
    d = decide("95566", None, IN_WINDOW, None, rules)
    assert (d.line, d.mode, d.skill) == ("12345", "main", "general")


# --- transition window edges, in China time --------------------------------------------

def _window(rules, number="12301"):
    t = rules.lines[number].transition
    return t.starts, t.ends


def test_transition_starts_at_midnight_china_time_of_its_from_date(rules):
    starts, _ = _window(rules)
    assert starts == datetime(2021, 1, 1, 0, 0, tzinfo=CHINA_TZ)
    before = decide("12301", None, starts - timedelta(seconds=1), None, rules)
    at = decide("12301", None, starts, None, rules)
    after = decide("12301", None, starts + timedelta(seconds=1), None, rules)
    assert steps(before) == [GREETING, dict(before.steps[1])]  # before the window: a normal line, greeted
    assert [s["do"] for s in at.steps] == ["say", "enqueue"]
    assert [s["do"] for s in after.steps] == ["say", "enqueue"]
    assert "已并入12345" in at.steps[0]["text"]


def test_transition_until_date_lasts_to_the_end_of_that_day(rules):
    _, ends = _window(rules)
    assert ends == datetime(2027, 1, 1, 0, 0, tzinfo=CHINA_TZ)  # until: 2026-12-31, inclusive
    last = decide("12301", None, ends - timedelta(seconds=1), None, rules)
    at = decide("12301", None, ends, None, rules)
    after = decide("12301", None, ends + timedelta(seconds=1), None, rules)
    assert "已并入12345" in last.steps[0]["text"]
    for d in (at, after):
        assert "已停用" in d.steps[0]["text"]
        assert d.steps[-1]["do"] == "enqueue"  # shipped after-behaviour: forward


def test_window_edges_are_china_time_whatever_zone_the_caller_time_is_in(rules):
    _, ends = _window(rules)
    utc_second_before = (ends - timedelta(seconds=1)).astimezone(tz=None).astimezone(
        __import__("datetime").timezone.utc)
    assert utc_second_before.hour == 15  # 23:59:59 in Shanghai is 15:59:59 UTC
    assert "已并入" in decide("12301", None, utc_second_before, None, rules).steps[0]["text"]
    naive_china = datetime(2026, 12, 31, 23, 59, 59)  # naive means China time
    assert "已并入" in decide("12301", None, naive_china, None, rules).steps[0]["text"]
    assert "已停用" in decide("12301", None, naive_china + timedelta(seconds=1), None, rules).steps[0]["text"]


def test_every_merge_line_changes_behaviour_exactly_at_its_window_edges(rules):
    for number, line in rules.lines.items():
        if line.mode != "merge":
            continue
        t = line.transition
        just_before = decide(number, None, t.starts - timedelta(seconds=1), None, rules)
        first = decide(number, None, t.starts, None, rules)
        last = decide(number, None, t.ends - timedelta(seconds=1), None, rules)
        over = decide(number, None, t.ends, None, rules)
        assert [s["do"] for s in just_before.steps] == ["say", "enqueue"], number
        assert just_before.steps[0]["text"] == GREETING["text"], number  # greeted like any line
        assert first.steps[0]["text"] == last.steps[0]["text"] == t.prompt, number
        assert over.steps[0]["text"] == line.after_text, number


def _rules_with(tmp_path, rules_path, replace):
    text = rules_path.read_text(encoding="utf-8")
    for old, new in replace:
        assert old in text
        text = text.replace(old, new, 1)
    (tmp_path / "emergency_keywords.yaml").write_text(
        (rules_path.parent / "emergency_keywords.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return load_rules(path)


def test_after_the_window_announce_and_hangup_tells_the_caller_and_ends_the_call(tmp_path, rules_path):
    rules = _rules_with(tmp_path, rules_path, [(
        '    after:\n      action: forward\n      text: 12301旅游服务热线已停用，以后请直接拨打12345。正在为您转接。',
        '    after:\n      action: announce_and_hangup\n      text: 12301已停用，请改拨12345。',
    )])
    d = decide("12301", None, AFTER_WINDOW, None, rules)
    assert steps(d) == [{"do": "say", "text": "12301已停用，请改拨12345。", "language": "zh-CN"},
                        {"do": "hangup"}]
    assert d.skill is None


def test_a_recorded_prompt_is_played_instead_of_spoken(tmp_path, rules_path):
    rules = _rules_with(tmp_path, rules_path, [(
        "      prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。",
        "      prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。\n"
        "      audio: 12301_transition.wav",
    )])
    d = decide("12301", None, IN_WINDOW, None, rules)
    assert d.steps[0]["do"] == "play" and d.steps[0]["file"] == "12301_transition.wav"
    assert "已并入" in d.steps[0]["text"]  # the text stays for tickets and front-ends without the file


# --- number normalisation ----------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("12301", "12301"),
    ("+8612301", "12301"),
    ("008612301", "12301"),
    ("8612301", "12301"),
    ("sip:12301@pbx.example.gov.cn", "12301"),
    ("sip:+8612301@10.0.0.1:5060;user=phone", "12301"),
    ("tel:+86-12301", "12301"),
    ("02112345", "12345"),
    ("01012345", "12345"),
    ("075512345", "12345"),
    ("+862112345", "12345"),
    ("+86 755 12301", "12301"),
    ("0086 21 12345", "12345"),
    (" 123 01 ", "12301"),
    ("96119", "96119"),
])
def test_dialed_numbers_in_every_carrier_form_reach_the_right_line(rules, raw, expected):
    assert decide(raw, None, IN_WINDOW, None, rules).line == expected


def test_an_ordinary_subscriber_number_is_not_mangled_into_a_service_number(rules):
    assert service_number("+8613812301000", rules.known_numbers) == "13812301000"
    assert service_number("02188886666", rules.known_numbers) == "02188886666"


def test_caller_numbers_are_masked_for_logs():
    assert mask("+8613812345678") == "138****5678"
    assert mask("13812345678") == "138****5678"
    assert mask("sip:1001@pbx") == "**01"
    assert mask(None) == "unknown"
    assert "12345678" not in mask("13812345678")


# --- emergencies ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,number", [
    ("我家厨房着火了", "119"),
    ("燃气管道好像漏气了，闻到很大的煤气味", "119"),
    ("有人晕倒了，叫不醒", "120"),
    ("老人突然昏迷了", "120"),
    ("路口发生交通事故，有人受伤", "122"),
    ("有人在街上抢劫", "110"),
    ("对方让我把钱转到安全账户", "110"),
])
@pytest.mark.parametrize("dialed", ["12345", "12301", "12348", "12366", "95566"])
def test_emergency_words_transfer_at_once_from_any_line(rules, text, number, dialed):
    d = decide(dialed, "13800138000", IN_WINDOW, text, rules)
    assert d.mode == "emergency" and d.emergency == number
    assert [s["do"] for s in d.steps] == ["say", "transfer"]
    assert d.steps[1]["number"] == number
    assert number in d.steps[0]["text"]
    assert d.line == (dialed if dialed in rules.known_numbers else "12345")


@pytest.mark.parametrize("text", [
    "小区里有人私自搭建违章建筑，挡住了消防通道",
    "想举报一个火灾隐患，楼道里堆满了杂物",
    "我们工厂发生了一起工伤事故，怎么做工伤认定",
    "上个月出了交通事故，保险公司一直不理赔",
    "饭店门口油烟直排，整个小区都是油烟味",
    "我想问一下急救培训在哪里报名",
    "楼下那家店天天放喇叭 跳楼价大甩卖 吵死了",
    "十字路口老有人抢道 建议装个红绿灯",
    "天然气突然点不着火了 表里还有钱",
    "网上银行被盗刷了 先找银行还是先报警",  # asks whether to call the police
    "我们楼道里这两天老有股煤气味 也不知道是哪家的",  # a smell that comes and goes
    "房东把门锁换了 我被关在外面 身份证都在屋里",  # locked out, not locked in
    "小区门口的洗车店 水枪声吸尘器声 从早上七点吵到晚上十点",  # 枪声 inside 水枪声
    "",
])
def test_everyday_matters_that_mention_danger_words_stay_with_the_seats(rules, text):
    d = decide("12345", None, IN_WINDOW, text, rules)
    assert d.mode == "main" and d.emergency is None


def test_a_caller_asking_whether_it_is_a_fraud_is_heard_by_a_seat_first(rules):
    c, p = emergency_assessment(rules, "说是公安局的 让我把钱转到安全账户 这是不是骗子啊")
    assert c is None


def test_a_phrase_with_a_gap_matches_words_between_within_one_clause(rules):
    # 110's list holds 拉上…车: the car may be described between the two words
    assert emergency_heard(rules, "我女儿被一个男的拉上一辆白色面包车了").number == "110"
    # …but not across a clause: the gap never jumps a comma or a full stop
    c, p = emergency_assessment(rules, "他拉上窗帘，车在楼下停着")
    assert c is None and p is None


def test_a_hypothetical_or_negated_danger_is_nothing_at_all(rules):
    for text in ("楼道里堆满纸箱子，怕着火", "真要着火了消防车都进不来", "气死我了，我都想报警了", "没着火，就是灭火器过期了",
                 "我没事 不用叫救护车 就是想问问药吃多了要不要紧",  # 不用 takes it back
                 "我老是怕家里燃气泄露着火 想问问报警器找谁装",  # the fear reaches over its clause
                 "老小区能不能装烟感 独居老人家里着火了都不知道",  # what would happen
                 "建议城中村巷口都装消防栓 现在着火消防车都进不来",
                 "唔系着火啊 系楼下烧烤档嘅油烟",  # a southern caller's negation
                 "我好怕哪天楼下那个小饭馆要着火 煤气罐就堆在过道",  # a fear over a long clause
                 "老街的茶馆电线乱牵又是木头房子随时要起火",
                 "楼道里堆了好多泡沫箱子 着火了都没法跑",  # what would happen
                 "邻居把电动车停在楼道充电 讲了也不听 烧起来咋整",  # what to do if it happens
                 "那个仓库堆了好多鞭炮 迟早会爆炸",
                 "燃气泄漏的话该打哪个电话",  # 的话: if it happens
                 "家里装了封死的防盗窗 真着火了是不是跑不出去",
                 "废品站的纸壳子堆到二楼了 一着火全楼都完了",  # 一…: once it does
                 "我家一头牛口吐白沫倒地不起 咋整",  # livestock: a vet, not an ambulance
                 "村里两头牛被车撞了 倒在路边",
                 "刚才说要跳楼的是我弟弟，人已经回来了，没事了，想问问哪有心理咨询",  # over
                 "请问一下老人突然倒了 心肺复苏是先按胸口还是先吹气",  # a first-aid question
                 "溺水的人救上来是先控水还是先按压",  # which to do first
                 "社区有没有那种教心肺复苏的急救课啊 家里老人有心脏病"):  # a first-aid course
        assert emergency_assessment(rules, text)[0] is None, text
    # a pause (a space in the recogniser's text) ends the fear's clause: the fire is now
    assert emergency_heard(rules, "我好怕 楼下着火了 烟都上来了").number == "119"


@pytest.mark.parametrize("text", [
    "我家燃气没气了 卡里还有钱",  # the gas supply, not a breath
    "那个健身房关门了 老板也找不着了",  # a trader gone with the money, not a missing person
    "孩子的疫苗本找不着了 能补办吗",  # a document
    "超市关门了 会员卡里的钱谁给退",  # a shop's card, not a bank account being emptied
    "锅炉房烟囱天天冒黑烟 熏得衣服都黑了",  # pollution
    "邻居在楼顶上搭了个铁皮房",  # building on a roof, nobody standing there
    "饭馆里好多人在抽烟 也没人管",  # smoking, not a fit
    "卖的电动车头盔没有3C标志",
    "路口那个井盖翻了半边 晚上容易踩空",
    "公交站牌被风刮倒了 横在人行道上",
])
def test_what_happens_to_a_thing_raises_no_alarm(rules, text):
    assert emergency_assessment(rules, text) == (None, None)


@pytest.mark.parametrize("text,number", [
    ("孩子把热水壶碰翻了 手上全是泡", "120"),  # a scald
    ("店里伙计让热油泼了一胳膊", "120"),
    ("我爸有点糊涂 出门买菜 人找不着了", "110"),  # a person, still missing
    ("燃气管被挖机挖断了 正在往外呲气", "119"),
    ("我爸口吐白沫 叫不醒了", "120"),  # a person foaming, beside the pets' exception
    ("有人冒充公安给我妈打电话 让她转钱 她现在正往银行走 我拦不住", "110"),  # a scam not refused
    ("前面那个车酒驾 在路上画龙 差点撞上人", "122"),  # drunk driving now, not a question after it
])
def test_what_happens_to_a_person_still_raises_it(rules, text, number):
    c, p = emergency_assessment(rules, text)
    assert (c or p) is not None and (c or p).number == number, text


@pytest.mark.parametrize("text", [
    "对门天天半夜喊杀人啦 其实是俩人在排练小品 就是太吵了",  # said, then explained
    "我家狗掉冰窟窿里了 在那嗷嗷叫 能不能来人帮忙捞一下",  # an animal, not a person
    # round 23 (read before learning): automatic to 120 — a pet, and over
    "我家狗刚才口吐白沫把我吓惨了，结果是吃了肥皂，现在好了，想问下附近哪里有晚上开门的宠物医院",
    "我家猫一直抽搐 是不是吃了啥东西 附近宠物医院几点关门",
    # session 20's emergency-type sentences (read before learning): automatic to 110, 122, 110
    "刚才有个冒充公安的打我电话说我涉嫌洗钱，我没上当直接挂了，号码是一七零开头的，你们查查封了它。",
    "酒驾被查了驾照会吊销不",
    "我家孩子在学校被同学打了，现在伤好了，学校到现在也没给个说法，打人的家长也不露面。",
])
def test_a_danger_explained_away_or_befalling_an_animal_is_never_an_automatic_transfer(rules, text):
    assert emergency_assessment(rules, text)[0] is None


def test_a_person_in_the_ice_or_a_fire_said_again_after_an_explanation_still_transfers(rules):
    assert emergency_heard(rules, "孩子掉冰窟窿里了 快来人").number == "119"
    assert emergency_heard(rules, "着火了 其实是楼下饭店的厨房着火了 烟都上来了").number == "119"


@pytest.mark.parametrize("text,number", [
    ("不是开玩笑 真的着火了 快来", "119"),
    ("我没跟你开玩笑 有人在撬我家门", "110"),
    ("有人拿刀砍人 不是开玩笑的 快来人", "110"),
    ("不是闹着玩的 我爸倒地上叫不醒了", "120"),
    ("哈哈 不是 真着火了 快来", "119"),  # a pause after 不是, then 真: "no — it really is"
])
def test_a_caller_who_says_it_is_no_joke_is_transferred_at_once(rules, text, number):
    # 开玩笑 silences the danger words near it; denied, it is a frightened caller insisting
    assert emergency_heard(rules, text).number == number


@pytest.mark.parametrize("text", ["刚才说着火了是开玩笑的 不好意思", "别开玩笑了 哪着火了",
                                  "我家孩子在旁边喊救命呢 闹着玩的别管他 那个 社保卡丢了去哪补办啊",
                                  "我就开了个玩笑 跟快递员说包裹里是炸弹 他当真报警了"])  # 当真 is not 真
def test_a_joke_owned_up_to_is_no_emergency(rules, text):
    assert emergency_assessment(rules, text) == (None, None)


@pytest.mark.parametrize("text", ["不是真着火了 是邻居在烧烤", "没真着火 就是冒了点烟味儿已经散了"])
def test_not_really_on_fire_said_in_one_breath_is_no_transfer(rules, text):
    assert emergency_heard(rules, text) is None  # what Vosk gives (its words joined without spaces)


@pytest.mark.parametrize("text", [
    "刚才那是演习吧，我们小区广播喊着火了大家疏散，我跑下来一看什么都没有，是不是搞错了",  # round 21: was automatic
    "今天下午镇中学搞那个疏散演练放了好多烟我们住旁边的以为出啥事了",
    "演练结束了 三楼那边又冒烟了",
])
def test_a_drill_spoken_of_leaves_the_fire_possible_never_automatic_never_silenced(rules, text):
    certain, possible = emergency_assessment(rules, text)
    assert certain is None and possible.number == "119"


@pytest.mark.parametrize("text", ["不是演习 真着火了 快来", "这不是演练啊 真着火了 三楼全是烟",
                                  "消防演练的时候仓库真的着火了 有人没出来", "刚才是开玩笑 现在真着火了 快来"])
def test_a_drill_or_joke_denied_or_a_fire_said_real_after_it_is_transferred_at_once(rules, text):
    assert emergency_heard(rules, text).number == "119"


@pytest.mark.parametrize("text,number", [
    ("我家孩子刚才还好好的 突然被人抱走了", "110"),  # all right a moment before: not over
    ("现在没事吧 不对 他倒下了 叫不醒", "120"),  # all right asked, then the truth
])
def test_all_right_said_of_a_moment_before_or_asked_does_not_silence_the_danger(rules, text, number):
    assert emergency_heard(rules, text).number == number


def test_a_scrape_with_the_person_all_right_is_no_automatic_transfer(rules):
    assert emergency_assessment(rules, "被车撞了一下 人好好的 就是车刮了")[0] is None
    assert emergency_heard(rules, "刚才还好好的 被车撞了 躺地上起不来").number == "122"


def test_water_on_the_floor_is_never_an_automatic_transfer_blood_is(rules):
    assert emergency_assessment(rules, "楼下水管子爆了 水流了一地")[0] is None
    assert emergency_heard(rules, "孩子玩鞭炮把手炸了 血流了一地").number == "120"
    assert emergency_heard(rules, "我爸摔了一跤 头上流了一地的血").number == "120"


def test_past_or_administrative_words_silence_only_the_danger_words_near_them(rules):
    # a routine question, then the emergency happens during the call: 医保 is far from 喊不醒
    routine_then_collapse = "嗯 我想问一下那个医保异地备案咋弄 哎 老头你咋了 你别吓我 他 他突然趴桌上了 喊不醒"
    assert emergency_heard(rules, routine_then_collapse).number == "120"
    # the aftermath of a crash: 住院 and 医保 stand right by 撞
    c, p = emergency_assessment(rules, "我被车撞了住院花了两万多，对方跑了，这个医药费医保能报不")
    assert c is None


@pytest.mark.parametrize("text,number", [
    ("我女儿是智力残疾 昨天下午出去到现在还没回来 我们到处找都没找到", "110"),  # since then, until now
    ("老太太胸口疼得厉害 一脑门子汗 以前就有冠心病 药吃了不管用", "120"),  # a condition had before
])
def test_a_time_word_does_not_close_a_matter_that_goes_on_now(rules, text, number):
    c, p = emergency_assessment(rules, text)
    assert (c or p).number == number
    # the same time word, of a matter that is over, still silences it
    assert emergency_assessment(rules, "昨天下午孩子出去没回来 后来找到了 想问问学校门口能不能装监控") == (None, None)
    # trapped now, not what would happen
    assert emergency_heard(rules, "着火了我们都出不去了").number == "119"
    assert emergency_heard(rules, "楼下着火了怎么办啊 烟都上来了").number == "119"  # 了: it is burning


def test_the_spoken_passive_reads_as_the_written_one(rules):
    assert emergency_heard(rules, "我老公叫车撞了 躺地上起不来").number == "122"
    assert emergency_assessment(rules, "我儿子在山脚下让蛇咬了 腿肿得老粗")[1].number == "120"
    # an object's damage stays an exception, however the passive is said: no automatic transfer
    assert emergency_heard(rules, "马路中间的隔离栏让车撞倒了好几天了 歪在车道上") is None


@pytest.mark.parametrize("text,number", [
    ("吓死我了，有人在小区里放大炮仗，嘣的一声跟爆炸似的，城区不是禁放吗", "119"),  # likened to
    ("刚才电视上演电梯掉下去那个吓死我了，我就想问问小区电梯多久检验一次", "119"),  # seen on a screen
    ("我做梦梦见家里着火了吓醒了 想问问家里要配灭火器去哪买合适", "119"),  # dreamt
    ("看了个拐卖小孩的电影一晚上没睡着，想问问给孩子办身份证几岁能办", "110"),  # a film of it
    ("我哥昨晚在屋里烧炭取暖，早上去喊他，门反锁着，里面一点动静都没有", "120"),  # last night, then this morning
    ("不是要叫救护车啊 就问问老人吃饭噎着了家里人该咋弄 那个海姆立克是咋做的", "120"),  # asked about
    ("刚刷短视频看到说咱们市高架上有辆大货车起火了 是真的假的啊 我老公今天开车要走那边", "119"),  # a rumour
    ("杀人啦 不是不是 我是说菜价要杀人了 今天早上菜市场小白菜卖我十二块一斤", "110"),  # said and corrected
])
def test_a_danger_at_a_remove_or_told_after_last_night_is_heard_by_a_seat_first(rules, text, number):
    """Never an automatic transfer, never nothing: the call goes ahead of the queue, marked 可能紧急."""
    certain, possible = emergency_assessment(rules, text)
    assert certain is None and possible.number == number
    # the same words said plainly are transferred at once
    assert emergency_heard(rules, "小区里刚才爆炸了").number == "119"
    assert emergency_heard(rules, "我哥在屋里烧炭取暖，早上去喊他，叫不醒").number == "120"
    # a time word that closes the matter still silences it
    assert emergency_assessment(rules, "昨晚邻居家着火了，消防车来了好几辆，现在楼道里还黑乎乎的") == (None, None)


@pytest.mark.parametrize("text,number", [
    ("步行街上有个人抢了一个女的手机 正往南边跑", "110"),
    ("公交车上有人打司机 在抢方向盘 快来人啊", "110"),
    ("电梯突然往下掉了一截停住了 里头关着五六个人", "119"),
    ("一辆大货车把人压底下了 在国道上 快点啊", "122"),
    ("我屋企煤气漏 我老公晕咗喺厨房 叫极都唔醒", "120"),  # in Cantonese words
    ("我妈刚电话里说胸口疼 喘不上气 我在上班路上回不去", "120"),  # 路上回 is no 上回 (last time)
    ("俺家炕洞子着了 烟囱那块儿往外蹿火 房梁都冒烟了", "119"),  # a chimney's smoke is not fire, flames are
    ("着火了 三楼的舞蹈培训教室着火了 还有小孩没下来", "119"),  # a training school is a place, not 消防培训
    ("牛市上一头牛发疯把人顶了 肚子上一个大口子 血止不住 快叫救护车", "120"),  # a cow at the scene is no sick cow
])
def test_danger_told_in_the_callers_own_words_is_transferred(rules, text, number):
    assert emergency_heard(rules, text).number == number


def test_life_comes_first_when_several_emergencies_are_heard(rules):
    assert emergency_heard(rules, "着火了，有人昏迷了").number == "120"
    assert emergency_heard(rules, "车祸以后车子起火了").number == "119"


def test_dialing_an_emergency_number_through_the_gateway_hands_it_straight_over(rules):
    d = decide("119", None, IN_WINDOW, None, rules)
    assert d.mode == "emergency" and steps(d)[0]["do"] == "transfer" and steps(d)[0]["number"] == "119"


# --- agent-side three-way transfers ---------------------------------------------------------

def test_agents_can_pull_in_a_sub_center_or_expert_seats(rules):
    sub = three_way(rules, "12366", "subcenter")
    assert sub["do"] == "conference" and sub["number"] == rules.lines["12366"].subcenter_target
    expert = three_way(rules, "12333", "expert")
    assert expert["do"] == "conference" and expert["skill"] == "labor_social_security_expert"
    with pytest.raises(LookupError, match="没有专家坐席组"):
        three_way(rules, "12369", "expert")
    with pytest.raises(LookupError, match="不是并入 12345 的原热线"):
        three_way(rules, "99999", "subcenter")


def test_decisions_record_the_rules_version_and_serialise_to_json(rules):
    import json

    d = decide("12348", None, IN_WINDOW, None, rules).to_dict()
    assert d["rules_version"] == rules.version and len(rules.version) == 12
    assert json.loads(json.dumps(d, ensure_ascii=False)) == d


@pytest.mark.parametrize("text", [
    "我家被盗报警三个月了 派出所一次都没联系过我 去问就说在查",  # a theft months ago, its case chased
    "我们饭馆刚换的那罐液化气阀门有点漏，罐子已经搬到后院了，能派人来看看不",  # made safe, a check asked for
    "刚才有个推销的上门说我家热水器不换就要爆炸把我老妈吓坏了人已经走了",  # fear-selling
])
def test_a_matter_months_old_made_safe_or_a_salesmans_threat_is_no_automatic_transfer(rules, text):
    # round 22's learning sets (session 19): each was an automatic transfer
    assert emergency_heard(rules, text) is None


@pytest.mark.parametrize("text", [
    "上回家里天然气泄漏以后燃气公司说要换表，这个钱该谁出",  # handled long ago, a bill asked about
    "救护车把我妈送到离家老远的医院，我们想去的那家近得多，凭什么",  # the ambulance came: a complaint
    "打120的时候能不能指定送哪家医院",  # a rule asked about
    "我正当防卫把小偷打了一顿，这算不算违法",  # a legal question
    "小区里有人被困电梯，按国家的规定有没有个时限必须到场",  # a rule asked about
    "早上高速上撞车的那件事处理完了没，我下午要走",  # a past event referred to
])
def test_a_past_event_referred_to_or_a_rule_asked_about_is_no_automatic_transfer(rules, text):
    # the emergency-types set of session 21: six such hard negatives were automatic transfers
    assert emergency_heard(rules, text) is None


@pytest.mark.parametrize("text,number", [
    ("液化气罐漏了 满屋子都是味 我点不着也不敢动", "119"),
    ("有人在撬我家门 快来 我一个人在家", "110"),
])
def test_a_leak_or_a_break_in_now_still_transfers(rules, text, number):
    assert emergency_heard(rules, text).number == number


@pytest.mark.parametrize("path,negatives,floor", [
    # session 20 (learned by the type field only, so the router's words never saw it): 330
    # emergencies told as a victim's, a witness's or a report's words, 70 hard negatives; three
    # negatives were automatic transfers before anything was fitted to it; 191 emergencies raised
    # by the words alone, then 198 with the possible words its misses taught
    ("data/utterances/type_only/emergency_borders.jsonl", 70, 195),
    # session 21 (learned by nothing: it lowered the test rounds' type, 0.948 -> 0.947): 280
    # emergencies told by victims like a report, by bystanders, crimes and scams under way, 120
    # hard negatives (past events, complaints about a service, rules asked about); six negatives
    # were automatic transfers when read first; 178 emergencies raised by the words alone
    ("tests/data/emergency_types.jsonl", 120, 175),
])
def test_no_hard_negative_of_an_emergency_check_set_is_transferred_at_once(rules, path, negatives, floor):
    """Sets of one writer and two blind readers (the majority) on the borders of emergencies."""
    from ivr.prefill import REQUEST_TYPES
    from ivr.prefill.model import load_labelled

    rows = load_labelled([ROOT / path], REQUEST_TYPES)
    said = [r.text for r in rows if r.emergency is None]
    assert len(said) == negatives
    assert [t for t in said if emergency_heard(rules, t) is not None] == []
    # the router alone (the pre-fill's danger field adds to it): most emergencies raised
    raised = [r for r in rows if r.emergency and any(emergency_assessment(rules, r.text))]
    assert len(raised) >= floor, len(raised)


@pytest.mark.parametrize("text,number", [
    ("有人在商场门口骂骂咧咧的拎着一桶汽油说要烧了这个商场", "110"),
    ("我要投诉这个酒店，房间里一氧化碳报警器响了没人管，我老公头疼得厉害，吐了两回了", "119"),
    ("我们的员工在外墙做防水，安全带断了，人掉在三楼的雨棚上", "119"),
    ("我们邻居家的保姆在打老人，我从阳台上看得清清楚楚", "110"),
])
def test_a_danger_told_as_a_complaint_or_a_report_is_at_least_possible(rules, text, number):
    certain, possible = emergency_assessment(rules, text)
    assert (certain or possible) is not None and (certain or possible).number == number
