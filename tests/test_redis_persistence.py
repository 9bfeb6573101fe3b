"""The embedded Redis of `./run.sh` keeps its data (append-only file) in a data directory:
seats and keys survive a stop, a `kill -9`, and a second server on the same directory is
refused. Real redis-server, no mocks; every server started here is stopped here."""
from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from acd_support import make_acd
from call_routing.acd import Agent
from runtime.redis_server import DEFAULT_DATA_DIR, DataDirBusy, EmbeddedRedis, redis_url_or_embedded


@pytest.fixture
def servers():
    """Start EmbeddedRedis through ``start(...)``; all of them are stopped at the end."""
    started: list[EmbeddedRedis] = []

    def start(**kwargs) -> EmbeddedRedis:
        server = EmbeddedRedis(**kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
    for server in started:
        assert server.process is None or server.process.poll() is not None  # no orphan redis-server


def _client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


def test_a_key_and_a_seat_survive_a_stop_and_a_new_server_on_the_same_directory(servers, tmp_path, rules):
    data = tmp_path / "nested" / "redis"  # created, private
    first = servers(data_dir=data)
    assert data.is_dir() and (data.stat().st_mode & 0o777) == 0o700
    client = _client(first)
    client.set("hotline:test", "kept")
    make_acd(first.url, rules).save_agent(Agent("a7", "坐席a7", {"general": 5}), password="s3cret-pass")
    client.close()
    first.stop()

    second = servers(data_dir=data)
    assert second.process.pid != first.process.pid  # a new server, not the old one
    assert second.url == first.url == f"unix://{data / 'redis.sock'}?db=0"  # at the same address: the data dir's
    client = _client(second)
    assert client.get("hotline:test") == "kept"
    acd = make_acd(second.url, rules)
    seat = acd.agent("a7")
    assert seat is not None and seat["name"] == "坐席a7" and seat["skills"] == {"general": 5}
    assert acd.check_password("a7", "s3cret-pass")
    assert acd.login("a7").ok  # the seat works, not just its hash
    client.close()


def test_writes_a_second_old_survive_a_kill_9_of_redis_server(servers, tmp_path):
    data = tmp_path / "redis"
    first = servers(data_dir=data)
    client = _client(first)
    client.set("before-kill", "1")
    client.rpush("callbacks", "13812345678")
    client.close()
    time.sleep(2)  # appendfsync everysec: on disk within about a second
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(5)
    first.stop()  # lets go of the directory (the kill already stopped the server)

    client = _client(servers(data_dir=data))
    assert client.get("before-kill") == "1"
    assert client.lrange("callbacks", 0, -1) == ["13812345678"]
    client.close()


def test_a_second_server_on_a_directory_in_use_is_refused_and_says_what_to_do(servers, tmp_path):
    data = tmp_path / "redis"
    first = servers(data_dir=data)
    client = _client(first)
    client.set("mine", "1")
    with pytest.raises(DataDirBusy) as err:
        servers(data_dir=data)
    message = str(err.value)
    assert str(data) in message and "REDIS_DATA_DIR" in message
    assert f"redis-server pid {first.process.pid}" in message
    assert client.get("mine") == "1"  # the first one is untouched
    client.close()
    first.stop()
    servers(data_dir=data)  # free again once the first one stopped


def test_without_a_data_directory_nothing_is_kept(servers, tmp_path):
    first = servers()
    assert first.data_dir is None
    _client(first).set("gone", "1")
    first.stop()
    assert _client(servers()).get("gone") is None


@pytest.mark.parametrize("setting", ["dir", "off", ""])
def test_redis_url_or_embedded_keeps_the_data_in_REDIS_DATA_DIR_for_the_product(monkeypatch, tmp_path, setting):
    monkeypatch.delenv("REDIS_URL", raising=False)
    data = tmp_path / "data"
    monkeypatch.setenv("REDIS_DATA_DIR", str(data) if setting == "dir" else setting)
    url, server = redis_url_or_embedded(persistent=True)
    try:
        assert url == server.url and redis.Redis.from_url(url).ping()
        if setting == "dir":
            assert server.data_dir == data and (data / "hotline-redis.lock").exists()
        else:
            assert server.data_dir is None and not data.exists()
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_benchmarks_keep_an_ephemeral_redis_whatever_REDIS_DATA_DIR_says(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_DATA_DIR", str(tmp_path / "data"))
    url, server = redis_url_or_embedded()
    try:
        assert server.data_dir is None and not (tmp_path / "data").exists()
    finally:
        server.stop()


def test_the_product_default_is_var_redis_and_REDIS_URL_still_wins(monkeypatch):
    from runtime.redis_server import data_dir_from_env

    monkeypatch.delenv("REDIS_DATA_DIR", raising=False)
    assert data_dir_from_env() == DEFAULT_DATA_DIR and DEFAULT_DATA_DIR.parts[-2:] == ("var", "redis")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert redis_url_or_embedded(persistent=True) == ("redis://127.0.0.1:1/0", None)  # nothing started


def test_a_forked_child_stopping_it_leaves_the_parents_server_alone(servers, tmp_path):
    """A gunicorn worker leaves ``python app.py``'s main() through its ``finally`` too."""
    server = servers(data_dir=tmp_path / "redis")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            server.stop()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert server.process.poll() is None and os.path.exists(server.unix_socket)
    assert _client(server).ping()
