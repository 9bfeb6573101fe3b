"""Every Redis client of the product is made here: one Redis, or the primary Redis Sentinel names.

``REDIS_SENTINELS`` (comma-separated ``host:port`` of the Sentinels) and ``REDIS_SENTINEL_SERVICE``
(the monitored primary's name, default ``hotline``) take the place of ``REDIS_URL``: the clients
ask the Sentinels where the primary is, and after a failover reconnect to the new one, retrying
a command for up to :data:`FAILOVER_WAIT_S` while the Sentinels switch (a dead primary refuses
connections; a demoted one answers READONLY, which redis-py's Sentinel connection turns into a
reconnect). Without them: ``REDIS_URL``, else the embedded Redis ``./run.sh`` started.

:class:`ReplicaWait` makes a write wait until a replica holds it, so a failover loses none of
it (the ACD's state changes use it; docs/operations.md "Redis Sentinel").
"""
from __future__ import annotations

import logging
import os
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

log = logging.getLogger("hotline.redis")

DEFAULT_SERVICE = "hotline"
#: how long a command keeps retrying while the Sentinels elect a new primary: 0.1, 0.2, 0.4,
#: then every 0.5 s, about 9 s in all (a failover with down-after-milliseconds 5000 fits)
FAILOVER_WAIT_S = 9.2
FAILOVER_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=20)
#: how long a write waits for a replica's acknowledgement before it goes on without one
REPLICA_WAIT_MS = 1000
#: with no replica acknowledging, how often to look (ROLE) whether one is back
REPLICA_LOOK_S = 1.0


class SettingError(ValueError):
    """A Redis setting in the environment cannot be used; the message names it."""


def sentinels_from_env(environ=os.environ) -> list[tuple[str, int]] | None:
    """``REDIS_SENTINELS`` as (host, port) pairs, None when unset or empty."""
    value = (environ.get("REDIS_SENTINELS") or "").strip()
    if not value:
        return None
    found = []
    for item in value.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingError(f"REDIS_SENTINELS: {item.strip()!r} is not host:port (comma-separated host:port "
                               f"of the Sentinels, e.g. 10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379)")
        found.append((host, int(port)))
    return found


def service_from_env(environ=os.environ) -> str:
    service = (environ.get("REDIS_SENTINEL_SERVICE") or DEFAULT_SERVICE).strip()
    if not service or any(ch.isspace() for ch in service):
        raise SettingError(f"REDIS_SENTINEL_SERVICE: {service!r} is not a Sentinel service name "
                           f"(the name in `sentinel monitor NAME host port quorum`, default {DEFAULT_SERVICE})")
    return service


def sentinel_summary() -> str | None:
    """``Sentinel service hotline via h:p, h:p`` for the start-up summary, None without Sentinel."""
    sentinels = sentinels_from_env()
    if not sentinels:
        return None
    return f"Sentinel service {service_from_env()} via " + ", ".join(f"{h}:{p}" for h, p in sentinels)


_sentinels: dict[tuple, Sentinel] = {}


class _FollowingConnection(SentinelManagedConnection):
    """Asks the Sentinels where the primary is at every connect, the reconnects inside a command's
    retries included (redis-py's own asks only when the pool hands out a connection, so a command
    would keep retrying the dead primary)."""

    def _connect(self):
        self.host, self.port = self.connection_pool.get_master_address()
        return super()._connect()


def _master(sentinel: Sentinel, service: str, **kwargs) -> redis.Redis:
    return sentinel.master_for(service, retry=FAILOVER_RETRY, connection_class=_FollowingConnection, **kwargs)


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The primary's connections, waiting up to ``timeout`` for a free one when all are in use."""


def redis_client(url: str | None = None, *, wait_for_connection: float | None = None, **kwargs) -> redis.Redis:
    """A client of the product's Redis; ``kwargs`` as for ``redis.Redis`` (``decode_responses``,
    ``socket_timeout``, ``max_connections``, …).

    With ``REDIS_SENTINELS`` set: the primary the Sentinels name, followed across failovers
    (``url`` is ignored). Otherwise ``url``, else ``REDIS_URL``, else the embedded Redis of a running
    ``./run.sh``. ``wait_for_connection``: a pool of ``max_connections`` that waits this many
    seconds for a free connection instead of refusing the command (many threads, one pool)."""
    sentinels = sentinels_from_env()
    if sentinels:
        key = tuple(sentinels)
        if key not in _sentinels:  # one per process: its connections to the Sentinels are shared
            _sentinels[key] = Sentinel(sentinels, sentinel_kwargs={"socket_timeout": 0.5,
                                                                   "socket_connect_timeout": 0.5})
        extra = {"connection_pool_class": _BlockingSentinelPool, "timeout": wait_for_connection} \
            if wait_for_connection is not None else {}
        return _master(_sentinels[key], service_from_env(), **extra, **kwargs)
    if not url:
        from runtime.redis_server import product_redis_url

        url = product_redis_url()
    if wait_for_connection is not None:
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, timeout=wait_for_connection, **kwargs))
    return redis.Redis.from_url(url, **kwargs)


def same_redis(client: redis.Redis, **kwargs) -> redis.Redis:
    """Another client of the Redis ``client`` uses (the Sentinels' primary included), ``kwargs``
    changed: e.g. ``decode_responses=False`` for rq, which stores pickled jobs."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        own = {k: v for k, v in pool.connection_kwargs.items() if k not in ("connection_pool", "retry")}
        return _master(pool.sentinel_manager, pool.service_name, **dict(own, **kwargs))
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                            **dict(pool.connection_kwargs, **kwargs)))


class ReplicaWait:
    """Writes that a failover must not lose: with a Sentinel-managed client, a pipeline's commands
    are followed by ``WAIT 1`` on the same connection, so they return once a replica holds them.

    When no replica acknowledges within :data:`REPLICA_WAIT_MS` (none left after a failover, or
    it is down), writes go on without waiting, unprotected, until ``ROLE`` shows a replica again
    (looked at every :data:`REPLICA_LOOK_S`): the hotline keeps taking calls. A plain client (one
    Redis, no replica to fail over to) never waits."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.enabled = isinstance(client.connection_pool, SentinelConnectionPool)
        self._alone_at: float | None = None  # when a replica last failed to acknowledge, or was looked for

    def _waiting(self) -> bool:
        if not self.enabled:
            return False
        if self._alone_at is None:
            return True
        if time.monotonic() - self._alone_at < REPLICA_LOOK_S:
            return False
        role = self.client.execute_command("ROLE")
        if role[0] in ("master", b"master") and role[2]:
            log.warning("Redis has a replica again: writes wait for it")
            self._alone_at = None
            return True
        self._alone_at = time.monotonic()
        return False

    def execute(self, pipe, raise_on_error: bool = True) -> list:
        """``pipe.execute()``, after which a replica holds its writes (see the class)."""
        if not self._waiting():
            return pipe.execute(raise_on_error=raise_on_error)
        pipe.wait(1, REPLICA_WAIT_MS)
        *results, acked = pipe.execute(raise_on_error=raise_on_error)
        if acked == 0 and self._alone_at is None:
            log.warning("no Redis replica acknowledged a write within %d ms: writes go on unreplicated "
                        "(a failover now would lose them) until one is back", REPLICA_WAIT_MS)
            self._alone_at = time.monotonic()
        return results
