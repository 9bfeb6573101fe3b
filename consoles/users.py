"""Console users from the command line (same database as the web app: ``DATABASE_URL``).

    python -m consoles.users add NAME --role admin|supervisor|agent [--agent-id SEAT] [--name 显示名]
    python -m consoles.users passwd NAME          # new password (asked twice, or --password)
    python -m consoles.users list
    python -m consoles.users disable NAME | enable NAME
    python -m consoles.users seat SEAT --skills general:50,tourism:30 [--name 显示名] [--endpoint client:SEAT]

``add`` and ``passwd`` ask for the password (or take ``--password``; ``--generate`` prints a
random one that must be changed at first sign-in). ``seat`` provisions the agent's seat in the
Redis ACD (``REDIS_URL``, else the Redis ``./run.sh`` started — found through ``REDIS_DATA_DIR``/url; rules
from ``RULES_PATH``) with its skills and telephony endpoint.
Every change is written to the audit log as actor ``cli:<login name>``.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from intake.callback_jobs import rq_dispatch
from runtime.redis_conn import redis_client

from .db import ROLE_NAMES, ROLES, ConsoleError, ConsoleStore, generate_password


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _password(args, confirm=True) -> tuple[str, bool]:
    if args.password:
        return args.password, False
    if args.generate:
        return generate_password(), True
    first = getpass.getpass("密码 / password: ")
    if confirm and getpass.getpass("再输入一次 / again: ") != first:
        raise ConsoleError("两次输入的密码不一致")
    return first, False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consoles.users", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--agent-id", help="the ACD seat id of an agent (default: the user name)")
    add.add_argument("--name", default="", help="display name")
    for p in (add, sub.add_parser("passwd", help="set a user's password")):
        if p is not add:
            p.add_argument("username")
        p.add_argument("--password", help="the password (else asked for)")
        p.add_argument("--generate", action="store_true", help="print a random one-time password")
    sub.add_parser("list", help="list users")
    for name in ("disable", "enable"):
        sub.add_parser(name, help=f"{name} a user").add_argument("username")
    seat = sub.add_parser("seat", help="provision an agent seat in the ACD (Redis)")
    seat.add_argument("agent_id")
    seat.add_argument("--skills", required=True, help="skill:level,... e.g. general:50,tourism:30")
    seat.add_argument("--name", default="")
    seat.add_argument("--endpoint", action="append", default=[], help="a Dial string for Asterisk (PJSIP/agent1001, IAX2/…, Local/…); client:ID, sip:… or +86… for Twilio (repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.command == "seat":
            return _seat(args)
        db = ConsoleStore(os.environ.get("DATABASE_URL") or None)
        if args.command == "add":
            password, generated = _password(args)
            user = db.add_user(args.username, password, args.role, agent_id=args.agent_id, display_name=args.name,
                               must_change_password=generated)
            db.audit(_actor(), "user.create", user.username, f"命令行创建用户 {user.username}（{ROLE_NAMES[user.role]}）",
                     after=user.public())
            print(f"created {user.role} {user.username}" + (f" (seat {user.agent_id})" if user.agent_id else ""))
            if generated:
                print(f"one-time password: {password}  (must be changed at first sign-in)")
        elif args.command == "passwd":
            password, generated = _password(args)
            before, after = db.update_user(args.username, password=password, must_change_password=generated)
            db.audit(_actor(), "user.update", args.username, f"命令行重置 {args.username} 的密码", before=before,
                     after=after)
            print(f"password of {args.username} changed" + (f"; one-time password: {password}" if generated else ""))
        elif args.command in ("disable", "enable"):
            before, after = db.update_user(args.username, active=args.command == "enable")
            db.audit(_actor(), "user.update", args.username, f"命令行{'启用' if after['active'] else '停用'} {args.username}",
                     before=before, after=after)
            print(f"{args.username} {'enabled' if after['active'] else 'disabled'}")
        else:
            for u in db.users():
                flags = ["active" if u.active else "disabled"] + (["must change password"] if u.must_change_password else [])
                print("\t".join([u.username, u.role, u.agent_id or "-", *flags]))
    except ConsoleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def seat_profile(rules, seat_id: str, name: str, skills: dict, endpoints):
    """A seat's ACD profile as the command and the seats page write it: the seat id for a missing
    name, ``client:<seat>`` for no endpoint, expert when any of its groups is an expert group."""
    from call_routing.acd import Agent

    return Agent(seat_id, name or seat_id, skills, endpoints=tuple(endpoints) or (f"client:{seat_id}",),
                 expert=any(rules.skills[s].expert for s in skills if s in rules.skills))


def _seat(args) -> int:
    from call_routing.acd import ACD, ACDError
    from call_routing.rules_store import RulesStore

    skills = {}
    for part in args.skills.split(","):
        sid, _, level = part.strip().partition(":")
        if sid:
            skills[sid] = int(level or 50)
    acd = ACD(redis_client(decode_responses=True), RulesStore(os.environ.get("RULES_PATH") or None),
              dispatch_callback=rq_dispatch)
    try:
        acd.save_agent(seat_profile(acd.rules, args.agent_id, args.name, skills, args.endpoint))
    except ACDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"seat {args.agent_id}: skills {skills}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
