"""Editing ``transfer_rules.yaml`` safely while calls flow: validate, dry-run, publish, roll back.

No Flask here: the admin pages and the tests call :class:`RulesEditor`.

* **Validate** a draft with the very checks of ``python -m call_routing check``
  (:func:`call_routing.rules.check_rules`): the draft is written next to the rules file (so
  ``keywords_file`` resolves the same way) under a hidden temporary name, checked, removed.
* **Edit one line** through a form: the YAML is round-tripped with ruamel.yaml, so comments,
  key order and quoting of everything else stay byte for byte.
* **Dry-run** a call against a draft with :func:`call_routing.router.decide`.
* **Publish** atomically: temporary file in the same directory, fsync, ``os.replace``. Every
  process's :class:`~call_routing.rules_store.RulesStore` sees the new file within a second and
  swaps it in only if valid; calls in flight keep the Rules object they started with. Publishing
  is refused when the file changed since the draft was made (another admin, or an edit on disk).
* **History**: every published content is a row; rollback publishes an old content again.
* Edits made on disk by other means are noticed (:meth:`RulesEditor.notice_disk_changes`) and
  recorded as versions of kind ``disk`` once the running process has accepted them.
"""
from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import re
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from call_routing.router import decide
from call_routing.rules import CHINA_TZ, Problem, Rules, check_rules, read_rules_text

from .db import ConsoleError, ConsoleStore, RulesVersion, sha256_text

log = logging.getLogger("hotline.consoles.rules")

#: Form fields per mode: (path inside the line, label, kind). Mode itself is changed in the YAML editor.
LINE_FIELDS = {
    "common": [("name", "名称", "text"), ("department", "主管部门", "text"), ("skill", "坐席组", "skill"),
               ("greeting", "问候语（可空：用 12345 主号的问候语）", "textarea")],
    "merge": [("transition.from", "过渡期开始", "moment"), ("transition.until", "过渡期结束（含当日）", "moment"),
              ("transition.prompt", "过渡期提示语", "textarea"), ("transition.audio", "提示录音文件（可空）", "text"),
              ("after.action", "过渡期后", "after_action"), ("after.text", "过渡期后提示语", "textarea")],
    "dual": [("expert_skill", "专家坐席组（可空）", "expert_skill")],
    "subcenter": [("subcenter.name", "分中心名称", "text"), ("subcenter.target", "分中心号码或SIP地址", "text")],
}
OPTIONAL = {"transition.audio", "after.text", "expert_skill", "greeting"}
MODE_NAMES = {"merge": "整体并入", "dual": "双号并行", "subcenter": "设分中心", "main": "12345主号",
              "emergency": "紧急联动"}


class PublishConflict(ConsoleError):
    """The file changed since the draft was made: publishing would overwrite someone's edit."""


@dataclass
class Validation:
    rules: Rules | None
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def _yaml() -> YAML:
    y = YAML()  # round-trip: comments, order, quotes, flow style kept
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long prompts
    y.indent(mapping=2, sequence=4, offset=2)
    return y


class RulesEditor:
    """An admin's edit from text to the rules in service: validate, draft, dry-run, publish
    (atomically, with its audit record), roll back. About 200 lines, kept as one unit on purpose:
    every step guards the same invariant — an edit never reaches live calls unchecked or unaudited."""

    def __init__(self, store, db: ConsoleStore, announce=None):
        """``store``: the process's RulesStore; ``announce(version, content, by)``: optional hook
        (Redis version key and pub/sub for processes on other hosts)."""
        self.store = store
        self.db = db
        self.announce = announce
        self.path = Path(store.path)

    # -- reading -------------------------------------------------------------------------
    def disk_text(self) -> str:
        data, problems = read_rules_text(self.path)
        if problems:
            raise ConsoleError("；".join(problem_text(p) for p in problems))
        return data.decode("utf-8-sig")

    def disk_sha(self) -> str:
        try:
            return sha256_text(self.disk_text())
        except ConsoleError:
            return ""

    def running(self) -> Rules:
        return self.store.current()

    # -- validation ----------------------------------------------------------------------
    def validate(self, text: str) -> Validation:
        return validate_text(self.path, text)

    # -- the line list ---------------------------------------------------------------------
    def line_rows(self, text: str | None = None) -> list[dict]:
        """Every entry line with what an admin checks at a glance, from running rules (or ``text``)."""
        rules = self.running() if text is None else self.validate(text).rules
        if rules is None:
            return []
        src = text if text is not None else self._safe_disk_text()
        where = self._line_numbers(src) if src else {}
        rows = [self._row(rules, rules.hotline, where.get("hotline"))]
        for number, line in rules.lines.items():
            rows.append(self._row(rules, line, where.get(number)))
        return rows

    def _safe_disk_text(self) -> str | None:
        try:
            return self.disk_text()
        except ConsoleError:
            return None

    @staticmethod
    def _row(rules: Rules, line, file_line) -> dict:
        t = line.transition
        window = prompt = ""
        if t is not None:
            until = t.ends - timedelta(days=1) if t.ends.timetz().replace(tzinfo=None).isoformat() == "00:00:00" \
                else t.ends
            window = f"{t.starts.astimezone(CHINA_TZ):%Y-%m-%d} 至 {until.astimezone(CHINA_TZ):%Y-%m-%d}"
            prompt = t.prompt
        target = ""
        if line.subcenter_target:
            target = f"{line.subcenter_name} {line.subcenter_target}"
        elif line.expert_skill:
            target = f"专家：{rules.skills[line.expert_skill].name}"
        after = {"forward": "继续转接", "announce_and_hangup": "提示后挂机"}.get(line.after_action or "", "")
        return {"number": line.number, "name": line.name, "mode": line.mode, "mode_name": MODE_NAMES[line.mode],
                "window": window, "prompt": prompt, "after": after, "after_text": line.after_text or "",
                "skill": line.skill, "skill_name": rules.skills[line.skill].name, "target": target,
                "file_line": file_line}

    def _line_numbers(self, text: str) -> dict:
        try:
            doc = _yaml().load(text)
        except YAMLError:
            return {}
        out = {}
        try:
            out["hotline"] = doc.lc.key("hotline")[0] + 1
            lines = doc["lines"]
            for key in lines:
                out[str(key)] = lines.lc.key(key)[0] + 1
        except (KeyError, TypeError, AttributeError):
            pass
        return out

    # -- one line through a form ------------------------------------------------------------
    def line_values(self, text: str, number: str) -> dict:
        """The form's values for one line of ``text`` (strings, as typed in the file)."""
        spec = self._line_spec(_yaml().load(text), number)
        values = {"mode": str(spec.get("mode", ""))}
        for mode in ("common", "merge", "dual", "subcenter"):
            for path, _, _ in LINE_FIELDS[mode]:
                value = _get(spec, path)
                values[path] = "" if value is None else _show(value)
        return values

    def apply_line_edit(self, text: str, number: str, values: dict) -> str:
        """``text`` with one line's fields set from ``values``; everything else kept as written."""
        y = _yaml()
        doc = y.load(text)
        spec = self._line_spec(doc, number)
        mode = str(spec.get("mode", ""))
        for path, _, kind in LINE_FIELDS["common"] + LINE_FIELDS.get(mode, []):
            if path not in values:
                continue
            raw = (values.get(path) or "").strip()
            if not raw and path in OPTIONAL:
                _delete(spec, path)
                continue
            _set(spec, path, _typed(raw, kind, _get(spec, path)))
        out = io.StringIO()
        y.dump(doc, out)
        return out.getvalue()

    @staticmethod
    def _line_spec(doc, number: str):
        try:
            return doc["lines"][number]
        except (KeyError, TypeError):
            raise ConsoleError(f"规则文件中没有号码 {number}") from None

    # -- dry-run -------------------------------------------------------------------------
    @staticmethod
    def dry_run(rules: Rules, to: str, caller: str | None = None, at: str | datetime | None = None,
                heard: str | None = None) -> dict:
        """What ``rules`` would do with one call: the router's decision and its steps."""
        moment = parse_moment(at)
        decision = decide(to, caller or None, moment, heard or None, rules)
        out = decision.to_dict()
        out["at"] = moment.isoformat(timespec="minutes")
        return out

    # -- publishing ------------------------------------------------------------------------
    @contextmanager
    def _lock(self):
        lock_path = self.path.parent / f".{self.path.name}.lock"
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def publish(self, text: str, by: str, *, note: str = "", base_sha256: str | None = None, kind: str = "publish",
                restored_from: int | None = None) -> RulesVersion:
        """Validate, then atomically replace the rules file; record the version. Raises
        :class:`ConsoleError` with the problems when invalid, :class:`PublishConflict` when the file
        changed since ``base_sha256``."""
        self.notice_disk_changes()
        with self._lock():
            current = self.disk_text()
            if base_sha256 is not None and sha256_text(current) != base_sha256:
                raise PublishConflict("规则文件在您编辑之后已被修改（其他管理员发布、回滚或直接改了文件）。"
                                      "请打开最新版本重新编辑，以免覆盖别人的修改。")
            checked = self.validate(text)
            if not checked.ok:
                raise ConsoleError("草稿未通过校验，不能发布：" + "；".join(problem_text(p) for p in checked.problems))
            if sha256_text(current) == sha256_text(text):
                raise ConsoleError("草稿与正在使用的规则文件完全相同，无需发布")
            self._replace(text)
            self.store.reload()  # this process at once; the others within their check interval
            row = self.db.add_version(checked.rules.version, text, by, kind, note, restored_from)
        running = self.running()
        if running.version != checked.rules.version:
            log.error("published rules %s but this process still runs %s: %s", checked.rules.version,
                      running.version, "; ".join(str(p) for p in self.store.last_problems))
        log.info("rules %s published by %s (%s)", row.version, by, kind)
        if self.announce is not None:
            try:
                self.announce(row.version, text, by)
            except Exception:  # other hosts catch up at their next start / poll
                log.exception("could not announce rules version %s", row.version)
        return row

    def _replace(self, text: str) -> None:
        replace_file(self.path, text)

    def rollback(self, version_id: int, by: str, note: str = "") -> RulesVersion:
        old = self.db.version(version_id)
        if old is None:
            raise ConsoleError(f"没有历史版本 #{version_id}")
        return self.publish(old.content, by, note=note or f"回滚到历史版本 #{old.id}（{old.version}）",
                            kind="rollback", restored_from=old.id)

    # -- the file as found on disk ------------------------------------------------------------
    def notice_disk_changes(self) -> RulesVersion | None:
        """Record the running rules as a version when they did not come from this console (first
        start, or an edit on disk that the RulesStore accepted). Invalid disk files are never
        recorded: they are in ``store.last_problems`` and the old version keeps running."""
        running = self.running()
        latest = self.db.latest_version()
        if latest is not None and latest.version == running.version:
            return None
        try:
            data = Path(running.path).read_bytes().decode("utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return None
        checked = self.validate(data)
        if not checked.ok or checked.rules.version != running.version:
            return None  # the file moved on again; the store will catch up within a second
        kind = "initial" if latest is None else "disk"
        note = "控制台首次记录的规则文件" if latest is None else "在控制台之外修改并已生效的规则文件"
        row = self.db.add_version(running.version, data, "system", kind, note)
        self.db.audit("system", "rules.disk_change" if latest else "rules.initial", str(self.path),
                      f"规则版本 {running.version}（{note}）", before=latest.content if latest else None, after=data,
                      name=self.path.name)
        return row


# ---------------------------------------------------------------------------------------
# Small helpers


def validate_text(path: Path, text: str) -> Validation:
    """The same checks as ``python -m call_routing check``, on text not yet published.

    The text is written next to ``path`` (so ``keywords_file`` resolves the same way) under a
    hidden temporary name; problems name ``path`` so lines read as in the editor."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.check-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        said = {errno.EACCES: "没有写入权限", errno.EPERM: "没有写入权限", errno.ENOSPC: "磁盘已满",
                errno.EROFS: "文件系统只读"}.get(exc.errno, exc.strerror)
        raise ConsoleError(f"无法写入临时文件 {tmp}：{said}") from None
    try:
        rules, problems = check_rules(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    problems = [Problem(str(path) if p.file == str(tmp) else p.file, p.line, p.field,
                        p.message.replace(str(tmp), str(path))) for p in problems]
    return Validation(rules, problems)


def problem_text(p: Problem) -> str:
    """A problem as the console says it, for a message in one line (a flash, an error page):
    ``transfer_rules.yaml 第 12 行 · lines.12301.skill：坐席组「tourisn」不存在（已定义：…）``."""
    where = Path(p.file).name + (f" 第 {p.line} 行" if p.line else "")
    return f"{where} · {p.field}：{p.message}" if p.field else f"{where}：{p.message}"


def replace_file(path: Path, text: str) -> None:
    """Atomic replace: readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    directory = path.parent
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass



def parse_moment(at) -> datetime:
    if at is None or at == "":
        return datetime.now(CHINA_TZ)
    if isinstance(at, datetime):
        return at if at.tzinfo else at.replace(tzinfo=CHINA_TZ)
    try:
        moment = datetime.fromisoformat(str(at).strip().replace(" ", "T", 1).replace("Z", "+00:00"))
    except ValueError:
        raise ConsoleError(f"时间 {at!r} 的格式不对（例：2026-07-01 09:00）") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=CHINA_TZ)


def _get(spec, path: str):
    node = spec
    for part in path.split("."):
        if not hasattr(node, "get"):
            return None
        node = node.get(part)
        if node is None:
            return None
    return node


def _set(spec, path: str, value) -> None:
    parts = path.split(".")
    node = spec
    for part in parts[:-1]:
        if not hasattr(node.get(part), "get"):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _delete(spec, path: str) -> None:
    parts = path.split(".")
    node = _get(spec, ".".join(parts[:-1])) if len(parts) > 1 else spec
    if node is not None and hasattr(node, "pop"):
        node.pop(parts[-1], None)


def _show(value) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _typed(raw: str, kind: str, old):
    """A form value as YAML should hold it: dates as dates, quoted strings stay quoted."""
    if kind == "moment":
        try:
            if _DATE.match(raw):
                return date.fromisoformat(raw)
            return datetime.fromisoformat(raw)
        except ValueError:
            return raw  # kept as typed: validation says what is wrong, at its line
    if isinstance(old, (DoubleQuotedScalarString, SingleQuotedScalarString)):
        return type(old)(raw)
    if kind == "text" and re.fullmatch(r"\+?[0-9]+", raw):
        return DoubleQuotedScalarString(raw)  # numbers are written as strings in quotes
    return raw
