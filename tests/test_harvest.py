"""The centre's own calls teach the pre-fill: the tickets agents confirmed become labelled
sentences (``python -m intake.harvest``), the servers learn them in the background, and the
evaluation reads them as ``local/…`` — on a real SQLite ticket store."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intake.harvest import harvest, write
from intake.tickets import TicketStore

ROOT = Path(__file__).resolve().parent.parent

# a card of this city's own (惠民卡: the elderly's subsidy card, civil affairs 12349) that no
# shipped sentence names: what only this centre's agents can teach
OWN_MATTER = [
    "惠民卡办了三个月了还没拿到 帮我催一下",
    "我妈的惠民卡丢了 补办去哪里",
    "惠民卡里的补贴这个月怎么没到账",
    "嗯 那个惠民卡 八十岁以上的是不是每个月多发一百",
    "社区说惠民卡要重新审核 我们家老人都九十了还审啥",
    "惠民卡刷不了 超市说卡被冻结了",
    "我爸去世了 他那个惠民卡要不要去注销",
    "惠民卡的钱能不能取现金出来",
    "外地户口在这边住了十年 能办惠民卡吗",
    "惠民卡到期了 续办要带什么",
    "帮我查一下惠民卡审批到哪一步了",
    "惠民卡的补贴标准今年涨没涨",
]
UNSEEN = "老人的惠民卡一直没批下来 你们帮我问一下"


def prefill(type_="consultation", line="12345", **more) -> dict:
    return {"type": type_, "line": line, "emergency": None, "enterprise": False, "confidence": {}, **more}


@pytest.fixture
def store(tmp_path):
    s = TicketStore(f"sqlite:///{tmp_path / 'tickets.db'}", drafts=None)
    yield s
    s.close()


def confirmed(store, call_id, text, edits=None, **fields):
    t = store.attach_transcript(call_id, text=text, entry_line="12345", caller="+8613900001111",
                                prefill=prefill(**fields))
    return store.confirm_fields(t.id, "a1", edits or {})


def test_tickets_agents_confirmed_become_labelled_sentences_with_their_labels_and_numbers_masked(store, tmp_path):
    # the agent corrected the machine: help on 12349, not a consultation on 12345
    fixed = confirmed(store, "CA1", "惠民卡办了三个月还没到 我电话13812345678 你们帮我催一下",
                      {"type": "help", "line": "12349"})
    store.finish(fixed.id, "a1", "已转民政局")
    confirmed(store, "CA2", "小区门口占道摆摊", type_="report")  # confirmed as the machine had it
    store.attach_transcript("CA3", text="物业乱收费", entry_line="12345", prefill=prefill())  # never confirmed
    failed = store.attach_transcript("CA4", text=None, status="failed", entry_line="12345")  # nothing heard
    store.confirm_fields(failed.id, "a1", {"type": "help", "line": "12345"})
    confirmed(store, "CA5", "小区门口占道摆摊")  # the same words again: learned once, as the newest ticket said
    no_line = store.attach_transcript("CA6", text="你好 我想问个事", entry_line="12345",
                                      prefill={"type": "consultation"})
    store.confirm_fields(no_line.id, "a1", {})  # confirmed, but nobody chose a line

    out = tmp_path / "own" / "confirmed.jsonl"
    done = subprocess.run([sys.executable, "-m", "intake.harvest", "--database", store.url, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"{out}: 2 sentences from tickets agents confirmed "
                                   "(left out: 1 line not confirmed by an agent; 1 the same words as a newer ticket)")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["text"]: (r["type"], r["line"]) for r in rows} == {
        "惠民卡办了三个月还没到 我电话138****5678 你们帮我催一下": ("help", "12349"),
        "小区门口占道摆摊": ("consultation", "12345")}  # CA5's labels, the newer ticket
    assert all(r["emergency"] is None and r["enterprise"] is False and r["ticket"] for r in rows)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # what citizens said: the owner's only


def test_the_prefill_learns_the_centres_own_sentences_and_the_servers_pick_them_up(store, tmp_path, monkeypatch):
    import ivr.prefill as prefill_module
    from call_routing.rules import load_rules
    from ivr.prefill import PrefillClassifier
    from ivr.prefill.evaluate import evaluate

    shipped = tmp_path / "utterances"  # three shipped files: this is about what is learned, not how well
    shipped.mkdir()
    for name in ("dev.jsonl", "more.jsonl", "own.jsonl"):
        shutil.copy(prefill_module.LABELLED_DIR / name, shipped / name)
    monkeypatch.setattr(prefill_module, "LABELLED_DIR", shipped)
    monkeypatch.setenv("HOTLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOTLINE_LOCAL_UTTERANCES", str(tmp_path / "own"))
    rules = load_rules(None)
    classify = PrefillClassifier(lambda: rules)
    classify.LOCAL_CHECK_S = 0  # the servers look once a minute
    before = classify.filler()
    assert before.fill(UNSEEN).line != "12349"

    for i, text in enumerate(OWN_MATTER):
        confirmed(store, f"CAown{i}", text, {"line": "12349"})  # what this centre's agents decided
    sentences, _ = harvest(store)
    write(sentences, tmp_path / "own" / "confirmed.jsonl")

    assert classify.filler() is before  # learning in the background: the last one reads meanwhile
    deadline = time.monotonic() + 60
    while classify.filler() is before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert classify.filler().fill(UNSEEN).line == "12349"

    report = evaluate(folds=2, sets=["local/confirmed.jsonl"])
    assert report["by_file"]["local/confirmed.jsonl"]["sentences"] == len(OWN_MATTER)
    assert "local/confirmed.jsonl" in report["files"] and report["cross_validated"]["sentences"] > 384


def test_a_broken_file_of_the_centres_own_is_left_out_and_never_stops_the_pre_fill(tmp_path, monkeypatch, caplog):
    import ivr.prefill as prefill_module
    from call_routing.rules import load_rules

    shipped = tmp_path / "utterances"
    shipped.mkdir()
    shutil.copy(prefill_module.LABELLED_DIR / "dev.jsonl", shipped / "dev.jsonl")
    monkeypatch.setattr(prefill_module, "LABELLED_DIR", shipped)
    monkeypatch.setenv("HOTLINE_CACHE_DIR", "off")
    own = tmp_path / "own"
    own.mkdir()
    (own / "by_hand.jsonl").write_text('{"text": "惠民卡补办", "type": "求助", "line": "12349"}\n', encoding="utf-8")
    monkeypatch.setenv("HOTLINE_LOCAL_UTTERANCES", str(own))
    filler = prefill_module.Prefiller(load_rules(None))
    assert filler.model.size == 50  # dev.jsonl only
    assert f"not learning from {own / 'by_hand.jsonl'}: {own / 'by_hand.jsonl'}:1: `type` '求助' is not one of" \
        in caplog.text


def test_the_harvest_says_what_is_wrong_without_a_place_to_write(tmp_path):
    env = {**os.environ, "HOTLINE_LOCAL_UTTERANCES": "off", "DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}"}
    done = subprocess.run([sys.executable, "-m", "intake.harvest"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=60)
    assert done.returncode == 2 and "HOTLINE_LOCAL_UTTERANCES is off: give --out FILE" in done.stderr
