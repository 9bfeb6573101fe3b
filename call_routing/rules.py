"""transfer_rules.yaml: load, validate, and compile into the :class:`Rules` the router reads.

Admins edit the YAML; a file is either fully valid or not loaded at all. Every problem is
reported at once, each as ``FILE:LINE: field: what is wrong (allowed: …)`` in the admins'
Chinese (``…: lines.12348.mode: 不允许的值「duel」（可选：merge, dual, subcenter）``) — never a
traceback. The YAML is read with the safe composer only (no tags that build objects, no
anchors/aliases), so a rules file can never run code or blow up memory. What the file may
contain is the model in :mod:`call_routing.schema`; this module reads the file with a line for
every key, validates it with the model, and places each problem at its line.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from call_routing import schema
from call_routing.schema import shown

CHINA_TZ = schema.CHINA_TZ  # China time: every module imports it from here
EMERGENCY_NUMBERS = schema.EMERGENCY_NUMBERS

MAX_RULES_BYTES = 2 * 1024 * 1024
DEFAULT_RULES_PATH = Path(__file__).resolve().parent.parent / "transfer_rules.yaml"
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
    greeting: str | None = None  # the line's own, else the hotline's


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
    possible: tuple[str, ...] = ()  # what a caller sees that may be this emergency (冒烟, 流血)
    possible_pattern: re.Pattern | None = None


@dataclass(frozen=True)
class RecordingPolicy:
    """Full-call recording for quality review (质检): ``hotline.recording`` in the rules."""

    full_call: bool = False
    keep_days: int = 180


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
    acd_settings: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # ACD timers (schema.Queue)
    recording: RecordingPolicy = RecordingPolicy()  # hotline.recording: full-call recording and its keep days

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
        self.problems: list[Problem] = []
        self.refused: set[str] = set()  # fields whose value was refused here (None to the model: said once)
        self._constructor = SafeConstructor()
        self._seen: set[int] = set()

    def problem(self, path: tuple, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(self.file, line or self.line_of(path), _dotted(path), message))

    def refuse(self, path: tuple, message: str, line: int) -> None:
        """The value at ``path`` cannot be read: said here, and read as None (the model says nothing more of it)."""
        self.refused.add(_dotted(path))
        self.problem(path, message, line)

    def problems_of(self, found) -> None:
        """The model's (path, message) problems, placed at their lines; none for a value refused already."""
        for where, message in found:
            if _dotted(where) not in self.refused:
                self.problem(where, message)

    def line_of(self, path: tuple) -> int:
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return self.where.get((), 1)

    def build(self, node, path: tuple = ()):
        if id(node) in self._seen:
            self.refuse(path, NO_ANCHORS, node.start_mark.line + 1)
            return None
        self._seen.add(id(node))
        self.where.setdefault(path, node.start_mark.line + 1)
        if node.tag not in _SAFE_TAGS:
            self.refuse(path, f"不允许使用 YAML 标签「{node.tag}」（只能写普通的值、列表和映射）",
                         node.start_mark.line + 1)
            return None
        if isinstance(node, MappingNode):
            out: dict = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    self.problem(path, "键只能是普通的词或数字", key_node.start_mark.line + 1)
                    continue
                key = str(key_node.value)
                key_path = path + (key,)
                if key in out:
                    self.problem(key_path, f"重复出现（第一次在第 {self.where[key_path]} 行）",
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
        try:
            value = self._constructor.construct_object(node, deep=True)
        except Exception:  # e.g. a timestamp like 2021-13-45, or !!int abc
            kind = node.tag.rsplit(":", 1)[-1]
            self.refuse(path, schema.NOT_A_MOMENT.format(v=shown(node.value)) if kind == "timestamp"
                        else f"无法把{shown(node.value)}读作 {kind}", node.start_mark.line + 1)
            return None
        return _WrittenInt(value, node.value) if type(value) is int else value


class _WrittenInt(int):
    """A YAML integer that remembers how it was written: ``+8612345`` or ``012345`` is a phone
    number to :mod:`call_routing.schema`, not 8612345 or 5349."""

    def __new__(cls, value: int, raw: str):
        self = super().__new__(cls, value)
        self.raw = raw
        return self


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


NO_ANCHORS = "不支持锚点和别名（& 和 *）：请把值完整写出"


def _os_error(exc: OSError) -> str:
    """Why a file cannot be read, in the admin's words (the system's own words kept for the rare rest)."""
    said = {errno.EACCES: "没有读取权限", errno.EPERM: "没有读取权限", errno.ENOTDIR: "路径中有一段不是目录",
            errno.ELOOP: "符号链接过多（可能成环）", errno.EIO: "磁盘读写错误", errno.ENAMETOOLONG: "文件名太长"}
    return "无法读取：" + said.get(exc.errno, exc.strerror or str(exc))


def read_rules_text(path: str | os.PathLike) -> tuple[bytes | None, list[Problem]]:
    """The bytes of a rules file, or one clear problem saying why it cannot be read."""
    name = str(path)
    p = Path(path)
    try:
        if p.is_dir():
            return None, [Problem(name, 0, "", "是目录，不是规则文件")]
        size = p.stat().st_size
    except FileNotFoundError:
        return None, [Problem(name, 0, "", "文件不存在")]
    except OSError as exc:
        return None, [Problem(name, 0, "", _os_error(exc))]
    if size > MAX_RULES_BYTES:
        return None, [Problem(name, 0, "", f"文件太大：{size / 1048576:.1f} MB，最大 "
                                          f"{MAX_RULES_BYTES // 1048576} MB")]
    try:
        data = p.read_bytes()
    except OSError as exc:
        return None, [Problem(name, 0, "", _os_error(exc))]
    return data, []


def _decode(name: str, data: bytes) -> tuple[str | None, list[Problem]]:
    if b"\x00" in data:
        return None, [Problem(name, 0, "", "是二进制文件，不是 UTF-8 编码的 YAML 文本")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [Problem(name, line, "", "不是 UTF-8 文本（请以 UTF-8 编码保存）")]
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        return None, [Problem(name, 0, "", "是空文件：规则文件至少要有 hotline, emergency, skills, lines")]
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
            doc.problems.append(Problem(name, deep, "", f"嵌套超过 {MAX_YAML_DEPTH} 层"))
            return None, doc
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        doc.problems.append(Problem(name, line, "", "YAML 格式错误：" + _yaml_problem(exc.problem or exc.context or "")))
        return None, doc
    except yaml.reader.ReaderError as exc:  # a control character: PyYAML gives its position, not a line
        line = text[: exc.position].count("\n") + 1
        doc.problems.append(Problem(name, line, "", f"YAML 格式错误：含有不允许的控制字符 U+{exc.character:04X}"
                            if isinstance(exc.character, int) else f"YAML 格式错误：{exc.reason}"))
        return None, doc
    except yaml.YAMLError as exc:
        doc.problems.append(Problem(name, 0, "", f"YAML 格式错误：{exc}"))
        return None, doc
    if node is None:
        doc.problems.append(Problem(name, 0, "", "是空文件"))
        return None, doc
    value = doc.build(node)
    if not isinstance(value, dict):
        doc.problems.append(Problem(name, node.start_mark.line + 1, "",
                                    "应为由各部分组成的映射（hotline, queue, emergency, skills, lines）"))
        return None, doc
    return value, doc


#: PyYAML's words for malformed YAML (its ``problem``), each as the admin reads it; \1 is what it found
_YAML_PROBLEMS = [(re.compile(pattern), said) for pattern, said in (
    (r"^mapping values are not allowed here$", "这里不能出现“: ”（检查缩进；值里含“: ”时请给值加引号）"),
    (r"^could not find expected ':'$", "找不到应有的冒号 :（检查键后的冒号，以及引号是否成对）"),
    (r"^found character '\\t' that cannot start any token$", "不能用 Tab 缩进，请改用空格"),
    (r"^found character (.+) that cannot start any token$", r"字符 \1 不能出现在这里（含特殊字符的值请加引号）"),
    (r"^expected <block end>, but found", "缩进不一致（同一层的键要对齐）"),
    (r"^expected ',' or '\]', but got", "方括号 [ 没有闭合，或列表项之间缺少逗号"),
    (r"^expected ',' or '\}', but got", "花括号 { 没有闭合，或各项之间缺少逗号"),
    (r"^found unexpected end of stream$", "文件意外结束（引号或括号没有闭合）"),
    (r"^expected the node content, but found", "这里缺少值"),
    (r"^sequence entries are not allowed here$", "这里不能出现列表项“- ”（检查缩进）"),
    (r"^mapping keys are not allowed here$", "这里不能出现“? ”（检查缩进）"),
    (r"^found unknown escape character (.+)$", r"双引号里有未知的转义字符 \1（反斜杠请写成 \\\\，或改用单引号）"),
    (r"^found (undefined alias|duplicate anchor)", NO_ANCHORS),
    (r"^(expected a single document in the stream|found unexpected document separator|but found another document)$",
     "一个文件只能有一个 YAML 文档（不要写 ---）"),
    (r"^expected alphabetic or numeric character", "& 或 * 后缺少名称（不支持锚点和别名；值里有 & 或 * 时请加引号）"),
    (r"^expected '<document start>', but found", "以 % 开头的行是 YAML 指令，其后须有 ---（值以 % 开头时请加引号）"),
    (r"^found incompatible YAML document", "不支持的 YAML 版本（%YAML 只能是 1.x）"),
    (r"^found duplicate YAML directive$", "%YAML 指令写了两次"),
    (r"^expected (chomping or indentation indicators|indentation indicator)",
     "| 或 > 后只能写 +、- 或 1 到 9 的数字（多行文本的标记）"),
    (r"^expected escape sequence of (\d+) hexadecimal numbers", r"双引号里的 \\x、\\u 或 \\U 后须有 \1 位十六进制数字"),
    (r"^expected a comment or a line break, but found (.+)$", r"这一行多出了 \1（后面只能写 # 注释）"),
    (r"^(found undefined tag handle|found non-specific tag|expected URI|expected '[!>]'|expected ' ', but found)",
     "YAML 标签（!）写法有误；规则文件不使用标签"),
)]


def _yaml_problem(problem: str) -> str:
    """PyYAML's words for malformed YAML in the admin's (its own kept for the rare rest, after YAML 格式错误)."""
    for pattern, said in _YAML_PROBLEMS:
        found = pattern.search(problem)
        if found:
            return found.expand(said)
    return problem or "无法解析"


# ---------------------------------------------------------------------------------------
# Validating with the model (call_routing/schema.py) and compiling


def check_rules(path: str | os.PathLike) -> tuple[Rules | None, list[Problem]]:
    """Validate a rules file: the compiled rules, or every problem found in it."""
    name = str(path)
    data, raw, doc, problems = read_yaml(path)
    if raw is None:
        return None, problems
    spec, found = schema.validate(schema.RulesFile, raw)
    doc.problems_of(found + schema.references(raw))
    keywords, kw_data, kw_path = _keywords(doc, raw.get("emergency"), Path(path).resolve().parent)
    if doc.problems:
        return None, sorted(doc.problems, key=lambda p: (p.file != name, p.file, p.line))
    version = hashlib.sha256(data + b"\0" + kw_data).hexdigest()[:12]
    return _compile(spec, keywords, name, version, kw_path), []


def read_yaml(path) -> tuple[bytes | None, dict | None, _Doc | None, list[Problem]]:
    """A YAML file's bytes and values, with a line for every key; or why it cannot be read — every
    YAML file the product reads goes through here: size, encoding and nesting depth are bounded."""
    data, problems = read_rules_text(path)
    text, problems = _decode(str(path), data) if data is not None else (None, problems)
    if text is None:
        return data, None, None, problems
    raw, doc = parse_yaml(str(path), text)
    return data, raw, doc, doc.problems


def _keywords(doc: _Doc, emergency, base_dir: Path) -> tuple[schema.KeywordsFile | None, bytes, str]:
    """The emergency keyword file named by ``emergency.keywords_file``; its problems point into it."""
    kw_file = emergency.get("keywords_file") if isinstance(emergency, dict) else None
    if not isinstance(kw_file, str) or not kw_file.strip():
        return None, b"", ""  # the model says what is wrong with it
    kw_path = base_dir / kw_file.strip()
    data, raw, kdoc, problems = read_yaml(kw_path)
    if data is None:  # said at keywords_file
        for p in problems:
            doc.problem(("emergency", "keywords_file"), f"{kw_file.strip()}：{p.message}")
        return None, b"", str(kw_path)
    keywords, found = schema.validate(schema.KeywordsFile, raw) if raw is not None else (None, [])
    if kdoc is not None:
        kdoc.problems_of(found)
    doc.problems.extend(kdoc.problems if kdoc else problems)
    return keywords, data, str(kw_path)


def _compile(spec: schema.RulesFile, keywords: schema.KeywordsFile, name: str, version: str, kw_path: str) -> Rules:
    lines = {number: _line(number, s, spec.hotline.greeting) for number, s in spec.lines.items()}
    skills = {sid: _skill(sid, s) for sid, s in spec.skills.items()}
    hotline = Line(spec.hotline.number, spec.hotline.name, "", "main", spec.hotline.skill,
                   greeting=spec.hotline.greeting)
    names, words = spec.emergency.lines.model_dump(by_alias=True), keywords.model_dump(by_alias=True)
    queue = spec.queue
    return Rules(
        path=name, version=version, hotline=hotline,
        lines=MappingProxyType(lines), skills=MappingProxyType(skills),
        emergency=tuple(_emergency_line(n, names[n], *words[n].values()) for n in ("120", "119", "110", "122")),
        emergency_notice=spec.emergency.notice,
        announce_every_s=queue.announce_every_s, callback_offer_after_s=queue.callback_offer_after_s,
        known_numbers=frozenset(lines) | {hotline.number} | set(EMERGENCY_NUMBERS), keywords_path=kw_path,
        acd_settings=MappingProxyType({k: getattr(queue, k) for k in list(schema.Queue.model_fields)[2:]
                                       if k in queue.model_fields_set}),  # the ACD's timers, as set
        recording=RecordingPolicy(spec.hotline.recording.full_call, spec.hotline.recording.keep_days),
    )


def _line(number: str, s: schema.Line, greeting: str) -> Line:
    t, after, sub = (getattr(s, k, None) for k in ("transition", "after", "subcenter"))
    return Line(number, s.name, s.department, s.mode, s.skill,
                t and TransitionPrompt(t.starts, t.until, t.prompt, t.audio), after and after.action,
                after and after.text, getattr(s, "expert_skill", None), sub and sub.name, sub and sub.target,
                s.greeting or greeting)


def _skill(sid: str, s: schema.Skill) -> Skill:
    hours = s.hours and OpeningHours(s.hours.days, schema.minutes(s.hours.open), schema.minutes(s.hours.close))
    return Skill(sid, s.name, hours, s.after_hours, s.overflow and s.overflow.to, s.overflow and s.overflow.after_s,
                 s.expert)


GAP = "…"  # in an emergency phrase: "拉上…车" is 拉上, then 车 within GAP_CHARS of the same clause
GAP_CHARS = 8
_GAP_PATTERN = f"[^，。,.!?！？；;]{{0,{GAP_CHARS}}}?"


def _phrase(word: str) -> str:
    return _GAP_PATTERN.join(re.escape(part) for part in word.split(GAP))


def _alternation(words) -> re.Pattern | None:
    if not words:
        return None
    return re.compile("|".join(_phrase(w) for w in sorted(words, key=len, reverse=True)))


def _emergency_line(number, name, words, masked, unless, possible=()) -> EmergencyLine:
    return EmergencyLine(number, name, words, masked, unless,
                         _alternation(words), _alternation(masked), _alternation(unless),
                         possible, _alternation(possible))


def load_rules(path: str | os.PathLike | None = None) -> Rules:
    """Load and validate rules (``RULES_PATH`` or the shipped file); raise RulesError if invalid."""
    path = path or os.environ.get("RULES_PATH") or DEFAULT_RULES_PATH
    rules, problems = check_rules(path)
    if problems:
        raise RulesError(problems)
    return rules
