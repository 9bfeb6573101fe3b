"""Command line: ``python -m call_routing check [RULES]`` and ``python -m call_routing route …``.

``check`` exits 0 for a valid file (``FILE: OK — 校验通过：32 条原热线号码，…``), else 1 with one
``FILE:LINE: field: message`` per problem (the message in Chinese, for the admins who read it).
``route`` prints the decision for one call as a JSON object (DESIGN.md §4).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime

from .rules import CHINA_TZ, DEFAULT_RULES_PATH, check_rules
from .router import decide


def _rules_path(arg: str | None) -> str:
    return arg or os.environ.get("RULES_PATH") or str(DEFAULT_RULES_PATH)


def _load_or_exit(path: str):
    rules, problems = check_rules(path)
    if problems:
        for p in problems:
            print(p)
        sys.exit(1)
    return rules


def cmd_check(args) -> int:
    path = _rules_path(args.rules)
    rules = _load_or_exit(path)
    print(f"{path}: OK — 校验通过：{len(rules.lines)} 条原热线号码，{len(rules.skills)} 个坐席组，"
          f"版本 {rules.version}")
    return 0


def _parse_at(text: str | None) -> datetime:
    if not text:
        return datetime.now(CHINA_TZ)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"--at: {text!r} is not an ISO-8601 time (e.g. 2026-07-01T09:00:00+08:00)")
    return at if at.tzinfo else at.replace(tzinfo=CHINA_TZ)


def cmd_route(args) -> int:
    at = _parse_at(args.at)
    rules = _load_or_exit(_rules_path(args.rules))
    decision = decide(args.to, args.caller, at, args.text, rules)
    out = decision.to_dict()
    out["at"] = at.isoformat()
    print(json.dumps(out, ensure_ascii=False))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m call_routing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a rules file")
    check.add_argument("rules", nargs="?", help="rules file (default: $RULES_PATH or transfer_rules.yaml)")
    check.set_defaults(func=cmd_check)
    route = sub.add_parser("route", help="show how one call would be routed")
    route.add_argument("--to", required=True, help="the number dialed, in any carrier format")
    route.add_argument("--from", dest="caller", default=None, help="the caller's number")
    route.add_argument("--at", default=None, help="ISO-8601 time of the call (default: now, China time)")
    route.add_argument("--text", default=None, help="what the caller said")
    route.add_argument("--rules", default=None, help="rules file (default: $RULES_PATH or transfer_rules.yaml)")
    route.set_defaults(func=cmd_route)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
