"""Admin and supervisor pages under ``/admin/``.

Supervisors (and admins): the dashboard (``/admin/``, JSON at ``/admin/api/dashboard``) and the
supervision list. Admins only: rules (list, line form, YAML editor, drafts with dry-run,
publish, history, rollback), users, and the audit log. Every change is audited with a diff.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for

from call_routing import schema
from call_routing.rules import CHINA_TZ
from intake.ticket_model import CALLER_ROLES

from . import labels
from .auth import actor, check_csrf, register_trouble, roles_required
from .db import ROLE_NAMES, ROLES, ConsoleError, sha256_text, text_diff
from .rules_admin import LINE_FIELDS, MODE_NAMES, PublishConflict, parse_moment

log = logging.getLogger("hotline.consoles.admin")
bp = Blueprint("admin", __name__, url_prefix="/admin")
register_trouble(bp)  # Redis unreachable or a fault: a page in Chinese, not Werkzeug's
bp.before_request(check_csrf)

STAFF = ("admin", "supervisor")


def _c():
    return current_app.extensions["console"]


def _audit(action, target, summary, **kw):
    return _c().db.audit(actor(), action, target, summary, address=request.remote_addr, **kw)


@bp.app_template_filter("cn_time")
def cn_time(value):
    """A moment as people read it: ``12月06日 14:05:09`` in China time."""
    return labels.when(value, seconds=True)


@bp.app_template_filter("person")
def person(value):
    return labels.person(value)


@bp.app_template_filter("audit_action")
def audit_action(value):
    return labels.AUDIT_ACTIONS.get(value, "其他操作")


@bp.app_template_filter("audit_target")
def audit_target(entry):
    return labels.audit_target(entry.action, entry.target)


@bp.app_template_filter("pct")
def pct(value):
    return "—" if value is None else f"{value * 100:.1f}%"


# -- dashboard (supervisors and admins) ---------------------------------------------------------
@bp.get("/")
@roles_required(*STAFF)
def home():
    d = _c().dashboard
    return render_template("admin/dashboard.html", snap=d.snapshot(), supervision=d.supervision())


@bp.get("/api/dashboard")
@roles_required(*STAFF)
def dashboard_json():
    d = _c().dashboard
    return {**d.snapshot(), "supervision": d.supervision()}


def _rules():
    return current_app.extensions["rules"].current()


@bp.get("/tickets/<int:ticket_id>")
@roles_required(*STAFF)
def ticket(ticket_id):
    if ticket_id >= 2**63:
        abort(404, description=f"没有工单 {ticket_id}")
    try:
        t = _c().tickets.get(ticket_id)
    except LookupError:
        abort(404, description=f"没有工单 {ticket_id}")
    rules = _rules()
    events = _c().tickets.events(ticket_id)
    named = [t.linked_to] + [e["detail"].get("to") for e in events if e["kind"] == "linked"]
    numbers = _c().tickets.numbers(n for n in named if n)
    shown = {"t": labels.ticket_view(t.view(g.user.role), rules, numbers=numbers),
             "events": [labels.event_view(e, rules, numbers) for e in events],
             "recordings": [labels.recording_view(r) for r in _c().tickets.call_recordings(ticket_id)]}
    if g.user.role not in CALLER_ROLES:  # numbers said, typed in the summary or result, heard in the recording
        shown = labels.masked_said(shown)
    return render_template("admin/ticket.html", **shown, listen_minutes=int(LISTEN_SESSION.total_seconds() // 60))


def _recordings_folder():
    from intake.jobs import recordings_dir

    return current_app.config.get("HOTLINE_RECORDINGS") or recordings_dir()


#: one audit entry per person, recording and listening session: the player's further requests (a
#: seek asks for a byte range) within this time of the audited one add none
LISTEN_SESSION = timedelta(minutes=30)


@bp.get("/tickets/<int:ticket_id>/recordings/<int:recording_id>.wav")
@roles_required(*STAFF)
def recording(ticket_id, recording_id):
    """A full-call recording (质检), for supervisors and admins, with byte ranges (the player
    seeks); every response that carries audio is audited once per listening session."""
    from flask import send_file
    from werkzeug.exceptions import RequestedRangeNotSatisfiable

    from intake.ticket_recordings import recording_file
    from intake.tickets import TicketError

    try:
        rec = _c().tickets.call_recording(recording_id) if recording_id < 2**63 else None
        t = _c().tickets.get(ticket_id) if rec is not None and rec.ticket_id == ticket_id else None
    except LookupError:
        t = None
    if t is None:
        abort(404, description=f"工单 {ticket_id} 没有录音 {recording_id}")
    if rec.expired or not rec.file:
        abort(410, description="录音已过保存期，已删除。")
    try:
        path = recording_file(_recordings_folder(), rec.file)
    except TicketError:
        path = None
    if path is None or not path.is_file():
        log.error("recording %s of ticket %s: file %s missing", rec.id, ticket_id, rec.file)
        abort(404, description="录音文件不存在，请联系管理员。")
    try:
        response = send_file(path, mimetype="audio/wav", conditional=True)
    except RequestedRangeNotSatisfiable as exc:  # keeps its Content-Range: bytes */<length>
        exc.description = "请求的录音片段超出了录音的长度。"
        raise
    response.cache_control.no_store = True  # never kept in the browser's cache: a listen asks the server
    response.cache_control.private = True
    if response.status_code in (200, 206) and request.method != "HEAD":  # audio goes out: audited first
        minutes = int(LISTEN_SESSION.total_seconds() // 60)
        try:
            _c().db.audit_listen(actor(), rec.id, f"ticket:{t.display_number}",
                                 f"收听工单 {t.display_number} 的通话录音（时长 {labels.duration(rec.seconds)}；"
                                 f"{minutes} 分钟内再次收听不另记）",
                                 window=LISTEN_SESSION, address=request.remote_addr)
        except BaseException:
            response.close()
            raise
    return response


# -- the ticket list: search and filters ------------------------------------------------------
TICKETS_PER_PAGE = 50
MAX_TICKET_PAGE = 10_000


def _ticket_query(args, rules, role):
    """The list's filters from the query string, checked: (filters for TicketStore.search, the
    form's values as given, problems in Chinese)."""
    from datetime import date

    from intake.tickets import CALLER_ROLES

    form = {k: (args.get(k) or "").strip() for k in ("id", "day", "line", "type", "status", "caller", "page")}
    form["overdue"] = args.get("overdue") in ("1", "on", "true")
    form["supervision"] = args.get("supervision") in ("1", "on", "true")
    problems, q = [], {"overdue": form["overdue"], "supervision": form["supervision"]}
    if form["id"]:
        number = re.fullmatch(r"(\d{8})-?(\d{1,6})", form["id"])
        if number:
            q["number"] = f"{number.group(1)}-{int(number.group(2)):04d}"
        else:
            problems.append(f"工单编号“{form['id']}”不是有效的编号，请按 20251206-0001 的格式填写。")
    if form["day"]:
        try:
            day = date.fromisoformat(form["day"])
            if not 2000 <= day.year <= 2100:
                raise ValueError
            q["day"] = day
        except ValueError:
            problems.append(f"日期“{form['day']}”无法识别，请按 2025-12-06 的格式选择日期。")
    if form["line"]:
        if rules.line(form["line"]) is None:
            problems.append(f"没有热线“{form['line']}”，请从列表中选择。")
        else:
            q["line"] = form["line"]
    if form["type"]:
        if form["type"] not in labels.TYPES:
            problems.append(f"没有诉求类型“{form['type']}”，请从列表中选择。")
        else:
            q["request_type"] = form["type"]
    if form["status"]:
        if form["status"] not in labels.TICKET_STATUSES:
            problems.append(f"没有工单状态“{form['status']}”，请从列表中选择。")
        else:
            q["status"] = form["status"]
    if form["caller"]:
        digits = "".join(ch for ch in form["caller"] if ch not in " -")
        if role in CALLER_ROLES:
            if not (digits.isascii() and digits.isdigit()) or not 4 <= len(digits) <= 15:
                problems.append("来电号码请填写后4位或完整号码（只填数字）。")
            else:
                q["caller_digits"] = digits
        elif not (digits.isascii() and digits.isdigit()) or len(digits) != 4:
            problems.append("来电号码只能按后4位查询，请填写4位数字。")
        else:
            q["caller_digits"] = digits
    if form["page"]:
        if not (form["page"].isascii() and form["page"].isdigit()) or not 0 < int(form["page"]) <= MAX_TICKET_PAGE:
            problems.append(f"页码“{form['page']}”无效。")
        else:
            q["page"] = int(form["page"])
    return q, form, problems


@bp.get("/tickets")
@roles_required(*STAFF)
def tickets():
    from call_routing.numbers import mask
    from datetime import datetime

    rules = _rules()
    q, form, problems = _ticket_query(request.args, rules, g.user.role)
    rows, total, page = [], 0, q.get("page", 1)
    if not problems:
        found, total = _c().tickets.search(**q, per_page=TICKETS_PER_PAGE)
        now = datetime.now(CHINA_TZ)
        for t in found:
            overdue = t.due_at < now and t.status not in ("finished", "handed_off")
            rows.append({"id": t.id, "number": t.display_number, "created": labels.when(t.created_at, now=now),
                         "line": labels.line_text(t.entry_line, rules),
                         "caller": labels.caller_text(mask(t.caller) if t.caller else None),
                         "type": labels.TYPES.get(t.value("type"), t.value("type") or "—"),
                         "about": " · ".join(str(v) for v in (t.value("subject"), t.value("location")) if v)
                         or labels.plain(t.value("summary")),
                         "status": labels.TICKET_STATUSES.get(t.status, t.status),
                         "due": labels.when(t.due_at, now=now), "overdue": overdue, "supervision": t.supervision})
    pages = max(1, -(-total // TICKETS_PER_PAGE))
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    lines = [(n, labels.line_text(n, rules)) for n in [rules.hotline.number, *rules.lines]]  # 12301 全国…, 12345政务…
    return render_template("admin/tickets.html", rows=rows, total=total, page=page, pages=pages, form=form,
                           problems=problems, lines=lines, types=labels.TYPES, statuses=labels.TICKET_STATUSES,
                           prev_url=url_for("admin.tickets", **args, page=page - 1) if page > 1 else None,
                           next_url=url_for("admin.tickets", **args, page=page + 1) if page < pages else None
                           ), 400 if problems else 200


# -- rules ------------------------------------------------------------------------------------------
def _status():
    editor = _c().editor
    running = editor.running()
    editor.notice_disk_changes()
    return {"running": running, "problems": list(editor.store.last_problems), "disk_sha": editor.disk_sha(),
            "drafts": _c().db.drafts(), "latest": _c().db.latest_version()}


@bp.get("/rules")
@roles_required("admin")
def rules():
    return render_template("admin/rules.html", rows=_c().editor.line_rows(), **_status())


def _line_form_context(number, values, problems=()):
    running = _c().editor.running()
    by_field = {}
    prefix = f"lines.{number}."
    for p in problems:
        field = p.field[len(prefix):] if p.field.startswith(prefix) else ""
        by_field.setdefault(field, []).append(p)
    mode = values.get("mode", "")
    return dict(number=number, values=values, mode=mode, mode_name=MODE_NAMES.get(mode, mode),
                fields=LINE_FIELDS["common"] + LINE_FIELDS.get(mode, []), problems=problems, by_field=by_field,
                skills=[s for s in running.skills.values() if not s.expert],
                experts=[s for s in running.skills.values() if s.expert])


@bp.route("/rules/lines/<number>", methods=["GET", "POST"])
@roles_required("admin")
def edit_line(number):
    editor = _c().editor
    try:
        text = editor.disk_text()
        values = editor.line_values(text, number)
    except ConsoleError as exc:
        abort(404, description=str(exc))
    if request.method == "GET":
        return render_template("admin/line.html", base_sha=sha256_text(text), **_line_form_context(number, values))
    base_sha = request.form.get("base_sha", "")
    submitted = {path: request.form.get(path, "") for path, _, _ in
                 LINE_FIELDS["common"] + LINE_FIELDS.get(values["mode"], [])}
    submitted["mode"] = values["mode"]
    draft_text = editor.apply_line_edit(text, number, submitted)
    checked = editor.validate(draft_text)
    if not checked.ok:
        return render_template("admin/line.html", base_sha=base_sha, **_line_form_context(number, submitted,
                                                                                          checked.problems)), 422
    if draft_text == text:
        flash("没有改动。", "info")
        return redirect(url_for("admin.edit_line", number=number))
    draft = _c().db.add_draft(actor(), base_sha or sha256_text(text), draft_text, f"表单修改号码 {number}")
    return redirect(url_for("admin.draft", draft_id=draft.id, to=number))


@bp.route("/rules/yaml", methods=["GET", "POST"])
@roles_required("admin")
def edit_yaml():
    editor = _c().editor
    problems, ok_message = [], None
    if request.method == "GET":
        draft_id = request.args.get("draft", type=int)
        draft_id = draft_id if draft_id is not None and 0 < draft_id < 2**63 else None
        draft = _c().db.draft(draft_id) if draft_id else None
        text = draft.content if draft else editor.disk_text()
        base_sha = draft.base_sha256 if draft else sha256_text(editor.disk_text())
        if editor.store.last_problems and not draft:  # the file on disk is broken: show why at once
            problems = editor.validate(text).problems
        return render_template("admin/yaml.html", text=text, base_sha=base_sha, problems=problems,
                               ok_message=None, running=editor.running())
    text = request.form.get("content", "").replace("\r\n", "\n")
    base_sha = request.form.get("base_sha", "")
    checked = editor.validate(text)
    status = 200
    if not checked.ok:
        problems, status = checked.problems, 422
    elif request.form.get("action") == "draft":
        draft = _c().db.add_draft(actor(), base_sha, text, request.form.get("summary", "") or "YAML 编辑")
        return redirect(url_for("admin.draft", draft_id=draft.id))
    else:
        ok_message = (f"校验通过：{len(checked.rules.lines)} 条原热线号码，{len(checked.rules.skills)} 个坐席组，"
                      f"版本 {checked.rules.version}")
    return render_template("admin/yaml.html", text=text, base_sha=base_sha, problems=problems,
                           ok_message=ok_message, running=editor.running()), status


@bp.get("/rules/schema.json")
@roles_required("admin")
def rules_schema():
    """The rules file's JSON Schema (call_routing/schema.py): the YAML editor's hints and completion,
    keys in the order the model declares them."""
    return current_app.response_class(json.dumps(schema.json_schema(), ensure_ascii=False), mimetype="application/json")


def _draft_or_404(draft_id):
    draft = _c().db.draft(draft_id)
    if draft is None:
        abort(404, description=f"没有草稿 #{draft_id}")
    return draft


@bp.route("/rules/drafts/<int:draft_id>", methods=["GET", "POST"])
@roles_required("admin")
def draft(draft_id):
    """Review a draft: its diff, validation, and a dry-run (POST) against draft and running rules."""
    editor = _c().editor
    d = _draft_or_404(draft_id)
    checked = editor.validate(d.content)
    current = editor.disk_text()
    form = {"to": request.values.get("to", ""), "caller": request.values.get("caller", ""),
            "at": request.values.get("at", ""), "heard": request.values.get("heard", "")}
    result = error = None
    status = 200
    if request.method == "POST":
        if not checked.ok:
            error, status = "草稿未通过校验，不能试运行。", 422
        elif not form["to"].strip():
            error, status = "请填写被叫号码（例如 12301）。", 422
        elif not re.fullmatch(r"\+?\d{3,20}", form["to"].strip()):
            error, status = f"被叫号码“{form['to'].strip()[:40]}”无效：请只填数字（例如 12301）。", 422
        else:
            try:
                result = {"draft": labels.decision_view(editor.dry_run(checked.rules, form["to"], form["caller"],
                                                                       form["at"], form["heard"]),
                                                        checked.rules, MODE_NAMES),
                          "running": labels.decision_view(editor.dry_run(editor.running(), form["to"], form["caller"],
                                                                         form["at"], form["heard"]),
                                                          editor.running(), MODE_NAMES)}
                _c().db.count_dry_run(d.id)
                d = _c().db.draft(d.id)
            except ConsoleError as exc:
                error, status = str(exc), 422
    if not form["at"]:
        form["at"] = parse_moment(None).strftime("%Y-%m-%dT%H:%M")
    removed = _groups_removed_by(checked.rules) if checked.ok else []
    return render_template("admin/draft.html", d=d, checked=checked, diff=text_diff(current, d.content, "transfer_rules.yaml"),
                           stale=sha256_text(current) != d.base_sha256, form=form, result=result, error=error,
                           running=editor.running(), removed=removed), status


def _groups_removed_by(rules) -> list[dict]:
    """Seat groups running now that ``rules`` (a draft) no longer has, while callers wait in them or
    seats are signed in with them, each with ``to``: the group its callers move to after publishing
    (the draft's general group; the ACD moves them keeping their place, docs/acd.md)."""
    to = rules.skills[rules.hotline.skill].name
    return [{**q, "to": to} for q in _c().dashboard.queues()
            if not q["removed"] and q["skill"] not in rules.skills and (q["waiting"] or q["logged_in"])]


@bp.post("/rules/drafts/<int:draft_id>/publish")
@roles_required("admin")
def publish(draft_id):
    editor = _c().editor
    d = _draft_or_404(draft_id)
    if d.published_as:
        flash(f"草稿 #{d.id} 已经发布过。", "info")
        return redirect(url_for("admin.history"))
    if not d.dry_runs:
        flash("发布前请先试运行至少一通电话，确认结果符合预期。", "error")
        return redirect(url_for("admin.draft", draft_id=d.id))
    before = editor.disk_text()
    checked = editor.validate(d.content)
    moved = [f"坐席组「{q['name']}」已撤销，其中排队的 {q['waiting']} 位来电将保留排队位置转入「{q['to']}」。"
             for q in (_groups_removed_by(checked.rules) if checked.ok else []) if q["waiting"]]
    try:
        row = editor.publish(d.content, actor(), note=request.form.get("note", "") or d.summary,
                             base_sha256=d.base_sha256)
    except PublishConflict as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.draft", draft_id=d.id))
    except ConsoleError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.draft", draft_id=d.id))
    _c().db.mark_published(d.id, row.id)
    _audit("rules.publish", str(editor.path), f"发布规则版本 {row.version}（历史 #{row.id}）：{row.note}",
           before=before, after=d.content, name=editor.path.name)
    flash(f"已发布规则版本 {row.version}。所有进程在1秒内使用新版本；进行中的通话按原版本完成。" + "".join(moved), "ok")
    return redirect(url_for("admin.history"))


@bp.get("/rules/history")
@roles_required("admin")
def history():
    return render_template("admin/history.html", versions=_c().db.versions(), version_kinds=labels.VERSION_KINDS,
                           **_status())


@bp.get("/rules/history/<int:version_id>")
@roles_required("admin")
def version(version_id):
    v = _c().db.version(version_id)
    if v is None:
        abort(404, description=f"没有历史版本 #{version_id}")
    current = _c().editor.disk_text()
    return render_template("admin/version.html", v=v, diff=text_diff(current, v.content, "transfer_rules.yaml"),
                           running=_c().editor.running())


@bp.post("/rules/history/<int:version_id>/rollback")
@roles_required("admin")
def rollback(version_id):
    editor = _c().editor
    before = editor.disk_text()
    try:
        row = editor.rollback(version_id, actor(), request.form.get("note", ""))
    except ConsoleError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.version", version_id=version_id))
    _audit("rules.rollback", str(editor.path), f"回滚：重新发布历史版本 #{version_id}，成为版本 {row.version}（历史 #{row.id}）",
           before=before, after=row.content, name=editor.path.name)
    flash(f"已回滚：历史版本 #{version_id} 重新发布为版本 {row.version}。", "ok")
    return redirect(url_for("admin.history"))


# -- users ----------------------------------------------------------------------------------------
@bp.route("/users", methods=["GET", "POST"])
@roles_required("admin")
def users():
    db = _c().db
    status, typed = 200, {}
    if request.method == "POST":
        f = request.form
        try:
            user = db.add_user(f.get("username", ""), f.get("password", ""), f.get("role", ""),
                               agent_id=f.get("agent_id") or None, display_name=f.get("display_name", ""),
                               must_change_password=True)
        except ConsoleError as exc:
            flash(str(exc), "error")
            status, typed = 422, {k: f.get(k, "") for k in ("username", "display_name", "role", "agent_id")}
        else:
            _audit("user.create", user.username, f"创建用户 {user.username}（{ROLE_NAMES[user.role]}）", before=None,
                   after=user.public())
            flash(f"已创建用户 {user.username}，首次登录时须修改密码。", "ok")
            return redirect(url_for("admin.users"))
    # a refused form comes back as typed (the password aside); a new one starts with the least role
    return render_template("admin/users.html", users=db.users(), roles=ROLES, typed=typed,
                           new_role=typed.get("role") if typed.get("role") in ROLES else "agent"), status


@bp.post("/users/<username>")
@roles_required("admin")
def update_user(username):
    f = request.form
    changes = {}
    if f.get("role"):
        changes["role"] = f["role"]
    if "active" in f:
        changes["active"] = f.get("active") == "1"
    if f.get("agent_id") is not None and f.get("agent_id") != "":
        changes["agent_id"] = f["agent_id"]
    if f.get("password"):
        changes["password"] = f["password"]
        changes["must_change_password"] = True
    if username == g.user.username and (changes.get("active") is False or changes.get("role", "admin") != "admin"):
        flash("不能停用自己或取消自己的管理员角色。", "error")
        return redirect(url_for("admin.users"))
    try:
        before, after = _c().db.update_user(username, **changes)
    except ConsoleError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.users"))
    what = "重置密码" if "password" in changes else "修改用户"
    seat, note = before.get("agent_id") if before.get("role") == "agent" else None, ""
    if seat and (not after.get("active") or after.get("role") != "agent" or after.get("agent_id") != seat
                 or "password" in changes):  # the person may no longer hold the seat: it stops taking calls
        from .agent_console import sign_out_seat

        out = sign_out_seat(seat, "account")
        note = {"after_call": f"，坐席 {seat} 将在当前通话结束后签出", None: ""}.get(out, f"，坐席 {seat} 已签出")
    _audit("user.update", username, f"{what} {username}{note}", before=before, after=after)
    flash(f"已更新用户 {username}{note}。", "ok")
    return redirect(url_for("admin.users"))


# -- audit -------------------------------------------------------------------------------------------
@bp.get("/audit")
@roles_required("admin")
def audit():
    return render_template("admin/audit.html", entries=_c().db.audit_entries(300, request.args.get("action") or None))


@bp.get("/audit/<int:entry_id>")
@roles_required("admin")
def audit_entry(entry_id):
    e = _c().db.audit_entry(entry_id)
    if e is None:
        abort(404, description=f"没有审计记录 #{entry_id}")
    return render_template("admin/audit_entry.html", e=e)
