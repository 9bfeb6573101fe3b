"""The ticket pre-fill: accuracy on the labelled dev set, emergencies, and behaviour on
sentences of our own (deadlines, numbers said, places, enterprise requests, the CLI)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from call_routing.rules import CHINA_TZ
from ivr.prefill import CatalogueError, Prefiller, SUBJECTS_PATH, load_catalogue, main

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("type", "line", "emergency", "enterprise")
CONTRACT = {"type", "line", "skill", "department", "emergency", "enterprise", "location", "deadline"}


@pytest.fixture(scope="module")
def prefiller(rules):
    return Prefiller(rules)


def labelled(data_dir, name):
    return [json.loads(line) for line in (data_dir / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def accuracy(prefiller, rows) -> tuple[dict, list]:
    right, misses = Counter(), []
    for row in rows:
        got = prefiller.fill(row["text"]).to_dict()
        for f in FIELDS:
            right[f] += got[f] == row[f]
        wrong = {f: (got[f], row[f]) for f in FIELDS if got[f] != row[f]}
        if wrong:
            misses.append((row["text"], wrong))
    return {f: right[f] / len(rows) for f in FIELDS}, misses


def test_dev_set_type_and_line_are_right_at_least_nine_times_in_ten(prefiller, data_dir, record_property):
    scores, misses = accuracy(prefiller, labelled(data_dir, "utterances_dev.jsonl"))
    report = "dev-set accuracy: " + ", ".join(f"{f} {v:.2f}" for f, v in scores.items())
    print("\n" + report + "".join(f"\n  miss: {t} {w}" for t, w in misses))
    record_property("prefill_dev_accuracy", scores)
    assert scores["type"] >= 0.9 and scores["line"] >= 0.9, report
    assert scores["enterprise"] >= 0.9, report


def test_every_emergency_on_the_dev_set_is_caught_and_nothing_else_is_one(prefiller, data_dir):
    rows = labelled(data_dir, "utterances_dev.jsonl")
    got = [(row, prefiller.fill(row["text"])) for row in rows]
    missed = [r["text"] for r, f in got if r["emergency"] and f.emergency != r["emergency"]]
    false_alarms = [r["text"] for r, f in got if not r["emergency"] and f.emergency]
    assert missed == [] and false_alarms == []
    assert sum(1 for r in rows if r["emergency"]) >= 4


def test_our_own_sentences_for_every_hotline_are_classified(prefiller, data_dir):
    rows = labelled(data_dir, "utterances_prefill_own.jsonl")
    assert {r["line"] for r in rows} >= {"12345", "96119"} | {n for n in prefiller.rules.lines}
    scores, misses = accuracy(prefiller, rows)
    print(f"\nown-sentence accuracy: {scores}" + "".join(f"\n  miss: {t} {w}" for t, w in misses))
    assert scores["line"] >= 0.9 and scores["type"] >= 0.85, misses


def test_an_emergency_ticket_stays_with_the_general_seats_as_a_call_for_help(prefiller):
    f = prefiller.fill("我爸爸突然晕倒了，叫不醒")
    assert (f.emergency, f.line, f.skill, f.type) == ("120", "12345", "general", "help")


def test_a_witness_to_a_crime_under_way_reports_it_while_its_victim_asks_for_help(prefiller):
    witness = prefiller.fill("有两个人正在撬对面那家店的卷帘门")
    assert (witness.emergency, witness.line, witness.type) == ("110", "12345", "report")
    victim = prefiller.fill("有人拿着刀在砸我家门 说要砍死我 我躲在卧室里")
    assert (victim.emergency, victim.type) == ("110", "help")


def test_a_fire_hazard_report_goes_to_96119_without_calling_the_fire_brigade(prefiller):
    f = prefiller.fill("楼道里堆满了易燃物，有火灾隐患")
    assert (f.line, f.emergency, f.type, f.skill) == ("96119", None, "report", "fire_hazard")


def test_confidences_are_plain_numbers_between_zero_and_one(prefiller):
    # what the ticket store, the agent console and any integrator's serialiser receive: no numpy scalars
    for text in ("我想问一下公积金怎么提取", "隔壁在冒烟 好像没人在家", "嗯"):
        confidence = prefiller.fill(text).confidence
        assert set(confidence) == {"type", "line", "emergency"}
        assert all(type(v) is float and 0.0 <= v <= 1.0 for v in confidence.values()), confidence


def test_the_line_brings_its_skill_and_department_from_the_rules(prefiller):
    f = prefiller.fill("个人所得税专项附加扣除在哪里填")
    assert (f.line, f.skill, f.department) == ("12366", "tax", "税务总局")
    general = prefiller.fill("今天天气不错")
    assert (general.line, general.skill) == ("12345", "general")


def test_deadline_is_five_working_days_over_national_day_and_fifteen_for_enterprises(prefiller):
    at = datetime(2025, 9, 30, 10, 0, tzinfo=CHINA_TZ)
    assert prefiller.fill("阳光小区暖气不热", at).deadline == "2025-10-14T10:00:00+08:00"
    enterprise = prefiller.fill("我们公司想申请高新技术企业认定", at)
    assert enterprise.enterprise and enterprise.deadline == "2025-10-28T10:00:00+08:00"
    naive = prefiller.fill("阳光小区暖气不热", "2025-09-30T10:00:00")  # naive times are China time
    assert naive.deadline == "2025-10-14T10:00:00+08:00"


def test_an_employee_talking_about_their_company_is_not_an_enterprise_request(prefiller):
    assert not prefiller.fill("我们公司拖欠了我三个月工资").enterprise
    assert prefiller.fill("我们公司出口的货物报关单填错了").enterprise


def test_numbers_said_in_chinese_are_written_as_digits(prefiller):
    f = prefiller.fill("我的电话是幺三八一二三四五六七八，身份证号一一零一零一一九九零零三零七四五一四，"
                       "被骗了三万五千块钱")
    assert f.numbers["phones"] == ["13812345678"]
    assert f.numbers["id_cards"] == ["110101199003074514"] and f.numbers["id_cards_valid"] == [True]
    assert f.numbers["amounts"] == [35000]


def test_the_place_named_is_the_location_and_a_bare_word_like_street_is_not(prefiller):
    assert prefiller.fill("我家住在朝阳区幸福路十二号，楼下的路灯坏了").location == "朝阳区幸福路12号"
    assert prefiller.fill("阳光小区的暖气一直不热").location == "阳光小区"
    assert prefiller.fill("马路上有一个井盖没了").location is None
    assert prefiller.fill("在人民医院看病被多收费").unit == "人民医院"


def test_an_admin_adds_a_word_to_the_catalogue_and_the_matter_moves(rules, tmp_path):
    from tests.prefill_support import admins_catalogue

    text = "数电票是啥"
    assert Prefiller(rules).fill(text).line == "12345"
    extended = admins_catalogue(tmp_path)  # 数电票 among 12366's strong words
    assert extended.read_text(encoding="utf-8") != SUBJECTS_PATH.read_text(encoding="utf-8")
    assert Prefiller(rules, load_catalogue(extended, rules)).fill(text).line == "12366"


def test_a_mistake_in_the_catalogue_is_reported_with_file_and_line(rules, tmp_path):
    bad = tmp_path / "subjects.yaml"
    bad.write_text("weights: {strong: 3, medium: 2, weak: 1}\ndomains:\n  \"12366\":\n    strong: [发票]\n"
                   "  \"99999\":\n    strong: [火星]\n  \"12329\":\n    strongest: [公积金]\n", encoding="utf-8")
    with pytest.raises(CatalogueError) as err:
        load_catalogue(bad, rules)
    lines = [str(p) for p in err.value.problems]
    assert any(f"{bad}:5:" in p and "99999 is not a line" in p for p in lines)
    assert any(f"{bad}:8:" in p and "unknown tier" in p for p in lines)


def test_the_command_answers_every_input_line_with_fields_or_the_problem(rules_path):
    stdin = "\n".join([
        json.dumps({"text": "公租房申请的条件是什么", "at": "2025-09-30T10:00:00+08:00"}, ensure_ascii=False),
        "{not json",
        json.dumps({"txt": "typo"}),
        json.dumps(["a list"]),
        json.dumps({"text": "燃气泄漏了，闻到很大的煤气味"}, ensure_ascii=False),
    ]) + "\n"
    env = {**os.environ, "RULES_PATH": str(rules_path), "PYTHONPATH": str(ROOT)}
    # generous: the first process on a machine learns the pre-fill (about half a minute)
    done = subprocess.run([sys.executable, "-m", "ivr.prefill"], input=stdin, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == 5
    assert CONTRACT <= set(out[0]) and out[0]["line"] == "12319" and out[0]["type"] == "consultation"
    assert out[0]["deadline"] == "2025-10-14T10:00:00+08:00"
    assert out[1]["input_line"] == 2 and "not JSON" in out[1]["error"]
    assert "`text` is missing" in out[2]["error"] and "JSON object" in out[3]["error"]
    assert out[4]["emergency"] == "119"


def test_check_mode_validates_the_data_files(rules_path, capsys):
    assert main(["--check", "--rules", str(rules_path)], stdin=io.StringIO("")) == 0
    assert "ok:" in capsys.readouterr().out
