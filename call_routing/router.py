"""The routing core: (dialed, caller, time, what was heard) -> :class:`Decision`. No I/O.

Every front-end (Twilio webhooks, the AGI script, the FastAGI server, the simulator) asks
:func:`decide` and then only renders the steps. Steps are plain mappings with ``do`` in
``say | play | listen | enqueue | transfer | conference | hangup`` (DESIGN.md §4). No menu is
ever put between a caller and a human: a decision is at most one sentence, then a queue or
a transfer.

Steps are built once per rules set (:class:`_Plans`) and shared by every decision, so a
decision costs a dictionary lookup and a time comparison; treat them as read-only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from weakref import WeakKeyDictionary

from .numbers import service_number
from .rules import CHINA_TZ, EmergencyLine, Line, Rules

LANGUAGE = "zh-CN"


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one call, and the rules version that decided it."""

    line: str  # the entry line matched ("12301"), or the hotline ("12345")
    mode: str  # merge | dual | subcenter | main | emergency
    rules_version: str
    steps: tuple  # read-only step mappings, in order
    skill: str | None = None  # the seat group the call waits for, when it is queued
    emergency: str | None = None  # "110" / "119" / "120" / "122" when one was heard
    transfers: tuple = ()  # three-way transfers an agent can start for this line

    def to_dict(self) -> dict:
        return {
            "line": self.line,
            "mode": self.mode,
            "rules_version": self.rules_version,
            "skill": self.skill,
            "emergency": self.emergency,
            "steps": [dict(s) for s in self.steps],
            "transfers": [dict(t) for t in self.transfers],
        }


def _step(**fields) -> MappingProxyType:
    return MappingProxyType(fields)


def _say(text: str, audio: str | None = None) -> MappingProxyType:
    if audio:
        return _step(do="play", file=audio, text=text)
    return _step(do="say", text=text, language=LANGUAGE)


def _enqueue(skill: str, line: str) -> MappingProxyType:
    return _step(do="enqueue", skill=skill, line=line)


def conference_options(rules: Rules, line: Line) -> tuple:
    """The three-way transfers (三方转接) an agent answering ``line`` can start."""
    options = []
    if line.expert_skill:
        expert = rules.skills[line.expert_skill]
        options.append(_step(do="conference", kind="expert", skill=expert.id, name=expert.name, line=line.number))
    if line.subcenter_target:
        options.append(_step(do="conference", kind="subcenter", number=line.subcenter_target,
                             name=line.subcenter_name, line=line.number))
    return tuple(options)


class _Plans:
    """Every decision a rules set can produce, built once."""

    def __init__(self, rules: Rules):
        v = rules.version
        hot = rules.hotline
        self.main = Decision(hot.number, "main", v, (_say(hot.greeting), _enqueue(hot.skill, hot.number)), hot.skill)
        self.by_line: dict[str, tuple] = {}
        for number, line in rules.lines.items():
            transfers = conference_options(rules, line)
            greeting = (_say(line.greeting),)  # one sentence, no menu (a merge line's own prompt replaces it)
            normal = Decision(number, line.mode, v, greeting + (_enqueue(line.skill, number),), line.skill, None,
                              transfers)
            if line.mode == "merge":
                t = line.transition
                during = Decision(number, "merge", v, (_say(t.prompt, t.audio), _enqueue(line.skill, number)),
                                  line.skill, None, transfers)
                if line.after_action == "announce_and_hangup":
                    after = Decision(number, "merge", v, (_say(line.after_text), _step(do="hangup")),
                                     None, None, ())
                else:
                    steps = ((_say(line.after_text),) if line.after_text else greeting) + (_enqueue(line.skill, number),)
                    after = Decision(number, "merge", v, steps, line.skill, None, transfers)
                self.by_line[number] = (t.starts.timestamp(), t.ends.timestamp(), normal, during, after)
            elif line.mode == "subcenter":
                transfer = _step(do="transfer", number=line.subcenter_target, name=line.subcenter_name,
                                 fallback_skill=line.skill)
                self.by_line[number] = (None, None, Decision(number, "subcenter", v, greeting + (transfer,), None,
                                                             None, transfers), None, None)
            else:
                self.by_line[number] = (None, None, normal, None, None)
        self.emergency = {}
        for e in rules.emergency:
            self.emergency[e.number] = (
                _say(rules.emergency_notice.format(number=e.number, name=e.name)),
                _step(do="transfer", number=e.number, name=e.name, fallback_skill=hot.skill),
            )


_plans: WeakKeyDictionary = WeakKeyDictionary()


def _plans_for(rules: Rules) -> _Plans:
    plans = _plans.get(rules)
    if plans is None:
        plans = _plans[rules] = _Plans(rules)
    return plans


# What stands just before an emergency word and takes it back. Negated: it did not happen
# (没着火, 不是要报警): nothing to do. Hypothetical: it may happen, or the caller only feels like
# it (怕着火, 真要着火了, 我都想报警了): never an automatic transfer, a seat hears it first.
# In a recogniser's text a space is where the caller paused: a clause ends there (我好怕 着火了
# is a fire now).
_NEGATED = re.compile(r"(?:没有?|不是|并非|别|未|不用|不需要|用不着|唔系|唔使|冇)[^，。,.!?！？；;]{0,2}$")
# …but a negation whose window is a pause and then 真 is the caller insisting (哈哈 不是 真着火了:
# "no — it really is on fire"), not 不是真着火了 ("it is not really on fire"). Vosk's words are
# joined without spaces (intake.speech.join_words): a space here is a pause the caller made.
_PAUSE_THEN_REAL = re.compile(r"\s真$")
_HYPOTHETICAL = re.compile(r"(?:真要|以防|防止|容易|会不会|想|预防|差点|差一点|小心|迟早|早晚|以为|哪天|随时|会)"
                           r"[^，。,.!?！？；;\s]{0,3}$")
# a fear or a condition reaches over its whole clause (怕着火, 怕家里燃气泄露着火, 万一着火)
_FEAR_CLAUSE = re.compile(r"(?:怕|惊|担心|万一|如果|要是|假如|一旦)[^，。,.!?！？；;\s]{0,14}$")
# 真着火了怎么办 / 真着火了我咋下去 / 真着火了消防车都进不来: "if it really…", told by what would follow
_IF_REALLY = re.compile(r"^[^，。,.!?！？；;]{0,8}?(?:怎么|咋|都|就|是不是)")
# 着火了都不知道, 着火消防车都进不来, 着火了都没法跑: what would happen, not what happens
_UNNOTICED = re.compile(r"^了?(?:都|也)(?:没人|不)知道|^[^，。,.!?！？；;\s]{0,6}(?:都|也)(?:进不来|进不去|过不去|开不进|入唔到"
                        r"|没法跑(?!了))")  # 都出不去了, 都没法跑了: trapped now
# 烧起来咋整, 着火怎么办, 燃气泄漏的话: what to do if it happens (着火了怎么办 is a fire now)
_WHAT_IF = re.compile(r"^(?:的话|咋整|咋办|怎么办|怎么弄)")
# 溺水的人救上来是先控水还是先按压: which to do first, a first-aid question
_WHICH_FIRST = re.compile(r"^[^，。,.!?！？；;]{0,12}?是先[^，。,.!?！？；;]{0,8}?还是")
_CONTEXT_CHARS = 6
# The spoken passive (让车撞了, 叫狗咬了, 给人打了) read as the written one (被): one character for one
_PASSIVE = re.compile(r"[让叫给](?=(?:车|人|狗|蛇|马蜂|蜂|东西)[^，。,.!?！？；;\s]{0,2}?(?:撞|咬|蛰|蜇|打|压|轧|碾|砸|刮|砍|捅|扎))")
# What the caller likens it to (跟爆炸似的, 像着火了一样), saw on a screen (电视上演电梯掉下去) or dreamt:
# it may still be what it sounds like, so a seat hears the caller first — never an automatic transfer.
_SIMILE = re.compile(r"^了?(?:似的|一样|一般|那样)")
_ON_SCREEN = re.compile(r"(?:电视|新闻|视频|电影|电视剧|抖音|快手|梦见|做梦|梦里)[^，。,.!?！？；;\s]{0,10}$")
_A_FILM_OF = re.compile(r"^[^，。,.!?！？；;\s]{0,6}?的(?:电影|电视剧|新闻|视频|节目|短视频)")  # 看了个拐卖小孩的电影
# asked about, in the same breath (就问问老人噎着了该咋弄): a first-aid question, or a real need
# said shyly — a seat hears it first
_ASKED_ABOUT = re.compile(r"(?:就|只|只是|随便|就想|想)问问[^，。,.!?！？；;\s]{0,14}$")
# heard from others (刷短视频看到说…起火了 是真的假的啊, 听说…): a rumour the caller checks
_HEARSAY = re.compile(r"(?:听说|看到说|网上说|群里说|听人说|听别人说)[^，。,.!?！？；;\s]{0,16}$")
_RUMOUR_CHECKED = re.compile(r"^[^。！？!?]{0,16}?(?:是真的假的|真的假的|是真的吗|是不是真的)")
# said, then taken back or explained by the caller (杀人啦 不是不是 我是说菜价要杀人了; 喊杀人啦 其实是…
# 排练小品): a seat hears them
_CORRECTED = re.compile(r"^[啦了啊呀吧]?[\s，,。.!！]*(?:不是不是|不对不对|说错了|口误|其实是|其实就是|原来是)")
_I_MEANT = re.compile(r"我是说[^，。,.!?！？；;\s]{0,10}$")


def _taken_back(text: str, start: int, end: int) -> bool:
    """Whether the words around ``text[start:end]`` take it back: negated, hypothetical, or
    "if it really…" (真着火了怎么办), "…nobody would know" (着火了都不知道) and "what if…"
    (烧起来咋整)."""
    before = text[max(0, start - _CONTEXT_CHARS):start]
    return bool((_NEGATED.search(before) and not _PAUSE_THEN_REAL.search(before)) or _HYPOTHETICAL.search(before)
                or _FEAR_CLAUSE.search(text[max(0, start - 16):start])
                or (before.endswith("真") and _IF_REALLY.search(text[end:end + 12]))
                or _UNNOTICED.search(text[end:end + 12])
                or _WHICH_FIRST.search(text[end:end + 24])
                or (not text[start:end].endswith("了") and _WHAT_IF.search(text[end:end + 5])))


_REMOVE_REACH = 24  # each pattern bounds its own reach; this only keeps the search short


def _at_a_remove(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is only likened to (跟爆炸似的), seen on a screen (电视上演…), dreamt,
    asked about (就问问…噎着了该咋弄), heard from others (看到说…起火了 是真的假的) or said and
    corrected (杀人啦 不是不是 我是说…): it may still be what it sounds like, so a seat hears it."""
    before, after = text[max(0, start - _REMOVE_REACH):start], text[end:end + _REMOVE_REACH]
    return bool(_SIMILE.search(after) or _A_FILM_OF.search(after) or _RUMOUR_CHECKED.search(after)
                or _CORRECTED.search(after) or _ON_SCREEN.search(before) or _ASKED_ABOUT.search(before)
                or _HEARSAY.search(before) or _I_MEANT.search(before))


# An ``unless`` word (上个月, 理赔) speaks of the emergency words near it, not of the whole call:
# "医保异地备案咋弄…哎老头你咋了…喊不醒" is an emergency although it began with 医保.
UNLESS_REACH = 24
# A time word whose matter goes on now (昨天下午出去到现在还没回来), or a condition had before
# (以前就有冠心病), does not say the matter is over.
_TIME_WORD = re.compile(r"(?:天|日|年|月|周|礼拜|星期|前|次|回|晚上?|早上|午|夜里?)$")
_GOES_ON = re.compile(r"^[^，。,.!?！？；;\s]{0,8}?(?:到现在|至今|到今天)|^就有")


# A time word the caller has moved on from to now (昨晚在屋里烧炭取暖，早上去喊他…没动静) leaves
# the words after it possible: a seat hears the caller first
_NOW = re.compile(r"现在|刚才|刚刚|这会儿|眼下|今天|今早|(?<![天晚昨])早上")


# A joke denied (不是开玩笑, 我没跟你开玩笑, 不是闹着玩的) is a caller insisting it is real; 别开玩笑
# (stop joking) is not a denial. ``_DENIED`` reads a drill's denial too (不是演习, below)
_JOKE = re.compile(r"玩笑|闹着玩|逗你玩|哈哈|笑死")
_DENIED = re.compile(r"(?:不是|没有?|并非|冇|唔系)[^，。,.!?！？；;\s]{0,4}$")


# A drill spoken of (演习, 演练: 广播喊着火了…那是演习吧) leaves the danger words near it possible,
# never silenced: fires break out during drills too. A drill denied (不是演习), or followed by a
# danger said to be real (演练的时候仓库真着火了), is a caller insisting, as with a joke denied
_DRILL = re.compile(r"演习|演练")
_NOT_REAL = re.compile(f"{_JOKE.pattern}|{_DRILL.pattern}")
_SAID_REAL = re.compile(r"(?<![当别认])真(?:的|是)?$")  # 真着火了, 真的着火了; not 当真, 别当真


# "all right" said of before (刚才还好好的 突然…) or asked (现在没事吧 不对…): not over
_FINE = re.compile(r"好好的|没事")
_WAS_FINE = re.compile(r"(?:还|本来|原来|之前|刚才|刚刚)$")
_ASKED_FINE = re.compile(r"^[吧吗嘛么？?]")


def _says_over(text: str, found: re.Match) -> bool:
    """Whether the ``unless`` word ``found`` in ``text`` says the matter is over: a time word
    followed by 到现在 or 就有 does not, nor a joke or drill denied (不是开玩笑 真着火了), nor "all right"
    said of a moment before (刚才还好好的) or asked (现在没事吧)."""
    word = found.group(0)
    if _NOT_REAL.search(word) and _DENIED.search(text[max(0, found.start() - 8):found.start()]):
        return False
    if _FINE.search(word) and (_WAS_FINE.search(text[max(0, found.start() - 4):found.start()])
                               or _ASKED_FINE.search(text[found.end():found.end() + 1])):
        return False
    return not (_TIME_WORD.search(found.group(0)) and _GOES_ON.search(text[found.end():found.end() + 14]))


def _over(text: str, said: list[re.Match], start: int, end: int) -> str | None:
    """What the ``unless`` words ``said`` near ``text[start:end]`` make of it: ``"over"`` (silenced),
    ``"before"`` (only time words the caller moved on from to now: 昨晚…早上去喊他…没动静, or a drill
    spoken of: possible) or None."""
    near = [m for m in said if m.start() - UNLESS_REACH <= end and start <= m.end() + UNLESS_REACH]
    if _SAID_REAL.search(text[max(0, start - 3):start]):  # 演练的时候…真着火了: not a drill, not a joke
        near = [m for m in near if not (_NOT_REAL.search(m.group(0)) and m.end() <= start)]
    if not near:
        return None
    if all(_DRILL.search(m.group(0)) for m in near):  # only a drill spoken of: possible
        return "before"
    moved_on = all(m.end() <= start and _TIME_WORD.search(m.group(0)) and _NOW.search(text[m.end():start])
                   for m in near)
    return "before" if moved_on else "over"


def emergency_assessment(rules: Rules, text: str | None) -> tuple[EmergencyLine | None, EmergencyLine | None]:
    """``(certain, possible)``: the emergency line the caller's words call for now (transfer at
    once), else one they may be describing (a seat should hear the caller first).

    Lines are tried in precedence 120, 119, 110, 122. A line's ``unless`` words (past,
    administrative) silence its words within ``UNLESS_REACH`` characters; an ``except`` phrase
    hides the word inside it; a negated or hypothetical word (没着火, 怕着火) counts for nothing;
    a ``possible`` word (what the caller sees: smoke, blood, someone lying on the road), or a
    word at a remove — likened to (跟爆炸似的), seen on a screen (电视上演…), asked about, heard from
    others, said and corrected, spoken of with a drill (演习, 演练) — or told after a time word the caller moved on from
    (昨晚…早上去喊他), makes the line possible.
    """
    certain = possible = None
    if not text:
        return None, None
    text = _PASSIVE.sub("被", text)  # 让车撞倒了 is 被车撞倒了, for the words and their exceptions alike
    for line in rules.emergency:
        unless = ([m for m in line.unless_pattern.finditer(text) if _says_over(text, m)]
                  if line.unless_pattern else [])
        probe = line.mask_pattern.sub(lambda m: "□" * len(m.group(0)), text) if line.mask_pattern else text
        for pattern, sure in ((line.pattern, True), (line.possible_pattern, False)):
            for m in pattern.finditer(probe) if pattern is not None else ():
                if _taken_back(probe, m.start(), m.end()):
                    continue
                over = _over(text, unless, m.start(), m.end())
                if over == "over":
                    continue
                if sure and not over and not _at_a_remove(probe, m.start(), m.end()):
                    return line, None
                possible = possible or line
    return certain, possible


def emergency_heard(rules: Rules, text: str | None) -> EmergencyLine | None:
    """The emergency line the caller's words call for now, or None (see :func:`emergency_assessment`)."""
    return emergency_assessment(rules, text)[0]


def decide(dialed: str, caller: str | None, at: datetime | float | None, heard_text: str | None,
           rules: Rules) -> Decision:
    """Route one call. ``at`` is an aware datetime, a naive one in China time, or a Unix time.

    ``caller`` is not used by the shipped rules but is part of the question a front-end asks
    (blocked or priority callers are rules a city may add).
    """
    plans = _plans_for(rules)
    number = service_number(dialed, rules.known_numbers)
    if heard_text:
        heard = emergency_heard(rules, heard_text)
        if heard is not None:
            line = number if number in rules.known_numbers else rules.hotline.number
            return Decision(line, "emergency", rules.version, plans.emergency[heard.number], None, heard.number)
    if number in plans.emergency:  # someone dialed 110 through us: hand it straight over
        return Decision(number, "emergency", rules.version, plans.emergency[number][1:], None, number)
    plan = plans.by_line.get(number)
    if plan is None:
        return plans.main
    starts, ends, normal, during, after = plan
    if starts is None:
        return normal
    ts = _timestamp(at)
    if ts < starts:
        return normal
    return during if ts < ends else after


def _timestamp(at) -> float:
    if at is None:
        return datetime.now(CHINA_TZ).timestamp()
    if isinstance(at, (int, float)):
        return float(at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=CHINA_TZ)
    return at.timestamp()


def three_way(rules: Rules, line_number: str, kind: str) -> MappingProxyType:
    """The ``conference`` step for an agent pulling a sub-center or expert group into a call.

    ``kind`` is ``subcenter`` or ``expert``; ``line_number`` names whose sub-center/experts.
    Raises ``LookupError`` with a sentence an agent understands when there is none.
    """
    line = rules.lines.get(line_number)
    if line is None:
        raise LookupError(f"{line_number} 不是并入 12345 的原热线，没有可转接的对象")
    for option in conference_options(rules, line):
        if option["kind"] == kind:
            return option
    what = "分中心" if kind == "subcenter" else "专家坐席组"
    raise LookupError(f"{line_number} {line.name} 没有{what}")
