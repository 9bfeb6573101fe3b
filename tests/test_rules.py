"""What a telecom admin sees when transfer_rules.yaml is wrong: file, line, field, what is allowed —
in Chinese (the admins are a 12345 centre's engineers), keys, allowed values and the bad value literal."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from call_routing.rules import check_rules

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def shipped_text(rules_path):
    return rules_path.read_text(encoding="utf-8")


@pytest.fixture
def write_rules(tmp_path, rules_path):
    """Write a rules file (and the shipped keyword file beside it); returns its path."""

    def write(text, keywords=None, name="rules.yaml"):
        kw = keywords if keywords is not None else (rules_path.parent / "emergency_keywords.yaml").read_text(
            encoding="utf-8")
        (tmp_path / "emergency_keywords.yaml").write_text(kw, encoding="utf-8")
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


def line_of(text, marker, nth=0):
    """1-based line number of the nth line containing marker."""
    hits = [i + 1 for i, ln in enumerate(text.splitlines()) if marker in ln]
    return hits[nth]


def problems_of(path):
    rules, problems = check_rules(path)
    assert rules is None, "an invalid file must never load"
    return [str(p) for p in problems]


def test_the_shipped_rules_are_valid(rules_path):
    rules, problems = check_rules(rules_path)
    assert problems == [] and rules is not None
    assert rules.hotline.number == "12345" and rules.hotline.skill == "general"


def test_a_typo_in_a_key_is_refused_at_its_line(shipped_text, write_rules):
    text = edit(shipped_text, "      prompt: 您拨打的12301", "      promt: 您拨打的12301")
    path = write_rules(text)
    n = line_of(text, "promt:")
    got = problems_of(path)
    assert f"{path}:{n}: lines.12301.transition.promt: 未知的键 promt（可用：from, until, prompt, audio）" in got
    assert any("lines.12301.transition: 缺少必填的键 prompt" in p for p in got)


def test_a_mode_that_does_not_exist_lists_the_allowed_modes(shipped_text, write_rules):
    text = edit(shipped_text, "    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal")
    path = write_rules(text)
    n = line_of(text, "mode: duel")
    assert f"{path}:{n}: lines.12348.mode: 不允许的值「duel」（可选：merge, dual, subcenter）" in problems_of(path)


def test_a_number_listed_twice_names_both_lines(shipped_text, write_rules):
    text = edit(shipped_text, '  "12349":', '  "12396":')
    path = write_rules(text)
    first, second = line_of(text, '  "12396":'), line_of(text, '  "12396":', 1)
    assert f"{path}:{second}: lines.12396: 重复出现（第一次在第 {first} 行）" in problems_of(path)


def test_a_malformed_number_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, '  "12301":', '  "1230X":')
    path = write_rules(text)
    assert any(p.startswith(f"{path}:{line_of(text, '1230X')}: lines.1230X: 「1230X」不是服务号码（3 到 11 位数字")
               for p in problems_of(path))


def test_a_skill_that_does_not_exist_is_named(shipped_text, write_rules):
    text = edit(shipped_text, "    skill: tourism\n", "    skill: tourismm\n")
    path = write_rules(text)
    got = problems_of(path)
    assert any(p.startswith(f"{path}:{line_of(text, 'skill: tourismm')}: lines.12301.skill: 坐席组「tourismm」不存在"
                            "（已定义：general, science_tech") for p in got)


def test_an_overflow_loop_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, "  general:\n    name: 12345综合坐席\n    hours: always\n",
                "  general:\n    name: 12345综合坐席\n    hours: always\n    overflow: {to: tourism, after_s: 10}\n")
    path = write_rules(text)
    got = problems_of(path)
    assert any("溢出链成环：general -> tourism -> general（溢出链必须有终点）" in p for p in got), got


def test_an_overflow_to_itself_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, "  tourism:\n    name: 旅游服务坐席\n    hours: always\n    overflow: {to: general",
                "  tourism:\n    name: 旅游服务坐席\n    hours: always\n    overflow: {to: tourism")
    path = write_rules(text)
    assert any("skills.tourism.overflow.to: 坐席组不能溢出到自己" in p for p in problems_of(path))


def test_a_transition_that_ends_before_it_starts_is_refused(shipped_text, write_rules):
    old = "      from: 2021-01-01\n      until: 2026-12-31\n      prompt: 您拨打的12301"
    text = edit(shipped_text, old, old.replace("until: 2026-12-31", "until: 2020-12-31"))
    path = write_rules(text)
    n = line_of(text, "until: 2020-12-31")
    assert f"{path}:{n}: lines.12301.transition.until: 应晚于 from（2021-01-01）" in problems_of(path)


def test_an_empty_prompt_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, "      prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。",
                '      prompt: ""')
    path = write_rules(text)
    n = line_of(text, 'prompt: ""')
    assert f"{path}:{n}: lines.12301.transition.prompt: 提示语不能为空" in problems_of(path)


def test_a_subcenter_without_a_target_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, '      target: "sip:12366@subcenter-tax.example.gov.cn"\n', "")
    path = write_rules(text)
    assert any("lines.12366.subcenter: 缺少必填的键 target" in p for p in problems_of(path))


def test_a_subcenter_target_must_be_a_number_or_sip_uri(shipped_text, write_rules):
    text = edit(shipped_text, '"sip:12366@subcenter-tax.example.gov.cn"', '"call the tax office"')
    path = write_rules(text)
    n = line_of(text, "call the tax office")
    assert any(p.startswith(f"{path}:{n}: lines.12366.subcenter.target: 「call the tax office」不是电话号码（数字，可带 +）"
                            "或 SIP 地址（sip:user@host）") for p in problems_of(path))


def test_emergency_numbers_cannot_be_merged_into_12345(shipped_text, write_rules):
    text = edit(shipped_text, '  "12301":', '  "110":')
    path = write_rules(text)
    n = text.splitlines().index('  "110":') + 1
    assert f"{path}:{n}: lines.110: 110 是紧急线路：不能并入或改号" in problems_of(path)


def test_emergency_lines_cannot_be_removed_or_renumbered(shipped_text, write_rules):
    text = edit(shipped_text, '    "120": 医疗急救', '    "112": 医疗急救')
    path = write_rules(text)
    got = problems_of(path)
    assert any("emergency.lines.112: 112 不是紧急线路；紧急线路是固定的（可用：110, 119, 120, 122）" in p for p in got)
    assert any("emergency.lines: 缺少紧急线路 120：紧急线路不能删除" in p for p in got)


def test_keys_of_another_mode_are_explained(shipped_text, write_rules):
    text = edit(shipped_text, "    skill: legal\n    expert_skill: legal_expert\n",
                "    skill: legal\n    expert_skill: legal_expert\n    subcenter: {name: x, target: \"12348\"}\n")
    path = write_rules(text)
    n = line_of(text, "subcenter: {name: x")
    assert f"{path}:{n}: lines.12348.subcenter: 只有 mode 为 subcenter 的线路才有 subcenter；本线路的 mode 是 dual" \
        in problems_of(path)


def test_expert_seats_are_reached_only_by_transfer(shipped_text, write_rules):
    text = edit(shipped_text, "    skill: legal\n", "    skill: legal_expert\n")
    path = write_rules(text)
    assert any("lines.12348.skill: 坐席组「legal_expert」是专家坐席组：专家坐席只能由坐席转接到达" in p
               for p in problems_of(path))


def test_opening_hours_must_be_real_times(shipped_text, write_rules):
    text = edit(shipped_text, 'hours: {days: workdays, open: "08:30", close: "17:30"}',
                'hours: {days: weekdays, open: "08:30", close: "25:00"}')
    path = write_rules(text)
    got = problems_of(path)
    assert any("skills.legal_expert.hours.days: 不允许的值「weekdays」（可选：workdays, everyday）" in p for p in got)
    assert any("skills.legal_expert.hours.close: 「25:00」不是有效的时间（HH:MM，00:00 到 24:00）" in p for p in got)


def test_every_problem_is_reported_in_one_run_in_file_order(shipped_text, write_rules):
    text = edit(shipped_text, "    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal")
    text = edit(text, "    skill: tourism\n", "    skill: nowhere\n")
    text = edit(text, "  announce_every_s: 30", "  announce_every_s: thirty")
    path = write_rules(text)
    got = problems_of(path)
    assert len(got) == 3
    lines = [int(p.split(":")[1]) for p in got]
    assert lines == sorted(lines)


def test_problems_in_the_keyword_file_point_into_that_file(shipped_text, write_rules, rules_path):
    kw = (rules_path.parent / "emergency_keywords.yaml").read_text(encoding="utf-8")
    kw = edit(kw, '"122":\n  words:', '"122":\n  wrds:')
    path = write_rules(shipped_text, keywords=kw)
    kw_path = path.parent / "emergency_keywords.yaml"
    n = line_of(kw, "wrds:")
    assert f"{kw_path}:{n}: 122.wrds: 未知的键 wrds（可用：words, except, unless, possible）" in problems_of(path)


def test_a_phrase_with_an_empty_side_of_its_gap_is_refused_with_its_line(shipped_text, write_rules, rules_path):
    kw = (rules_path.parent / "emergency_keywords.yaml").read_text(encoding="utf-8")
    kw = edit(kw, '"110":\n  words: [', '"110":\n  words: [拉上…, ')
    path = write_rules(shipped_text, keywords=kw)
    got = [p for p in problems_of(path) if "110.words" in p]
    assert got and "带 … 的短语，每个 … 两边都要有词（最多两个 …）" in got[0], problems_of(path)
    words_line = line_of(kw, '"110":') + 1
    assert got[0].startswith(f"{path.parent / 'emergency_keywords.yaml'}:{words_line}:")


def test_a_date_that_does_not_exist_is_said_once_at_its_line(shipped_text, write_rules):
    """2026-02-30 cannot be read as a date: said once, not again as an empty value by the model."""
    old = "      until: 2026-12-31\n      prompt: 您拨打的12301"
    text = edit(shipped_text, old, old.replace("2026-12-31", "2026-02-30"))
    path = write_rules(text)
    assert problems_of(path) == [f"{path}:{line_of(text, 'until: 2026-02-30')}: lines.12301.transition.until: "
                                 "「2026-02-30」不是有效的日期或时间（例：2021-01-01 或 2021-01-01 08:00）"]


def _words_of_the_model() -> set[str]:
    """Every key of the rules and keyword files, and every value the model allows: literal in messages."""
    from call_routing import schema

    keys, todo = set(), [schema.Section]
    while todo:
        model = todo.pop()
        todo += model.__subclasses__()
        keys.update(model.keys())
    return keys | {"merge", "dual", "subcenter", "workdays", "everyday", "overflow", "callback", "always", "forward",
                   "announce_and_hangup", "true", "false", "number", "name", "prompts", "sip", "user", "host",
                   "YAML", "UTF", "SIP", "HH", "MM", "MB", "Tab", "int", "id", "legal_expert"}  # 坐席组 id, e.g.


@pytest.mark.parametrize("old,new", [
    ("      prompt: 您拨打的12301", "      promt: 您拨打的12301"),
    ("    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal"),
    ('  "12349":', '  "12396":'),
    ('  "12301":', '  "1230X":'),
    ("    skill: tourism\n", "    skill: tourismm\n"),
    ("  tourism:\n    name: 旅游服务坐席\n    hours: always\n    overflow: {to: general",
     "  tourism:\n    name: 旅游服务坐席\n    hours: always\n    overflow: {to: tourism"),
    ("      until: 2026-12-31\n      prompt: 您拨打的12301", "      until: next year\n      prompt: 您拨打的12301"),
    ('"sip:12366@subcenter-tax.example.gov.cn"', '"call the tax office"'),
    ('  number: "12345"', '  number: "110"'),
    ('  "12301":', '  "12345":'),
    ('    "120": 医疗急救', '    "112": 医疗急救'),
    ("    skill: legal\n", "    skill: legal_expert\n"),
    ("    expert_skill: legal_expert\n", "    expert_skill: general\n"),
    ('{days: workdays, open: "08:30", close: "17:30"}', '{days: weekdays, open: "08:30", close: "07:30"}'),
    ("  general:\n    name: 12345综合坐席\n    hours: always", "  General:\n    name: [a, b]\n    hours: sometimes"),
    ("recording: {full_call: false, keep_days: 180}", "recording: {full_call: sometimes, keep_days: 0, keep: 5}"),
    ("转接{number}{name}", "转接{numbr}{name}"),
    ("      action: forward", "      action: forwrd"),
    ("    after:\n      action: forward", "    after: 5\n    after_old:\n      action: forward"),
    ("  wrapup_max_s: 120 ", "  wrapup_max_s: two minutes "),
    ("keywords_file: emergency_keywords.yaml", "keywords_file: nope.yaml"),
    ("    mode: dual\n    skill: legal", "\tmode: dual\n    skill: legal"),
    ("    mode: dual\n    skill: legal", "    mode: dual: x\n    skill: legal"),
    ("    mode: dual\n    skill: legal", "    mode: dual\n   skill: legal"),
    ('  "12301":', '  "12301:'),
    ("  general:\n    name: 12345综合坐席", "  general: !!python/name:os.system\n    name: 12345综合坐席"),
])
def test_every_problem_is_said_in_chinese_with_keys_and_values_as_written(shipped_text, write_rules, old, new):
    """The admins read the checker in the console, which is all Chinese: the message's own words are
    Chinese; what stays literal is a key, an allowed value, a defined skill, or what the admin wrote."""
    got = check_rules(write_rules(edit(shipped_text, old, new)))[1]
    assert got
    literal = re.compile(r"「[^」]*」|（(?:可用|可选|已定义|键)：[^）]*）")
    words = re.compile(r"[A-Za-z][A-Za-z_]+")
    for p in got:
        english = set(words.findall(literal.sub("", p.message))) - _words_of_the_model() - set(words.findall(new))
        assert re.search(r"[\u4e00-\u9fff]", p.message) and not english, (str(p), english)


# --- files that are not rules at all: one clear line each, never a traceback --------------

def test_malformed_yaml_names_its_line(shipped_text, write_rules):
    text = edit(shipped_text, "    mode: dual\n    skill: legal", "    mode: [dual\n    skill: legal")
    path = write_rules(text)
    got = problems_of(path)
    assert got == [f"{path}:{line_of(text, 'skill: legal')}: YAML 格式错误：方括号 [ 没有闭合，或列表项之间缺少逗号"]


@pytest.mark.parametrize("content,message", [
    ("", "是空文件：规则文件至少要有 hotline, emergency, skills, lines"),
    ("# only a comment\n\n", "是空文件"),
    ("- a\n- b\n", "应为由各部分组成的映射（hotline, queue, emergency, skills, lines）"),
])
def test_empty_or_shapeless_files_are_refused(write_rules, content, message):
    got = problems_of(write_rules(content))
    assert len(got) == 1 and message in got[0]


def test_a_directory_a_missing_file_a_binary_and_a_huge_file_are_refused(tmp_path):
    binary = tmp_path / "rules.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" * 64)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("hotline:\n  name: caf\xe9\n".encode("latin-1"))
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(50 * 1024 * 1024)
    cases = {
        tmp_path: "是目录，不是规则文件",
        tmp_path / "nope.yaml": "文件不存在",
        binary: "是二进制文件，不是 UTF-8 编码的 YAML 文本",
        latin: "不是 UTF-8 文本（请以 UTF-8 编码保存）",
        huge: "文件太大：50.0 MB，最大 2 MB",
    }
    for path, message in cases.items():
        got = problems_of(path)
        assert len(got) == 1 and message in got[0], (path, got)


def test_yaml_that_would_build_objects_is_refused(write_rules):
    path = write_rules('hotline: !!python/object/apply:os.system ["touch /tmp/pwned-by-rules"]\n')
    got = problems_of(path)
    assert any("hotline: 不允许使用 YAML 标签「tag:yaml.org,2002:python/object/apply:os.system」" in p for p in got)
    assert not Path("/tmp/pwned-by-rules").exists()


def test_anchors_and_aliases_are_refused(shipped_text, write_rules):
    text = edit(shipped_text, "  general:\n    name: 12345综合坐席", "  general: &g\n    name: 12345综合坐席")
    text = edit(text, "  science_tech:\n", "  copy: *g\n  science_tech:\n")
    got = problems_of(write_rules(text))
    assert any("skills.copy: 不支持锚点和别名（& 和 *）：请把值完整写出" in p for p in got)


def test_the_version_changes_with_the_rules_and_with_the_keywords(shipped_text, write_rules, rules_path):
    first, _ = check_rules(write_rules(shipped_text))
    second, _ = check_rules(write_rules(shipped_text.replace("announce_every_s: 30", "announce_every_s: 40")))
    kw = (rules_path.parent / "emergency_keywords.yaml").read_text(encoding="utf-8")
    third, _ = check_rules(write_rules(shipped_text, keywords=kw.replace("[报警,", "[报警, 持械,")))
    assert len({first.version, second.version, third.version}) == 3


# --- the command line ------------------------------------------------------------------------

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "call_routing", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)


def test_check_exits_0_on_the_shipped_file():
    r = run_cli("check")
    assert r.returncode == 0 and r.stdout.count("\n") == 1
    assert r.stdout.startswith(f"{ROOT / 'transfer_rules.yaml'}: OK")
    assert "校验通过：32 条原热线号码，" in r.stdout and "个坐席组，版本 " in r.stdout


def test_check_exits_1_with_one_line_per_problem(shipped_text, write_rules):
    text = edit(shipped_text, "    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal")
    text = edit(text, "    skill: tourism\n", "    skill: nowhere\n")
    path = write_rules(text)
    r = run_cli("check", str(path))
    assert r.returncode == 1
    out = r.stdout.strip().splitlines()
    assert len(out) == 2 and all(ln.startswith(f"{path}:") for ln in out)
    assert "Traceback" not in r.stdout + r.stderr


def test_check_on_a_directory_is_one_clear_line(tmp_path):
    r = run_cli("check", str(tmp_path))
    assert r.returncode == 1 and r.stdout.strip() == f"{tmp_path}: 是目录，不是规则文件"


def test_route_prints_the_decision_as_one_json_object():
    r = run_cli("route", "--to", "+8612301", "--from", "13800138000", "--at", "2026-07-01T09:00:00+08:00")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["line"] == "12301" and out["mode"] == "merge" and out["rules_version"]
    assert [s["do"] for s in out["steps"]] == ["say", "enqueue"]
    assert "已并入12345" in out["steps"][0]["text"]  # Chinese printed as such, not \u escapes
    assert "已并入12345" in r.stdout


def test_route_hears_an_emergency_from_text():
    r = run_cli("route", "--to", "12345", "--text", "路上出了车祸，有人受伤了")
    out = json.loads(r.stdout)
    assert out["mode"] == "emergency" and out["emergency"] == "122" and out["steps"][-1]["number"] == "122"


def test_route_uses_rules_path_from_the_environment(shipped_text, write_rules):
    path = write_rules(shipped_text.replace("skill: general           #", "skill: science_tech           #"))
    r = run_cli("route", "--to", "12345", env={"RULES_PATH": str(path)})
    assert json.loads(r.stdout)["skill"] == "science_tech"


def test_route_with_a_bad_time_says_what_is_wrong():
    r = run_cli("route", "--to", "12345", "--at", "yesterday")
    assert r.returncode != 0 and "--at: 'yesterday' is not an ISO-8601 time" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_acd_timers_are_set_under_queue_and_checked_at_their_line(shipped_text, write_rules):
    text = edit(shipped_text, "  ring_timeout_s: 20 ", "  ring_timeout_s: 2 ")
    text = edit(text, "  callback_attempts: 3 ", "  callback_attempts: 0 ")
    text = edit(text, "  wrapup_max_s: 120 ", "  wrapup_max_s: two minutes ")
    path = write_rules(text)
    got = problems_of(path)
    assert f"{path}:{line_of(text, '  ring_timeout_s: 2 ')}: queue.ring_timeout_s: 「2」应为 5 到 120 之间的整数（秒）" \
        in got
    assert f"{path}:{line_of(text, '  callback_attempts: 0')}: queue.callback_attempts: 「0」应为 1 到 10 之间的整数" \
        in got
    assert any("queue.wrapup_max_s: 「two minutes」应为 0 到 1800 之间的整数（秒）" in p for p in got)
    ok = write_rules(edit(shipped_text, "  missed_call_callback_after_s: 10 ", "  missed_call_callback_after_s: 25 "))
    rules, problems = check_rules(ok)
    assert problems == [] and rules.acd_settings["missed_call_callback_after_s"] == 25
    assert rules.acd_settings["ring_timeout_s"] == 20


def test_a_rules_file_nested_hundreds_deep_is_refused_at_its_line_and_never_replaces_the_running_rules(tmp_path):
    """Appended ``deep: [[[[ … ]]]]`` 500 levels deep once crashed the checker (RecursionError),
    which stopped all routing; it is an invalid file like any other."""
    import shutil

    from call_routing.rules import check_rules
    from call_routing.rules_store import RulesStore

    root = Path(__file__).resolve().parent.parent
    for name in ("transfer_rules.yaml", "emergency_keywords.yaml"):
        shutil.copy(root / name, tmp_path / name)
    path = tmp_path / "transfer_rules.yaml"
    store = RulesStore(str(path))
    good = store.current().version
    shipped = path.read_text("utf-8")
    lines = shipped.count("\n")
    path.write_text(shipped + "deep: " + "[" * 500 + "]" * 500 + "\n", "utf-8")
    rules, problems = check_rules(path)
    assert rules is None and len(problems) == 1
    assert problems[0].line == lines + 1 and problems[0].message == "嵌套超过 32 层"
    assert store.reload() is False and store.current().version == good
    keywords = tmp_path / "emergency_keywords.yaml"
    path.write_text(shipped, "utf-8")
    keywords.write_text(keywords.read_text("utf-8") + "deep: " + "{a: " * 400 + "1" + "}" * 400 + "\n", "utf-8")
    rules, problems = check_rules(path)
    assert rules is None and any(p.message == "嵌套超过 32 层" for p in problems)


def test_a_prompt_too_long_to_speak_to_every_caller_is_refused_at_its_line(shipped_text, write_rules):
    """A 100 KB prompt passed the check, the editor and publish; every call to the line then
    got 300 KB of TwiML."""
    text = edit(shipped_text, "      prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。",
                "      prompt: " + "请稍候" * 34_000)
    path = write_rules(text)
    n = line_of(text, "请稍候请稍候")
    assert f"{path}:{n}: lines.12301.transition.prompt: 提示语太长：最多 300 个字符" in problems_of(path)
    assert all(len(p) < 300 for p in problems_of(path))  # the message names the field, not the text back


def test_the_dispatch_catalogue_and_the_workday_calendar_are_bounded_like_the_rules(tmp_path):
    """Every YAML file the product reads goes through the same reader: nesting hundreds deep and
    files over the size limit are refused with a line, never a RecursionError or a 100 MB read."""
    from call_routing.rules import MAX_RULES_BYTES
    from call_routing.workdays import WorkdayCalendar
    from ivr.prefill import load_catalogue

    deep = tmp_path / "deep.yaml"
    deep.write_text("holidays: " + "[" * 600 + "]" * 600 + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="deep.yaml:1: 嵌套超过 32 层"):
        WorkdayCalendar.from_file(deep)
    big = tmp_path / "subjects.yaml"
    big.write_text("domains:\n" + "# padding\n" * (MAX_RULES_BYTES // 10 + 1), encoding="utf-8")
    with pytest.raises(Exception) as err:
        load_catalogue(big)
    assert "MB，最大 2 MB" in str(err.value)
    deep_catalogue = tmp_path / "deep_subjects.yaml"
    deep_catalogue.write_text("domains: " + "[" * 600 + "]" * 600 + "\n", encoding="utf-8")
    with pytest.raises(Exception) as err:
        load_catalogue(deep_catalogue)
    assert "嵌套超过 32 层" in str(err.value)
