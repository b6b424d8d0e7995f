"""``anyio_layer.inspect`` and ``python -m anyio_layer``, against real servers.

The key spaces are written by the queue layer itself wherever possible (so
these tests follow its layout), and by raw commands only to fake what a live
layer never leaves behind: messages and memberships from the past.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anyio_layer.exceptions import AuthenticationError, ConfigurationError, RedisConnectionError
from anyio_layer.inspect import read_snapshot, report
from anyio_layer.inspect.cli import parse_hosts_option
from anyio_layer.queue import open_redis_layer
from anyio_layer.redis.pool import open_pool
from anyio_layer.testing import RedisServer
from anyio_layer.testing.cluster import RedisCluster
from anyio_layer.testing.pytest_plugin import RedisServerFactory

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "anyio_layer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def populate(hosts: list[str], *, groups: int = 3, workers: int = 4) -> str:
    """Groups with this layer's channel and a worker each, messages waiting; returns the channel."""
    async with open_redis_layer(hosts=hosts) as layer:
        local = await layer.new_channel()
        for index in range(groups):
            await layer.group_add(f"room{index}", local)
            await layer.group_add(f"room{index}", f"worker{index}")
        for index in range(workers):
            for _ in range(index + 1):
                await layer.send(f"worker{index}", {"type": "job"})
        await layer.send(local, {"type": "hello"})
    # Closing returned the message buffered for `local` to Redis, in its process key.
    return local


# -- the async API ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_server(redis_url: str) -> None:
    before = time.time()
    local = await populate([redis_url])
    snapshot = await read_snapshot([redis_url])
    assert not snapshot.cluster
    assert snapshot.servers == ("redis://127.0.0.1:" + redis_url.rsplit(":", 1)[1] + "/0",)
    assert [group.name for group in snapshot.groups] == ["room0", "room1", "room2"]
    for index, group in enumerate(snapshot.groups):
        assert sorted(member for member, _ in group.members) == sorted([local, f"worker{index}"])
        assert all(before <= joined <= time.time() for _, joined in group.members)
        assert group.ttl is not None
        assert 86000 < group.ttl <= 86400
    channels = {channel.name: channel for channel in snapshot.channels}
    process_key = local.split("!")[0] + "!"
    assert set(channels) == {process_key, "worker0", "worker1", "worker2", "worker3"}
    assert channels[process_key].process_local
    assert channels[process_key].backlog == 1
    # worker0..2 also got nothing from the groups: group_send was never called.
    assert [channels[f"worker{i}"].backlog for i in range(4)] == [1, 2, 3, 4]
    for channel in channels.values():
        assert channel.oldest is not None
        assert before <= channel.oldest <= time.time()
        assert channel.ttl is not None
        assert 0 < channel.ttl <= 60
    assert snapshot.other_keys == 0
    assert snapshot.keys_scanned == 3 + 5

    rows = report.channels(snapshot)
    assert [row["channel"] for row in rows][:2] == ["worker3", "worker2"]
    (process,) = report.processes(snapshot)
    assert process["process"] == process_key
    assert process["memberships"] == 3
    assert process["backlog"] == 1
    assert 0 <= process["oldest_age"] < time.time() - before + 1
    summary = report.summary(snapshot)
    assert summary["groups"] == 3
    assert summary["memberships"] == 6
    assert summary["channels"] == 4
    assert summary["process_keys"] == 1
    assert summary["messages_waiting"] == 11
    assert summary["undrained_channels"] == summary["dead_members"] == 0


@pytest.mark.anyio
async def test_two_shards(redis_server_factory: RedisServerFactory) -> None:
    servers = [redis_server_factory(), redis_server_factory()]
    hosts = [server.url for server in servers]
    async with open_redis_layer(hosts=hosts) as layer:
        for index in range(40):
            await layer.send(f"queue{index}", {"type": "job"})
            await layer.group_add(f"group{index}", f"queue{index}")
        shard_of = layer.consistent_hash
    snapshot = await read_snapshot(hosts)
    assert len(snapshot.servers) == 2
    assert len(snapshot.channels) == 40
    assert len(snapshot.groups) == 40
    for item in (*snapshot.channels, *snapshot.groups):
        assert item.server == snapshot.servers[shard_of(item.name)]
    assert {item.server for item in snapshot.channels} == set(snapshot.servers)
    for server, found in zip(servers, snapshot.servers, strict=True):
        count = sum(1 for item in (*snapshot.channels, *snapshot.groups) if item.server == found)
        assert server.execute("DBSIZE") == count


@pytest.mark.anyio
async def test_cluster(redis_cluster: RedisCluster, redis_cluster_hosts: list[str]) -> None:
    local = await populate(redis_cluster_hosts, groups=12, workers=12)
    snapshot = await read_snapshot(redis_cluster_hosts)
    assert snapshot.cluster
    assert len(snapshot.servers) == 3
    assert [group.name for group in snapshot.groups] == sorted(f"room{i}" for i in range(12))
    names = {channel.name for channel in snapshot.channels}
    assert names == {local.split("!")[0] + "!", *(f"worker{i}" for i in range(12))}
    assert {item.key for item in snapshot.groups} == {f"asgi:group:{{room{i}}}" for i in range(12)}
    # Each key was found on the primary that serves it, and every primary had some.
    for item in (*snapshot.channels, *snapshot.groups):
        node = redis_cluster.node_for_key(item.key)
        assert item.server == f"{node.address[0]}:{node.address[1]}"
    assert {item.server for item in (*snapshot.channels, *snapshot.groups)} == set(snapshot.servers)
    assert report.summary(snapshot)["messages_waiting"] == sum(range(1, 13)) + 1


@pytest.mark.anyio
async def test_dead_detection(redis_server: RedisServer, redis_url: str) -> None:
    now = time.time()
    # A live process: its key is drained (absent); a dead one left messages 100 s ago;
    # one more process key holds a fresh message (its reader is merely behind).
    redis_server.execute("ZADD", "asgispecific.dead!", now - 100, b"m1", now - 5, b"m2")
    redis_server.execute("ZADD", "asgispecific.busy!", now - 1, b"m")
    redis_server.execute("ZADD", "asgistuck", now - 30, b"m")
    members = [
        (now - 50, "specific.dead!a"),
        (now - 50, "specific.live!b"),
        (now - 50, "specific.busy!c"),
        (now - 90000, "specific.old!d"),
        (now - 20, "stuck"),
        (now - 20, "fresh"),
    ]
    redis_server.execute("ZADD", "asgi:group:chat", *[part for pair in members for part in pair])
    snapshot = await read_snapshot([redis_url])
    looks_dead = report.dead(snapshot, stale_after=10)
    assert [row["channel"] for row in looks_dead["undrained_channels"]] == [
        "specific.dead!",
        "stuck",
    ]
    dead = {row["channel"]: row["reason"] for row in looks_dead["dead_members"]}
    assert set(dead) == {"specific.dead!a", "specific.old!d", "stuck"}
    assert dead["specific.dead!a"].startswith("process key not drained for 100.")
    assert dead["stuck"].startswith("channel not drained for 30.")
    assert dead["specific.old!d"] == "membership older than 86400s"
    keyless = looks_dead["members_without_process_key"]
    assert [(row["channel"], row["process"]) for row in keyless] == [
        ("specific.live!b", "specific.live!")
    ]
    assert report.dead(snapshot, stale_after=200)["undrained_channels"] == []
    assert report.summary(snapshot, stale_after=10)["dead_members"] == 3


@pytest.mark.anyio
async def test_other_keys_prefixes_and_paging(redis_server: RedisServer, redis_url: str) -> None:
    now = time.time()
    async with open_pool(redis_url) as pool:
        await pool.pipeline(
            [("ZADD", f"a*b{index}", now, b"m") for index in range(2500)]
            + [("ZADD", f"axb{index}", now, b"m") for index in range(10)]  # "a*b" must not glob
            + [("SET", "a*bstring", b"x"), ("ZADD", "a*b:bad", now, b"m")]
        )
    calls: list[tuple[int, int]] = []
    snapshot = await read_snapshot(
        [redis_url], "a*b", scan_count=100, progress=lambda *args: calls.append(args)
    )
    assert len(snapshot.channels) == 2500
    assert snapshot.other_keys == 2
    assert snapshot.keys_scanned == 2502
    assert calls[0] == (0, 2512)
    assert calls[-1] == (2502, 2512)
    assert len(calls) > 10
    assert [scanned for scanned, _ in calls] == sorted(scanned for scanned, _ in calls)


@pytest.mark.anyio
async def test_errors(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(password="s3cret")
    host, port = server.address
    with pytest.raises(AuthenticationError):
        await read_snapshot([f"redis://:wrong@{host}:{port}"])
    assert (await read_snapshot([f"redis://:s3cret@{host}:{port}"])).keys_scanned == 0
    server.stop()
    with pytest.raises(RedisConnectionError):
        await read_snapshot([f"redis://{host}:{port}?socket_connect_timeout=2"])
    with pytest.raises(ConfigurationError):
        await read_snapshot(["nosuch://x"])


# -- reports ----------------------------------------------------------------------------------


def test_format_age_and_table() -> None:
    assert [report.format_age(s) for s in (None, 0.42, 12.9, 307, 3 * 3600 + 150, 2.3 * 86400)] == [
        "-",
        "0.4s",
        "12s",
        "5m07s",
        "3h02m",
        "2d07h",
    ]
    rows = [{"name": f"n{i}", "count": i, "oldest_age": None} for i in range(5)]
    table = report.format_table(rows, ["name", "count", "oldest_age"], limit=3).splitlines()
    assert table[0] == "NAME  COUNT  OLDEST AGE"
    assert table[1] == "n0        0           -"
    assert table[-1] == "... 2 more (use --limit or --json)"
    assert report.format_table([], ["name"]) == "(none)"


def test_hosts_option() -> None:
    assert parse_hosts_option(None) == ["redis://localhost:6379"]
    assert parse_hosts_option(["redis://a:1,redis://b:2", "redis://c:3"]) == [
        "redis://a:1",
        "redis://b:2",
        "redis://c:3",
    ]
    sentinel = {"sentinels": [["h", 26379]], "master_name": "m"}
    assert parse_hosts_option([json.dumps(sentinel)]) == [sentinel]
    assert parse_hosts_option([json.dumps([sentinel, "redis://x"])]) == [sentinel, "redis://x"]


# -- the command ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cli_json_and_tables(redis_url: str) -> None:
    local = await populate([redis_url])
    result = run_cli("inspect", "--hosts", redis_url, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal, no --progress
    data = json.loads(result.stdout)
    assert set(data) == {"summary", "groups", "channels", "processes", "dead"}
    assert data["summary"]["groups"] == 3
    assert data["summary"]["process_keys"] == 1
    assert {member["channel"] for member in data["groups"][0]["member_list"]} == {
        local,
        "worker0",
    }
    assert data["dead"] == {
        "undrained_channels": [],
        "dead_members": [],
        "members_without_process_key": [],
    }

    result = run_cli("channels", "--hosts", redis_url, "--json", "--limit", "2")
    assert [row["channel"] for row in json.loads(result.stdout)] == ["worker3", "worker2"]

    result = run_cli("groups", "--hosts", redis_url, "--members")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "GROUP",
        "MEMBERS",
        "OLDEST",
        "MEMBER",
        "AGE",
        "NEWEST",
        "MEMBER",
        "AGE",
        "TTL",
        "SERVER",
    ]
    assert lines[1].split()[:2] == ["room0", "2"]
    assert any(line.split()[:2] == ["room2", local] for line in lines)

    result = run_cli("channels", "--hosts", redis_url, "--limit", "1")
    assert result.stdout.splitlines()[1].split()[:3] == ["worker3", "channel", "4"]
    assert result.stdout.splitlines()[-1] == "... 4 more (use --limit or --json)"

    result = run_cli("summary", "--hosts", redis_url, "--progress")
    assert "messages waiting:" in result.stdout
    assert "reading keys: 8 of about 8" in result.stderr


@pytest.mark.anyio
async def test_cli_dead(redis_server: RedisServer, redis_url: str) -> None:
    now = time.time()
    redis_server.execute("ZADD", "myappspecific.gone!", now - 40, b"m")
    redis_server.execute("ZADD", "myapp:group:chat", now - 60, "specific.gone!x")
    result = run_cli("dead", "--hosts", redis_url, "--prefix", "myapp", "--stale-after", "30")
    assert result.returncode == 0, result.stderr
    assert "Channels nobody drains:" in result.stdout
    assert "specific.gone!x" in result.stdout
    assert "process key not drained for 4" in result.stdout
    result = run_cli("dead", "--hosts", redis_url, "--prefix", "myapp", "--stale-after", "50")
    assert "specific.gone!x" not in result.stdout


def test_cli_output_piped_into_a_reader_that_stops(
    redis_server: RedisServer, redis_url: str
) -> None:
    now = time.time()
    redis_server.execute(
        "ZADD", "asgi:group:big", *[x for i in range(3000) for x in (now, f"c{i}")]
    )
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "anyio_layer", "inspect", "--json", "--hosts", redis_url]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    ) as process:
        assert process.stdout is not None
        assert process.stdout.read(10)
        process.stdout.close()  # as `| head` does
        assert process.wait(timeout=60) == 0
        assert process.stderr is not None
        assert process.stderr.read() == b""


def test_cli_on_a_cluster(redis_cluster_hosts: list[str]) -> None:
    result = run_cli("summary", "--json", "--hosts", ",".join(redis_cluster_hosts))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cluster"] is True
    assert len(data["servers"]) == 3


def test_cli_through_sentinel(redis_server_factory: RedisServerFactory) -> None:
    primary = redis_server_factory()
    sentinel = redis_server_factory.sentinel(primary)
    primary.execute("ZADD", "asgi:group:room", time.time(), "worker")
    hosts = {"sentinels": [list(sentinel.address)], "master_name": sentinel.master_name}
    result = run_cli("groups", "--json", "--hosts", json.dumps(hosts))
    assert result.returncode == 0, result.stderr
    (group,) = json.loads(result.stdout)
    assert group["group"] == "room"
    assert group["server"] == f"sentinel://{sentinel.address[0]}:{sentinel.address[1]}/mymaster"
    assert [member["channel"] for member in group["member_list"]] == ["worker"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["summary", "--hosts", "nosuch://localhost"], "anyio-layer: error: "),
        (["summary", "--hosts", "{not json"], "anyio-layer: error: --hosts"),
        (
            ["summary", "--hosts", "redis+cluster://127.0.0.1:1", "--prefix", "a{b}"],
            "anyio-layer: error: prefix 'a{b}' contains a brace",
        ),
        (
            ["summary", "--hosts", "redis://127.0.0.1:1,redis+cluster://127.0.0.1:2"],
            "anyio-layer: error: hosts mixes Redis Cluster seeds",
        ),
        (
            ["summary", "--limit", "0"],
            "anyio-layer summary: error: argument --limit: must be positive, not 0",
        ),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_cli_usage_errors(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_connection_and_password_errors(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(password="s3cret")
    host, port = server.address
    result = run_cli("summary", "--hosts", f"redis://:wrong@{host}:{port}")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"anyio-layer: cannot read redis://{host}:{port}/0: ")
    assert "wrong" not in line
    assert "s3cret" not in line
    assert result.stdout == ""
    assert run_cli("summary", "--hosts", f"redis://:s3cret@{host}:{port}").returncode == 0

    server.stop()
    result = run_cli("summary", "--hosts", f"redis://{host}:{port}")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"anyio-layer: cannot read redis://{host}:{port}/0: ")


def test_cli_backend_trio(redis_url: str) -> None:
    result = run_cli("summary", "--json", "--hosts", redis_url, "--backend", "trio")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["keys_scanned"] == 0


def test_main_module_and_entry_point() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'anyio-layer = "anyio_layer.inspect.cli:main"' in text
    assert "usage: anyio-layer" in run_cli("--help").stdout
