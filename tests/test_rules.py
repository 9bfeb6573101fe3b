"""What a telecom admin sees when transfer_rules.yaml is wrong: file, line, field, what is allowed."""
from __future__ import annotations

import json
import os
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
    assert f"{path}:{n}: lines.12301.transition.promt: unknown key (allowed: from, until, prompt, audio)" in got
    assert any("lines.12301.transition: missing required key 'prompt'" in p for p in got)


def test_a_mode_that_does_not_exist_lists_the_allowed_modes(shipped_text, write_rules):
    text = edit(shipped_text, "    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal")
    path = write_rules(text)
    n = line_of(text, "mode: duel")
    assert f"{path}:{n}: lines.12348.mode: 'duel' is not allowed (allowed: merge, dual, subcenter)" in problems_of(path)


def test_a_number_listed_twice_names_both_lines(shipped_text, write_rules):
    text = edit(shipped_text, '  "12349":', '  "12396":')
    path = write_rules(text)
    first, second = line_of(text, '  "12396":'), line_of(text, '  "12396":', 1)
    assert f"{path}:{second}: lines.12396: written twice (first at line {first})" in problems_of(path)


def test_a_malformed_number_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, '  "12301":', '  "1230X":')
    path = write_rules(text)
    assert any(p.startswith(f"{path}:{line_of(text, '1230X')}: lines.1230X: '1230X' is not a service number")
               for p in problems_of(path))


def test_a_skill_that_does_not_exist_is_named(shipped_text, write_rules):
    text = edit(shipped_text, "    skill: tourism\n", "    skill: tourismm\n")
    path = write_rules(text)
    got = problems_of(path)
    assert any(p.startswith(f"{path}:{line_of(text, 'skill: tourismm')}: lines.12301.skill: no skill 'tourismm' "
                            "(defined: general, science_tech") for p in got)


def test_an_overflow_loop_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, "  general:\n    name: 12345综合坐席\n    hours: always\n",
                "  general:\n    name: 12345综合坐席\n    hours: always\n    overflow: {to: tourism, after_s: 10}\n")
    path = write_rules(text)
    got = problems_of(path)
    assert any("overflow loops back: general -> tourism -> general (chains must end)" in p for p in got), got


def test_an_overflow_to_itself_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, "  tourism:\n    name: 旅游服务坐席\n    hours: always\n    overflow: {to: general",
                "  tourism:\n    name: 旅游服务坐席\n    hours: always\n    overflow: {to: tourism")
    path = write_rules(text)
    assert any("skills.tourism.overflow.to: a group cannot overflow to itself" in p for p in problems_of(path))


def test_a_transition_that_ends_before_it_starts_is_refused(shipped_text, write_rules):
    old = "      from: 2021-01-01\n      until: 2026-12-31\n      prompt: 您拨打的12301"
    text = edit(shipped_text, old, old.replace("until: 2026-12-31", "until: 2020-12-31"))
    path = write_rules(text)
    n = line_of(text, "until: 2020-12-31")
    assert f"{path}:{n}: lines.12301.transition.until: must be after from (2021-01-01)" in problems_of(path)


def test_an_empty_prompt_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, "      prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。",
                '      prompt: ""')
    path = write_rules(text)
    n = line_of(text, 'prompt: ""')
    assert f"{path}:{n}: lines.12301.transition.prompt: the prompt must not be empty" in problems_of(path)


def test_a_subcenter_without_a_target_is_refused(shipped_text, write_rules):
    text = edit(shipped_text, '      target: "sip:12366@subcenter-tax.example.gov.cn"\n', "")
    path = write_rules(text)
    assert any("lines.12366.subcenter: missing required key 'target'" in p for p in problems_of(path))


def test_a_subcenter_target_must_be_a_number_or_sip_uri(shipped_text, write_rules):
    text = edit(shipped_text, '"sip:12366@subcenter-tax.example.gov.cn"', '"call the tax office"')
    path = write_rules(text)
    n = line_of(text, "call the tax office")
    assert any(p.startswith(f"{path}:{n}: lines.12366.subcenter.target: 'call the tax office' is not a phone number")
               for p in problems_of(path))


def test_emergency_numbers_cannot_be_merged_into_12345(shipped_text, write_rules):
    text = edit(shipped_text, '  "12301":', '  "110":')
    path = write_rules(text)
    n = text.splitlines().index('  "110":') + 1
    assert f"{path}:{n}: lines.110: 110 is an emergency line: it cannot be merged or remapped" in problems_of(path)


def test_emergency_lines_cannot_be_removed_or_renumbered(shipped_text, write_rules):
    text = edit(shipped_text, '    "120": 医疗急救', '    "112": 医疗急救')
    path = write_rules(text)
    got = problems_of(path)
    assert any("emergency.lines.112: '112' is not an emergency line; the emergency lines are fixed "
               "(allowed: 110, 119, 120, 122)" in p for p in got)
    assert any("emergency.lines: missing emergency line 120: emergency lines cannot be removed" in p for p in got)


def test_keys_of_another_mode_are_explained(shipped_text, write_rules):
    text = edit(shipped_text, "    skill: legal\n    expert_skill: legal_expert\n",
                "    skill: legal\n    expert_skill: legal_expert\n    subcenter: {name: x, target: \"12348\"}\n")
    path = write_rules(text)
    n = line_of(text, "subcenter: {name: x")
    assert f"{path}:{n}: lines.12348.subcenter: only subcenter lines have 'subcenter'; this line is dual" \
        in problems_of(path)


def test_expert_seats_are_reached_only_by_transfer(shipped_text, write_rules):
    text = edit(shipped_text, "    skill: legal\n", "    skill: legal_expert\n")
    path = write_rules(text)
    assert any("lines.12348.skill: skill 'legal_expert' is an expert group: expert seats are reached only by "
               "transfer" in p for p in problems_of(path))


def test_opening_hours_must_be_real_times(shipped_text, write_rules):
    text = edit(shipped_text, 'hours: {days: workdays, open: "08:30", close: "17:30"}',
                'hours: {days: weekdays, open: "08:30", close: "25:00"}')
    path = write_rules(text)
    got = problems_of(path)
    assert any("skills.legal_expert.hours.days: 'weekdays' is not allowed (allowed: workdays, everyday)" in p
               for p in got)
    assert any("skills.legal_expert.hours.close: '25:00' is not a time of day" in p for p in got)


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
    assert f"{kw_path}:{n}: 122.wrds: unknown key (allowed: words, except, unless, possible)" in problems_of(path)


def test_a_phrase_with_an_empty_side_of_its_gap_is_refused_with_its_line(shipped_text, write_rules, rules_path):
    kw = (rules_path.parent / "emergency_keywords.yaml").read_text(encoding="utf-8")
    kw = edit(kw, '"110":\n  words: [', '"110":\n  words: [拉上…, ')
    path = write_rules(shipped_text, keywords=kw)
    got = [p for p in problems_of(path) if "110.words" in p]
    assert got and "a phrase with … needs words on both sides of each …" in got[0], problems_of(path)
    words_line = line_of(kw, '"110":') + 1
    assert got[0].startswith(f"{path.parent / 'emergency_keywords.yaml'}:{words_line}:")


# --- files that are not rules at all: one clear line each, never a traceback --------------

def test_malformed_yaml_names_its_line(shipped_text, write_rules):
    text = edit(shipped_text, "    mode: dual\n    skill: legal", "    mode: [dual\n    skill: legal")
    path = write_rules(text)
    got = problems_of(path)
    assert len(got) == 1 and got[0].startswith(f"{path}:") and "malformed YAML" in got[0]


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ("# only a comment\n\n", "is empty"),
    ("- a\n- b\n", "must be a mapping of sections"),
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
        tmp_path: "is a directory, not a rules file",
        tmp_path / "nope.yaml": "no such file",
        binary: "is a binary file, not UTF-8 YAML text",
        latin: "is not UTF-8 text",
        huge: "file is 50.0 MB; a rules file may be at most 2 MB",
    }
    for path, message in cases.items():
        got = problems_of(path)
        assert len(got) == 1 and message in got[0], (path, got)


def test_yaml_that_would_build_objects_is_refused(write_rules):
    path = write_rules('hotline: !!python/object/apply:os.system ["touch /tmp/pwned-by-rules"]\n')
    got = problems_of(path)
    assert any("YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in p for p in got)
    assert not Path("/tmp/pwned-by-rules").exists()


def test_anchors_and_aliases_are_refused(shipped_text, write_rules):
    text = edit(shipped_text, "  general:\n    name: 12345综合坐席", "  general: &g\n    name: 12345综合坐席")
    text = edit(text, "  science_tech:\n", "  copy: *g\n  science_tech:\n")
    got = problems_of(write_rules(text))
    assert any("anchors and aliases (& and *) are not supported" in p for p in got)


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
    assert r.returncode == 0 and "OK" in r.stdout and "32 legacy lines" in r.stdout


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
    assert r.returncode == 1 and r.stdout.strip() == f"{tmp_path}: is a directory, not a rules file"


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
    assert f"{path}:{line_of(text, '  ring_timeout_s: 2 ')}: queue.ring_timeout_s: 2 must be a whole number of " \
           "seconds from 5 to 120" in got
    assert f"{path}:{line_of(text, '  callback_attempts: 0')}: queue.callback_attempts: 0 must be a whole number " \
           "from 1 to 10" in got
    assert any("queue.wrapup_max_s: 'two minutes' must be a whole number of seconds" in p for p in got)
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
    assert problems[0].line == lines + 1 and "nested more than" in problems[0].message
    assert store.reload() is False and store.current().version == good
    keywords = tmp_path / "emergency_keywords.yaml"
    path.write_text(shipped, "utf-8")
    keywords.write_text(keywords.read_text("utf-8") + "deep: " + "{a: " * 400 + "1" + "}" * 400 + "\n", "utf-8")
    rules, problems = check_rules(path)
    assert rules is None and any("nested more than" in p.message for p in problems)


def test_a_prompt_too_long_to_speak_to_every_caller_is_refused_at_its_line(shipped_text, write_rules):
    """A 100 KB prompt passed the check, the editor and publish; every call to the line then
    got 300 KB of TwiML."""
    text = edit(shipped_text, "      prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。",
                "      prompt: " + "请稍候" * 34_000)
    path = write_rules(text)
    n = line_of(text, "请稍候请稍候")
    assert f"{path}:{n}: lines.12301.transition.prompt: the prompt is too long: at most 300 characters" \
        in problems_of(path)
    assert all(len(p) < 300 for p in problems_of(path))  # the message names the field, not the text back


def test_the_dispatch_catalogue_and_the_workday_calendar_are_bounded_like_the_rules(tmp_path):
    """Every YAML file the product reads goes through the same reader: nesting hundreds deep and
    files over the size limit are refused with a line, never a RecursionError or a 100 MB read."""
    from call_routing.rules import MAX_RULES_BYTES
    from call_routing.workdays import WorkdayCalendar
    from ivr.prefill import load_catalogue

    deep = tmp_path / "deep.yaml"
    deep.write_text("holidays: " + "[" * 600 + "]" * 600 + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="deep.yaml:1: nested more than 32 levels deep"):
        WorkdayCalendar.from_file(deep)
    big = tmp_path / "subjects.yaml"
    big.write_text("domains:\n" + "# padding\n" * (MAX_RULES_BYTES // 10 + 1), encoding="utf-8")
    with pytest.raises(Exception) as err:
        load_catalogue(big)
    assert "may be at most" in str(err.value)
    deep_catalogue = tmp_path / "deep_subjects.yaml"
    deep_catalogue.write_text("domains: " + "[" * 600 + "]" * 600 + "\n", encoding="utf-8")
    with pytest.raises(Exception) as err:
        load_catalogue(deep_catalogue)
    assert "nested more than 32 levels deep" in str(err.value)
