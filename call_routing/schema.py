"""What transfer_rules.yaml and its emergency keyword file may contain: one declarative model.

Every key's type, range, allowed values, default, and whether it is required or unknown is
declared here (pydantic v2), with the message an admin reads when a value does not fit (in
Chinese: the admins are a 12345 centre's telecom engineers; keys, allowed values and the value as
written stay literal, e.g. ``不允许的值「duel」（可选：merge, dual, subcenter）``) and a
``description`` for the admin's YAML editor (:func:`json_schema`). :mod:`call_routing.rules`
reads the YAML with a line for every key and places each problem of :func:`validate` and
:func:`references` (what relates sections: skills named exist, overflow chains end) at its line.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from functools import cache
from pathlib import PurePath
from typing import Annotated, ClassVar, Literal, Union, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationError,
                      field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

#: China has one time zone and no daylight saving: a fixed offset needs no tz database.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
EMERGENCY_NUMBERS = ("110", "119", "120", "122")
_NUMBER = re.compile(r"^[0-9]{3,11}$")
_TARGET = re.compile(r"^\+?[0-9]{3,15}$|^sips?:[A-Za-z0-9_.!~*'()&=+$,;?/%-]+@[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_SKILL_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")


# ---------------------------------------------------------------------------------------
# Field types, each refusing a value with the message the admin reads


def _fail(message: str):
    raise PydanticCustomError("rules", message)


def _rule(test, message: str, then=None, after=False, **schema):
    """A validator: ``then(v)`` (or v) if ``test(v)``, else ``message`` with ``{v}`` (the value as
    :func:`shown`) or ``{raw}`` (the value itself) filled in."""
    def check(v):
        if not test(v):
            _fail(message.format(v=shown(v), raw=v))
        return then(v) if then else v
    return AfterValidator(check) if after else BeforeValidator(check, **schema)


def _raw(value) -> str:
    """A scalar as written in the file: the YAML reader keeps the text of numbers (``+86…``, ``012…``)."""
    return str(getattr(value, "raw", value) if value is not None else "").strip()


def shown(value) -> str:
    """A value in a message, as the admin wrote it: 「duel」, 「25:00」, 「0」, 「true」; nothing written is 空值."""
    if value is None:
        return "空值"
    if isinstance(value, bool):
        return "「true」" if value else "「false」"
    return f"「{_raw(value) if isinstance(value, int) else value}」"


MAX_PROMPT_CHARS = 300  # a prompt is spoken to every caller of its line: 300 characters is over a minute
MAX_NAME_CHARS = 80
#: what every caller hears first when the rules say nothing else (one sentence, no menu)
DEFAULT_GREETING = "您好，这里是12345政务服务便民热线，正在为您接通坐席。"


def _text(what: str, limit: int = MAX_NAME_CHARS):
    subject = what + " " if what[-1].isascii() else what  # 坐席组 id 不能为空, 提示语不能为空
    return Annotated[str, Field(json_schema_extra={"maxLength": limit}),  # for the editor; the check below words it
                     _rule(lambda v: isinstance(v, str), f"应为{what}（文字），而不是{{v}}", str.strip),
                     _rule(lambda v: v is not None and not (isinstance(v, str) and not v.strip()),
                           f"{subject}不能为空"),
                     _rule(lambda v: len(v) <= limit, f"{subject}太长：最多 {limit} 个字符", after=True)]


def not_allowed(allowed: str) -> str:
    """A value that is not one of ``allowed``: 不允许的值「duel」（可选：merge, dual, subcenter）."""
    return f"不允许的值{{v}}（可选：{allowed}）"


def _one_of(*allowed: str):
    return Annotated[Literal[allowed], _rule(lambda v: v in allowed, not_allowed(", ".join(allowed)))]


def _whole(low: int, high: int, unit: str = "（秒）"):
    return Annotated[int, Field(ge=low, le=high), _rule(
        lambda v: type(v) is not bool and isinstance(v, int) and low <= v <= high,
        f"{{v}}应为 {low} 到 {high} 之间的整数{unit}", int)]


def _written(regex: re.Pattern, message: str):
    return Annotated[str, Field(pattern=regex.pattern), _rule(regex.match, message), BeforeValidator(_raw)]


NOT_A_MOMENT = "{v}不是有效的日期或时间（例：2021-01-01 或 2021-01-01 08:00）"


def _moment(end_of_day: bool):
    def check(v):
        if isinstance(v, str):
            try:
                v = datetime.fromisoformat(v)
            except ValueError:
                pass
        if isinstance(v, datetime):
            return v if v.tzinfo else v.replace(tzinfo=CHINA_TZ)
        if isinstance(v, date):  # a date alone is the whole day
            return datetime.combine(v + timedelta(days=end_of_day), time(0), CHINA_TZ)
        _fail(NOT_A_MOMENT.format(v=shown(v)))
    return Annotated[datetime, BeforeValidator(check, json_schema_input_type=Union[date, datetime])]


def minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def _formats(text: str) -> bool:
    try:
        text.format(number="110", name="公安报警")
    except (KeyError, IndexError, ValueError):
        return False
    return True


Name, Department, SkillRef, FileName = _text("名称"), _text("主管部门"), _text("坐席组 id"), _text("文件名")
Notice, Prompt = _text("提示语", MAX_PROMPT_CHARS), _text("提示语", MAX_PROMPT_CHARS)
ServiceNumber = _written(_NUMBER, "{v}不是服务号码（3 到 11 位数字，不带 + 和区号）")
SkillId = _written(_SKILL_ID, "{v}不是有效的坐席组 id（小写字母开头，只用小写字母、数字和 _，如 legal_expert）")
Target = _written(_TARGET, "{v}不是电话号码（数字，可带 +）或 SIP 地址（sip:user@host）")
Days, AfterHours, Attempts = _one_of("workdays", "everyday"), _one_of("overflow", "callback"), _whole(1, 10, "")
Flag = Annotated[bool, _rule(lambda v: isinstance(v, bool), "{v}应为 true 或 false")]
TimeOfDay = Annotated[str, Field(pattern=_HHMM.pattern), _rule(
    lambda v: isinstance(v, str) and _HHMM.match(v), "{v}不是有效的时间（HH:MM，00:00 到 24:00）"),
    BeforeValidator(  # YAML 1.1 reads an unquoted 17:30 as the number 1050
        lambda v: f"{v // 60:02d}:{v % 60:02d}" if isinstance(v, int) and not isinstance(v, bool) else v)]
Words = Annotated[tuple[str, ...], _rule(
    lambda v: v is None or isinstance(v, list) and all(isinstance(w, str) and w.strip() for w in v),
    "应为词语列表（如 [着火, 火灾]），每个词都不能为空", lambda v: tuple(dict.fromkeys(w.strip() for w in v or ()))), _rule(
    lambda v: all(all(part.strip() for part in w.split("…")) and w.count("…") <= 2 for w in v),
    "带 … 的短语，每个 … 两边都要有词（最多两个 …），如 拉上…车", after=True)]
HotlineNumber = Annotated[ServiceNumber, _rule(lambda v: v not in EMERGENCY_NUMBERS,
                                                "{raw} 是紧急号码，不能作为热线号码", after=True)]
LineNumber = Annotated[ServiceNumber, _rule(lambda v: v not in EMERGENCY_NUMBERS,
                                             "{raw} 是紧急线路：不能并入或改号", after=True)]
TemplateNotice = Annotated[Notice, _rule(_formats, "只能使用 {{number}} 和 {{name}} 两个占位符", after=True)]
AudioFile = Annotated[_text("录音文件名"), _rule(  # "\" separates paths for Twilio's <Play> and Windows
    lambda v: not (v.startswith("/") or ".." in PurePath(v).parts or "\\" in v),
    "{v}不是 prompts 目录内的文件名（不能含 /、\\ 或 ..）", after=True)]
SomeWords = Annotated[Words, _rule(bool, "至少要有一个词", after=True)]


def _tag(model, key: str) -> str:
    return get_args(model.model_fields[key].annotation)[0]


# ---------------------------------------------------------------------------------------
# The sections


class Section(BaseModel):
    """A mapping whose keys are all declared: an unknown key (a typo) is refused, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    unknown_key: ClassVar[str] = "未知的键 {key}（可用：{allowed}）"
    missing_key: ClassVar[str] = "缺少必填的键 {key}"
    not_a_mapping: ClassVar[str] = "应为映射（键：{allowed}）"

    @classmethod
    def keys(cls) -> list[str]:
        return [f.alias or name for name, f in cls.model_fields.items()]

    @classmethod
    def unknown(cls, key: str) -> str:
        return cls.unknown_key.format(key=key, allowed=", ".join(cls.keys()))

    @model_validator(mode="wrap")
    @classmethod
    def _in_admin_words(cls, data, handler):
        """pydantic's words for what is wrong with this mapping's own keys, replaced by the model's."""
        if not isinstance(data, dict):
            _fail(cls.not_a_mapping.format(allowed=", ".join(cls.keys())))
        try:
            return handler(data)
        except ValidationError as exc:
            raise _errors(cls._reworded(e) for e in exc.errors()) from None

    @classmethod
    def _reworded(cls, error) -> tuple[tuple, str]:
        own = len(error["loc"]) == 1  # deeper ones were worded by their own section
        if own and error["type"] == "missing":
            return (), cls.missing_key.format(key=error["loc"][0])
        if own and error["type"] == "extra_forbidden":
            return error["loc"], cls.unknown(error["loc"][0])
        return error["loc"], error["msg"]


def _errors(problems) -> ValidationError:
    """Problems as (path, message), as pydantic reports them (and adds the path above them)."""
    return ValidationError.from_exception_data("rules", [
        InitErrorDetails(type=PydanticCustomError("rules", message), loc=tuple(loc), input=None)
        for loc, message in problems])


def _by(key: str, *members: type[Section]):
    """One of ``members``, chosen by the value of its ``key`` (a line's mode, an after's action)."""
    tags = {_tag(m, key): m for m in members}

    def pick(v):
        if isinstance(v, dict) and isinstance(v.get(key), str) and v[key] in tags:
            return tags[v[key]].model_validate(v)
        if not isinstance(v, dict):
            _fail(Section.not_a_mapping.format(allowed=", ".join(dict.fromkeys(k for m in members for k in m.keys()))))
        if key not in v:
            _fail(Section.missing_key.format(key=key))
        raise _errors([((key,), not_allowed(", ".join(tags)).format(v=shown(v[key])))])
    union = Annotated[Union[members], Field(discriminator=key)]
    return Annotated[Union[members], PlainValidator(pick, json_schema_input_type=union)]


class Recording(Section):
    """全程录音（质检）：坐席接听起录下整通通话，随工单保存，到期删除；每次收听记入审计日志。"""

    full_call: Flag = Field(False, description="true：坐席接听后录下整通通话（Asterisk MixMonitor、Twilio 会议录音），"
                                               "保存到工单并转写进处理记录；false：不录（默认）")
    keep_days: _whole(1, 3650, "（天）") = Field(180, description="录音保存多少天，到期自动删除（天，1–3650，默认 180）")


class Hotline(Section):
    number: HotlineNumber = Field(
        description="热线号码：加引号的字符串，只写数字，不带区号，如 \"12345\"")
    name: Name = Field(description="热线名称（坐席和班长看到的名字）")
    skill: SkillRef = Field(description="接听主号来电的坐席组 id（skills 下定义，不能是专家坐席组）")
    greeting: Prompt = Field(DEFAULT_GREETING, description="每通来电接通后先听到的一句问候（语音合成播放），然后排队；"
                                                          "原热线没有自己的 greeting 时也播放这一句（没有菜单）")
    recording: Recording = Field(Recording(), description="{full_call: true|false, keep_days: 天数}：全程录音（质检）及其保存期")


class Queue(Section):
    """排队设置，所有坐席组共用。ACD 计时器各项可省略（即用默认值）；修改从下一次操作起生效。"""

    announce_every_s: _whole(10, 600) = Field(30, description="每隔多少秒向排队的来电者播报排队位置和预计等待时间（秒，10–600）")
    callback_offer_after_s: _whole(0, 3600) = Field(60, description="等待超过多少秒后提供回拨，保留排队位置（秒，0–3600）")
    ring_timeout_s: _whole(5, 120) = Field(None, description="坐席振铃未接的超时，超时后该坐席自动小休、转下一个坐席（秒，5–120，默认 20）")
    callback_ring_timeout_s: _whole(10, 300) = Field(None, description="回拨呼叫坐席时的振铃超时（秒，10–300，默认 90）")
    heartbeat_timeout_s: _whole(10, 600) = Field(None, description="坐席控制台无心跳多久后退出轮转（秒，10–600，默认 30）")
    wrapup_max_s: _whole(0, 1800) = Field(None, description="话后整理最长时间，到时自动结束（秒，0–1800，默认 120）")
    missed_call_callback_after_s: _whole(0, 600) = Field(None, description="来电者等待超过多少秒后挂机即安排漏接回拨（秒，0–600，默认 10）")
    callback_attempts: Attempts = Field(None, description="每个回拨最多拨打几次（次数，1–10，默认 3）")
    callback_retry_s: _whole(30, 86400) = Field(None, description="两次回拨尝试之间的间隔（秒，30–86400，默认 300）")
    lost_after_s: _whole(60, 3600) = Field(None, description="呼叫前端（AGI 服务、Web 应用）多久没问起某个排队来电者即视为失联、"
                                                         "回拨并保留位置；须长于最长的等待音乐（秒，60–3600，默认 120）")


class EmergencyNames(Section):
    unknown_key: ClassVar[str] = "{key} 不是紧急线路；紧急线路是固定的（可用：{allowed}）"
    missing_key: ClassVar[str] = "缺少紧急线路 {key}：紧急线路不能删除"
    not_a_mapping: ClassVar[str] = "应写出 110、119、120、122 各自的名称（如 \"110\": 公安报警）"
    police: Name = Field(alias="110", description="110 的名称（公安报警）")
    fire: Name = Field(alias="119", description="119 的名称（消防救援）")
    ambulance: Name = Field(alias="120", description="120 的名称（医疗急救）")
    traffic: Name = Field(alias="122", description="122 的名称（交通事故报警）")


class Emergency(Section):
    notice: TemplateNotice = Field(description="转接紧急线路前播放的提示语；{number}、{name} 替换为所转接线路的号码和名称")
    lines: EmergencyNames = Field(description="紧急线路的名称：\"110\"、\"119\"、\"120\"、\"122\" 四项都必须有，号码固定")
    keywords_file: FileName = Field(description="紧急关键词文件名（与本文件同目录，如 emergency_keywords.yaml）")


class OpeningHours(Section):
    days: Days = Field(description="workdays：国家法定工作日（含调休上班日）；everyday：每天")
    open: TimeOfDay = Field(description="开始时间 \"HH:MM\"（加引号），中国时间")
    close: TimeOfDay = Field(description="结束时间 \"HH:MM\"（加引号，可为 \"24:00\"），须晚于 open")

    @field_validator("close")
    @classmethod
    def _after_open(cls, close, info):
        if "open" in info.data and minutes(close) <= minutes(info.data["open"]):
            _fail(f"应晚于 open（{info.data['open']}）")
        return close


class Overflow(Section):
    to: SkillRef = Field(description="溢出到的坐席组 id（skills 下定义；溢出链须有终点，不能成环）")
    after_s: _whole(0, 3600) = Field(description="等待多少秒后也分配给 to 坐席组（秒，0–3600）")


Hours = Annotated[OpeningHours | None, _rule(  # None: 7×24
    lambda v: v == "always" or isinstance(v, dict), not_allowed("always，或 {{days, open, close}}"),
    lambda v: None if v == "always" else v, json_schema_input_type=Union[Literal["always"], OpeningHours])]


class Skill(Section):
    """坐席组（技能组），以 id（小写字母、数字、_）为键。"""

    name: Name = Field(description="坐席组名称（班长和坐席看到的名字）")
    hours: Hours = Field(None, description="工作时间：always（7×24，默认），或 {days: workdays|everyday, "
                                           "open: \"HH:MM\", close: \"HH:MM\"}")
    after_hours: AfterHours = Field(
        "overflow", description="下班后来电去向：overflow（转溢出组，没有则转主号坐席组，默认）或 callback（回拨登记，保留位置）")
    overflow: Overflow = Field(None, description="{to: 坐席组, after_s: 秒}：等待超过 after_s 秒的来电也分配给 to 坐席组")
    expert: Flag = Field(False, description="true：专家坐席组，只能由坐席转接（三方通话）到达，来电不直接进入")


class Transition(Section):
    starts: _moment(end_of_day=False) = Field(alias="from", description="过渡期开始：日期（如 2021-01-01，当天 00:00 起）或日期时间，中国时间")
    until: _moment(end_of_day=True) = Field(description="过渡期结束：日期（含当天，到 24:00）或日期时间，须晚于 from")
    prompt: Prompt = Field(description="过渡期内来电者先听到的提示语（语音合成播放），然后排队")
    audio: AudioFile = Field(None, description="可选：提示录音文件名（prompts 目录内，不含 /、\\、..），有则播放录音代替 prompt")

    @field_validator("until")
    @classmethod
    def _after_from(cls, until, info):
        starts = info.data.get("starts")
        if starts is not None and starts >= until:
            at = f"{starts:%Y-%m-%d}" if starts.time() == time(0) else f"{starts:%Y-%m-%d %H:%M}"
            _fail(f"应晚于 from（{at}）")
        return until


_ACTION = "过渡期后：forward 照常转接（text 可选，先播放），announce_and_hangup 播放 text 后挂机"


class Forward(Section):
    action: Literal["forward"] = Field(description=_ACTION)
    text: Notice = Field(None, description="可选：过渡期后转接前播放的提示语")


class AnnounceAndHangup(Section):
    action: Literal["announce_and_hangup"] = Field(description=_ACTION)
    text: Notice = Field(description="过渡期后播放的提示语，播完挂机")


After = _by("action", Forward, AnnounceAndHangup)
_MODE = "merge 整体并入（号码停用，过渡期提示后转坐席）；dual 双号并行（直接转坐席）；subcenter 设分中心（转接分中心）"


class Line(Section):
    """原热线号码（以加引号的号码为键），mode 决定其余的键。"""

    name: Name = Field(description="原热线名称（坐席和班长看到的名字）")
    department: Department = Field(description="主管部门")
    mode: str = Field(description=_MODE)
    skill: SkillRef = Field(description="在 12345 内接听该业务的坐席组 id（skills 下定义，不能是专家坐席组）")
    greeting: Prompt = Field(None, description="可选：本线路来电先听到的一句问候，代替主号的 greeting；"
                                               "并入线路在过渡期内和过渡期后有提示语时只听提示语")

    @classmethod
    def unknown(cls, key: str) -> str:
        modes = [_tag(m, "mode") for m in Line.__subclasses__() if key in m.keys()]
        if modes:
            return f"只有 mode 为 {' 或 '.join(modes)} 的线路才有 {key}；本线路的 mode 是 {_tag(cls, 'mode')}"
        return super().unknown(key)


class MergeLine(Line):
    mode: Literal["merge"] = Field(description=_MODE)
    transition: Transition = Field(description="{from, until, prompt, audio?}：过渡期及其提示语")
    after: After = Field(
        description="过渡期结束后：{action: forward, text?} 或 {action: announce_and_hangup, text}")


class DualLine(Line):
    mode: Literal["dual"] = Field(description=_MODE)
    expert_skill: SkillRef = Field(None, description="可选：坐席可拉入三方通话的专家坐席组 id（expert: true 的坐席组）")


class Subcenter(Section):
    name: Name = Field(description="分中心名称")
    target: Target = Field(
        description="分中心号码（数字，可带 +）或 SIP 地址（sip:user@host），加引号；用于直接来电和三方转接")


class SubcenterLine(Line):
    mode: Literal["subcenter"] = Field(description=_MODE)
    subcenter: Subcenter = Field(description="{name, target}：分中心名称及号码或 SIP 地址")


Skills = Annotated[dict[SkillId, Skill], _rule(
    lambda v: isinstance(v, dict) and v, "应以坐席组 id 为键列出坐席组（至少要有主号的坐席组）")]
Lines = Annotated[dict[LineNumber, _by("mode", MergeLine, DualLine, SubcenterLine)],
                  _rule(lambda v: isinstance(v, dict), "应以原热线号码为键列出每条线路的设置")]


class RulesFile(Section):
    """transfer_rules.yaml：12345 网关如何路由每一个来电。"""

    hotline: Hotline = Field(description="12345 主号：拨打它（及下面未列出的任何号码）的来电直接进入其坐席组")
    emergency: Emergency = Field(description="紧急联动 110/119/120/122：听到紧急关键词即转接；只联动，不并入、不改号")
    skills: Skills = Field(description="坐席组（技能组），以 id 为键；线路引用的每个坐席组都须在此定义")
    lines: Lines = Field(description="并入 12345 的原热线（国办发〔2020〕53号），以加引号的号码为键")
    queue: Annotated[Queue, BeforeValidator(lambda v: {} if v is None else v)] = Field(
        Queue(), description="排队设置（所有坐席组共用）：播报间隔、回拨、ACD 计时器")


class Keywords(Section):
    words: SomeWords = Field(description="表示紧急情况的词或短语，听到任何一个即转接")
    except_: Words = Field((), alias="except", description="含关键词却不是紧急情况的较长短语（如 火灾隐患），先屏蔽再查找")
    unless: Words = Field((), description="表示事情已过去或属行政事务的词（如 理赔、去年）；出现时不转接本线路")
    possible: Words = Field((), description="描述可能紧急的现场情形的词（如 冒烟、流血、倒地）；听到时不自动转接，"
                                            "来电优先分配给下一位空闲坐席并提醒班长")


class KeywordsFile(Section):
    unknown_key: ClassVar[str] = "{key} 不是紧急线路（可用：{allowed}）"
    missing_key: ClassVar[str] = "缺少紧急线路 {key} 的关键词"
    police: Keywords = Field(alias="110")
    fire: Keywords = Field(alias="119")
    ambulance: Keywords = Field(alias="120")
    traffic: Keywords = Field(alias="122")


@cache
def json_schema() -> dict:
    """The rules file's JSON Schema, with a description for every key (the admin's YAML editor)."""
    return RulesFile.model_json_schema(by_alias=True)


# ---------------------------------------------------------------------------------------
# Problems, each located by its path of keys as written in the file


def validate(model: type[Section], data) -> tuple[Section | None, list[tuple[tuple, str]]]:
    """``data`` as ``model``, or each problem as (path of keys as written in the file, message)."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, [(tuple(p for p in e["loc"] if p != "[key]"), e["msg"]) for e in exc.errors()]


# ---------------------------------------------------------------------------------------
# What relates the sections (checked on the file's values, valid or not, so all is said at once)


def references(data: dict) -> list[tuple[tuple, str]]:
    """Skills named exist (expert only where an expert group belongs); overflow chains end; the
    hotline is not also a legacy line."""
    skills = {k: v for k, v in _dict(data.get("skills")).items() if isinstance(v, dict)}
    experts = {k for k, v in skills.items() if v.get("expert") is True}
    out = []

    def ref(path, spec, key, expert: bool):
        value = spec.get(key)
        if not isinstance(value, str):
            return  # absent or not text: the model says so
        if value.strip() not in skills:
            out.append((path + (key,), _no_skill(value, skills)))
        elif expert != (value.strip() in experts):
            out.append((path + (key,), f"坐席组{shown(value)}不是专家坐席组（专家坐席组须设 expert: true）" if expert
                        else f"坐席组{shown(value)}是专家坐席组：专家坐席只能由坐席转接到达，来电不直接进入"))

    hotline, lines = _dict(data.get("hotline")), _dict(data.get("lines"))
    ref(("hotline",), hotline, "skill", expert=False)
    for number, spec in lines.items():
        ref(("lines", number), _dict(spec), "skill", expert=False)
        if _dict(spec).get("mode") == "dual":
            ref(("lines", number), _dict(spec), "expert_skill", expert=True)
    if _raw(hotline.get("number")) in lines:
        out.append((("lines", _raw(hotline["number"])), f"{_raw(hotline['number'])} 是热线主号本身，"
                                                        "不能再作为原热线"))
    to = {k: _dict(v.get("overflow")).get("to") for k, v in skills.items()}
    for sid, target in to.items():
        if isinstance(target, str) and target not in to:
            out.append((("skills", sid, "overflow", "to"), _no_skill(target, to)))
        elif target == sid:
            out.append((("skills", sid, "overflow", "to"), "坐席组不能溢出到自己"))
    reported = set()
    for sid in to:
        chain, nxt = [sid], to[sid]
        while isinstance(nxt, str) and nxt in to and nxt not in chain:
            chain, nxt = chain + [nxt], to[nxt]
        if nxt in chain and nxt != chain[-1] and frozenset(chain[chain.index(nxt):]) not in reported:
            cycle = chain[chain.index(nxt):]
            reported.add(frozenset(cycle))
            out.append((("skills", cycle[0], "overflow", "to"),
                        "溢出链成环：" + " -> ".join(cycle + [cycle[0]]) + "（溢出链必须有终点）"))
    return out


def _no_skill(name: str, defined) -> str:
    return f"坐席组{shown(name)}不存在（已定义：{', '.join(defined) or '无'}）"


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}
