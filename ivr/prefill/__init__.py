"""What the caller said -> the ticket fields an agent finds filled in (智能填单).

The pre-fill reads two data files admins extend without touching code:

* ``data/subjects.yaml`` — the dispatch catalogue: for each hotline domain (the 32 legacy
  lines, and 12345 for general city matters) the words a caller uses about it, in tiers of
  weight. The domain with the highest score takes the matter; below ``min_score`` it stays
  with the general 12345 seats.
* ``data/request_cues.yaml`` — cues for the request type (consultation, help, complaint,
  report, suggestion), for enterprise requests, and the suffixes of places and units.

Words are found longest first and never overlap (火灾隐患 is counted once, for fire-hazard
reports, not again as 火灾). On top of the catalogue, a statistical model learned from the
labelled sentences the project ships (``data/utterances/``, :mod:`ivr.prefill.model`) decides
type and line with a confidence; a field below ``LOW_CONFIDENCE`` is listed in ``uncertain``
and the agent console marks it 待核实.

Emergencies have two levels. Certain: :func:`router.emergency_heard` and
``emergency_keywords.yaml`` decide them (an immediate transfer), so the router and the ticket
always agree. Possible (``emergency_possible``): a scene word of the keyword file, or the
learned model, says the caller may be describing one; the call jumps the queue instead.

``python -m ivr.prefill`` reads JSON lines with ``text`` (and optionally ``at``, ``dialed``)
and writes one JSON line per input (DESIGN.md §4); ``--check`` validates the data files;
``python -m ivr.prefill evaluate`` prints cross-validated accuracy (:mod:`ivr.prefill.evaluate`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from call_routing.router import emergency_assessment
from call_routing.rules import CHINA_TZ, Problem, Rules, load_rules, read_yaml
from call_routing.workdays import WorkdayCalendar, default_calendar

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data"
SUBJECTS_PATH = DATA_DIR / "subjects.yaml"
CUES_PATH = DATA_DIR / "request_cues.yaml"
LABELLED_DIR = DATA_DIR / "utterances"  # labelled sentences the model learns from (JSON lines)
# the centre's own labelled sentences, learned from beside the shipped ones: the tickets its
# agents confirmed (python -m intake.harvest). Unset: var/utterances; "off": none
LOCAL_SETTING = "HOTLINE_LOCAL_UTTERANCES"
# a learned field less sure than this is shown to the agent as 待核实 (on rounds written apart,
# each read by a pre-fill learned from the others: fields at or above it right 0.96 of the
# time, the 16 % below it 0.63 — docs/tickets.md)
LOW_CONFIDENCE = 0.65
# what callers say before their matter (喂, 你好, 那个…): a text of nothing else has no type or line yet
_FILLERS = re.compile(r"喂|你好|您好|那个|这个|就是|请问|嗯|啊|呃|哦|噢|唉|哎|呀|吧|呢|了|么|吗|的")
# possible emergency without a scene word of the keyword file: the learned model's probability of any
POSSIBLE_WITHOUT_WORD = 0.2
# ...or the probability of danger read from the characters alone (the model's ``danger`` field):
# cross-validated on the shipped sentences, 0.94 of the emergencies reach it and 0.2 % of the
# others (0.5: 0.96 and 0.5 %, past the false alarms the centre accepts); on a set written apart
# of 90 emergencies told without the usual words, recall 0.58 -> 0.84 (docs/tickets.md)
DANGER_POSSIBLE = 0.6
# a possible emergency the learned model gives at least this probability: its ticket goes on
# the 12345 line (the line of every emergency); below it, the line the model read
POSSIBLE_ON_GENERAL_LINE = 0.7
# a certain emergency's ticket is of the cues' `emergency` type, but a crime under way told by
# a witness (the 110 line) keeps the model's `report` — unless the caller, their family or
# their shop is the one harmed (我女儿被…拉上车, 让我转账, 要弄死我: a victim asks for help;
# shipped 110 sentences: 129 with such words labelled help, 4 report)
POLICE, WITNESS_TYPE = "110", "report"
VICTIM = re.compile(
    r"(?:我|俺|咱)(?:家|们家)?的?(?:女儿|儿子|孩子|小孩|闺女|老公|老婆|媳妇|男人|妈|爸|爹|娘|奶奶|爷爷|姥姥|外婆"
    r"|老人|家人|弟弟|妹妹|哥|姐|丈夫|妻子)|[让要逼骗打砍追抢吓]我|我被|弄死我|我现在躲|我一个人在家"
    # the caller's own shop is the scene (robbed, threatened): not its door, where a passer-by is
    r"|(?:我|俺)(?:们)?(?:的)?(?:店|小卖部|超市|饭店|饭馆|铺子)(?!门口)")
REQUEST_TYPES = ("consultation", "help", "complaint", "report", "suggestion")
GENERAL_LINE = "12345"
GENERAL_DEPARTMENT = "12345政务服务便民热线"
DAYS_GENERAL = 5
DAYS_ENTERPRISE = 15

# Characters that end a place or unit name: function words, pronouns, verbs of motion.
_NOT_IN_NAME = "\\s\\d，。,.!?！？、；;：:“”\"'（）()《》我你他她它们的了在是有和与及把被给让向到从往去来住就都也还很太这那哪个些么呢吗吧啊呀说想要请问对于"
_NAME = f"[^{_NOT_IN_NAME}]"
_DETERMINERS = re.compile(r"^(?:一家|这家|那家|一个|这个|那个|某|一)")


def local_dir() -> Path | None:
    """The folder of the centre's own labelled sentences (``HOTLINE_LOCAL_UTTERANCES``)."""
    where = os.environ.get(LOCAL_SETTING, "")
    if where == "off":
        return None
    return Path(where) if where else DATA_DIR.parent / "var" / "utterances"


def labelled_files() -> list[Path]:
    """Every labelled file the model learns from: the shipped ones, then the centre's own."""
    local = local_dir()
    return sorted(LABELLED_DIR.glob("*.jsonl")) + (sorted(local.glob("*.jsonl")) if local and local.is_dir() else [])


def type_only_files() -> list[Path]:
    """Labelled files the type field alone learns from (``data/utterances/type_only/``): sentences
    whose emergencies, learned by the emergency fields, would raise possible alarms everywhere."""
    return sorted((LABELLED_DIR / "type_only").glob("*.jsonl"))


def _learnable(files) -> list:
    """The sentences of ``files``. A shipped file that cannot be read stops the start (the
    checkout is broken); one of the centre's own is left out with its problem in the log, so an
    edit of it by hand never keeps the servers from starting."""
    from .model import LabelledDataError, load_labelled

    local = local_dir()
    rows = []
    for path in files:
        try:
            rows += load_labelled([path], REQUEST_TYPES)
        except LabelledDataError as exc:
            if local is None or path.parent != local:
                raise
            log.error("not learning from %s: %s", path, exc)
    return rows


def local_signature() -> tuple:
    """The centre's own files as they are now (name, size, time written): a change is learned."""
    local = local_dir()
    seen = []
    for path in sorted(local.glob("*.jsonl")) if local and local.is_dir() else ():
        try:
            info = path.stat()
        except OSError:  # replaced while we looked: the next look sees the new one
            continue
        seen.append((path.name, info.st_size, info.st_mtime_ns))
    return tuple(seen)


class CatalogueError(Exception):
    """A data file of the pre-fill that cannot be used; ``problems`` lists what is wrong."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ---------------------------------------------------------------------------------------
# Weighted phrase matching


class PhraseMatcher:
    """Finds listed phrases in a text, longest first, without overlaps, and scores labels."""

    # sentences already matched: learning reads each once per model and the evaluation builds
    # a model per fold (the one regex of a few thousand phrases is most of its time); a long
    # live transcript is not kept
    REMEMBERED, REMEMBERED_CHARS = 16384, 200

    def __init__(self, phrases: dict[str, list[tuple[str, int]]]):
        self.phrases = {p.lower(): hits for p, hits in phrases.items()}
        ordered = sorted(self.phrases, key=len, reverse=True)
        self.pattern = re.compile("|".join(re.escape(p) for p in ordered), re.IGNORECASE) if ordered else None
        self._seen: dict[str, tuple[tuple[str, int, str], ...]] = {}

    def score(self, text: str) -> tuple[dict[str, int], dict[str, list[str]]]:
        """The labels' summed weights, and the phrases found for each (new objects every call)."""
        scores: dict[str, int] = {}
        evidence: dict[str, list[str]] = {}
        if self.pattern is None or not text:
            return scores, evidence
        found = self._seen.get(text)
        if found is None:
            found = tuple((label, weight, m.group(0)) for m in self.pattern.finditer(text)
                          for label, weight in self.phrases[m.group(0).lower()])
            if len(text) <= self.REMEMBERED_CHARS:
                if len(self._seen) >= self.REMEMBERED:
                    self._seen.clear()
                self._seen[text] = found
        for label, weight, phrase in found:
            scores[label] = scores.get(label, 0) + weight
            evidence.setdefault(label, []).append(phrase)
        return scores, evidence


def _tiered(doc, raw, path, weights, problems, where) -> dict[str, int]:
    """``{strong: [...], medium: [...], weak: [...]}`` -> ``{phrase: weight}``."""
    out: dict[str, int] = {}
    if not isinstance(raw, dict):
        problems.append(Problem(doc.file, doc.line_of(path), ".".join(map(str, path)),
                                f"must map tiers ({', '.join(weights)}) to lists of words"))
        return out
    for tier, words in raw.items():
        tp = path + (tier,)
        if tier not in weights:
            problems.append(Problem(doc.file, doc.line_of(tp), ".".join(map(str, tp)),
                                    f"unknown tier (allowed: {', '.join(weights)})"))
            continue
        if not isinstance(words, list):
            problems.append(Problem(doc.file, doc.line_of(tp), ".".join(map(str, tp)), "must be a list of words"))
            continue
        for i, word in enumerate(words):
            wp = tp + (i,)
            if not isinstance(word, (str, int)) or not str(word).strip():
                problems.append(Problem(doc.file, doc.line_of(wp), ".".join(map(str, tp)),
                                        f"{word!r} is not a word or phrase"))
                continue
            word = str(word).strip()
            if word in out:
                problems.append(Problem(doc.file, doc.line_of(wp), ".".join(map(str, tp)),
                                        f"{word!r} is listed twice in {where}"))
                continue
            out[word] = weights[tier]
    return out


def _read(path: Path) -> tuple[dict | None, object, list[Problem]]:
    _, value, doc, problems = read_yaml(path)  # size, encoding and depth bounded like the rules file
    return value, doc, list(problems)


def _weights(doc, value, problems) -> dict[str, int]:
    weights = value.get("weights", {"strong": 3, "medium": 2, "weak": 1})
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in weights.values()):
        problems.append(Problem(doc.file, doc.line_of(("weights",)), "weights",
                                "must map tier names (strong, medium, weak) to positive whole numbers"))
        return {"strong": 3, "medium": 2, "weak": 1}
    return {str(k): v for k, v in weights.items()}


# ---------------------------------------------------------------------------------------
# The data files


@dataclass(frozen=True)
class Catalogue:
    """The dispatch catalogue: which words point to which hotline domain."""

    path: str
    matcher: PhraseMatcher
    min_score: int
    dialed_bonus: int
    domains: tuple[str, ...]


def load_catalogue(path: str | os.PathLike = SUBJECTS_PATH, rules: Rules | None = None) -> Catalogue:
    """Read and check ``subjects.yaml``; domains must be lines of ``rules`` (or 12345)."""
    value, doc, problems = _read(Path(path))
    if value is None:
        raise CatalogueError(problems or [Problem(str(path), 0, "", "is empty")])
    weights = _weights(doc, value, problems)
    min_score = value.get("min_score", 2)
    if isinstance(min_score, bool) or not isinstance(min_score, int) or min_score < 1:
        problems.append(Problem(doc.file, doc.line_of(("min_score",)), "min_score", "must be a whole number ≥ 1"))
        min_score = 2
    bonus = value.get("dialed_line_bonus", 1)
    domains = value.get("domains")
    phrases: dict[str, list[tuple[str, int]]] = {}
    if not isinstance(domains, dict) or not domains:
        problems.append(Problem(doc.file, doc.line_of(("domains",)), "domains",
                                "must map line numbers (\"12366\") to their words"))
        domains = {}
    known = set(rules.lines) | {rules.hotline.number} if rules else None
    for number, tiers in domains.items():
        dp = ("domains", number)
        if known is not None and str(number) not in known:
            problems.append(Problem(doc.file, doc.line_of(dp), f"domains.{number}",
                                    f"{number} is not a line in {rules.path} (nor the hotline)"))
            continue
        for word, weight in _tiered(doc, tiers, dp, weights, problems, f"domain {number}").items():
            phrases.setdefault(word, []).append((str(number), weight))
    if problems:
        raise CatalogueError(problems)
    return Catalogue(str(path), PhraseMatcher(phrases), min_score, int(bonus), tuple(str(d) for d in domains))


@dataclass(frozen=True)
class Cues:
    """Request-type, enterprise, location and unit cues."""

    path: str
    types: PhraseMatcher
    precedence: tuple[str, ...]
    default: str
    emergency_type: str
    question_endings: tuple[str, ...]
    question_weight: int
    enterprise: PhraseMatcher
    location: re.Pattern
    location_generic: frozenset
    unit: re.Pattern
    unit_generic: frozenset


def _word_list(doc, value, path, problems) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(w, (str, int)) and str(w).strip() for w in value):
        problems.append(Problem(doc.file, doc.line_of(path), ".".join(path), "must be a list of words"))
        return []
    return [str(w).strip() for w in value]


def _suffix_pattern(suffixes: list[str]) -> str:
    return "(?:" + "|".join(re.escape(s) for s in sorted(set(suffixes), key=len, reverse=True)) + ")"


def load_cues(path: str | os.PathLike = CUES_PATH) -> Cues:
    value, doc, problems = _read(Path(path))
    if value is None:
        raise CatalogueError(problems or [Problem(str(path), 0, "", "is empty")])
    weights = _weights(doc, value, problems)
    phrases: dict[str, list[tuple[str, int]]] = {}
    types = value.get("types") or {}
    for name in REQUEST_TYPES:
        if name not in types:
            problems.append(Problem(doc.file, doc.line_of(("types",)), "types", f"missing request type {name!r}"))
    for name, tiers in types.items():
        if name not in REQUEST_TYPES:
            problems.append(Problem(doc.file, doc.line_of(("types", name)), f"types.{name}",
                                    f"unknown request type (allowed: {', '.join(REQUEST_TYPES)})"))
            continue
        for word, weight in _tiered(doc, tiers, ("types", name), weights, problems, f"type {name}").items():
            phrases.setdefault(word, []).append((name, weight))
    precedence = value.get("precedence", list(REQUEST_TYPES))
    if not isinstance(precedence, list) or sorted(precedence) != sorted(REQUEST_TYPES):
        problems.append(Problem(doc.file, doc.line_of(("precedence",)), "precedence",
                                f"must list each of {', '.join(REQUEST_TYPES)} once"))
        precedence = list(REQUEST_TYPES)
    default, emergency_type = value.get("default", "help"), value.get("emergency", "help")
    for key, v in (("default", default), ("emergency", emergency_type)):
        if v not in REQUEST_TYPES:
            problems.append(Problem(doc.file, doc.line_of((key,)), key,
                                    f"{v!r} is not a request type (allowed: {', '.join(REQUEST_TYPES)})"))
    question = value.get("question") or {}
    endings = _word_list(doc, question.get("endings", []), ("question", "endings"), problems)
    q_weight = question.get("weight", 2)
    if isinstance(q_weight, bool) or not isinstance(q_weight, int) or q_weight < 0:
        problems.append(Problem(doc.file, doc.line_of(("question", "weight")), "question.weight",
                                "must be a whole number ≥ 0"))
    ent = value.get("enterprise") or {}
    ent_phrases: dict[str, list[tuple[str, int]]] = {}
    for w in _word_list(doc, ent.get("words", []), ("enterprise", "words"), problems):
        ent_phrases.setdefault(w, []).append(("yes", 1))
    for w in _word_list(doc, ent.get("not_when", []), ("enterprise", "not_when"), problems):
        ent_phrases.setdefault(w, []).append(("no", 1))
    loc = value.get("location") or {}
    admin = _word_list(doc, loc.get("admin_suffixes", []), ("location", "admin_suffixes"), problems)
    street = _word_list(doc, loc.get("street_suffixes", []), ("location", "street_suffixes"), problems)
    place = _word_list(doc, loc.get("place_suffixes", []), ("location", "place_suffixes"), problems)
    loc_generic = _word_list(doc, loc.get("generic", []), ("location", "generic"), problems)
    unit = value.get("unit") or {}
    unit_suffixes = _word_list(doc, unit.get("suffixes", []), ("unit", "suffixes"), problems)
    unit_generic = _word_list(doc, unit.get("generic", []), ("unit", "generic"), problems)
    if problems:
        raise CatalogueError(problems)
    part = _suffix_pattern(admin + street + place)
    house = r"(?:\d+号(?:楼|院)?)?(?:\d+(?:单元|栋|幢|层|室|号楼))*"
    location = re.compile(f"{_NAME}{{1,10}}?{part}(?:{_NAME}{{0,10}}?{part})*{house}|{_NAME}{{1,10}}?{_suffix_pattern(street)}\\d+号")
    unit_re = re.compile(f"{_NAME}{{1,12}}?{_suffix_pattern(unit_suffixes)}")
    return Cues(str(path), PhraseMatcher(phrases), tuple(precedence), default, emergency_type,
                tuple(endings), q_weight, PhraseMatcher(ent_phrases), location, frozenset(loc_generic), unit_re, frozenset(unit_generic))


# ---------------------------------------------------------------------------------------
# Numbers said


_ID_CARD = re.compile(r"(?<![0-9])[1-9][0-9]{16}[0-9Xx](?![0-9])")
_MOBILE = re.compile(r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])")
_LANDLINE = re.compile(r"(?<![0-9])0[1-9][0-9]{1,2}-?[2-9][0-9]{6,7}(?![0-9])")
_AMOUNT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(万|千)?\s*(?:元|块钱|块|人民币)")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def normalise_numerals(text: str) -> str:
    """Chinese numerals as digits (幺三八… → 138…, 三万五千 → 35000), the rest unchanged."""
    import warnings

    import cn2an

    try:
        with warnings.catch_warnings():  # cn2an warns on words like 好几万; they stay words
            warnings.simplefilter("ignore")
            return cn2an.transform(text, "cn2an")
    except Exception:  # cn2an refuses some mixed forms; keep the words as they were said
        return text


def id_card_valid(number: str) -> bool:
    """GB 11643 check digit of an 18-digit resident ID number."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


def key_numbers(text: str) -> dict:
    """ID card numbers, phone numbers and amounts (in yuan) a caller said."""
    norm = normalise_numerals(text)
    ids = _ID_CARD.findall(norm)
    rest = _ID_CARD.sub(" ", norm)
    phones = _MOBILE.findall(rest) + [p.replace("-", "") for p in _LANDLINE.findall(rest)]
    amounts = []
    for m in _AMOUNT.finditer(rest):
        value = float(m.group(1)) * {"万": 10000, "千": 1000}.get(m.group(2) or "", 1)
        amounts.append(int(value) if value.is_integer() else value)
    return {"id_cards": [i.upper() for i in ids], "id_cards_valid": [id_card_valid(i) for i in ids],
            "phones": phones, "amounts": amounts}


# ---------------------------------------------------------------------------------------
# The pre-fill


@dataclass
class Prefill:
    """The machine's reading of one request. ``to_dict`` gives the DESIGN.md §4 fields first."""

    type: str
    line: str
    skill: str
    department: str
    emergency: str | None
    enterprise: bool
    location: str | None
    deadline: str
    numbers: dict = field(default_factory=dict)
    subject: str | None = None  # the strongest word heard for the chosen domain
    unit: str | None = None  # the business or office the matter is about
    line_name: str = ""
    evidence: dict = field(default_factory=dict)
    emergency_possible: str | None = None  # the emergency line the caller may be describing
    confidence: dict = field(default_factory=dict)  # learned fields: probability of the value given
    uncertain: list = field(default_factory=list)  # fields to check (confidence < LOW_CONFIDENCE)

    def to_dict(self) -> dict:
        return {
            "type": self.type, "line": self.line, "skill": self.skill, "department": self.department,
            "emergency": self.emergency, "enterprise": self.enterprise, "location": self.location,
            "deadline": self.deadline, "numbers": self.numbers, "subject": self.subject,
            "unit": self.unit, "line_name": self.line_name, "evidence": self.evidence,
            "emergency_possible": self.emergency_possible, "confidence": self.confidence,
            "uncertain": self.uncertain,
        }


def deadline_for(at: datetime, enterprise: bool, calendar: WorkdayCalendar | None = None) -> datetime:
    """Done-by time: 5 working days, 15 for an enterprise request, on China's calendar."""
    calendar = calendar or default_calendar()
    return calendar.add_workdays(at, DAYS_ENTERPRISE if enterprise else DAYS_GENERAL)


def china_time(at: datetime | str | None) -> datetime:
    """An aware datetime in China time from ISO text, a naive (China) or aware datetime."""
    if at is None:
        return datetime.now(CHINA_TZ)
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    if at.tzinfo is None:
        return at.replace(tzinfo=CHINA_TZ)
    return at.astimezone(CHINA_TZ)


class Prefiller:
    """Fills ticket fields from text. Build once (it compiles the data files), use from any thread."""

    def __init__(self, rules: Rules, catalogue: Catalogue | None = None, cues: Cues | None = None,
                 calendar: WorkdayCalendar | None = None, training: list | None = None, model=None,
                 type_training: list | None = None):
        """``training``: labelled sentences (:func:`ivr.prefill.model.load_labelled`) to learn
        from; default: every file of ``data/utterances/`` and of the centre's own folder
        (:func:`labelled_files`). ``type_training``: sentences only the type field learns from
        (default, with ``training`` unset: :func:`type_only_files`). ``model``: one already learned with
        the same catalogue, cues and emergency words (see :func:`learned_from`), used as it is."""
        from .model import TextModel, learned_once

        self.rules = rules
        self.catalogue = catalogue or load_catalogue(SUBJECTS_PATH, rules)
        self.cues = cues or load_cues(CUES_PATH)
        self.calendar = calendar or default_calendar()
        if model is not None:
            self.model = model
            return
        scorers = {"line_scores": self._line_features, "type_scores": self._type_features,
                   "emergency_scores": self._emergency_features}
        if training is not None:
            self.model = TextModel(training, type_rows=type_training or (), **scorers)
            return
        files, type_files = labelled_files(), type_only_files()
        self.model = learned_once(self._digest(files + type_files), lambda: TextModel(
            _learnable(files), type_rows=_learnable(type_files), **scorers)).bind(**scorers)

    def _digest(self, files) -> str:
        """Everything the model is learned from: the labelled files, the catalogue, the cues, the
        emergency words and lines of the rules, the learning code and library."""
        import hashlib

        import sklearn

        from . import model as learning

        h = hashlib.sha256()
        for path in [*files, Path(self.catalogue.path), Path(self.cues.path), Path(learning.__file__)]:
            h.update(str(path.name).encode() + b"\0" + path.read_bytes() + b"\0")
        h.update(repr(learned_from(self.rules)).encode() + sklearn.__version__.encode())
        return h.hexdigest()[:32]

    # the catalogue's view of a text, as features of the learned model
    def _line_features(self, text: str) -> list[float]:
        scores, _ = self.catalogue.matcher.score(text)
        chosen = self._pick_domain(dict(scores))
        return [scores.get(d, 0) for d in self.catalogue.domains] + [1.0 * (d == chosen) for d in self.catalogue.domains]

    def _type_features(self, text: str) -> list[float]:
        scores = self._type_scores(text)
        chosen = self._pick_type(scores)
        return [min(scores.get(t, 0), 10) for t in REQUEST_TYPES] + [3.0 * (t == chosen) for t in REQUEST_TYPES]

    def _emergency_features(self, text: str) -> list[float]:
        certain, possible = emergency_assessment(self.rules, text)
        numbers = ("110", "119", "120", "122")
        return ([3.0 * bool(certain and certain.number == n) for n in numbers]
                + [2.0 * bool(possible and possible.number == n) for n in numbers])

    def fill(self, text: str, at: datetime | str | None = None, dialed: str | None = None) -> Prefill:
        text = (text or "").strip()
        return self._fill(text, at, dialed, self.model.read([text])[0])

    def fill_many(self, texts: list[str]) -> list[Prefill]:
        """:meth:`fill` for many texts at once (the model reads them together: evaluation)."""
        texts = [(t or "").strip() for t in texts]
        return [self._fill(t, None, None, learned) for t, learned in zip(texts, self.model.read(texts))]

    def _fill(self, text: str, at, dialed: str | None, learned: dict) -> Prefill:
        at = china_time(at)
        certain, suspected = emergency_assessment(self.rules, text)
        line, line_p = self._learned_line(text, dialed, learned["line"])
        scores, evidence = self.catalogue.matcher.score(text)
        type_p = dict(learned["type"])
        kind = max(type_p, key=type_p.get)
        em_p = learned["emergency"]
        any_p = 1.0 - em_p.get("none", 0.0)
        possible = None
        danger_p = learned["danger"]
        if certain is None and (suspected or any_p >= POSSIBLE_WITHOUT_WORD or danger_p >= DANGER_POSSIBLE):
            possible = suspected.number if suspected else max((n for n in em_p if n != "none"), key=em_p.get)
        # A certain emergency: the caller needs help now, the ticket stays with the 12345 seats.
        # A possible one (a seat hears the caller first, under the 可能紧急 banner) is mostly not
        # an emergency: the model's reading stands, but for the line when the model itself finds
        # an emergency likely (held-out rounds: type +1.4, line +0.8 points against forcing both)
        if certain or (possible and any_p >= POSSIBLE_ON_GENERAL_LINE):
            line, line_p = GENERAL_LINE, 1.0
        # a caller in danger asks for help; a witness telling of a crime under way (someone
        # waving a knife, a fight) reports it, when the model reads it so
        witness = certain and certain.number == POLICE and kind == WITNESS_TYPE and not VICTIM.search(text)
        if certain and not witness:
            kind, type_p[self.cues.emergency_type] = self.cues.emergency_type, 1.0
        enterprise = self.is_enterprise(text)
        info = self.rules.line(line) or self.rules.hotline
        department = GENERAL_DEPARTMENT if info is self.rules.hotline else info.department
        words = evidence.get(line, [])
        subject = max(words, key=len) if words else None
        confidence = {"type": round(float(type_p[kind]), 2), "line": round(float(line_p), 2),
                      "emergency": round(float(1.0 if certain else max(any_p, danger_p) if possible
                                               else em_p.get("none", 0.0)), 2)}  # plain floats
        said_something = len(_FILLERS.sub("", re.sub(r"[\W_]+", "", text))) >= 2
        uncertain = [f for f in ("type", "line") if confidence[f] < LOW_CONFIDENCE or not said_something]
        if "line" in uncertain:
            uncertain += ["skill", "department"]
        return Prefill(
            type=kind, line=info.number, skill=info.skill, department=department,
            emergency=certain.number if certain is not None else None, enterprise=enterprise,
            location=self.location_of(text),
            deadline=deadline_for(at, enterprise, self.calendar).isoformat(timespec="seconds"),
            numbers=key_numbers(text), subject=subject, unit=self.unit_of(text), line_name=info.name,
            evidence={"line": words, "scores": dict(sorted(scores.items(), key=lambda kv: -kv[1])[:3])},
            emergency_possible=possible, confidence=confidence, uncertain=uncertain,
        )

    def _learned_line(self, text: str, dialed: str | None, p: dict[str, float]) -> tuple[str, float]:
        """The line the learned model prefers (``p``: its probabilities), and its probability. A
        domain the model never saw (an admin's new catalogue entry) wins when the catalogue names
        it clearly; the line the caller dialed wins a near tie."""
        best = max(p, key=p.get)
        by_catalogue = self.domain_of(text, dialed)
        if by_catalogue not in p and by_catalogue != GENERAL_LINE:
            return by_catalogue, 0.5
        if dialed and dialed in p and dialed != best and p[dialed] >= 0.8 * p[best]:
            best = dialed
        return best, p[best]

    def domain_of(self, text: str, dialed: str | None = None) -> str:
        """The hotline whose domain the text is about, or 12345 when none stands out."""
        scores, _ = self.catalogue.matcher.score(text)
        if dialed and dialed in self.rules.lines and scores:
            scores[dialed] = scores.get(dialed, 0) + self.catalogue.dialed_bonus
        return self._pick_domain(scores)

    def _pick_domain(self, scores: dict[str, int]) -> str:
        if not scores:
            return GENERAL_LINE
        # order: score, then the general line on a tie (a generalist can re-route), then number
        best = max(scores, key=lambda k: (scores[k], k == GENERAL_LINE, k))
        if best != GENERAL_LINE and scores[best] < self.catalogue.min_score:
            return GENERAL_LINE
        return best

    def _type_scores(self, text: str) -> dict[str, int]:
        scores, _ = self.cues.types.score(text)
        if text.rstrip("。.!！?？ ").endswith(self.cues.question_endings):
            scores["consultation"] = scores.get("consultation", 0) + self.cues.question_weight
        return scores

    def request_type(self, text: str) -> str:
        """The type the request cues alone point to."""
        return self._pick_type(self._type_scores(text))

    def _pick_type(self, scores: dict[str, int]) -> str:
        if not scores:
            return self.cues.default
        order = {t: i for i, t in enumerate(self.cues.precedence)}
        return max(scores, key=lambda t: (scores[t], -order[t]))

    def is_enterprise(self, text: str) -> bool:
        scores, _ = self.cues.enterprise.score(text)
        return bool(scores.get("yes")) and not scores.get("no")

    def location_of(self, text: str) -> str | None:
        return _longest_named(self.cues.location, normalise_numerals(text), self.cues.location_generic)

    def unit_of(self, text: str) -> str | None:
        return _longest_named(self.cues.unit, text, self.cues.unit_generic)


def _longest_named(pattern: re.Pattern, text: str, generic: frozenset) -> str | None:
    best = None
    for m in pattern.finditer(text):
        name = _DETERMINERS.sub("", m.group(0))
        if not name or name in generic or len(name) < 2:
            continue
        if best is None or len(name) > len(best):
            best = name
    return best


# ---------------------------------------------------------------------------------------
# Command line


def _problem_line(line_no: int, message: str) -> str:
    return json.dumps({"error": message, "input_line": line_no}, ensure_ascii=False)



def learned_from(rules: Rules) -> tuple:
    """What of the rules the learned model depends on: the emergency words (its features) and
    the lines (the catalogue is checked against them). A rules edit that leaves these alone —
    a transition date, a seat group, a prompt — keeps the model."""
    return (tuple((e.number, e.words, e.masked, e.unless, e.possible) for e in rules.emergency),
            tuple(sorted(rules.lines)), rules.hotline.number)


class PrefillClassifier:
    """What was heard -> the fields, when a specific domain stands out or the caller may be
    describing an emergency (``emergency_possible``); else None.

    Learning takes over a minute on a new machine (then each process loads the cached model in
    about half a second), and a caller's words never wait for it: the first pre-fill of a
    process is learned by :meth:`warm` at start (the servers call it); words heard before it is
    ready wait at most ``FIRST_WAIT_S`` and are then left to the ticket's later reading. After a
    rules edit the previous pre-fill keeps reading while the new one learns in the background
    (the router, which decides the transfers, reads the new rules at once); an edit that leaves
    the emergency words and the lines alone keeps the learned model."""

    FIRST_WAIT_S = 1.0
    LOCAL_CHECK_S = 60.0  # how often the centre's own labelled files are looked at for a change

    def __init__(self, rules_source):
        self._source = rules_source
        self._cache = (None, None, None)  # the rules and the centre's own files it was built for, the pre-fill
        self._learning = None  # (rules, own files) a background thread is learning for
        self._lock = threading.Lock()
        self._tried = threading.Condition(self._lock)  # a learning ended, learned or not
        self._ready = threading.Event()  # the first pre-fill is there
        self._local, self._local_at = local_signature(), time.monotonic()

    def __call__(self, text: str) -> dict | None:
        rules = self._source()
        filler = self.filler(rules, wait_s=self.FIRST_WAIT_S)
        if filler is None:
            log.info("heard words before the pre-fill had learned: left to the ticket's later reading")
            return None
        fields = filler.fill(text).to_dict()
        return fields if fields["line"] != rules.hotline.number or fields["emergency_possible"] else None

    def _local_now(self) -> tuple:
        """:func:`local_signature`, looked at no more than once every ``LOCAL_CHECK_S``."""
        if time.monotonic() - self._local_at >= self.LOCAL_CHECK_S:
            self._local, self._local_at = local_signature(), time.monotonic()
        return self._local

    def filler(self, rules=None, wait_s: float | None = None):
        """The :class:`Prefiller` for ``rules`` (default: the current ones). ``wait_s``: how long
        to wait for the first one (None: learn it here and now, errors and all); then None.
        New files of the centre's own (:func:`local_dir`) are learned like a rules edit."""
        rules = rules if rules is not None else self._source()
        local = self._local_now()
        with self._lock:  # never held while learning: a caller's words wait at most wait_s
            built_for, built_local, built = self._cache
            if built_for is rules and built_local == local:
                return built
            if built is not None and built_local == local and learned_from(built.rules) == learned_from(rules):
                self._cache = (rules, local, Prefiller(rules, built.catalogue, built.cues, built.calendar,
                                                       model=built.model))
                return self._cache[2]
            if built is None and wait_s is None and self._learning_for(rules, local):
                # the first is being learned in the background (a worker that started listening
                # at once): wait for it, then take it or learn it here, errors and all
                self._tried.wait_for(lambda: self._cache[2] is not None or not self._learning_for(rules, local))
                if self._cache[2] is not None:
                    return self._cache[2]
            learn_here = built is None and wait_s is None
            if not learn_here and not self._learning_for(rules, local):
                self._learn_in_background(rules, local)
            if built is not None:
                return built
        if learn_here:  # the first, here and now: its errors are the caller's (start-up, workers)
            return self._learn(rules, local, raise_errors=True)
        self._ready.wait(wait_s)
        with self._lock:
            return self._cache[2]

    def _learn_in_background(self, rules, local) -> None:  # with the lock held
        self._learning = (rules, local)
        threading.Thread(target=self._learn, args=(rules, local), name="prefill-learn", daemon=True).start()

    def _learning_for(self, rules, local) -> bool:
        return self._learning is not None and self._learning[0] is rules and self._learning[1] == local

    def _learn(self, rules, local, raise_errors: bool = False):
        try:
            filler = Prefiller(rules)
        except Exception:  # the data files changed under us: keep the last pre-fill, try at the next call
            with self._lock:
                if self._learning_for(rules, local):
                    self._learning = None
                self._tried.notify_all()
            if raise_errors:
                raise
            log.exception("the pre-fill could not learn for rules version %s", getattr(rules, "version", "?"))
            return None
        with self._lock:
            if self._cache[2] is None or self._learning_for(rules, local):
                self._cache = (rules, local, filler)
            if self._learning_for(rules, local):
                self._learning = None
            self._tried.notify_all()
        self._ready.set()
        return filler

    def warm(self) -> None:
        """Learn the pre-fill now rather than on the first words heard, and wait for it: the
        learning is the background one, so words heard meanwhile do not start a second."""
        self.warm_in_background()
        self.filler().fill("预热")

    def warm_in_background(self):
        """Start learning the first pre-fill and return at once, with the current rules (their
        errors are raised here). Whoever asks :meth:`filler` meanwhile waits for that learning:
        a worker listens for callbacks and hand-offs while its transcriptions wait."""
        rules = self._source()
        local = self._local_now()
        with self._lock:
            if self._cache[2] is None and self._learning is None:
                self._learn_in_background(rules, local)
        return rules

    def rules(self):
        """The current rules, without waiting for the pre-fill."""
        return self._source()


def main(argv: list[str] | None = None, stdin=None, stdout=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivr.prefill",
                                     description="JSON lines with `text` on stdin -> ticket fields, one JSON line each")
    parser.add_argument("--rules", default=os.environ.get("RULES_PATH"),
                        help="transfer_rules.yaml (default: $RULES_PATH, else the shipped file)")
    parser.add_argument("--subjects", default=str(SUBJECTS_PATH), help="the dispatch catalogue (data/subjects.yaml)")
    parser.add_argument("--cues", default=str(CUES_PATH), help="request cues (data/request_cues.yaml)")
    parser.add_argument("--at", help="intake time for deadlines (ISO-8601; default: now, China time)")
    parser.add_argument("--check", action="store_true", help="only check the data files; exit 1 on problems")
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        rules = load_rules(args.rules)
        prefiller = Prefiller(rules, load_catalogue(args.subjects, rules), load_cues(args.cues))
    except CatalogueError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 1
    except Exception as exc:  # a rules file that does not load: its own problems say why
        for p in getattr(exc, "problems", None) or [exc]:
            print(p, file=sys.stderr)
        return 1
    if args.check:
        print(f"ok: {args.subjects}, {args.cues}")
        return 0
    default_at = china_time(args.at) if args.at else None
    for n, raw in enumerate(stdin, 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            print(_problem_line(n, f"not JSON: {exc.msg} at column {exc.colno}"), file=stdout, flush=True)
            continue
        if not isinstance(item, dict):
            print(_problem_line(n, "expected a JSON object with a `text` field"), file=stdout, flush=True)
            continue
        text = item.get("text")
        if not isinstance(text, str):
            what = "missing" if text is None else f"a {type(text).__name__}, not a string"
            print(_problem_line(n, f"`text` is {what}"), file=stdout, flush=True)
            continue
        try:
            at = china_time(item["at"]) if item.get("at") else default_at
        except (TypeError, ValueError):
            print(_problem_line(n, f"`at` {item.get('at')!r} is not an ISO-8601 time"), file=stdout, flush=True)
            continue
        out = prefiller.fill(text, at, item.get("dialed")).to_dict()
        if "id" in item:
            out["id"] = item["id"]
        print(json.dumps(out, ensure_ascii=False), file=stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
