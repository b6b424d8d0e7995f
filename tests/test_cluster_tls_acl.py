"""Both layers (and the Django adapter) on a Redis Cluster that needs an ACL user, and on TLS.

The connection options are given once, in the seeds (a URL, or a dict with
``"cluster": True``), and must apply to every node the layer discovers from
the topology: each test gives a single seed and checks, with ``CLIENT LIST``
and ``INFO commandstats`` on every primary, that the layer reached all three
primaries, authenticated as the ACL user, and (on the TLS cluster, whose nodes
listen on their ``tls-port`` only) over TLS.

Two clusters (3 primaries, 1 replica each) serve the whole module: one on
plain TCP whose nodes require an ACL user, and one with TLS everywhere (client
port, cluster bus, replication) and an ACL user too; one test starts a small
TLS cluster of its own, made by hand. The TLS tests are skipped when the
``redis-server`` binary was built without TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest

from anyio_layer.exceptions import AuthenticationError, RedisConnectionError
from anyio_layer.pubsub import open_pubsub_layer
from anyio_layer.queue import open_redis_layer
from anyio_layer.redis.cluster import key_slot
from anyio_layer.testing import (
    RedisServer,
    find_redis_server,
    generate_tls_files,
    redis_server_supports_tls,
)
from anyio_layer.testing.cluster import RedisCluster
from channels_compat import RedisChannelLayer, RedisPubSubChannelLayer

pytestmark = pytest.mark.anyio

USER = "app"
#: Characters a URL must percent-encode, to check the seed URLs carry them intact.
PASSWORD = "s3cr:et/@x"
CLIENT_NAME = "anyio-cluster-tls-acl"


# -- the clusters ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_cluster_module() -> Iterator[RedisCluster]:
    cluster = RedisCluster.launch(primaries=3, replicas=1, username=USER, password=PASSWORD)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def tls_cluster_module() -> Iterator[RedisCluster]:
    binary = find_redis_server()
    if not redis_server_supports_tls(binary):
        pytest.skip(f"{binary} was built without TLS support (set $REDIS_SERVER to one with it)")
    cluster = RedisCluster.launch(
        primaries=3, replicas=1, tls=True, username=USER, password=PASSWORD
    )
    try:
        yield cluster
    finally:
        cluster.close()


def healthy_and_empty(cluster: RedisCluster) -> RedisCluster:
    for node in cluster.nodes:
        if not node.running:
            node.start()
    cluster.wait_until_stable(replicas_synced=True)
    cluster.flushall()
    return cluster


@pytest.fixture
def acl_cluster(acl_cluster_module: RedisCluster) -> RedisCluster:
    return healthy_and_empty(acl_cluster_module)


@pytest.fixture
def tls_cluster(tls_cluster_module: RedisCluster) -> RedisCluster:
    return healthy_and_empty(tls_cluster_module)


# -- helpers ----------------------------------------------------------------------------------


def with_option(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={quote(value, safe='/')}"


def tls_seed(cluster: RedisCluster, **overrides: Any) -> dict[str, Any]:
    """One seed as a dict entry: ``"cluster": True`` next to the usual connection options."""
    assert cluster.tls is not None
    node = cluster.primaries()[0]
    seed: dict[str, Any] = {
        "host": node.host,
        "port": node.port,
        "cluster": True,
        "username": USER,
        "password": PASSWORD,
        "ssl_ca_certs": str(cluster.tls.ca_cert),
        "ssl_certfile": str(cluster.tls.client_cert),
        "ssl_keyfile": str(cluster.tls.client_key),
        "ssl_cert_reqs": "required",
        "client_name": CLIENT_NAME,
    }
    seed.update(overrides)
    return seed


def seed_hosts(cluster: RedisCluster, form: str) -> list[Any]:
    """A single seed for the layer: ``cluster.hosts[0]`` (a URL) or, on TLS, a dict entry."""
    if form == "dict":
        return [tls_seed(cluster)]
    return [with_option(cluster.hosts[0], "client_name", CLIENT_NAME)]


def owners(cluster: RedisCluster) -> dict[int, RedisServer]:
    """``{slot: primary}`` for every slot."""
    by_slot: dict[int, RedisServer] = {}
    for (first, last), node_id in cluster.slot_map().items():
        node = cluster.node_by_id(node_id)
        by_slot.update(dict.fromkeys(range(first, last + 1), node))
    return by_slot


def one_name_per_primary(cluster: RedisCluster, key_of: str, stem: str) -> list[str]:
    """A name for every primary, whose key (``key_of.format(name)``) that primary serves."""
    by_slot = owners(cluster)
    primaries = len(cluster.primaries())
    found: dict[int | None, str] = {}
    for index in itertools.count():
        name = f"{stem}{index}"
        found.setdefault(by_slot[key_slot(key_of.format(name))].port, name)
        if len(found) == primaries:
            return list(found.values())
    raise AssertionError("unreachable")


def command_calls(node: RedisServer, command: str) -> int:
    """How often ``node`` ran ``command`` (``INFO commandstats``)."""
    stats = node.info("commandstats").get(f"cmdstat_{command}", "calls=0")
    return int(stats.split(",", 1)[0].removeprefix("calls="))


def our_clients(node: RedisServer) -> list[dict[str, str]]:
    """``CLIENT LIST`` entries of the layer's connections (named ``CLIENT_NAME``) on ``node``."""
    listing = node.execute("CLIENT", "LIST", decode=True)
    assert isinstance(listing, str)
    clients = []
    for line in listing.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if fields.get("name") == CLIENT_NAME:
            clients.append(fields)
    return clients


def assert_connected_to_every_primary(cluster: RedisCluster) -> None:
    """Every primary has connections of ours, authenticated as the ACL user, on its port.

    On the TLS cluster that port is the ``tls-port`` (the plain port is 0), so
    they are TLS connections: the seed's TLS options reached the nodes the
    layer found in the topology.
    """
    for node in cluster.primaries():
        clients = our_clients(node)
        assert clients, f"the layer never connected to {node!r}"
        for client in clients:
            assert client["user"] == USER
            assert client["laddr"] == f"127.0.0.1:{node.port}"


@contextlib.contextmanager
def counting(cluster: RedisCluster, command: str) -> Iterator[dict[int | None, int]]:
    """Yield ``{port: calls}``, filled on exit with each primary's calls of ``command``."""
    primaries = cluster.primaries()
    before = {node.port: command_calls(node, command) for node in primaries}
    counts: dict[int | None, int] = {}
    yield counts
    counts.update(
        {node.port: command_calls(node, command) - before[node.port] for node in primaries}
    )


def no_hang() -> contextlib.AbstractContextManager[anyio.CancelScope]:
    """A time limit for what must neither hang nor wait for long timeouts."""
    return anyio.fail_after(10)


async def send_once(layer: str, hosts: list[Any]) -> None:
    """Open the ``"queue"`` or ``"pubsub"`` layer on ``hosts`` and send one message."""
    with no_hang():
        if layer == "queue":
            async with open_redis_layer(hosts=hosts) as queue:
                await queue.send("job", {"type": "x"})
        else:
            async with open_pubsub_layer(hosts=hosts) as pubsub:
                await pubsub.send("job", {"type": "x"})


# -- what the layers do on each cluster -------------------------------------------------------


async def exercise_queue_layer(cluster: RedisCluster, hosts: list[Any]) -> None:
    """send, receive and group_send with channels on all three primaries."""
    jobs = one_name_per_primary(cluster, "asgi{{{}}}", "job")
    with counting(cluster, "evalsha") as scripts:
        async with open_redis_layer(hosts=hosts) as layer:
            local = await layer.new_channel()
            for channel in [*jobs, local]:
                await layer.send(channel, {"type": "direct", "to": channel})
            with no_hang():
                for channel in [*jobs, local]:
                    assert await layer.receive(channel) == {"type": "direct", "to": channel}
            for channel in [*jobs, local]:
                await layer.group_add("room", channel)
            await layer.group_send("room", {"type": "group"})
            with no_hang():
                for channel in [*jobs, local]:
                    assert await layer.receive(channel) == {"type": "group"}
            assert_connected_to_every_primary(cluster)
    # A send and a group_send script on every primary (group_send: one per node with members).
    assert all(calls >= 2 for calls in scripts.values()), scripts


async def exercise_pubsub_layer(cluster: RedisCluster, hosts: list[Any]) -> None:
    """send, group_send and receive with channels subscribed on all three primaries."""
    if cluster.version < (7, 0, 0):
        pytest.skip(f"sharded pub/sub needs Redis 7; {cluster.binary} is {cluster.version}")
    with counting(cluster, "spublish") as published, counting(cluster, "ssubscribe") as subscribed:
        async with open_pubsub_layer(hosts=hosts) as layer:
            by_slot = owners(cluster)
            channels: dict[int | None, str] = {}
            primaries = len(cluster.primaries())
            while len(channels) < primaries:
                channel = await layer.new_channel()
                channels.setdefault(by_slot[key_slot(channel)].port, channel)
            for channel in channels.values():
                await layer.send(channel, {"type": "direct", "to": channel})
            with no_hang():
                for channel in channels.values():
                    assert await layer.receive(channel) == {"type": "direct", "to": channel}
            for channel in channels.values():
                await layer.group_add("room", channel)
            await layer.group_send("room", {"type": "group"})
            with no_hang():
                for channel in channels.values():
                    assert await layer.receive(channel) == {"type": "group"}
            assert_connected_to_every_primary(cluster)
            await layer.flush()
    assert all(calls >= 1 for calls in published.values()), published
    assert all(calls >= 1 for calls in subscribed.values()), subscribed


# -- the ACL cluster ------------------------------------------------------------------------------


def test_acl_cluster_nodes_require_the_user(acl_cluster: RedisCluster) -> None:
    assert acl_cluster.hosts[0].startswith(f"redis+cluster://{USER}:s3cr%3Aet%2F%40x@127.0.0.1:")
    for node in acl_cluster.running_nodes():
        assert node.execute("ACL", "WHOAMI") == USER.encode()
        users = node.execute("ACL", "LIST", decode=True)
        assert isinstance(users, list)
        assert any(rule.startswith(f"user {USER} on ") for rule in users), users
        assert any(rule.startswith("user default off ") for rule in users), users
        # Replicas authenticate to their primary as the same user.
        assert node.execute("CONFIG", "GET", "masteruser", decode=True) == ["masteruser", USER]
    for primary in acl_cluster.primaries():
        for replica in acl_cluster.replicas_of(primary):
            assert replica.info("replication")["master_link_status"] == "up"


async def test_queue_layer_with_an_acl_user(acl_cluster: RedisCluster) -> None:
    await exercise_queue_layer(acl_cluster, seed_hosts(acl_cluster, "url"))


async def test_pubsub_layer_with_an_acl_user(acl_cluster: RedisCluster) -> None:
    await exercise_pubsub_layer(acl_cluster, seed_hosts(acl_cluster, "url"))


@pytest.mark.parametrize("layer", ["queue", "pubsub"])
async def test_wrong_password_is_refused(acl_cluster: RedisCluster, layer: str) -> None:
    seed = acl_cluster.hosts[0].replace(quote(PASSWORD, safe=""), "wrong-password")
    assert seed != acl_cluster.hosts[0]
    with pytest.raises(AuthenticationError) as caught:
        await send_once(layer, [seed])
    message = str(caught.value)
    assert "refused the credentials" in message
    assert "WRONGPASS" in message
    assert "wrong-password" not in message


# -- the TLS cluster ---------------------------------------------------------------------------


def test_tls_cluster_uses_tls_everywhere(tls_cluster: RedisCluster) -> None:
    tls = tls_cluster.tls
    assert tls is not None
    for url in tls_cluster.hosts:
        assert url.startswith(f"rediss+cluster://{USER}:")
        assert url.endswith(f"?ssl_ca_certs={tls.ca_cert}")
    assert all(url.startswith("rediss://") for url in tls_cluster.seed_urls)
    for node in tls_cluster.running_nodes():
        assert node.tls is not None
        assert node.tls.ca_cert.read_bytes() == tls.ca_cert.read_bytes()  # one CA for all
        config = node.execute(
            "CONFIG", "GET", "*port", decode=True
        )  # port, tls-port, cluster-port...
        assert isinstance(config, list)
        ports = dict(zip(config[::2], config[1::2], strict=True))
        assert ports["port"] == "0"
        assert ports["tls-port"] == str(node.port)
        for name in ("tls-cluster", "tls-replication"):
            assert node.execute("CONFIG", "GET", name, decode=True) == [name, "yes"]
    # CLUSTER SHARDS announces the TLS port only.
    shards = tls_cluster.primaries()[0].execute("CLUSTER", "SHARDS", decode=True)
    assert isinstance(shards, list)
    for shard in shards:
        for entry in dict(zip(shard[::2], shard[1::2], strict=True))["nodes"]:
            fields = dict(zip(entry[::2], entry[1::2], strict=True))
            assert "tls-port" in fields
            assert "port" not in fields


def test_tls_cluster_helpers(tls_cluster: RedisCluster) -> None:
    """Slot migration (MIGRATE over TLS, with AUTH2), failover and restart on the TLS cluster."""
    key = "{tls-helpers}"
    slot = key_slot(key)
    source = tls_cluster.node_for_slot(slot)
    source.execute("SET", key, "value")
    target = next(node for node in tls_cluster.primaries() if node is not source)
    assert tls_cluster.migrate_slot(slot, target) == 1
    assert tls_cluster.node_for_slot(slot) is target
    assert target.execute("GET", key) == b"value"
    tls_cluster.kill(target)
    promoted = tls_cluster.wait_for_failover(target)
    assert promoted is not target
    assert promoted.execute("GET", key) == b"value"  # replicated over TLS
    tls_cluster.restart_node(target)  # rejoins as a replica, synced over TLS
    assert tls_cluster.replicas_of(promoted) == [target]


def test_tls_cluster_made_by_hand_and_deleted_on_close(tls_cluster: RedisCluster) -> None:
    """``method="manual"`` (MEET, REPLICATE over the TLS bus), a password without a user."""
    with RedisCluster.launch(
        primaries=1, replicas=1, tls=True, password="pw", method="manual"
    ) as cluster:
        assert cluster.tls is not None
        certificates = cluster.tls.ca_cert.parent
        assert cluster.hosts[0].startswith("rediss+cluster://:pw@127.0.0.1:")
        (primary,) = cluster.primaries()
        (replica,) = cluster.replicas_of(primary)
        assert replica.info("replication")["master_link_status"] == "up"
        assert replica.execute("CONFIG", "GET", "masterauth", decode=True) == ["masterauth", "pw"]
    assert not certificates.exists()
    assert not any(node.running or node.directory.exists() for node in cluster.nodes)


@pytest.mark.parametrize("form", ["url", "dict"])
async def test_queue_layer_over_tls(tls_cluster: RedisCluster, form: str) -> None:
    await exercise_queue_layer(tls_cluster, seed_hosts(tls_cluster, form))


@pytest.mark.parametrize("form", ["url", "dict"])
async def test_pubsub_layer_over_tls(tls_cluster: RedisCluster, form: str) -> None:
    await exercise_pubsub_layer(tls_cluster, seed_hosts(tls_cluster, form))


@pytest.mark.parametrize("layer", ["queue", "pubsub"])
async def test_seed_with_the_wrong_ca(
    tls_cluster: RedisCluster, layer: str, tmp_path: Path
) -> None:
    other = generate_tls_files(tmp_path / "other-ca")
    seed = tls_seed(tls_cluster, ssl_ca_certs=str(other.ca_cert))
    with pytest.raises(RedisConnectionError) as caught:
        await send_once(layer, [seed])
    assert "certificate verify failed" in str(caught.value)


@pytest.mark.parametrize("layer", ["queue", "pubsub"])
async def test_plain_tcp_seed_on_a_tls_cluster(tls_cluster: RedisCluster, layer: str) -> None:
    """Forgetting TLS gives a connection error, not a hang."""
    seed = tls_cluster.hosts[0].replace("rediss+cluster://", "redis+cluster://").split("?")[0]
    with pytest.raises(RedisConnectionError) as caught:
        await send_once(layer, [seed])
    assert "could not learn the cluster topology" in str(caught.value)


@pytest.mark.parametrize("layer_class", [RedisChannelLayer, RedisPubSubChannelLayer])
def test_django_adapter_over_tls(tls_cluster: RedisCluster, layer_class: type) -> None:
    """The Django adapter with a ``CHANNEL_LAYERS`` entry holding the TLS dict seed."""
    layer = layer_class(hosts=[tls_seed(tls_cluster)])
    jobs = one_name_per_primary(tls_cluster, "asgi{{{}}}", "job")

    async def main() -> None:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "hello"})
        await layer.send(channel, {"type": "direct"})
        with no_hang():
            assert [await layer.receive(channel) for _ in range(2)] == [
                {"type": "hello"},
                {"type": "direct"},
            ]
        if layer_class is RedisChannelLayer:
            for job in jobs:
                await layer.send(job, {"type": "job", "to": job})
            with no_hang():
                for job in jobs:
                    assert await layer.receive(job) == {"type": "job", "to": job}
            assert_connected_to_every_primary(tls_cluster)
        await layer.close()

    asyncio.run(main())
