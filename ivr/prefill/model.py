"""The statistical half of the pre-fill: what a caller said -> request type, hotline line and
whether it sounds like an emergency, learned from the labelled sentences the project ships
(``data/utterances/*.jsonl``; the type also from ``data/utterances/type_only/*.jsonl``).

Each field is a logistic regression (classes balanced) over character n-grams and jieba words
(TF-IDF) and the catalogue's own scores (``data/subjects.yaml`` for the line, ``data/request_cues.yaml`` for
the type, the emergency words of ``emergency_keywords.yaml``), so a word an admin adds to the
catalogue still moves matters, and sentences worded unlike any catalogue entry are still read. For the line, the labelled
sentences most like the text vote beside the regression (:class:`_Neighbours`).
Learning takes about half a minute for the shipped sentences, once per machine (cached, see
:func:`learned_once`). The probabilities are the confidence the ticket shows (a field below ``LOW_CONFIDENCE`` is
marked 待核实 for the agent).
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

import jieba
import numpy as np
import sklearn
from scipy.sparse import csr_matrix, hstack, vstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

EMERGENCY_NUMBERS = ("110", "119", "120", "122")
NO_EMERGENCY = "none"
DANGER = "danger"  # the danger field's value for any emergency
_NOISE = re.compile(r"[\s，。,.!?！？、；;：:“”\"'（）()…~～\-—]+")


class LabelledDataError(Exception):
    """A labelled-sentence file that cannot be learned from; the message names file and line."""


@dataclass(frozen=True)
class Labelled:
    text: str
    type: str
    line: str
    emergency: str | None
    enterprise: bool
    where: str  # file:line, for reports


def load_labelled(paths, types: tuple[str, ...]) -> list[Labelled]:
    """Labelled sentences (JSON lines: text, type, line, emergency, enterprise) from ``paths``."""
    rows = []
    for path in paths:
        path = Path(path)
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise LabelledDataError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
                raise LabelledDataError(f"{where}: needs a non-empty `text`")
            if item.get("type") not in types:
                raise LabelledDataError(f"{where}: `type` {item.get('type')!r} is not one of {', '.join(types)}")
            if not isinstance(item.get("line"), str) or not item["line"].isdigit():
                raise LabelledDataError(f"{where}: `line` must be a hotline number as text, like \"12345\"")
            if item.get("emergency") not in (None, *EMERGENCY_NUMBERS):
                raise LabelledDataError(f"{where}: `emergency` must be null or one of {', '.join(EMERGENCY_NUMBERS)}")
            rows.append(Labelled(item["text"], item["type"], item["line"], item.get("emergency"),
                                 bool(item.get("enterprise")), where))
    return rows


def clean(text: str) -> str:
    return _NOISE.sub(" ", text or "").strip()


jieba.setLogLevel(logging.WARNING)  # not "Building prefix dict…" on every start


@lru_cache(maxsize=16384)  # the three fields, and every fold of an evaluation, read the same sentences
def words(text: str) -> tuple[str, ...]:
    """The words of a cleaned text, by jieba's dictionary (公积金, 提取, 出来); no guessing of
    words outside it (HMM), which costs most of the time and gains nothing here."""
    return tuple(w for w in jieba.lcut(text, HMM=False) if w.strip())


class _Texts:
    """What the three fields read of a sentence, fitted once and computed once per sentence:
    TF-IDF of character 1–3-grams (seen in ≥ 2 sentences), of jieba words, and of the last ten
    characters on their own (what a caller wants is often said last: 能不能…, 咋办, 管不管)."""

    ENDING = 10

    def __init__(self):
        self.vectorizers = {
            "chars": TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2),
            "words": TfidfVectorizer(tokenizer=words, token_pattern=None, lowercase=False, sublinear_tf=True),
            "ending": TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2),
        }

    def read(self, texts: list[str], fit: bool = False) -> dict:
        cleaned = [clean(t) for t in texts]
        inputs = {"chars": cleaned, "words": cleaned,
                  "ending": [c.replace(" ", "")[-self.ENDING:] for c in cleaned]}
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):  # per-call checks
            read = {name: v.fit_transform(inputs[name]) if fit else v.transform(inputs[name])
                    for name, v in self.vectorizers.items()}
        if fit:
            for v in self.vectorizers.values():
                v.stop_words_ = None  # the n-grams left out, kept by sklearn for inspection only: most of the size
        return read


def _no_features(text: str) -> list[float]:
    return []


class _Field:
    """One field: some of the shared text features plus catalogue features -> logistic regression."""

    def __init__(self, features: Callable[[str], list[float]], *, c: float, weight: float,
                 reads: tuple[str, ...] = ("chars", "words")):
        self.features, self.weight, self.reads = features, weight, reads
        # balanced: a line or an emergency with few sentences weighs as much as a crowded one
        # dual: far more features than sentences, where liblinear's dual solver is the fast one
        # tol 0.01: the same answers to three decimals on held-out rounds as 1e-4, a quarter less time
        # random_state: liblinear shuffles the sentences; fixed, the same sentences learn the same model
        self.model = OneVsRestClassifier(LogisticRegression(C=c, solver="liblinear", dual=True, max_iter=1000,
                                                            tol=0.01, class_weight="balanced", random_state=0))

    def __getstate__(self):  # kept on disk without the catalogue's scorer (bound to a Prefiller)
        return {k: v for k, v in self.__dict__.items() if k != "features"}

    def _matrix(self, texts, read: dict):
        extra = csr_matrix(np.array([self.features(t) for t in texts], dtype=float) * self.weight)
        return hstack([read[name] for name in self.reads] + [extra]).tocsr()

    def fit(self, texts, read: dict, labels) -> "_Field":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(self._matrix(texts, read), labels)
        self.labels = [str(label) for label in self.model.classes_]
        # one regression per value: their weights as one matrix, so texts are read in one product
        # (the same probabilities as the classifier's predict_proba, without its per-call checks)
        fitted = self.model.estimators_
        self.weights = self.bias = None  # two values, or one value in every sentence: the classifier's own
        if len(fitted) > 1 and all(hasattr(e, "coef_") for e in fitted):
            self.weights = np.ascontiguousarray(np.vstack([e.coef_[0] for e in fitted]).T)
            self.bias = np.array([e.intercept_[0] for e in fitted])
            self.model = None  # the same numbers twice otherwise (the model is kept on disk)
        return self

    def probabilities(self, texts: list[str], read: dict) -> list[dict[str, float]]:
        """For each text, each value's probability."""
        x = self._matrix(texts, read)
        if self.weights is None:
            p = self.model.predict_proba(x)
        else:
            p = 1.0 / (1.0 + np.exp(-(np.asarray(x @ self.weights) + self.bias)))
            total = p.sum(axis=1, keepdims=True)
            p = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
        return [dict(zip(self.labels, (float(v) for v in row))) for row in p]


class _Neighbours:
    """The labelled sentences most like a text (cosine of their character n-grams and words):
    their values of some fields (the line, the type), weighted by likeness. Beside the regression, which
    weighs each n-gram alone, they remember which words go together (物业 with 快递 is still the
    estate's matter)."""

    K = 10
    BLOCK = 256  # texts compared at once (a block's likenesses are a dense block × sentences)
    # n-grams in more than this share of the sentences (我, 的, 了…) tell sentences apart least and
    # cost most (each is a long row to add): likeness is read without them
    COMMON = 0.02

    def __init__(self, read: dict, rows: list[Labelled], fields: tuple[str, ...]):
        both = hstack([read["chars"], read["words"]]).tocsc()
        self.kept = np.flatnonzero(np.diff(both.indptr) <= self.COMMON * both.shape[0])
        self.columns = self._rows(read, self.kept).T.tocsr()  # n-gram × sentence: a text's row times it: likenesses
        self.values = {}
        for name in fields:
            labels = sorted({getattr(r, name) for r in rows})
            index = {v: i for i, v in enumerate(labels)}
            self.values[name] = (labels, np.array([index[getattr(r, name)] for r in rows]))

    @staticmethod
    def _rows(read: dict, kept):
        from sklearn.preprocessing import normalize

        return normalize(hstack([read["chars"], read["words"]]).tocsc()[:, kept].tocsr().astype(np.float32))

    def votes(self, read: dict) -> dict[str, list[dict[str, float]]]:
        """For each text, each field's values weighted by the likeness of the K nearest sentences."""
        queries = self._rows(read, self.kept)
        out = {name: [] for name in self.values}
        k = min(self.K, self.columns.shape[1])
        for start in range(0, queries.shape[0], self.BLOCK):
            like = (queries[start:start + self.BLOCK] @ self.columns).toarray()
            nearest = np.argpartition(-like, k - 1, axis=1)[:, :k]
            weight = np.take_along_axis(like, nearest, axis=1)
            for name, (labels, of) in self.values.items():
                tally = np.zeros((like.shape[0], len(labels)))
                np.add.at(tally, (np.arange(like.shape[0])[:, None], of[nearest]), weight)
                total = tally.sum(axis=1, keepdims=True)
                tally = np.divide(tally, total, out=np.zeros_like(tally), where=total > 0)
                out[name] += [dict(zip(labels, row)) for row in tally]
        return out


def _blend(learned: dict[str, float], votes: dict[str, float], share: float) -> dict[str, float]:
    """``learned`` with ``share`` of it given to the neighbours' ``votes`` (no votes: as learned)."""
    if not any(votes.values()):
        return learned
    return {v: (1 - share) * p + share * votes.get(v, 0.0) for v, p in learned.items()}


class TextModel:
    """The learned fields: line, type, emergency line, and any danger. ``*_scores`` give the
    catalogue's scores for a text."""

    # how much of a field's probability the nearest sentences decide (rounds 9–12, each read by a
    # pre-fill learned from the others). The line: half (0.883 → 0.887). The type: 0.3, since the
    # types follow the author's conventions (session 15: 0.920 → 0.924, every round up; 0.5: 0.923;
    # more.jsonl held out 0.935 → 0.945). Before that they carried our labellers' help where the
    # author writes complaint (docs/tickets.md)
    NEIGHBOURS_SHARE = {"line": 0.5, "type": 0.3}

    def __init__(self, rows: list[Labelled], *, line_scores: Callable[[str], list[float]],
                 type_scores: Callable[[str], list[float]], emergency_scores: Callable[[str], list[float]],
                 type_rows: list[Labelled] = ()):
        """``type_rows``: sentences the type field learns from besides ``rows``, and no other
        field (``data/utterances/type_only/``: emergencies told like reports, which would raise
        the possible alarms everywhere if the emergency fields learned them)."""
        texts = [r.text for r in rows]
        self.texts = _Texts()
        read = self.texts.read(texts, fit=True)
        # settings chosen on sets written apart, each read by a pre-fill learned from the others (docs/tickets.md)
        self.line = _Field(line_scores, c=80.0, weight=0.1).fit(texts, read, [r.line for r in rows])
        type_texts, type_read = texts, read
        if type_rows:
            type_texts = texts + [r.text for r in type_rows]
            more = self.texts.read([r.text for r in type_rows])
            type_read = {name: vstack([read[name], more[name]]).tocsr() for name in read}
        self.type = _Field(type_scores, c=80.0, weight=0.4, reads=("chars", "words", "ending")).fit(
            type_texts, type_read, [r.type for r in [*rows, *type_rows]])
        self.emergency = _Field(emergency_scores, c=20.0, weight=1.0).fit(
            texts, read, [r.emergency or NO_EMERGENCY for r in rows])
        # whether it is any emergency, from the characters alone: the field above leans on the
        # emergency words, and gives little to danger told without them (sets written apart:
        # docs/tickets.md); this one has nothing else to lean on
        self.danger = _Field(_no_features, c=1.0, weight=0.0, reads=("chars",)).fit(
            texts, read, [DANGER if r.emergency else NO_EMERGENCY for r in rows])
        self.neighbours = _Neighbours(read, rows, tuple(self.NEIGHBOURS_SHARE))
        self.size = len(rows)

    def bind(self, *, line_scores, type_scores, emergency_scores) -> "TextModel":
        """A model loaded from disk: the catalogue's scorers of the Prefiller that uses it."""
        self.line.features, self.type.features, self.emergency.features = line_scores, type_scores, emergency_scores
        self.danger.features = _no_features
        return self

    def read(self, texts: list[str]) -> list[dict]:
        """For each text, the probabilities of each field's values, and of danger (one number;
        many texts at once read faster)."""
        read = self.texts.read(texts)
        fields = {"line": self.line, "type": self.type, "emergency": self.emergency, "danger": self.danger}
        by_field = {name: f.probabilities(texts, read) for name, f in fields.items()}
        votes = self.neighbours.votes(read)
        for name, share in self.NEIGHBOURS_SHARE.items():
            by_field[name] = [_blend(p, v, share) for p, v in zip(by_field[name], votes[name])]
        by_field["danger"] = [p.get(DANGER, 0.0) for p in by_field["danger"]]  # one probability
        return [{name: by_field[name][i] for name in fields} for i in range(len(texts))]


# ---------------------------------------------------------------------------------------
# Learned once per machine: the product's processes (FastAGI, AudioSocket, web, worker) start
# together; the first learns (seconds of CPU), the others wait for it and load its result.


def cache_dir() -> Path | None:
    """``HOTLINE_CACHE_DIR`` (``off``: no cache), else a folder of this user's in the system's
    temporary directory. Only a folder owned by this user and closed to others is used: a model
    file is a pickle, and a pickle written by someone else must never be loaded."""
    import os
    import tempfile

    where = os.environ.get("HOTLINE_CACHE_DIR") or str(Path(tempfile.gettempdir()) / f"hotline-cache-{os.getuid()}")
    if where == "off":
        return None
    path = Path(where)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        log.warning("no cache for the learned pre-fill (%s): %s", path, exc)
        return None
    import stat

    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        log.warning("not using %s for the learned pre-fill: it must be a folder of this user's, closed to others",
                    path)
        return None
    return path


def learned_once(key: str, learn: Callable[[], "TextModel"]) -> "TextModel":
    """The model for ``key`` (a digest of everything it is learned from): loaded from the cache,
    or learned — by one process at a time (a file lock), the others then load it."""
    import fcntl
    import os
    import pickle

    folder = cache_dir()
    if folder is None:
        return _learn_logged(learn)
    target = folder / f"prefill-{key}.pickle"
    with open(folder / f"prefill-{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if target.exists() and target.lstat().st_uid == os.getuid():
                try:
                    with open(target, "rb") as f:
                        model = pickle.load(f)
                    os.utime(target)  # recently used: kept by the pruning below
                    return model
                except Exception as exc:  # a file of an older library version: learn it again
                    log.warning("the cached pre-fill %s could not be read (%s): learning it again", target.name, exc)
            model = _learn_logged(learn)
            tmp = folder / f".{target.name}.{os.getpid()}"
            with open(tmp, "wb") as f:
                pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, target)
            _prune(folder)
            return model
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _learn_logged(learn: Callable[[], "TextModel"]) -> "TextModel":
    """``learn()``, said in the log: on a new machine it takes a minute, and the operator
    watching the first start should know what the CPU is doing and when it is done."""
    import time

    log.info("learning the pre-fill from the labelled sentences (about a minute on a new machine; "
             "calls are taken meanwhile)")
    started = time.monotonic()
    model = learn()
    log.info("pre-fill learned in %.0f s", time.monotonic() - started)
    return model


KEEP_MODELS = 6


def _prune(folder: Path) -> None:
    """Keep the most recently used models only (each rules version with other emergency words,
    each edit of the data files, makes one)."""
    models = sorted(folder.glob("prefill-*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in models[KEEP_MODELS:]:
        for path in (old, old.with_suffix(".lock")):
            path.unlink(missing_ok=True)
