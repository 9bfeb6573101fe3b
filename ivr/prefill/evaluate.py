"""How well the pre-fill reads sentences it has not learned from.

``python -m ivr.prefill evaluate`` splits every labelled sentence the project ships
(``data/utterances/*.jsonl``) into ``--folds`` stratified folds (by line); each fold is read by
a pre-fill that learned from the other folds only (and, for the type, from
``data/utterances/type_only/``, which is never read here). It prints type and line accuracy, how sure
the model was when right and when wrong, emergency recall (any level, and certain), false
alarms (a possible emergency on a sentence that is none) and automatic transfers on sentences
that are no emergency; and how often independent readings of the same sentences agreed
(``data/labelling/``: the writers and a second labeller, blind). Then the fixed report: the original 50 development sentences
(``dev.jsonl``), read by a pre-fill that learned from everything else; and the same for every
set (each file was written apart from the others: the honest view of unseen speech). The
centre's own labelled files (``HOTLINE_LOCAL_UTTERANCES``, default ``var/utterances``: the
tickets its agents confirmed, ``python -m intake.harvest``) are read too, as ``local/…``: how
the pre-fill reads this centre's real calls. ``--json`` prints the figures as one JSON object
(the tests read it). Each pre-fill learns and reads in a process of its own, ``--jobs`` at a
time (default: one per CPU): the same figures, sooner.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

from sklearn.model_selection import StratifiedKFold

from call_routing.rules import load_rules

from . import (LABELLED_DIR, REQUEST_TYPES, Prefiller, labelled_files, load_catalogue, load_cues, local_dir,
               type_only_files)
from .model import load_labelled

FIXED_SET = "dev.jsonl"
# independent readings of the same sentences, never learned from (data/labelling/README.md)
LABELLINGS = LABELLED_DIR.parent / "labelling"
READINGS = ("writers", "second_labeller", "third_labeller")


def agreement(first: list, second: list) -> dict | None:
    """How often two readings of the same sentences (matched by text) gave the same values."""
    by_text = {r.text: r for r in second}
    both = [(a, by_text[a.text]) for a in first if a.text in by_text]
    if not both:
        return None

    def agree(same) -> float:
        return round(sum(same(a, b) for a, b in both) / len(both), 3)

    return {"sentences": len(both), "type": agree(lambda a, b: a.type == b.type),
            "line": agree(lambda a, b: a.line == b.line),
            "emergency": agree(lambda a, b: a.emergency == b.emergency),
            "enterprise": agree(lambda a, b: a.enterprise == b.enterprise)}


def labellers(folder=LABELLINGS) -> dict:
    """Each pair of readings in ``folder`` (``writers/second_labeller``: two people, blind, the
    same guide — what "right" can mean on these labels), as :func:`agreement`."""
    read = {name: load_labelled([folder / f"{name}.jsonl"], REQUEST_TYPES)
            for name in READINGS if (folder / f"{name}.jsonl").exists()}
    names = list(read)
    return {f"{a}/{b}": agreement(read[a], read[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def score(filler, test: list) -> dict:
    """Fill every sentence of ``test`` with ``filler``; tally the figures."""
    t = {"n": 0, "type": 0, "line": 0, "emergencies": 0, "caught": 0, "caught_certain": 0,
         "right_number": 0, "negatives": 0, "false_alarms": 0, "auto_transfers": 0,
         "sure": 0, "sure_right": 0, "unsure": 0, "unsure_right": 0, "misses": []}
    for row, got in zip(test, filler.fill_many([row.text for row in test])):
        t["n"] += 1
        for f in ("type", "line"):
            right = getattr(got, f) == getattr(row, f)
            t[f] += right
            which = "unsure" if f in got.uncertain else "sure"
            t[which] += 1
            t[which + "_right"] += right
        if row.emergency:
            t["emergencies"] += 1
            said = got.emergency or got.emergency_possible
            t["caught"] += bool(said)
            t["caught_certain"] += bool(got.emergency)
            t["right_number"] += said == row.emergency
            if not said:
                t["misses"].append(f"{row.where}: emergency {row.emergency} missed: {row.text}")
        else:
            t["negatives"] += 1
            t["auto_transfers"] += bool(got.emergency)
            t["false_alarms"] += bool(got.emergency_possible)
            if got.emergency:
                t["misses"].append(f"{row.where}: automatic transfer to {got.emergency}: {row.text}")
    return t


def _add(total: dict, part: dict) -> dict:
    for k, v in part.items():
        total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
    return total


def figures(t: dict) -> dict:
    def ratio(a, b):
        return round(a / b, 3) if b else None

    return {"sentences": t["n"], "type": ratio(t["type"], t["n"]), "line": ratio(t["line"], t["n"]),
            "emergencies": t["emergencies"], "emergency_recall": ratio(t["caught"], t["emergencies"]),
            "emergency_recall_certain": ratio(t["caught_certain"], t["emergencies"]),
            "emergency_right_number": ratio(t["right_number"], t["emergencies"]),
            "negatives": t["negatives"], "false_alarms": t["false_alarms"], "auto_transfers": t["auto_transfers"],
            "sure_accuracy": ratio(t["sure_right"], t["sure"]), "unsure_accuracy": ratio(t["unsure_right"], t["unsure"]),
            "unsure_share": ratio(t["unsure"], t["sure"] + t["unsure"]), "problems": t["misses"]}


def evaluate(folds: int = 5, seed: int = 0, rules_path: str | None = None, sets: list[str] | None = None,
             jobs: int = 1) -> dict:
    """The figures (``jobs``: pre-fills learning at once, each in a forked process; 1 in this one)."""
    rules = load_rules(rules_path)
    catalogue, cues = load_catalogue(rules=rules), load_cues()
    files = labelled_files()
    rows = load_labelled(files, REQUEST_TYPES)
    names = {_name(f): f for f in files}
    unknown = set(sets or ()) - set(names)
    if unknown:
        raise SystemExit(f"--sets: no labelled file {', '.join(sorted(unknown))} in {LABELLED_DIR}"
                         f" or the centre's own folder (local/…)")

    with warnings.catch_warnings():  # lines with fewer sentences than folds: sklearn warns, the split is fine
        warnings.simplefilter("ignore")
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, [r.line for r in rows]))

    def apart(chosen: list[str]) -> tuple[list[int], dict[str, list[int]]]:
        """The files ``chosen``, read by one pre-fill learned from all the other files."""
        held = {name: [i for i, r in enumerate(rows) if r.where.rsplit(":", 1)[0] == str(names[name])]
                for name in chosen}
        out = {i for h in held.values() for i in h}
        return [i for i in range(len(rows)) if i not in out], held

    # each task: (the sentences learned from, {name: the sentences read}); the folds first
    tasks = [(list(train_idx), {"fold": list(test_idx)}) for train_idx, test_idx in splits]
    if sets:  # the sets chosen and dev.jsonl, held out together
        tasks.append(apart([FIXED_SET] + [name for name in names if name in sets and name != FIXED_SET]))
    else:  # each set read by a pre-fill that learned from the other sets only
        tasks += [apart([name]) for name in names]
    type_rows = load_labelled(type_only_files(), REQUEST_TYPES)  # learned by every pre-fill, never read
    done = _learn_and_read_all(tasks, jobs, rows, lambda train: Prefiller(rules, catalogue, cues, training=train,
                                                                          type_training=type_rows))

    total: dict = {}
    for _, read in done[:len(splits)]:
        _add(total, read["fold"])
    by_file, train_s = {}, None
    for took, read in done[len(splits):]:
        by_file.update({name: figures(t) for name, t in read.items()})
        if FIXED_SET in read:  # learning from all but the 50 sentences of dev.jsonl (and the sets chosen)
            train_s = took
    return {"files": list(names), "folds": folds, "seed": seed, "training_s": round(train_s, 2),
            "cross_validated": figures(total), "fixed_dev50": by_file[FIXED_SET], "by_file": by_file,
            "labellers": labellers()}


_TASKS: dict = {}  # what forked processes read: the sentences and how to learn a pre-fill


def _learn_and_read(task) -> tuple[float, dict]:
    """One pre-fill learned from the sentences ``train``, reading each held-out group: how long
    it took to learn, and each group's tallies (:func:`score`)."""
    train, held = task
    rows, learn = _TASKS["rows"], _TASKS["learn"]
    started = time.monotonic()
    filler = learn([rows[i] for i in train])
    took = time.monotonic() - started
    return took, {name: score(filler, [rows[i] for i in idx]) for name, idx in held.items()}


def _learn_and_read_all(tasks: list, jobs: int, rows: list, learn) -> list[tuple[float, dict]]:
    """:func:`_learn_and_read` for every task, in order; ``jobs`` forked processes at a time."""
    _TASKS.update(rows=rows, learn=learn)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            return [_learn_and_read(task) for task in tasks]
        # the biggest pre-fills first, so that the last to finish is a small one
        order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][0]))
        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=multiprocessing.get_context("fork")) as pool:
            results = dict(zip(order, pool.map(_learn_and_read, [tasks[i] for i in order])))
        return [results[i] for i in range(len(tasks))]
    finally:
        _TASKS.clear()


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _name(path) -> str:
    """A labelled file's name in the report: the centre's own are ``local/…``."""
    local = local_dir()
    return f"local/{path.name}" if local is not None and path.parent == local else path.name


def _print(report: dict, out) -> None:
    def block(title, f):
        print(f"{title}: {f['sentences']} sentences", file=out)
        print(f"  type {f['type']:.3f}   line {f['line']:.3f}", file=out)
        print(f"  confidence: sure fields right {f['sure_accuracy']}, 待核实 fields right {f['unsure_accuracy']}"
              f" ({f['unsure_share']} of fields marked 待核实)", file=out)
        print(f"  emergencies {f['emergencies']}: recall {f['emergency_recall']} (certain, transferred at once: "
              f"{f['emergency_recall_certain']}; right number {f['emergency_right_number']})", file=out)
        print(f"  no emergency {f['negatives']}: false alarms (possible) {f['false_alarms']}, "
              f"automatic transfers {f['auto_transfers']}", file=out)
        for p in f["problems"]:
            print(f"  ! {p}", file=out)

    print(f"labelled sentences: {', '.join(report['files'])}; learning from all but the 50 of dev.jsonl took "
          f"{report['training_s']} s", file=out)
    block(f"cross-validated ({report['folds']} stratified folds, seed {report['seed']})", report["cross_validated"])
    block("fixed report: the original 50 (dev.jsonl), learned from the others", report["fixed_dev50"])
    pairs = report.get("labellers") or {}
    two = pairs.get("writers/second_labeller")
    if two:
        print(f"two labellers reading blind (the writers, a second labeller) agree on type {two['type']:.3f}, "
              f"line {two['line']:.3f}, emergency {two['emergency']:.3f} ({two['sentences']} sentences)", file=out)
    for pair, f in pairs.items():
        if f and pair != "writers/second_labeller":
            print(f"  {pair.replace('/', ' and ')}: type {f['type']:.3f}, line {f['line']:.3f}", file=out)
    print("each set written apart, read by a pre-fill learned from the other sets only:", file=out)
    print(f"  {'set':<28}{'n':>5}{'type':>7}{'line':>7}  emergencies caught  false alarms  auto transfers", file=out)
    for name, f in report["by_file"].items():
        caught = f"{round((f['emergency_recall'] or 0) * f['emergencies'])} of {f['emergencies']}"
        print(f"  {name:<28}{f['sentences']:>5}{f['type']:>7.3f}{f['line']:>7.3f}  {caught:>18}"
              f"  {f['false_alarms']:>12}  {f['auto_transfers']:>14}", file=out)


def main(argv: list[str] | None = None, stdout=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.prefill evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed of the folds (default 0)")
    parser.add_argument("--rules", help="transfer_rules.yaml (default: $RULES_PATH, else the shipped file)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--jobs", type=int, default=cpus(),
                        help="pre-fills learning at once, each in a process of its own (default: one per CPU)")
    parser.add_argument("--sets", nargs="+", metavar="FILE",
                        help="read only these files, with dev.jsonl, by one pre-fill learned from all the other files"
                             " (default: every file, each learned from the others; the centre's own as local/NAME)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    stdout = stdout or sys.stdout
    report = evaluate(args.folds, args.seed, args.rules, args.sets, max(1, args.jobs))
    if args.json:
        print(json.dumps(report, ensure_ascii=False), file=stdout)
    else:
        _print(report, stdout)
    return 0
