"""Rules versions across hosts: a Redis version key and pub/sub, and a follower for other hosts.

Processes on the host where the admin publishes see the new file through their
:class:`~call_routing.rules_store.RulesStore` (it checks the file once a second). Hosts with
their own copy of the rules file run the follower, which keeps that copy equal to the
published version:

    python -m consoles.rules_sync [--url REDIS_URL] [--rules RULES_PATH]

It reads ``rules:current`` (hash: version, sha256, content, by, at) at start, then waits for
messages on ``rules:published``; each new content is validated like ``python -m call_routing
check`` and written atomically (temp file + ``os.replace``); the host's RulesStores then swap it
in within a second. An invalid content is never written.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from call_routing.rules import DEFAULT_RULES_PATH

KEY = "rules:current"
CHANNEL = "rules:published"
log = logging.getLogger("hotline.rules_sync")


def announcer(client):
    """The ``announce`` hook of :class:`~consoles.rules_admin.RulesEditor` for one Redis."""
    from .db import sha256_text

    def announce(version: str, content: str, by: str) -> None:
        pipe = client.pipeline()
        pipe.hset(KEY, mapping={"version": version, "sha256": sha256_text(content), "content": content,
                                "by": by, "at": f"{time.time():.3f}"})
        pipe.publish(CHANNEL, version)
        pipe.execute()
    return announce


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else (v or "")


def apply_published(client, path) -> str | None:
    """Write the published content to ``path`` if it differs and is valid; returns its version."""
    from .db import sha256_text
    from .rules_admin import replace_file, validate_text

    data = {_text(k): _text(v) for k, v in client.hgetall(KEY).items()}
    if not data.get("content"):
        return None
    try:
        local = open(path, encoding="utf-8-sig").read()
    except OSError:
        local = ""
    if sha256_text(local) == data.get("sha256"):
        return None
    checked = validate_text(path, data["content"])
    if not checked.ok:
        log.error("published rules %s are invalid on this host; keeping %s:\n%s", data.get("version"), path,
                  "\n".join(str(p) for p in checked.problems))
        return None
    replace_file(path, data["content"])
    log.info("rules %s (published by %s) written to %s", data.get("version"), data.get("by"), path)
    return data.get("version")


def follow(url: str, path: str, stop=lambda: False) -> None:
    from runtime.redis_conn import redis_client

    client = redis_client(url)
    apply_published(client, path)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    last_poll = time.monotonic()
    while not stop():
        message = pubsub.get_message(timeout=1.0)
        if message is not None or time.monotonic() - last_poll > 30:  # a missed message is caught up
            last_poll = time.monotonic()
            apply_published(client, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consoles.rules_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--rules", default=os.environ.get("RULES_PATH") or str(DEFAULT_RULES_PATH))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        follow(args.url, args.rules)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
