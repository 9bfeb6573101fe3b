"""What the consoles keep in the database: users, the audit log, rules versions and drafts.

Same database as the tickets (``DATABASE_URL``; SQLite in ``var/hotline.db`` by default,
PostgreSQL in production), own tables. Passwords are stored as werkzeug hashes (scrypt),
never in clear. Every change an admin makes is an :class:`AuditEntry`: who, when, what,
and the before/after with a readable diff.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import Boolean, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from werkzeug.security import check_password_hash, generate_password_hash

from intake.tickets import UTCDateTime, create_tables, database_schema, database_url, make_engine

from .labels import TICKET_STATUSES

ROLES = ("admin", "supervisor", "agent")
ROLE_NAMES = {"admin": "管理员", "supervisor": "班长/质检", "agent": "坐席"}
MIN_PASSWORD = 10


class ConsoleError(Exception):
    """A console request that cannot be done; the message is meant for the person asking."""


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[str | None] = mapped_column(String(64))  # the ACD seat an agent logs in to
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def public(self) -> dict:
        return {"username": self.username, "display_name": self.display_name, "role": self.role,
                "agent_id": self.agent_id, "active": self.active, "must_change_password": self.must_change_password}


class AuditEntry(Base):
    __tablename__ = "console_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(48), index=True)
    target: Mapped[str] = mapped_column(String(256), default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    diff: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str | None] = mapped_column(String(64))


class RecordingListen(Base):
    """When a person's listening to a full-call recording was last audited: one row per person
    and recording, so that every web process sees the same (see :meth:`ConsoleStore.audit_listen`)."""

    __tablename__ = "console_recording_listens"
    __table_args__ = (UniqueConstraint("actor", "recording_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(64))
    recording_id: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # the audited listen that opened the session
    audit_id: Mapped[int | None] = mapped_column(Integer)


class RulesVersion(Base):
    """One published (or detected) content of the rules file. Rollback republishes one."""

    __tablename__ = "console_rules_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), index=True)  # Rules.version (rules + keywords)
    sha256: Mapped[str] = mapped_column(String(64))  # of the rules file content alone
    content: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # initial | publish | rollback | disk
    note: Mapped[str] = mapped_column(Text, default="")
    restored_from: Mapped[int | None] = mapped_column(Integer)


class RulesDraft(Base):
    """An edit being prepared: validated, dry-run, then published (or abandoned)."""

    __tablename__ = "console_rules_drafts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    base_sha256: Mapped[str] = mapped_column(String(64))  # the file content it was edited from
    content: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    dry_runs: Mapped[int] = mapped_column(Integer, default=0)
    published_as: Mapped[int | None] = mapped_column(Integer)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def text_diff(before: str | None, after: str | None, name: str = "", context: int = 2) -> str:
    """Unified diff. difflib.unified_diff treats lines repeated all over a rules file (``after:``,
    ``action: forward``) as junk and shows them as changed; this one compares every line."""
    a, b = (before or "").splitlines(), (after or "").splitlines()
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out = []
    for group in matcher.get_grouped_opcodes(context):
        if not out:
            out += [f"--- {name} (之前)", f"+++ {name} (之后)"]
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
        for tag, x1, x2, y1, y2 in group:
            if tag == "equal":
                out += [" " + line for line in a[x1:x2]]
                continue
            out += ["-" + line for line in a[x1:x2]]
            out += ["+" + line for line in b[y1:y2]]
    return "\n".join(out) + ("\n" if out else "")


#: the audited records' fields, as the admin reads them in a change
DIFF_KEYS = {"username": "用户名", "display_name": "姓名", "role": "角色", "agent_id": "坐席号", "active": "启用",
             "must_change_password": "下次登录须改密码", "status": "状态", "result": "办理结果", "name": "姓名",
             "endpoints": "话机", "skills": "坐席组（技能：优先级）", "expert": "专家坐席"}


def _diff_value(key: str, value) -> str:
    if value is None or value == "":
        return "（空）"
    if isinstance(value, bool):
        return "是" if value else "否"
    if key == "role":
        return ROLE_NAMES.get(value, str(value))
    if key == "status":
        return TICKET_STATUSES.get(value, str(value))
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def dict_diff(before: dict | None, after: dict | None) -> str:
    """What changed, one field a line, in words: ``角色：坐席 → 班长/质检``."""
    before, after = before or {}, after or {}
    out = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            out.append(f"{DIFF_KEYS.get(key, key)}：{_diff_value(key, before.get(key))} → "
                       f"{_diff_value(key, after.get(key))}")
    return "\n".join(out)


class ConsoleStore:
    """Users, audit, rules versions and drafts. Thread- and process-safe (one transaction per call)."""

    def __init__(self, url: str | None = None, *, schema: str | None = None):
        self.url = database_url(url)
        schema = database_schema(schema)
        self.engine = make_engine(self.url, schema)
        create_tables(self.engine, Base.metadata, schema)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- users ---------------------------------------------------------------------------
    def add_user(self, username: str, password: str, role: str, *, agent_id: str | None = None,
                 display_name: str = "", must_change_password: bool = False) -> User:
        username = (username or "").strip()
        if not username or len(username) > 64 or any(c.isspace() for c in username):
            raise ConsoleError("用户名不能为空、不能含空格，最长64个字符")
        if role not in ROLES:
            raise ConsoleError(f"角色 {role!r} 不存在（可选：{', '.join(ROLES)}）")
        check_password_strength(password)
        user = User(username=username, display_name=display_name or username, role=role,
                    agent_id=(agent_id or username) if role == "agent" else agent_id,
                    password_hash=generate_password_hash(password), active=True,
                    must_change_password=must_change_password, created_at=_now())
        try:
            with self._session.begin() as s:
                s.add(user)
        except IntegrityError:
            raise ConsoleError(f"用户 {username} 已存在") from None
        return user

    def user(self, username: str) -> User | None:
        with self._session() as s:
            return s.scalar(select(User).where(User.username == username))

    def user_by_id(self, user_id: int) -> User | None:
        with self._session() as s:
            return s.get(User, user_id)

    def users(self) -> list[User]:
        with self._session() as s:
            return list(s.scalars(select(User).order_by(User.role, User.username)))

    def count_users(self) -> int:
        with self._session() as s:
            return s.scalar(select(func.count(User.id))) or 0

    def authenticate(self, username: str, password: str) -> User | None:
        user = self.user(username)
        if user is None:
            # same work as a real check: no timing hint whether the name exists
            check_password_hash(_DUMMY_HASH, password or "")
            return None
        if not user.active or not check_password_hash(user.password_hash, password or ""):
            return None
        with self._session.begin() as s:
            row = s.get(User, user.id)
            row.last_login_at = _now()
        return user

    def update_user(self, username: str, **changes) -> tuple[dict, dict]:
        """Change role, agent id, display name, active, or password; returns (before, after)."""
        with self._session.begin() as s:
            row = s.scalar(select(User).where(User.username == username))
            if row is None:
                raise ConsoleError(f"没有用户 {username}")
            before = row.public()
            if "password" in changes:
                check_password_strength(changes["password"])
                row.password_hash = generate_password_hash(changes.pop("password"))
                row.must_change_password = changes.pop("must_change_password", False)
            for key in ("role", "agent_id", "display_name", "active", "must_change_password"):
                if key in changes:
                    if key == "role" and changes[key] not in ROLES:
                        raise ConsoleError(f"角色 {changes[key]!r} 不存在（可选：{', '.join(ROLES)}）")
                    setattr(row, key, changes[key])
            return before, row.public()

    # -- audit ---------------------------------------------------------------------------
    def audit(self, actor: str, action: str, target: str = "", summary: str = "", *, before=None, after=None,
              address: str | None = None, name: str = "") -> AuditEntry:
        if isinstance(before, dict) or isinstance(after, dict):
            diff = dict_diff(before, after)
            b = json.dumps(before, ensure_ascii=False) if before is not None else None
            a = json.dumps(after, ensure_ascii=False) if after is not None else None
        else:
            diff = text_diff(before, after, name or target) if (before is not None or after is not None) else ""
            b, a = before, after
        # the actor of a failed sign-in is whatever was typed: never longer than the column
        entry = AuditEntry(at=_now(), actor=(actor or "-")[:64], action=action[:48], target=(target or "")[:256],
                           summary=summary, before=b,
                           after=a, diff=diff, address=address)
        with self._session.begin() as s:
            s.add(entry)
        return entry

    def audit_listen(self, actor: str, recording_id: int, target: str, summary: str, *, window: timedelta,
                     address: str | None = None, action: str = "recording.listen") -> AuditEntry | None:
        """One audit entry per listening session: written unless ``actor`` had one for this
        recording less than ``window`` ago (then None). The entry and the session's start are
        written in one transaction, so a request that gets no entry always has one before it;
        concurrent requests (a player asks for several ranges at once, served by several
        processes) get one entry between them."""
        now, actor = _now(), (actor or "-")[:64]
        try:
            with self._session.begin() as s:  # SQLite: BEGIN IMMEDIATE, PostgreSQL: the row locked
                row = s.scalar(select(RecordingListen).where(RecordingListen.actor == actor,
                                                             RecordingListen.recording_id == recording_id)
                               .with_for_update())
                if row is not None and row.at > now - window:
                    return None
                entry = AuditEntry(at=now, actor=actor, action=action, target=target[:256], summary=summary,
                                   diff="", address=address)
                s.add(entry)
                s.flush()
                if row is None:
                    s.add(RecordingListen(actor=actor, recording_id=recording_id, at=now, audit_id=entry.id))
                    s.flush()  # PostgreSQL: a concurrent first listen committed → IntegrityError
                else:
                    row.at, row.audit_id = now, entry.id
            return entry
        except IntegrityError:
            return None  # the other request's entry, committed with its row, covers this one

    def audit_entries(self, limit: int = 200, action: str | None = None) -> list[AuditEntry]:
        with self._session() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if action:
                q = q.where(AuditEntry.action == action)
            return list(s.scalars(q))

    def failed_sign_ins(self, username: str, address: str | None, since: datetime) -> tuple[int, int, int]:
        """Failed sign-ins since ``since``: (for ``username`` from ``address``, for ``username``
        from anywhere — both only after its last successful sign-in —, from ``address`` for any
        name). Read from the audit log, so every process sees the same count."""
        with self._session() as s:
            user = s.scalar(select(User).where(User.username == username)) if username else None
            name_since = since
            if user is not None and user.last_login_at and user.last_login_at > since:
                name_since = user.last_login_at
            failed = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "login.failed")
            named = failed.where(AuditEntry.at >= name_since, AuditEntry.actor == (username or "-")[:64])
            by_name = s.scalar(named)
            by_name_here = s.scalar(named.where(AuditEntry.address == address)) if address else by_name
            by_address = s.scalar(failed.where(AuditEntry.at >= since, AuditEntry.address == address)) \
                if address else 0
        return int(by_name_here or 0), int(by_name or 0), int(by_address or 0)

    def audit_entry(self, entry_id: int) -> AuditEntry | None:
        with self._session() as s:
            return s.get(AuditEntry, entry_id)

    # -- rules versions and drafts ---------------------------------------------------------
    def add_version(self, version: str, content: str, by: str, kind: str, note: str = "",
                    restored_from: int | None = None) -> RulesVersion:
        row = RulesVersion(version=version, sha256=sha256_text(content), content=content, at=_now(), by=by,
                           kind=kind, note=note, restored_from=restored_from)
        with self._session.begin() as s:
            s.add(row)
        return row

    def versions(self, limit: int = 200) -> list[RulesVersion]:
        with self._session() as s:
            return list(s.scalars(select(RulesVersion).order_by(RulesVersion.id.desc()).limit(limit)))

    def version(self, version_id: int) -> RulesVersion | None:
        with self._session() as s:
            return s.get(RulesVersion, version_id)

    def latest_version(self) -> RulesVersion | None:
        with self._session() as s:
            return s.scalar(select(RulesVersion).order_by(RulesVersion.id.desc()).limit(1))

    def add_draft(self, by: str, base_sha256: str, content: str, summary: str = "") -> RulesDraft:
        row = RulesDraft(created_at=_now(), created_by=by, base_sha256=base_sha256, content=content,
                         summary=summary, dry_runs=0)
        with self._session.begin() as s:
            s.add(row)
        return row

    def draft(self, draft_id: int) -> RulesDraft | None:
        with self._session() as s:
            return s.get(RulesDraft, draft_id)

    def drafts(self, limit: int = 20) -> list[RulesDraft]:
        with self._session() as s:
            return list(s.scalars(select(RulesDraft).where(RulesDraft.published_as.is_(None))
                                  .order_by(RulesDraft.id.desc()).limit(limit)))

    def count_dry_run(self, draft_id: int) -> None:
        with self._session.begin() as s:
            row = s.get(RulesDraft, draft_id)
            if row is not None:
                row.dry_runs = (row.dry_runs or 0) + 1

    def mark_published(self, draft_id: int, version_id: int) -> None:
        with self._session.begin() as s:
            row = s.get(RulesDraft, draft_id)
            if row is not None:
                row.published_as = version_id


def check_password_strength(password: str) -> None:
    if not password or len(password) < MIN_PASSWORD:
        raise ConsoleError(f"密码至少{MIN_PASSWORD}个字符")


def generate_password() -> str:
    return secrets.token_urlsafe(12)


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))
