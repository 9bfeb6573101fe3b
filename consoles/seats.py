"""Seats on a web page (admins): who sits where — each seat's name, phone endpoints and seat
groups (skills) with their levels, the same profile ``python -m consoles.users seat`` writes into
the Redis ACD. A seat's groups change only while it is signed out (the ACD's rule); every change
is audited with a diff."""
from __future__ import annotations

import re

from flask import abort, current_app, flash, redirect, render_template, request, url_for

from call_routing.acd import ACDError

from . import labels
from .admin import _audit, bp
from .auth import roles_required
from .users import seat_profile

SEAT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ENDPOINTS = 5


def _acd():
    return current_app.extensions["acd"]


def _seat_row(seat: dict, rules) -> dict:
    groups = sorted(seat["skills"].items(), key=lambda kv: -kv[1])
    return {**seat, "state_text": labels.agent_state_text(seat["state"], seat["reason"]),
            "groups": [(labels.skill_text(sid, rules), level) for sid, level in groups]}


@bp.get("/seats")
@roles_required("admin")
def seats():
    acd = _acd()
    ids = sorted(a.decode() if isinstance(a, bytes) else str(a) for a in acd.redis.smembers(acd.keys.agents()))
    rows = [_seat_row(s, acd.rules) for s in (acd.agent(a) for a in ids[:2000]) if s]
    return render_template("admin/seats.html", seats=rows)


@bp.route("/seats/new", methods=["GET", "POST"], defaults={"agent_id": None})
@bp.route("/seats/<agent_id>", methods=["GET", "POST"])
@roles_required("admin")
def seat(agent_id):
    acd, rules = _acd(), _acd().rules
    current = acd.agent(agent_id) if agent_id else None
    if agent_id and current is None:
        abort(404, description=f"没有坐席 {agent_id}")
    values = current or {"id": "", "name": "", "endpoints": [], "skills": {}, "state": "offline"}
    status, problems = 200, []
    if request.method == "POST":
        values, problems = _read_form(agent_id, rules)
        if not problems:
            before = current
            try:
                acd.save_agent(seat_profile(rules, values["id"], values["name"], values["skills"],
                                            values["endpoints"]))
            except ACDError:
                state = labels.agent_state_text((acd.agent(values["id"]) or {}).get("state"))
                problems.append(f"坐席 {values['id']} 当前{state}：请坐席先签出，再修改其坐席组。")
            else:
                _audit("seat.update", values["id"], f"{'修改' if before else '新建'}坐席 {values['id']}",
                       before=_public(before), after=_public(acd.agent(values["id"])))
                flash(f"已保存坐席 {values['id']}。", "ok")
                return redirect(url_for("admin.seats"))
        status = 422
    groups = [(sid, labels.skill_text(sid, rules), values["skills"].get(sid)) for sid in rules.skills]
    return render_template("admin/seat.html", seat=values, groups=groups, problems=problems,
                           new=agent_id is None), status


def _read_form(agent_id, rules) -> tuple[dict, list[str]]:
    f, problems = request.form, []
    seat_id = agent_id or f.get("id", "").strip()
    if not SEAT_ID.fullmatch(seat_id):
        problems.append("坐席号只能用字母、数字、_ . -，最多64个字符。")
    name = f.get("name", "").strip()[:64]
    endpoints = [e.strip() for e in f.get("endpoints", "").splitlines() if e.strip()]
    if len(endpoints) > MAX_ENDPOINTS or any(len(e) > 128 for e in endpoints):
        problems.append(f"话机地址最多{MAX_ENDPOINTS}个，每个不超过128个字符。")
    skills = {}
    for sid in rules.skills:
        if f.get(f"on-{sid}"):
            raw = f.get(f"level-{sid}", "50").strip()[:8] or "50"
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 99):
                problems.append(f"{labels.skill_text(sid, rules)}：级别“{raw}”无效，须为1到99的整数（数字越大越先接到来电）。")
                skills[sid] = raw  # shown again ticked, as typed; never saved (there is a problem)
                continue
            skills[sid] = int(raw)
    if not skills:
        problems.append("至少选择一个坐席组。")
    return {"id": seat_id, "name": name, "endpoints": endpoints, "skills": skills, "state": "offline"}, problems


def _public(seat: dict | None) -> dict | None:
    return None if seat is None else {k: seat[k] for k in ("name", "endpoints", "skills", "expert")}
