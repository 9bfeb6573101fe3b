"""transfer_rules.yaml: load, validate, and compile into the :class:`Rules` the router reads.

Admins edit the YAML; a file is either fully valid or not loaded at all. Every problem is
reported at once, each as ``FILE:LINE: field: what is wrong (allowed: …)`` — never a
traceback. The YAML is read with the safe composer only (no tags that build objects, no
anchors/aliases), so a rules file can never run code or blow up memory.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from types import MappingProxyType

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

#: China has one time zone and no daylight saving: a fixed offset needs no tz database.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
EMERGENCY_NUMBERS = ("110", "119", "120", "122")
MODES = ("merge", "dual", "subcenter")
AFTER_ACTIONS = ("forward", "announce_and_hangup")
MAX_RULES_BYTES = 2 * 1024 * 1024
DEFAULT_RULES_PATH = Path(__file__).resolve().parent.parent / "transfer_rules.yaml"

_NUMBER = re.compile(r"^[0-9]{3,11}$")
_PHONE_TARGET = re.compile(r"^\+?[0-9]{3,15}$")
_SIP_TARGET = re.compile(r"^sips?:[A-Za-z0-9_.!~*'()&=+$,;?/%-]+@[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_SKILL_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")
_SAFE_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rules file, located for the admin who must fix it."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:" if self.line else f"{self.file}:"
        return f"{where} {self.field}: {self.message}" if self.field else f"{where} {self.message}"


class RulesError(Exception):
    """A rules file that cannot be used; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ---------------------------------------------------------------------------------------
# The compiled rules


@dataclass(frozen=True)
class OpeningHours:
    """When a seat group takes calls: ``days`` is ``workdays`` or ``everyday``."""

    days: str
    open_minute: int
    close_minute: int  # 1440 for 24:00


@dataclass(frozen=True)
class Skill:
    """A seat group (技能组) agents log in to."""

    id: str
    name: str
    hours: OpeningHours | None  # None: 7×24
    after_hours: str  # "overflow" | "callback"
    overflow_to: str | None
    overflow_after_s: int | None
    expert: bool


@dataclass(frozen=True)
class TransitionPrompt:
    """The transition period of a retired (merge) number and what callers hear in it."""

    starts: datetime
    ends: datetime  # exclusive
    prompt: str
    audio: str | None


@dataclass(frozen=True)
class Line:
    """One entry number: a legacy hotline, or the 12345 hotline itself (mode ``main``)."""

    number: str
    name: str
    department: str
    mode: str
    skill: str
    transition: TransitionPrompt | None = None
    after_action: str | None = None
    after_text: str | None = None
    expert_skill: str | None = None
    subcenter_name: str | None = None
    subcenter_target: str | None = None


@dataclass(frozen=True)
class EmergencyLine:
    """A linked emergency line and the words that send a caller to it."""

    number: str
    name: str
    words: tuple[str, ...]
    masked: tuple[str, ...]  # phrases that contain a word but are not an emergency
    unless: tuple[str, ...]  # words that mark the matter as past / administrative
    pattern: re.Pattern | None
    mask_pattern: re.Pattern | None
    unless_pattern: re.Pattern | None


@dataclass(frozen=True, eq=False)  # identity: routers cache plans per rules set
class Rules:
    """A validated, immutable rules set. ``version`` is a hash of the files it came from."""

    path: str
    version: str
    hotline: Line
    lines: MappingProxyType  # number -> Line (legacy lines only)
    skills: MappingProxyType  # id -> Skill
    emergency: tuple[EmergencyLine, ...]  # in order of precedence
    emergency_notice: str
    announce_every_s: int
    callback_offer_after_s: int
    known_numbers: frozenset = field(default=frozenset())
    keywords_path: str = ""  # the emergency keyword file these rules were built with
    acd_settings: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # queue: timers set (ACD_SETTINGS)

    def line(self, number: str) -> Line | None:
        if number == self.hotline.number:
            return self.hotline
        return self.lines.get(number)

    def emergency_line(self, number: str) -> EmergencyLine | None:
        for e in self.emergency:
            if e.number == number:
                return e
        return None


# ---------------------------------------------------------------------------------------
# Reading YAML with line numbers


class _Doc:
    """A YAML document turned into plain values, remembering where each field was written."""

    def __init__(self, file: str):
        self.file = file
        self.where: dict[tuple, int] = {}
        self.raw: dict[tuple, str] = {}
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()
        self._seen: set[int] = set()

    def problem(self, path: tuple, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(self.file, line or self.line_of(path), _dotted(path), message))

    def line_of(self, path: tuple) -> int:
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return self.where.get((), 1)

    def build(self, node, path: tuple = ()):
        if id(node) in self._seen:
            self.problem(path, "anchors and aliases (& and *) are not supported; write the value out",
                         node.start_mark.line + 1)
            return None
        self._seen.add(id(node))
        self.where.setdefault(path, node.start_mark.line + 1)
        if node.tag not in _SAFE_TAGS:
            self.problem(path, f"YAML tag {node.tag!r} is not allowed (plain values, lists and mappings only)",
                         node.start_mark.line + 1)
            return None
        if isinstance(node, MappingNode):
            out: dict = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    self.problem(path, "keys must be plain words or numbers", key_node.start_mark.line + 1)
                    continue
                key = str(key_node.value)
                key_path = path + (key,)
                if key in out:
                    self.problem(key_path, f"written twice (first at line {self.where[key_path]})",
                                 key_node.start_mark.line + 1)
                    continue
                self.where[key_path] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, key_path)
            return out
        if isinstance(node, SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                items.append(self.build(item, path + (i,)))
            return items
        self.raw[path] = node.value
        try:
            return self._constructor.construct_object(node, deep=True)
        except Exception as exc:  # e.g. a timestamp like 2021-13-45
            self.problem(path, f"cannot read value {node.value!r}: {exc}", node.start_mark.line + 1)
            return None


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def read_rules_text(path: str | os.PathLike) -> tuple[bytes | None, list[Problem]]:
    """The bytes of a rules file, or one clear problem saying why it cannot be read."""
    name = str(path)
    p = Path(path)
    try:
        if p.is_dir():
            return None, [Problem(name, 0, "", "is a directory, not a rules file")]
        size = p.stat().st_size
    except FileNotFoundError:
        return None, [Problem(name, 0, "", "no such file")]
    except OSError as exc:
        return None, [Problem(name, 0, "", f"cannot read: {exc.strerror}")]
    if size > MAX_RULES_BYTES:
        return None, [Problem(name, 0, "", f"file is {size / 1048576:.1f} MB; a rules file may be at most "
                                          f"{MAX_RULES_BYTES // 1048576} MB")]
    try:
        data = p.read_bytes()
    except OSError as exc:
        return None, [Problem(name, 0, "", f"cannot read: {exc.strerror}")]
    return data, []


def _decode(name: str, data: bytes) -> tuple[str | None, list[Problem]]:
    if b"\x00" in data:
        return None, [Problem(name, 0, "", "is a binary file, not UTF-8 YAML text")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [Problem(name, line, "", "is not UTF-8 text (save the file as UTF-8)")]
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        return None, [Problem(name, 0, "", "is empty: a rules file needs at least hotline, emergency, skills "
                                          "and lines")]
    return text, []


MAX_YAML_DEPTH = 32  # the shipped files nest 5 deep; PyYAML's composer recurses (≈ 500 levels crash it)


def _too_deep(text: str) -> int | None:
    """The line where the YAML nests deeper than :data:`MAX_YAML_DEPTH`, read from PyYAML's
    event stream (its parser is not recursive), before anything recursive sees the text."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return event.start_mark.line + 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return None


def parse_yaml(name: str, text: str) -> tuple[dict | None, _Doc]:
    """Safely compose YAML text into plain values with a line for every field."""
    doc = _Doc(name)
    try:
        deep = _too_deep(text)
        if deep is not None:
            doc.problems.append(Problem(name, deep, "", f"nested more than {MAX_YAML_DEPTH} levels deep"))
            return None, doc
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        what = exc.problem or exc.context or "malformed YAML"
        doc.problems.append(Problem(name, line, "", f"malformed YAML: {what}"))
        return None, doc
    except yaml.YAMLError as exc:
        doc.problems.append(Problem(name, 0, "", f"malformed YAML: {exc}"))
        return None, doc
    if node is None:
        doc.problems.append(Problem(name, 0, "", "is empty"))
        return None, doc
    value = doc.build(node)
    if not isinstance(value, dict):
        doc.problems.append(Problem(name, node.start_mark.line + 1, "",
                                    "must be a mapping of sections (hotline, queue, emergency, skills, lines)"))
        return None, doc
    return value, doc


# ---------------------------------------------------------------------------------------
# Field checks shared by every section


class _Checker:
    def __init__(self, doc: _Doc):
        self.doc = doc

    def keys(self, value, path, required, optional=(), misplaced=None):
        """Check a mapping's keys; unknown ones are refused (typos must not pass silently).

        ``misplaced`` maps keys that are valid elsewhere to why they do not belong here.
        """
        if not isinstance(value, dict):
            self.doc.problem(path, f"must be a mapping with keys {', '.join(tuple(required) + tuple(optional))}")
            return False
        allowed = tuple(required) + tuple(optional)
        for key in value:
            if key in allowed:
                continue
            if misplaced and key in misplaced:
                self.doc.problem(path + (key,), misplaced[key])
            else:
                self.doc.problem(path + (key,), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                self.doc.problem(path, f"missing required key {key!r}")
        return True

    def text(self, value, path, what="text") -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            self.doc.problem(path, f"{what} must not be empty")
            return None
        if not isinstance(value, str):
            self.doc.problem(path, f"must be {what}, got {value!r}")
            return None
        return value.strip()

    def number(self, value, path) -> str | None:
        raw = self.doc.raw.get(path, value)
        raw = str(raw).strip() if raw is not None else ""
        if not _NUMBER.match(raw):
            self.doc.problem(path, f"{raw!r} is not a service number (3 to 11 digits, no + or area code)")
            return None
        return raw

    def key_number(self, key, path) -> str | None:
        if not _NUMBER.match(key):
            self.doc.problem(path, f"{key!r} is not a service number (3 to 11 digits, no + or area code)")
            return None
        return key

    def choice(self, value, path, allowed) -> str | None:
        if value not in allowed:
            self.doc.problem(path, f"{value!r} is not allowed (allowed: {', '.join(allowed)})")
            return None
        return value

    def seconds(self, value, path, low=0, high=86400) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
            self.doc.problem(path, f"{value!r} must be a whole number of seconds from {low} to {high}")
            return None
        return value

    def moment(self, value, path, end_of_day: bool) -> datetime | None:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=CHINA_TZ)
        if isinstance(value, date):
            day = value + timedelta(days=1) if end_of_day else value
            return datetime.combine(day, time(0), CHINA_TZ)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                parsed = None
            if parsed:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=CHINA_TZ)
        self.doc.problem(path, f"{value!r} is not a date or time (e.g. 2021-01-01 or 2021-01-01 08:00)")
        return None


# ---------------------------------------------------------------------------------------
# Sections


def _check_skills(c: _Checker, raw) -> dict[str, Skill]:
    path = ("skills",)
    skills: dict[str, Skill] = {}
    if not isinstance(raw, dict) or not raw:
        c.doc.problem(path, "must map skill ids to seat groups (at least the general group)")
        return skills
    for sid, spec in raw.items():
        sp = path + (sid,)
        if not _SKILL_ID.match(sid):
            c.doc.problem(sp, "skill ids are lower-case letters, digits and _ (e.g. legal_expert)")
        if not c.keys(spec, sp, ("name",), ("hours", "after_hours", "overflow", "expert")):
            continue
        name = c.text(spec.get("name"), sp + ("name",), "a name")
        hours = _check_hours(c, spec.get("hours", "always"), sp + ("hours",))
        after_hours = spec.get("after_hours", "overflow")
        c.choice(after_hours, sp + ("after_hours",), ("overflow", "callback"))
        overflow_to = overflow_after = None
        if "overflow" in spec:
            op = sp + ("overflow",)
            if c.keys(spec["overflow"], op, ("to", "after_s")):
                overflow_to = spec["overflow"].get("to")
                overflow_after = c.seconds(spec["overflow"].get("after_s"), op + ("after_s",), 0, 3600)
        expert = spec.get("expert", False)
        if not isinstance(expert, bool):
            c.doc.problem(sp + ("expert",), f"{expert!r} must be true or false")
            expert = False
        skills[sid] = Skill(sid, name or sid, hours, after_hours, overflow_to, overflow_after, expert)
    # references and loops, once every id is known
    for sid, skill in skills.items():
        if skill.overflow_to is not None and skill.overflow_to not in skills:
            c.doc.problem(path + (sid, "overflow", "to"),
                          f"no skill {skill.overflow_to!r} (defined: {', '.join(skills)})")
        elif skill.overflow_to == sid:
            c.doc.problem(path + (sid, "overflow", "to"), "a group cannot overflow to itself")
    reported: set = set()
    for sid in skills:
        chain = [sid]
        nxt = skills[sid].overflow_to
        while nxt in skills and nxt not in chain:
            chain.append(nxt)
            nxt = skills[nxt].overflow_to
        if nxt in chain and nxt != chain[-1]:
            cycle = chain[chain.index(nxt):]
            if frozenset(cycle) not in reported:
                reported.add(frozenset(cycle))
                c.doc.problem(path + (cycle[0], "overflow", "to"),
                              "overflow loops back: " + " -> ".join(cycle + [cycle[0]]) + " (chains must end)")
    return skills


def _check_hours(c: _Checker, value, path) -> OpeningHours | None:
    if value == "always":
        return None
    if not isinstance(value, dict):
        c.doc.problem(path, f"{value!r} is not allowed (allowed: always, or {{days, open, close}})")
        return None
    if not c.keys(value, path, ("days", "open", "close")):
        return None
    days = c.choice(value.get("days"), path + ("days",), ("workdays", "everyday"))
    minutes = []
    for k in ("open", "close"):
        v = value.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            # YAML 1.1 reads an unquoted 08:30 as a sexagesimal number: 510
            v = f"{v // 60:02d}:{v % 60:02d}"
        if not isinstance(v, str) or not _HHMM.match(v):
            c.doc.problem(path + (k,), f"{v!r} is not a time of day (HH:MM, 00:00 to 24:00)")
            minutes.append(None)
        else:
            h, m = v.split(":")
            minutes.append(int(h) * 60 + int(m))
    if None in minutes or days is None:
        return None
    if minutes[0] >= minutes[1]:
        c.doc.problem(path + ("close",), "must be later than open")
        return None
    return OpeningHours(days, minutes[0], minutes[1])


def _check_hotline(c: _Checker, raw, skills) -> Line | None:
    path = ("hotline",)
    if not c.keys(raw, path, ("number", "name", "skill")):
        return None
    number = c.number(raw.get("number"), path + ("number",))
    name = c.text(raw.get("name"), path + ("name",), "a name")
    skill = _skill_ref(c, raw.get("skill"), path + ("skill",), skills, expert=False)
    if number in EMERGENCY_NUMBERS:
        c.doc.problem(path + ("number",), "an emergency number cannot be the hotline")
    if not (number and name and skill):
        return None
    return Line(number, name, "", "main", skill)


def _skill_ref(c: _Checker, value, path, skills, expert: bool | None) -> str | None:
    if value not in skills:
        c.doc.problem(path, f"no skill {value!r} (defined: {', '.join(skills) or 'none'})")
        return None
    if expert is True and not skills[value].expert:
        c.doc.problem(path, f"skill {value!r} is not an expert group (mark it expert: true)")
    if expert is False and skills[value].expert:
        c.doc.problem(path, f"skill {value!r} is an expert group: expert seats are reached only by transfer")
    return value


def _check_lines(c: _Checker, raw, skills) -> dict[str, Line]:
    path = ("lines",)
    lines: dict[str, Line] = {}
    if not isinstance(raw, dict):
        c.doc.problem(path, "must map each legacy number to its settings")
        return lines
    for key, spec in raw.items():
        lp = path + (key,)
        number = c.key_number(key, lp)
        if number in EMERGENCY_NUMBERS:
            c.doc.problem(lp, f"{number} is an emergency line: it cannot be merged or remapped")
            continue
        mode = spec.get("mode") if isinstance(spec, dict) else None
        by_mode = {"merge": ("transition", "after"), "subcenter": ("subcenter",)}
        required = ("name", "department", "mode", "skill") + by_mode.get(mode, ())
        optional = ("expert_skill",) if mode == "dual" else ()
        if mode not in MODES:  # the mode itself is reported; do not guess which keys belong
            optional = ("transition", "after", "subcenter", "expert_skill")
        misplaced = {k: f"only {m} lines have {k!r}; this line is {mode}"
                     for m, ks in list(by_mode.items()) + [("dual", ("expert_skill",))] for k in ks
                     if m != mode and mode in MODES}
        if not c.keys(spec, lp, required, optional, misplaced):
            continue
        name = c.text(spec.get("name"), lp + ("name",), "a name")
        department = c.text(spec.get("department"), lp + ("department",), "a department")
        mode = c.choice(mode, lp + ("mode",), MODES)
        skill = _skill_ref(c, spec.get("skill"), lp + ("skill",), skills, expert=False)
        line = dict(number=number, name=name, department=department, mode=mode, skill=skill)
        if mode == "merge":
            line.update(_check_merge(c, spec, lp))
        elif mode == "dual" and "expert_skill" in spec:
            line["expert_skill"] = _skill_ref(c, spec["expert_skill"], lp + ("expert_skill",), skills, expert=True)
        elif mode == "subcenter":
            line.update(_check_subcenter(c, spec.get("subcenter"), lp + ("subcenter",)))
        if number and name and department and mode and skill and None not in line.values():
            lines[number] = Line(**line)
    return lines


def _check_merge(c: _Checker, spec, lp) -> dict:
    out: dict = {"transition": None, "after_action": None}
    tp = lp + ("transition",)
    t = spec.get("transition")
    if c.keys(t, tp, ("from", "until", "prompt"), ("audio",)):
        starts = c.moment(t.get("from"), tp + ("from",), end_of_day=False)
        ends = c.moment(t.get("until"), tp + ("until",), end_of_day=True)
        prompt = c.text(t.get("prompt"), tp + ("prompt",), "the prompt")
        audio = None
        if "audio" in t:
            audio = c.text(t["audio"], tp + ("audio",), "an audio file name")
            if audio and (audio.startswith("/") or ".." in Path(audio).parts or "\\" in audio):
                # a backslash is a path separator to URL resolvers (Twilio <Play>) and to Windows
                c.doc.problem(tp + ("audio",), "must be a file name inside the prompts folder (no /, \\ or ..)")
                audio = None
        if starts and ends and starts >= ends:
            c.doc.problem(tp + ("until",), f"must be after from ({t.get('from')})")
        elif starts and ends and prompt:
            out["transition"] = TransitionPrompt(starts, ends, prompt, audio)
    ap = lp + ("after",)
    a = spec.get("after")
    action = a.get("action") if isinstance(a, dict) else None
    if c.keys(a, ap, ("action",) + (("text",) if action == "announce_and_hangup" else ()),
              ("text",) if action != "announce_and_hangup" else ()):
        action = c.choice(action, ap + ("action",), AFTER_ACTIONS)
        text = None
        if "text" in a or action == "announce_and_hangup":
            text = c.text(a.get("text"), ap + ("text",), "the notice")
            if text is None:
                action = None
        out["after_action"], out["after_text"] = action, text
    return out


def _check_subcenter(c: _Checker, spec, sp) -> dict:
    out: dict = {"subcenter_name": None, "subcenter_target": None}
    if not c.keys(spec, sp, ("name", "target")):
        return out
    out["subcenter_name"] = c.text(spec.get("name"), sp + ("name",), "a name")
    target = spec.get("target")
    target = str(c.doc.raw.get(sp + ("target",), target) or "").strip()
    if not (_PHONE_TARGET.match(target) or _SIP_TARGET.match(target)):
        c.doc.problem(sp + ("target",), f"{target!r} is not a phone number (digits, optional +) "
                                        "or SIP URI (sip:user@host)")
    else:
        out["subcenter_target"] = target
    return out


# The ACD's timers an admin may set under ``queue:`` (name -> (lowest, highest) seconds or
# count). Absent keys keep the ACD's defaults (call_routing/acd/core.py, docs/acd.md).
ACD_SETTINGS = {
    "ring_timeout_s": (5, 120),  # an offered seat that does not answer: auto-pause, next seat
    "callback_ring_timeout_s": (10, 300),  # the same for a callback offer
    "heartbeat_timeout_s": (10, 600),  # a console silent this long leaves rotation
    "wrapup_max_s": (0, 1800),  # wrap-up (话后整理) ends by itself after this
    "missed_call_callback_after_s": (0, 600),  # a caller who hangs up after waiting this long gets a callback
    "callback_attempts": (1, 10),  # dialing attempts per callback
    "callback_retry_s": (30, 86400),  # between two attempts
    "lost_after_s": (60, 3600),  # a waiting caller no front-end asked about this long is lost: callback
}


def _check_queue(c: _Checker, raw) -> tuple[int, int, dict]:
    path = ("queue",)
    if raw is None:
        return 30, 60, {}
    if not c.keys(raw, path, (), ("announce_every_s", "callback_offer_after_s", *ACD_SETTINGS)):
        return 30, 60, {}
    every = c.seconds(raw.get("announce_every_s", 30), path + ("announce_every_s",), 10, 600)
    offer = c.seconds(raw.get("callback_offer_after_s", 60), path + ("callback_offer_after_s",), 0, 3600)
    acd = {}
    for name, (low, high) in ACD_SETTINGS.items():
        if name not in raw:
            continue
        value = raw[name]
        if name.endswith("_s"):
            value = c.seconds(value, path + (name,), low, high)
        elif isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            c.doc.problem(path + (name,), f"{value!r} must be a whole number from {low} to {high}")
            value = None
        if value is not None:
            acd[name] = value
    return every or 30, offer if offer is not None else 60, acd


def _check_emergency(c: _Checker, raw, base_dir: Path) -> tuple[str | None, list[EmergencyLine], bytes, str]:
    path = ("emergency",)
    if not c.keys(raw, path, ("notice", "lines", "keywords_file")):
        return None, [], b"", ""
    notice = c.text(raw.get("notice"), path + ("notice",), "the notice")
    if notice:
        try:
            notice.format(number="110", name="公安报警")
        except (KeyError, IndexError, ValueError):
            c.doc.problem(path + ("notice",), "may use only {number} and {name} as placeholders")
            notice = None
    names = raw.get("lines")
    lp = path + ("lines",)
    if not isinstance(names, dict):
        c.doc.problem(lp, "must map 110, 119, 120 and 122 to their names")
        names = {}
    for key in names:
        if key not in EMERGENCY_NUMBERS:
            c.doc.problem(lp + (key,), f"{key!r} is not an emergency line; the emergency lines are fixed "
                                       f"(allowed: {', '.join(EMERGENCY_NUMBERS)})")
    for number in EMERGENCY_NUMBERS:
        if number not in names:
            c.doc.problem(lp, f"missing emergency line {number}: emergency lines cannot be removed")
        else:
            c.text(names[number], lp + (number,), "a name")
    kw_file = c.text(raw.get("keywords_file"), path + ("keywords_file",), "a file name")
    if not kw_file:
        return notice, [], b"", ""
    kw_path = (base_dir / kw_file)
    data, problems = read_rules_text(kw_path)
    if problems:
        for p in problems:
            c.doc.problem(path + ("keywords_file",), f"{kw_file}: {p.message}")
        return notice, [], b"", str(kw_path)
    kw_lines = _check_keywords(c, str(kw_path), data)
    out = []
    for number, (words, masked, unless) in kw_lines.items():
        if number in names and isinstance(names[number], str):
            out.append(_emergency_line(number, names[number].strip(), words, masked, unless))
    return notice, out, data, str(kw_path)


def _check_keywords(c: _Checker, name: str, data: bytes) -> dict:
    """The emergency keyword file: for each line, words, phrases to mask, and cancelling words."""
    text, problems = _decode(name, data)
    if problems:
        c.doc.problems.extend(problems)
        return {}
    raw, kdoc = parse_yaml(name, text)
    out = {}
    if raw is not None:
        kc = _Checker(kdoc)
        for key, spec in raw.items():
            if key not in EMERGENCY_NUMBERS:
                kdoc.problem((key,), f"{key!r} is not an emergency line (allowed: {', '.join(EMERGENCY_NUMBERS)})")
                continue
            if not kc.keys(spec, (key,), ("words",), ("except", "unless")):
                continue
            lists = []
            for k in ("words", "except", "unless"):
                items = spec.get(k) or []
                if not isinstance(items, list) or not all(isinstance(w, str) and w.strip() for w in items):
                    kdoc.problem((key, k), "must be a list of non-empty words")
                    items = []
                lists.append(tuple(dict.fromkeys(w.strip() for w in items)))
            if not lists[0]:
                kdoc.problem((key, "words"), "needs at least one word")
            out[key] = tuple(lists)
        for number in EMERGENCY_NUMBERS:
            if number not in raw:
                kdoc.problem((), f"no keywords for emergency line {number}")
    c.doc.problems.extend(kdoc.problems)
    return out


def _alternation(words) -> re.Pattern | None:
    if not words:
        return None
    return re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))


def _emergency_line(number, name, words, masked, unless) -> EmergencyLine:
    return EmergencyLine(number, name, words, masked, unless,
                         _alternation(words), _alternation(masked), _alternation(unless))


# ---------------------------------------------------------------------------------------
# Entry points


def check_rules(path: str | os.PathLike) -> tuple[Rules | None, list[Problem]]:
    """Validate a rules file: the compiled rules, or every problem found in it."""
    name = str(path)
    data, problems = read_rules_text(path)
    if problems:
        return None, problems
    text, problems = _decode(name, data)
    if problems:
        return None, problems
    raw, doc = parse_yaml(name, text)
    if raw is None:
        return None, doc.problems
    c = _Checker(doc)
    c.keys(raw, (), ("hotline", "emergency", "skills", "lines"), ("queue",))
    skills = _check_skills(c, raw.get("skills"))
    hotline = _check_hotline(c, raw.get("hotline"), skills)
    lines = _check_lines(c, raw.get("lines"), skills)
    if hotline and hotline.number in lines:
        c.doc.problem(("lines", hotline.number), f"{hotline.number} is the hotline itself; it cannot be a legacy line")
    announce_every, offer_after, acd_settings = _check_queue(c, raw.get("queue"))
    notice, emergency, kw_data, kw_path = _check_emergency(c, raw.get("emergency"), Path(path).resolve().parent)
    if doc.problems:
        return None, sorted(doc.problems, key=lambda p: (p.file != name, p.file, p.line))
    order = {n: i for i, n in enumerate(("120", "119", "110", "122"))}
    emergency.sort(key=lambda e: order[e.number])
    version = hashlib.sha256(data + b"\0" + kw_data).hexdigest()[:12]
    known = frozenset(lines) | {hotline.number} | set(EMERGENCY_NUMBERS)
    rules = Rules(
        path=name, version=version, hotline=hotline,
        lines=MappingProxyType(lines), skills=MappingProxyType(skills),
        emergency=tuple(emergency), emergency_notice=notice,
        announce_every_s=announce_every, callback_offer_after_s=offer_after,
        known_numbers=known, keywords_path=kw_path, acd_settings=MappingProxyType(acd_settings),
    )
    return rules, []


def load_rules(path: str | os.PathLike | None = None) -> Rules:
    """Load and validate rules (``RULES_PATH`` or the shipped file); raise RulesError if invalid."""
    path = path or os.environ.get("RULES_PATH") or DEFAULT_RULES_PATH
    rules, problems = check_rules(path)
    if problems:
        raise RulesError(problems)
    return rules
