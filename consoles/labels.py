"""What people in the room read: the consoles' Chinese words for the system's values, in one place.

Every page and JSON the consoles show a person (ticket page and list, dashboard, agent console)
takes its words from these tables and helpers: statuses, request types, field names, seat
states and pause reasons, history events, and times in China time written ``12月06日 14:05``
(never an ISO stamp). Unknown values fall back to the value itself, never to ``None``.
"""
from __future__ import annotations

from datetime import datetime

from call_routing.numbers import mask
from call_routing.rules import CHINA_TZ

#: the one word for a seat and the person in it
SEAT = "坐席"

TICKET_STATUSES = {"open": "待处理", "manual_entry": "待人工填写", "confirmed": "已确认", "finished": "已办结",
                   "handed_off": "已派发"}
TYPES = {"consultation": "咨询", "help": "求助", "complaint": "投诉", "report": "举报", "suggestion": "建议",
         "praise": "表扬"}
FIELD_LABELS = {"type": "诉求类型", "line": "归属热线", "skill": "坐席组", "department": "承办部门", "location": "地点",
                "enterprise": "企业诉求", "unit": "涉及单位", "subject": "事项", "emergency": "紧急联动",
                "numbers": "提到的号码", "summary": "摘要", "emergency_possible": "可能紧急"}
TRANSCRIPT_STATUSES = {"pending": "正在识别", "ok": "已识别", "empty": "未识别到内容", "no_model": "未配置语音识别",
                       "unreadable": "录音无法读取", "failed": "识别失败"}
CALL_OUTCOMES = {"completed": "通话正常结束", "abandoned": "来电人挂断（未接通）", "fallback": "转备用坐席接听"}
SURVEYS = {"satisfied": "满意", "basically_satisfied": "基本满意", "dissatisfied": "不满意", "1": "满意",
           "2": "基本满意", "3": "不满意"}
#: why a ticket waits for manual entry (the store's reasons, written for engineers)
MANUAL_REASONS = {"no speech model configured: no transcript": "未配置语音识别，没有转写",
                  "the recording could not be read": "录音无法读取",
                  "speech recognition failed": "语音识别失败",
                  "nothing was recognised in the recording": "录音中未识别到内容",
                  "no transcript": "没有转写", "no speech workers (REDIS_URL not set)": "语音识别任务未启用"}

AGENT_STATES = {"ready": "就绪", "ringing": "来电振铃", "busy": "通话中", "wrapup": "话后整理", "paused": "小休",
                "offline": "离线"}
#: why a seat is paused: the system's reasons; an agent's own (小休, 培训, …) are Chinese already
PAUSE_REASONS = {"no-answer": "未接听自动小休", "phone-offline": "话机未注册，无法接听", "phone-busy": "话机占线",
                 "three-way": "三方通话", "break": "小休", "not-rung": "来电未振铃"}
#: why a seat went offline without its agent clicking 下岗 here (the ACD's logout reasons)
OFFLINE_REASONS = {"heartbeat": "工作台长时间未与排队系统联系（网络中断、电脑休眠或网页被关闭），系统已自动将坐席签出",
                   "logout": "坐席已在其他地方下岗", "account": "管理员修改了您的账号，坐席已签出"}
#: what an agent may choose when pausing
AGENT_PAUSE_CHOICES = ("小休", "培训", "会议", "用餐")
CALL_STATES = {"waiting": "排队中", "ringing": "振铃中", "connected": "通话中", "completed": "已结束",
               "abandoned": "来电人已挂断", "left": "已离开队列", "retry": "等待再次回拨", "failed": "回拨未接通",
               "resumed": "已重新接入"}
#: what a person reads for an HTTP error that came with no words of ours
ERROR_WORDS = {400: "请求无效，请检查后重试。", 401: "请先登录。", 403: "当前账号无权进行此操作。",
               404: "找不到这个页面或对象，请检查地址是否正确。", 405: "不支持这样打开这个地址，请从页面上的按钮进入。",
               409: "操作与当前状态冲突，请刷新后重试。", 410: "该内容已删除。", 413: "提交的内容过大（上限 2 MB）。",
               416: "请求的范围无效。"}
TRANSFER_KINDS = {"expert": "专家坐席", "subcenter": "分中心"}
TRANSFER_STATES = {"reserving": "正在找空闲的专家坐席", "ringing": "正在呼叫", "joined": "已接通",
                   "handed": "已转交，您已退出"}
#: what the ACD answers when it refuses an agent's action
ACD_REFUSALS = {"bad_state": "当前状态不能这样操作", "phone": "话机未注册或占线，暂不能就绪",
                "unknown": "坐席未在排队系统中配置", "not_ringing": "来电已不在振铃", "no_seat": "对方坐席组暂无空闲坐席",
                "wrong_agent": "这通来电不属于您", "gone": "来电已结束", "stale": "来电已变化，请稍候"}

EVENTS = {"opened": "系统建单", "prefilled": "语音预填", "heard": "通话中识别到来电内容",
          "recording_unusable": "录音无法识别", "recording_kept": "保存录音（保留通话中已听到的内容）", "manual_entry": "转人工填写", "confirmed": "坐席确认",
          "contacted": "已联系来电人", "extended": "延期", "finished": "办结", "handed_off": "派发至承办系统",
          "handoff_failed": "派发失败，将自动重试", "linked": "关联重复件", "supervision": "触发督办",
          "call_end": "通话结束", "survey": "满意度评价", "call_recorded": "保存全程录音",
          "call_transcribed": "全程录音转写", "recording_expired": "录音已过保存期"}
ACTORS = {"system": "系统", "machine": "语音识别", "speech": "语音识别", "twilio-speech": "语音识别"}
#: the live-speech servers, as the ticket's history names what they heard
LIVE_SPEECH_SOURCES = {"audiosocket": "语音识别（实时）", "twilio-stream": "语音识别（实时）"}
SUPERVISION_KINDS = {"matter": "同一事项", "unit": "同一单位"}
#: what an audit entry records, as the admin reads it
AUDIT_ACTIONS = {"login": "登录", "logout": "退出登录", "login.failed": "登录失败", "login.throttled": "登录受限",
                 "user.create": "创建用户", "user.update": "修改用户", "user.password": "修改密码",
                 "rules.publish": "发布规则", "rules.rollback": "回滚规则", "rules.initial": "首次记录规则文件",
                 "rules.disk_change": "规则文件在控制台外修改", "seat.update": "修改坐席", "seat.login": "坐席上岗",
                 "seat.logout": "坐席下岗", "ticket.finish": "办结工单", "recording.listen": "收听通话录音"}
#: how a rules version came to be
VERSION_KINDS = {"initial": "首次记录", "publish": "发布", "rollback": "回滚", "disk": "文件直接修改"}


def yes_no(value) -> str:
    return "是" if value else "否"


def _moment(value) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=CHINA_TZ)
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), CHINA_TZ)
        except (ValueError, OverflowError, OSError):
            return None
    try:
        return datetime.fromtimestamp(float(value), CHINA_TZ)  # Unix seconds as text (Redis)
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=CHINA_TZ)


def when(value, *, seconds: bool = False, now: datetime | None = None) -> str:
    """``12月06日 14:05`` in China time (with the year when it is not this year); ``—`` for none.
    Takes a datetime, an ISO string or Unix seconds."""
    moment = _moment(value)
    if moment is None:
        return "—"
    moment = moment.astimezone(CHINA_TZ)
    this_year = (now or datetime.now(CHINA_TZ)).astimezone(CHINA_TZ).year
    fmt = ("%m月%d日 %H:%M:%S" if seconds else "%m月%d日 %H:%M")
    if moment.year != this_year:
        fmt = "%Y年" + fmt
    return moment.strftime(fmt)


def duration(seconds) -> str:
    """``45秒``, ``3分12秒``, ``1小时05分``."""
    try:
        s = max(0, int(round(float(seconds))))
    except (TypeError, ValueError):
        return "—"
    if s < 60:
        return f"{s}秒"
    if s < 3600:
        return f"{s // 60}分{s % 60:02d}秒"
    return f"{s // 3600}小时{s % 3600 // 60:02d}分"


def caller_text(masked: str | None) -> str:
    """A masked caller number as shown; calls without one say so."""
    return "无来电号码" if not masked or masked == "unknown" else masked


def masked_caller(raw: str | None) -> str:
    return caller_text(mask(raw) if raw else None)


def line_text(number: str | None, rules) -> str:
    """``12348 全国公共法律服务专用电话``."""
    if not number:
        return "—"
    line = rules.line(str(number)) if rules is not None else None
    if line is None:
        return str(number)
    return line.name if line.name.startswith(str(number)) else f"{number} {line.name}"


def skill_text(skill_id: str | None, rules) -> str:
    skill = rules.skills.get(skill_id or "") if rules is not None else None
    return skill.name if skill is not None else (skill_id or "—")


def pause_text(reason: str | None) -> str:
    """Why a seat is paused, for people: the system's reasons in words, an agent's own as chosen."""
    if not reason:
        return ""
    return PAUSE_REASONS.get(reason, reason)


def agent_state_text(state: str | None, reason: str | None = None) -> str:
    """``就绪``, ``通话中``, ``小休（未接听自动小休）``, ``三方通话``."""
    if state == "paused" and reason == "three-way":
        return "三方通话"
    text = AGENT_STATES.get(state or "offline", state or "")
    why = pause_text(reason) if state == "paused" else ""
    return f"{text}（{why}）" if why and why != text else text


#: the technical reasons a recording was not transcribed (intake/speech.py, intake/jobs.py), by
#: how they begin, as the agent reads them; the exact text stays in the worker's log
_MANUAL_REASON_STARTS = (("speech job failed", "语音识别任务失败"),
                         ("empty file", "录音为空（来电人可能未说话就挂断了）"),
                         ("no audio in the recording", "录音为空（来电人可能未说话就挂断了）"),
                         ("recording too long", "录音过长，未转写"),
                         ("recording download", "录音下载失败"),
                         ("never bridged", "通话未接通坐席，没有全程录音"))


def manual_reason_text(reason: str | None) -> str:
    if not reason:
        return ""
    if reason in MANUAL_REASONS:
        return MANUAL_REASONS[reason]
    for start, text in _MANUAL_REASON_STARTS:
        if reason.startswith(start):
            return text
    return "录音无法读取" if "recording" in reason else "语音识别失败"


def transfer_text(transfer: dict | None, options, expert_name: str | None = None) -> str:
    """What the agent reads of a transfer under way: ``三方转接：正在呼叫 分中心 12360海关…``.
    ``transfer`` is the front-end's state (Asterisk names the kind as its target, Twilio the
    number or endpoint rung); ``options`` the line's transfers (``conference_options``)."""
    if not transfer or not transfer.get("transfer_state"):
        return ""
    mode = "直接转出" if transfer.get("transfer_mode") == "cold" else "三方转接"
    state = TRANSFER_STATES.get(transfer["transfer_state"], "处理中")
    target = transfer.get("transfer_target")
    option = next((o for o in options if target in (o.get("kind"), o.get("number"))), None)
    if option is None and transfer.get("transfer_agent"):  # Twilio rings an expert's endpoint
        option = next((o for o in options if o.get("kind") == "expert"), None)
    who = f"{TRANSFER_KINDS.get(option['kind'], '')} {option.get('name') or ''}".strip() if option else ""
    if expert_name:
        who = f"{who}（{expert_name}）" if who else expert_name
    return f"{mode}：{state} {who}".strip()


def numbers_text(value) -> str:
    """The numbers a caller said, as a short list: ``电话 138****5678；身份证 1101**********1234；金额 5000元``."""
    if not isinstance(value, dict):
        return plain(value)
    parts = []
    for key, label, unit in (("phones", "电话", ""), ("id_cards", "身份证", ""), ("amounts", "金额", "元")):
        items = [f"{v}{unit}" for v in value.get(key) or []]
        if items:
            parts.append(f"{label} " + "、".join(items))
    return "；".join(parts) or "—"


def plain(value) -> str:
    """Any stored value as words: no ``None``, ``True``/``False``, braces or brackets."""
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, (list, tuple)):
        return "、".join(plain(v) for v in value)
    if isinstance(value, dict):
        return "；".join(f"{FIELD_LABELS.get(k, k)} {plain(v)}" for k, v in value.items())
    return str(value)


def field_value(name: str, value, rules=None) -> str:
    """One ticket field's value as a person reads it."""
    if value is None or value == "":
        return "—"
    if name == "type":
        return TYPES.get(value, str(value))
    if name == "line":
        return line_text(value, rules)
    if name == "skill":
        return skill_text(value, rules)
    if name == "enterprise":
        return yes_no(value)
    if name == "emergency":
        return f"需联动 {value}" if value else "否"
    if name == "emergency_possible":
        return f"可能需联动 {value}，请核实" if value else "否"
    if name == "numbers":
        return numbers_text(value)
    return plain(value)


def person(name: str | None) -> str:
    """Who did something in the consoles: a user's name as signed in, the system in words."""
    if not name or name == "-":
        return "未知用户"
    if name.startswith("cli:"):
        return f"命令行（{name[4:]}）"
    return ACTORS.get(name, name)


def audit_target(action: str | None, target: str | None) -> str:
    """What an audit entry was done to, as the admin reads it: 工单 20261206-0001, 坐席 2001,
    用户 zhang, 转接规则（transfer_rules.yaml） — never a record id or a server path."""
    target, action = (target or "").strip(), action or ""
    if not target:
        return "—"
    if target.startswith("ticket:"):
        return f"工单 {target[len('ticket:'):]}"
    if action.startswith("rules."):
        return f"转接规则（{target.rsplit('/', 1)[-1]}）"  # the file's name, not the server's path
    if action.startswith("seat."):
        return f"{SEAT} {target}"
    if action.startswith(("user.", "login", "logout")):
        return f"用户 {target}"
    if action.startswith("ticket."):  # entries written before the number was kept: the record's own id
        return f"工单（记录 {target}）"
    return target


def actor_text(actor: str | None) -> str:
    if not actor:
        return "系统"
    if actor in ACTORS or actor.endswith("speech") or actor in LIVE_SPEECH_SOURCES:
        return ACTORS.get(actor) or LIVE_SPEECH_SOURCES.get(actor, "语音识别")
    if actor.startswith("cli:"):
        return f"命令行（{actor[4:]}）"
    return f"{SEAT} {actor}"


def event_detail(kind: str, d: dict, rules=None, numbers: dict | None = None) -> str:
    """What an event of a ticket's history changed, in one short sentence."""
    d = d or {}
    if kind == "opened":
        out = f"来电热线 {line_text(d.get('entry_line'), rules)}" if d.get("entry_line") else ""
        if d.get("from") == "call_end":  # the draft was lost with Redis: written from the call's end report
            out += "（系统故障时建单草稿丢失，按通话结束时的信息补建" + \
                ("；受理时间为通话结束时间，系近似值）" if d.get("time") == "approximate" else "）")
        return out
    if kind == "prefilled":
        names = sorted(d.get("fields") or [], key=lambda n: list(FIELD_LABELS).index(n) if n in FIELD_LABELS else 99)
        return "填写了" + "、".join(FIELD_LABELS.get(n, n) for n in names) if names else ""
    if kind == "heard":
        return f"{d.get('chars', 0)} 字" if d.get("chars") else ""
    if kind == "recording_unusable":
        return TRANSCRIPT_STATUSES.get(d.get("status"), "") or manual_reason_text(d.get("reason"))
    if kind == "manual_entry":
        return manual_reason_text(d.get("reason"))
    if kind == "confirmed":
        changed = d.get("changed") or {}
        parts = [f"{FIELD_LABELS.get(n, n)}：{field_value(n, c.get('from'), rules)} → "
                 f"{field_value(n, c.get('to'), rules)}" for n, c in changed.items() if isinstance(c, dict)]
        return "修改 " + "；".join(parts) if parts else "核对无修改"
    if kind == "extended":
        out = f"延长 {d.get('days')} 个工作日（累计 {d.get('total')} 个）"
        if d.get("reason"):
            out += f"，原因：{d['reason']}"
        if d.get("due_at"):
            out += f"，新办结时限 {when(d['due_at'])}"
        return out
    if kind == "finished":
        return f"办理结果：{d.get('result')}" if d.get("result") else ""
    if kind == "handed_off":
        return f"派发编号 {d['ref']}" if d.get("ref") else ""
    if kind == "linked":
        to = (numbers or {}).get(d.get("to"), d.get("to"))
        return f"与工单 {to} 为同一来电人同一事项" if d.get("to") else ""
    if kind == "supervision":
        return f"{SUPERVISION_KINDS.get(d.get('kind'), '')} {d.get('callers', '')} 位来电人".strip()
    if kind == "call_recorded":
        return "，".join(p for p in (f"时长 {duration(d['seconds'])}" if d.get("seconds") else "",
                                     f"保存 {d['keep_days']} 天" if d.get("keep_days") else "") if p)
    if kind == "call_transcribed":
        return d.get("text") or TRANSCRIPT_STATUSES.get(d.get("status"), "")
    if kind == "recording_expired":
        return "录音文件已删除"
    if kind in ("call_end", "survey"):
        parts = []
        if d.get("outcome"):
            parts.append(CALL_OUTCOMES.get(d["outcome"], d["outcome"]))
        if d.get("survey"):
            parts.append("评价：" + SURVEYS.get(d["survey"], d["survey"]))
        return "，".join(parts)
    return ""


#: what a routing step does (call_routing.router's ``do``), for the rules dry-run
STEP_WORDS = {"say": "播放提示语", "play": "播放提示录音", "enqueue": "进入排队", "transfer": "转接",
              "conference": "三方转接", "hangup": "挂机"}


def decision_view(decision: dict, rules, mode_names: dict) -> dict:
    """A dry-run decision (``Decision.to_dict()`` with ``at``) in words: the mode, the seat group by
    its name (with the id the YAML uses, for the admin who edits it), the time in China time, each
    step's action."""
    def group(skill_id):
        return f"{skill_text(skill_id, rules)}（{skill_id}）" if skill_id else ""

    return {**decision, "mode_text": mode_names.get(decision.get("mode"), decision.get("mode") or "—"),
            "skill_text": group(decision.get("skill")), "at_text": when(decision.get("at")),
            "steps": [{**s, "do_text": STEP_WORDS.get(s.get("do"), s.get("do")), "skill_text": group(s.get("skill"))}
                      for s in decision.get("steps", ())]}


def masked_said(value):
    """``value`` (a ticket page's view, events, recordings: dicts, lists, tuples of words) with every
    phone and ID-card number in its text masked — for the roles that never read callers' numbers."""
    from intake.ticket_model import mask_said

    if isinstance(value, str):
        return mask_said(value)
    if isinstance(value, dict):
        return {k: masked_said(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked_said(v) for v in value)
    return value


def recording_view(rec) -> dict:
    """A full-call recording (intake.ticket_recordings.CallRecording) as the ticket page shows it."""
    return {"id": rec.id, "expired": rec.expired, "length": duration(rec.seconds),
            "stored": when(rec.stored_at), "keep_until": when(rec.keep_until),
            "deleted": when(rec.deleted_at) if rec.deleted_at else "",
            "transcript": rec.transcript if rec.transcript_status == "ok" else "",
            "transcript_status": TRANSCRIPT_STATUSES.get(rec.transcript_status, "—")}


def event_view(e: dict, rules=None, numbers: dict | None = None) -> dict:
    """One entry of a ticket's history: when, who, what, and the detail — all words
    (``numbers``: ticket id → the number people read, for the tickets it names)."""
    kind = e.get("kind") or ""
    return {"at": when(e.get("at")), "actor": actor_text(e.get("actor")), "what": EVENTS.get(kind, kind),
            "detail": event_detail(kind, e.get("detail") or {}, rules, numbers)}


def supervision_key_text(kind: str, key: str, rules=None) -> str:
    """A supervision's matter (``12345|阳光小区`` → ``12345 阳光小区``) or unit, as words."""
    if kind == "matter" and "|" in (key or ""):
        line, _, where = key.partition("|")
        line_obj = rules.line(line) if rules is not None else None
        return f"{where}（{line_obj.name if line_obj else line}）"
    return key or "—"


def ticket_view(view: dict, rules=None, now: datetime | None = None, numbers: dict | None = None) -> dict:
    """``Ticket.view(role)`` made readable: every label Chinese, every value words.

    ``facts``: (label, value) rows of the ticket; ``fields``: (label, value, how it was filled);
    ``numbers``: ticket id → the number people read, for the tickets it names."""
    now = now or datetime.now(CHINA_TZ)
    status = view.get("status")
    due = _moment(view.get("due_at"))
    overdue = bool(due and due < now and status not in ("finished", "handed_off"))
    facts = [("状态", TICKET_STATUSES.get(status, status or "—")
              + (f"（{manual_reason_text(view.get('manual_reason'))}）" if view.get("manual_reason") else "")),
             ("来电号码", caller_text(view.get("caller")) if view.get("caller") else "无来电号码"),
             ("来电热线", line_text(view.get("entry_line"), rules)),
             ("受理时间", when(view.get("created_at"), now=now)),
             ("联系时限", when(view.get("contact_due"), now=now)),
             ("办结时限", when(view.get("due_at"), now=now) + ("（已超期）" if overdue else "")),
             ("延期", f"{view['extension_days']} 个工作日" if view.get("extension_days") else "无"),
             ("督办", yes_no(view.get("supervision"))),
             ("重复件", f"关联工单 {(numbers or {}).get(view['linked_to'], view['linked_to'])}"
              if view.get("linked_to") else "否"),
             ("语音识别", TRANSCRIPT_STATUSES.get(view.get("transcript_status"), "—")
              + (f"（置信度 {view['transcript_confidence'] * 100:.0f}%）"
                 if isinstance(view.get("transcript_confidence"), (int, float)) else "")),
             ("诉求录音", "已保存" if view.get("recording") else "无"),  # what the caller said while waiting, not 通话录音
             ("通话结果", CALL_OUTCOMES.get(view.get("call_outcome"), view.get("call_outcome") or "—")),
             ("满意度", SURVEYS.get(view.get("survey"), view.get("survey") or "未评价")),
             ("办结时间", when(view.get("finished_at"), now=now)),
             ("办理结果", view.get("result") or "—"),
             ("派发", (f"已派发（编号 {view['handoff_ref']}，{when(view.get('handed_off_at'), now=now)}）"
                      if view.get("handed_off_at") else "派发失败，将自动重试" if view.get("handoff_error") else "未派发")),
             ("最后更新", when(view.get("updated_at"), now=now))]
    fields = []
    stored = view.get("fields") or {}
    for name in list(FIELD_LABELS) + [n for n in stored if n not in FIELD_LABELS]:
        if name not in stored:
            continue
        f = stored[name] or {}
        how = "坐席修改" if f.get("source") == "agent" else "语音预填"
        if f.get("confirmed"):
            how += " · 已确认"
            if f.get("by"):
                how += f"（{actor_text(f['by'])}，{when(f.get('at'), now=now)}）"
        else:
            how += " · 待确认"
        fields.append((FIELD_LABELS.get(name, name), field_value(name, f.get("value"), rules), how))
    return {"id": view.get("id"), "number": view.get("number") or view.get("id"), "status": status, "status_text": TICKET_STATUSES.get(status, status or ""),
            "supervision": bool(view.get("supervision")), "overdue": overdue, "facts": facts, "fields": fields,
            "transcript": view.get("transcript") or "", "linked_to": view.get("linked_to")}


def js_labels() -> dict:
    """The tables the agent console's script needs (one source for page and script)."""
    return {"agent_states": AGENT_STATES, "pause_reasons": PAUSE_REASONS, "call_states": CALL_STATES,
            "transfer_kinds": TRANSFER_KINDS, "statuses": TICKET_STATUSES}
