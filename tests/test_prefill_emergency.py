"""The pre-fill that learns (issue 18): its cross-validated figures, and emergencies in two
levels through the real call flow on the real Redis ACD — certain: transferred at once;
possible: ahead of the queue to the next free seat with a supervisor alert; negated or
hypothetical: neither."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from call_routing.acd import ACD, Agent
from call_routing.router import emergency_assessment
from consoles.dashboard import describe_alert
from intake.tickets import TicketStore
from ivr import flow as F
from ivr.prefill import Prefiller, PrefillClassifier
from ivr.services import AcdQueue

ROOT = Path(__file__).resolve().parent.parent

# sentences of our own, in none of the labelled files the model learns from
SMOKE_NEXT_DOOR = "对门家一直往外冒黑烟，敲门没人开"  # no 着火/火灾: possible 119
FIRE = "楼下着火了，烟很大"  # certain 119
NOT_A_FIRE = "没有着火，就是楼道里的灭火器过期了"  # negated: nothing
IF_A_FIRE = "我们小区消防通道老被堵，真要起火了消防车都进不来"  # hypothetical: never a transfer


@contextlib.contextmanager
def slow_learning():
    """The pre-fill's learning in the background holds until the event is set (a slow machine);
    ``event.learned_in`` lists the threads that learned from scratch."""
    import ivr.prefill as prefill

    release, learn = threading.Event(), prefill.Prefiller
    release.learned_in = []

    def held(rules, *args, **kw):
        if not args and not kw:  # learning from scratch, not reusing a learned model
            release.learned_in.append(threading.current_thread().name)
            assert release.wait(60)
        return learn(rules, *args, **kw)

    prefill.Prefiller = held
    try:
        yield release
    finally:
        release.set()
        prefill.Prefiller = learn


@pytest.fixture
def few_sentences(tmp_path, monkeypatch):
    """Learning from three of the labelled files, with a cache of the test's own: the tests
    using it are about when the pre-fill learns and what it keeps, not how well it reads, and
    learning from all of them takes seconds each time."""
    import shutil

    import ivr.prefill as prefill

    folder = tmp_path / "utterances"
    folder.mkdir()
    for name in ("dev.jsonl", "more.jsonl", "own.jsonl"):
        shutil.copy(prefill.LABELLED_DIR / name, folder / name)
    monkeypatch.setattr(prefill, "LABELLED_DIR", folder)
    monkeypatch.setenv("HOTLINE_CACHE_DIR", str(tmp_path / "cache"))
    return folder


@pytest.fixture(scope="module")
def prefiller(rules):
    return Prefiller(rules)


def test_the_evaluate_command_prints_cross_validated_figures_above_their_floors():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # every file learned from the others, and five folds, are in docs/tickets.md; here two folds
    # (0.921 / 0.891 in session 13, 28,355 sentences) and the outside set: less CPU
    done = subprocess.run([sys.executable, "-m", "ivr.prefill", "evaluate", "--json", "--folds", "2",
                           "--sets", "more.jsonl"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    cv, dev, by_file = report["cross_validated"], report["fixed_dev50"], report["by_file"]
    assert cv["sentences"] >= 28355 and dev["sentences"] == 50
    # floors just under what was measured (docs/tickets.md); held-out folds, never the training sentences
    # (line 0.898 -> 0.907 in session 20, the training lines read again; type 0.924)
    assert cv["type"] >= 0.915 and cv["line"] >= 0.90, cv
    assert cv["emergency_recall"] >= 0.98 and cv["auto_transfers"] == 0, cv
    # possible emergencies on sentences that are none (ahead of the queue, marked 可能紧急): 2.5 %
    # (683 of 27,265) since session 16 read danger from the characters alone, which caught 0.84
    # instead of 0.58 of 90 emergencies written apart without the usual words; 2.8 % since session
    # 17's rounds (1,589 sentences, 110 of them hard negatives written to sound like danger: 4.0 %
    # of them raise a possible alarm by the words alone; the older sentences 2.4 %); 2.4 % (731 of
    # 30,058) since session 18's exceptions for what happens to things, not persons: floor 2.6 %
    assert cv["false_alarms"] <= 0.026 * cv["negatives"], cv
    # dev.jsonl keeps the labels it came with; the guide follows them since sessions 14 (lines)
    # and 15 (types) but for a blocked fire lane (12345, read as 96119): 0.96 / 0.96 on 2026-12-07
    assert dev["type"] >= 0.94 and dev["line"] >= 0.94, dev
    assert dev["emergency_recall"] == 1.0 and dev["auto_transfers"] == 0, dev
    # the sets asked for, read with dev.jsonl by a pre-fill that learned from all the other sets;
    # the 200 sentences written outside the project are the fairest of them
    assert set(by_file) == {"dev.jsonl", "more.jsonl"} and by_file["dev.jsonl"] == dev
    # 0.950 / 0.975 on 2026-12-07 (session 15: the types and three market lines as its author labels them)
    assert by_file["more.jsonl"]["type"] >= 0.93 and by_file["more.jsonl"]["line"] >= 0.96, by_file["more.jsonl"]
    assert all(f["auto_transfers"] == 0 for f in by_file.values()), by_file
    # the confidence means something: fields it is sure of are right far more often than 待核实 ones
    assert cv["sure_accuracy"] > cv["unsure_accuracy"] + 0.2, cv
    assert report["training_s"] > 0  # how long learning takes is in docs/tickets.md (about 75 s), not a test
    # what "right" means here: two labellers, reading the same sentences blind, agreed this often
    two = report["labellers"]["writers/second_labeller"]
    assert two["sentences"] >= 28355 and 0.9 < two["type"] < 1 and 0.9 < two["line"] < 1, two


def test_a_scene_described_is_a_possible_emergency_negated_or_hypothetical_is_never_a_transfer(prefiller, rules):
    smoke = prefiller.fill(SMOKE_NEXT_DOOR)
    assert (smoke.emergency, smoke.emergency_possible, smoke.line) == (None, "119", "12345")
    fire = prefiller.fill(FIRE)
    assert (fire.emergency, fire.emergency_possible) == ("119", None)
    assert prefiller.fill(NOT_A_FIRE).emergency is None and prefiller.fill(NOT_A_FIRE).emergency_possible is None
    assert prefiller.fill(IF_A_FIRE).emergency is None
    # the router, which decides transfers, agrees
    assert emergency_assessment(rules, "不是要报警，我想问身份证丢了在哪补")[0] is None
    assert emergency_assessment(rules, "昨天小区门口那个车祸我看见了，要去做笔录吗")[0] is None
    assert emergency_assessment(rules, "有人拿刀砍人")[0].number == "110"


@pytest.mark.parametrize("said,number", [
    ("我婆婆早上起来半边身子不听使唤 说话含含糊糊的 端个碗都端不住", "120"),  # a stroke
    ("有个人堵在售楼处门口，手里攥着水果刀，说不给工钱就捅那个经理。", "110"),
    ("工地有条沟塌了 埋进去一个人 就露个头在外面", "119"),
])
def test_danger_told_without_any_emergency_word_is_a_possible_emergency(prefiller, rules, said, number):
    """Sentences of a set written apart (never learned from): no word of emergency_keywords.yaml
    is in them, the learned model reads the danger all the same — a seat hears the caller first."""
    assert emergency_assessment(rules, said) == (None, None)
    got = prefiller.fill(said)
    assert (got.emergency, got.emergency_possible) == (None, number)
    assert prefiller.fill("我们小区的路灯坏了一个礼拜了").emergency_possible is None


def test_a_crime_under_way_is_a_report_from_a_witness_and_help_for_its_victim(prefiller):
    # both transferred to 110 at once; the ticket says who called: a passer-by reports it, the
    # mother whose daughter is being taken asks for help (the labels of dev.jsonl and more.jsonl)
    witness = prefiller.fill("菜市场门口有个男的拿刀砍人，我在马路对面看着")
    victim = prefiller.fill("快来人啊有个男的把我女儿拽上一辆面包车往北边开走了")
    assert (witness.emergency, witness.type) == ("110", "report"), witness
    assert (victim.emergency, victim.type) == ("110", "help"), victim
    # the caller's own shop robbed is the caller harmed; a fight at its door is seen by a passer-by
    shop = prefiller.fill("有个人拿着刀在我们小卖部抢东西 就在后屋呢")
    door = prefiller.fill("有一帮人在我们饭馆门口拿棍子打人 已经打倒一个了")
    assert (shop.emergency, shop.type) == ("110", "help"), shop
    assert (door.emergency, door.type) == ("110", "report"), door


def test_a_field_the_model_is_unsure_of_reaches_the_ticket_marked_for_checking(prefiller, tmp_path):
    store = TicketStore(f"sqlite:///{tmp_path / 'tickets.db'}")
    fields = prefiller.fill("喂，你好，那个，嗯").to_dict()
    assert fields["uncertain"], fields["confidence"]  # a caller who has not said anything yet
    ticket = store.attach_transcript("call-1", text="喂，你好，那个，嗯", prefill=fields)
    marked = {n for n, f in ticket.fields.items() if f.get("uncertain")}
    assert marked == set(fields["uncertain"]) & set(ticket.fields)
    sure = prefiller.fill(SMOKE_NEXT_DOOR).to_dict()
    ticket = store.attach_transcript("call-2", text=SMOKE_NEXT_DOOR, prefill=sure)
    assert ticket.fields["emergency_possible"]["value"] == "119" and not ticket.fields["line"]["uncertain"]


@pytest.fixture
def acd_flow(redis_url, rules):
    acd = ACD(redis.Redis.from_url(redis_url, decode_responses=True), rules)
    classify = PrefillClassifier(lambda: rules)
    classify.warm()  # as the servers do at start
    flow = F.CallFlow(rules, AcdQueue(acd), F.MemoryTickets(), F.MemoryCalls(), classify=classify)
    for i in range(3):
        flow.start(f"w{i}", "12345", f"1380013800{i}")
        assert flow.wait(f"w{i}").action == "queue"
    return acd, flow


def _agent_comes(acd):
    acd.save_agent(Agent("a1", "张敏", {"general": 10}, ("PJSIP/agent1",)))
    acd.login("a1")


def test_a_possible_emergency_jumps_the_queue_and_alerts_the_supervisor(acd_flow, rules):
    acd, flow = acd_flow
    assert acd.position("w2").position == 3
    turn = flow.heard("w2", SMOKE_NEXT_DOOR)
    assert turn.action == "queue"  # no automatic transfer: a seat hears the caller first
    assert acd.position("w2").position == 1 and acd.position("w0").position == 2
    alerts = [a for a in acd.alerts() if a["alert"] == "possible_emergency"]
    assert [(a["call"], a["emergency"]) for a in alerts] == [("w2", "119")]
    text = describe_alert(alerts[0], rules, {"caller": "138****8002"})
    assert "可能紧急" in text and "119" in text and "队首" in text and "w2" not in text
    _agent_comes(acd)
    assert (flow.wait("w2").action, flow.wait("w2").target) == ("transfer", "PJSIP/agent1")
    assert flow.wait("w0").action == "queue"
    flow.heard("w1", SMOKE_NEXT_DOOR + "，烟越来越大")  # said again: one alert per call is enough
    assert len([a for a in acd.alerts() if a["alert"] == "possible_emergency"]) == 2


def test_a_certain_emergency_transfers_at_once(acd_flow):
    acd, flow = acd_flow
    turn = flow.heard("w1", FIRE)
    assert (turn.action, turn.target, turn.reason) == ("transfer", "119", "emergency")
    assert acd.call("w1")["state"] == "left"
    assert not [a for a in acd.alerts() if a["alert"] == "possible_emergency"]


@pytest.mark.parametrize("said", [NOT_A_FIRE, IF_A_FIRE.replace("真要起火了", "真要着火了")])
def test_a_negated_or_hypothetical_fire_neither_transfers_nor_jumps_the_queue(acd_flow, said):
    acd, flow = acd_flow
    turn = flow.heard("w2", said)
    assert turn.action == "queue" and acd.call("w2")["state"] == "waiting"
    if said == NOT_A_FIRE:  # negated: nothing at all
        assert acd.call("w2")["urgent"] is None
        assert not [a for a in acd.alerts() if a["alert"] == "possible_emergency"]
    else:  # hypothetical: at most a seat hears it first, never a transfer
        assert acd.call("w2")["urgent"] in (None, "119")


def test_a_rules_edit_never_makes_a_caller_wait_for_the_pre_fill_to_learn(rules_path, tmp_path, few_sentences):
    import shutil

    from call_routing.rules import load_rules
    shutil.copy(rules_path, tmp_path / "rules.yaml")
    shutil.copy(rules_path.parent / "emergency_keywords.yaml", tmp_path / "emergency_keywords.yaml")
    current = {"rules": load_rules(tmp_path / "rules.yaml")}
    classify = PrefillClassifier(lambda: current["rules"])
    classify.warm()  # as the servers do at start
    first = classify.filler()
    assert classify("离职了公积金怎么提取")["line"] == "12329"

    # an edit of something the model did not learn from (the greeting): the same model, at once
    text = (tmp_path / "rules.yaml").read_text(encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(text.replace("正在为您接通坐席。", "马上为您接通坐席。", 1), encoding="utf-8")
    current["rules"] = load_rules(tmp_path / "rules.yaml")
    same = classify.filler()
    assert same.rules is current["rules"] and same.model is first.model

    # a new emergency word: the model learns again in the background; meanwhile the last one reads
    words = (tmp_path / "emergency_keywords.yaml").read_text(encoding="utf-8")
    (tmp_path / "emergency_keywords.yaml").write_text(
        words.replace('"119":\n  words: [', '"119":\n  words: [火龙卷, ', 1), encoding="utf-8")
    current["rules"] = load_rules(tmp_path / "rules.yaml")
    with slow_learning() as learning:  # the learning takes its time; nobody waits for it
        assert classify.filler() is same
        assert classify("对门家一直往外冒黑烟，敲门没人开")["emergency_possible"] == "119"
        assert classify.filler() is same and classify.filler().rules is not current["rules"]
        learning.set()
    deadline = time.monotonic() + 60
    while classify.filler().rules is not current["rules"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert classify.filler().rules is current["rules"] and classify.filler().model is not first.model


def test_sentences_kept_for_the_type_teach_the_type_and_never_the_alarms(rules, few_sentences):
    """data/utterances/type_only/: emergencies told like reports. The type field learns from them;
    the emergency fields do not (learned, they raised possible alarms on everything else)."""
    import shutil

    import ivr.prefill as prefill
    from ivr.prefill.model import load_labelled

    shipped = ROOT / "data" / "utterances" / "type_only" / "emergency_borders.jsonl"
    rows = load_labelled([shipped], prefill.REQUEST_TYPES)
    texts = [r.text for r in rows]
    without = Prefiller(rules).fill_many(texts)
    (few_sentences / "type_only").mkdir()
    shutil.copy(shipped, few_sentences / "type_only" / shipped.name)
    learned = Prefiller(rules).fill_many(texts)  # a new model (the cache's key holds the file)

    def typed(fills):
        return sum(f.type == r.type for f, r in zip(fills, rows)) / len(rows)

    assert typed(without) < 0.8 and typed(learned) > 0.9, (typed(without), typed(learned))
    assert [(f.emergency, f.emergency_possible, f.confidence["emergency"]) for f in learned] == \
        [(f.emergency, f.emergency_possible, f.confidence["emergency"]) for f in without]
    assert [f.line for f in learned] == [f.line for f in without]


def test_words_heard_before_the_first_pre_fill_has_learned_wait_a_second_at_most(rules):
    classify = PrefillClassifier(lambda: rules)
    with slow_learning() as learning:  # a process that has not warmed up yet, learning slowly
        started = time.monotonic()
        assert classify("离职了公积金怎么提取") is None  # left to the ticket's later reading
        assert time.monotonic() - started >= PrefillClassifier.FIRST_WAIT_S * 0.9  # it did wait, that long
        assert classify.filler(rules, wait_s=0) is None
        learning.set()
    deadline = time.monotonic() + 60
    while classify.filler(rules, wait_s=0) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert classify("离职了公积金怎么提取")["line"] == "12329"


def test_a_worker_listens_while_its_first_pre_fill_learns_and_a_transcription_waits_for_that_one(rules):
    classify = PrefillClassifier(lambda: rules)
    with slow_learning() as learning:
        started = time.monotonic()
        assert classify.warm_in_background() is rules  # the worker's start: back at once, with the rules
        assert time.monotonic() - started < 1 and classify.rules() is rules
        got = []
        job = threading.Thread(target=lambda: got.append(classify.filler()))  # a transcription job
        job.start()
        job.join(1.5)
        assert job.is_alive() and not got  # it waits for the learning under way ...
        learning.set()
        job.join(60)
    assert got and got[0] is classify.filler() and got[0].fill("离职了公积金怎么提取").line == "12329"
    assert learning.learned_in == ["prefill-learn"]  # ... and took that one: learned once, in the background


def test_words_heard_while_a_server_warms_up_do_not_start_a_second_learning(rules):
    classify = PrefillClassifier(lambda: rules)
    with slow_learning() as learning:
        warming = threading.Thread(target=classify.warm)  # a server's start
        warming.start()
        assert classify("离职了公积金怎么提取") is None  # a caller's words meanwhile: left for later
        learning.set()
        warming.join(60)
    assert not warming.is_alive() and learning.learned_in == ["prefill-learn"]
    assert classify("离职了公积金怎么提取")["line"] == "12329"


def test_a_failed_background_learning_is_learned_again_by_the_job_that_waited_with_its_error(rules, monkeypatch):
    import ivr.prefill as prefill

    classify = PrefillClassifier(lambda: rules)
    release = threading.Event()

    def broken_once(*args, **kw):
        if threading.current_thread().name == "prefill-learn":
            assert release.wait(60)
            raise OSError("data/subjects.yaml: no such file")
        raise OSError("data/subjects.yaml: still no such file")

    monkeypatch.setattr(prefill, "Prefiller", broken_once)
    classify.warm_in_background()
    errors = []

    def job():
        try:
            classify.filler()
        except OSError as exc:
            errors.append(str(exc))

    waiting = threading.Thread(target=job)
    waiting.start()
    waiting.join(1)
    assert waiting.is_alive()
    release.set()
    waiting.join(30)
    assert errors == ["data/subjects.yaml: still no such file"]  # the job's own try, its error


def test_the_learned_model_is_learned_once_per_machine_and_only_from_a_closed_folder(rules, tmp_path, monkeypatch,
                                                                                    few_sentences, caplog):
    from ivr.prefill import model as learning

    learned = []
    learn = learning.TextModel.__init__

    def counted(self, *args, **kw):
        learned.append(1)
        learn(self, *args, **kw)

    monkeypatch.setattr(learning.TextModel, "__init__", counted)
    cache = tmp_path / "cache"
    monkeypatch.setenv("HOTLINE_CACHE_DIR", str(cache))
    with caplog.at_level("INFO", logger="ivr.prefill.model"):
        first = Prefiller(rules)
        again = Prefiller(rules)  # another process of the product, starting next
    assert len(learned) == 1 and len(list(cache.glob("prefill-*.pickle"))) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "ivr.prefill.model"]
    assert said[0].startswith("learning the pre-fill") and said[1].startswith("pre-fill learned in")
    assert len(said) == 2  # the operator reads that it learned, once; loading says nothing
    for text in ("离职了公积金怎么提取", "对门家一直往外冒黑烟，敲门没人开", "小区物业乱收停车费"):
        at = "2026-12-06T10:00:00+08:00"  # one instant for both: the deadline is counted from it
        assert again.fill(text, at).to_dict() == first.fill(text, at).to_dict()
    # a folder others may write into is never read from (a pickle is code): learned, not loaded
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("HOTLINE_CACHE_DIR", str(shared))
    Prefiller(rules)
    assert len(learned) == 2 and not list(shared.iterdir())


def test_the_labellers_agreement_counts_each_field_on_the_sentences_both_read(tmp_path):
    from ivr.prefill.evaluate import labellers

    def reading(name, rows):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(
            {"text": t, "type": k, "line": n, "emergency": e, "enterprise": b}, ensure_ascii=False)
            for t, k, n, e, b in rows), encoding="utf-8")

    reading("writers", [("停水两天了", "help", "12345", None, False), ("店家不给退", "complaint", "12315", None, False),
                        ("楼上冒黑烟了", "help", "12345", "119", False)])
    reading("second_labeller", [("停水两天了", "complaint", "12345", None, False),
                                ("店家不给退", "complaint", "12315", None, True)])  # the third was not read again
    assert labellers(tmp_path) == {"writers/second_labeller": {
        "sentences": 2, "type": 0.5, "line": 1.0, "emergency": 1.0, "enterprise": 0.5}}
    assert labellers(tmp_path / "none") == {}
