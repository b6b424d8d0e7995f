"""What differs between Redis and Valkey, checked on whichever server the suite runs.

The suite runs on Redis by default and on Valkey with
``REDIS_SERVER=$(command -v valkey-server)``; the tests here pin down the
differences the rest of the suite relies on having been handled.
"""

from __future__ import annotations

import shutil

import pytest

from anyio_layer.redis.cluster import open_cluster
from anyio_layer.redis.cluster.topology import ShardInfo, parse_shards
from anyio_layer.redis.hosts import TCPAddress
from anyio_layer.testing import RedisServer, redis_server_version
from anyio_layer.testing.cluster import RedisCluster

ASKED = TCPAddress("127.0.0.1", 7000)


def _node(port: int, role: bytes, health: bytes = b"online") -> list[object]:
    fields = {"port": port, "ip": b"127.0.0.1", "endpoint": b"127.0.0.1", "role": role}
    return [
        item
        for key, value in {**fields, "health": health}.items()
        for item in (key.encode(), value)
    ]


def test_two_healthy_primaries_in_one_shard_defer_to_cluster_slots() -> None:
    # Valkey 8.0.1, after CLUSTER FAILOVER: every node but the demoted one lists it as a
    # second healthy "master" of its shard. Only CLUSTER SLOTS then says who owns the slots.
    reply = [[b"slots", [0, 16383], b"nodes", [_node(7000, b"master"), _node(7001, b"master")]]]
    assert parse_shards(reply, ASKED, tls=False) is None
    # A failed old primary next to the new one is not ambiguous, in either order.
    for nodes in (
        [_node(7000, b"master", b"failed"), _node(7001, b"master")],
        [_node(7001, b"master"), _node(7000, b"master", b"failed")],
    ):
        reply = [[b"slots", [0, 16383], b"nodes", nodes]]
        assert parse_shards(reply, ASKED, tls=False) == [
            ShardInfo(((0, 16383),), TCPAddress("127.0.0.1", 7001), ())
        ]


@pytest.mark.anyio
async def test_manual_failover_is_seen_by_a_new_client(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    old = redis_cluster.primaries()[0]
    (replica,) = redis_cluster.replicas_of(old)
    slot = next(
        first
        for (first, _), owner in redis_cluster.slot_map().items()
        if owner == redis_cluster.node_id(old)
    )
    redis_cluster.manual_failover(replica)
    redis_cluster.wait_until_stable(replicas_synced=True)
    async with open_cluster(redis_cluster_hosts) as client:
        await client.refresh_topology()
        node = client.node_for_slot(slot)
        assert node is not None
        assert node.address == TCPAddress(*replica.address)
        assert {config.address for config in await client.primaries()} == {
            TCPAddress(*primary.address) for primary in redis_cluster.primaries()
        }


@pytest.mark.anyio
async def test_primaries_are_listed_once_whatever_the_topology_command(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    # A slot moved out of the middle of a primary's range leaves it two ranges, which
    # CLUSTER SLOTS (Redis 6.2, and the Valkey 8.0 fallback above) lists apart.
    first, second = redis_cluster.primaries()[:2]
    (start, end), _ = next(
        item for item in redis_cluster.slot_map().items() if item[1] == redis_cluster.node_id(first)
    )
    redis_cluster.migrate_slot((start + end) // 2, second)
    redis_cluster.wait_until_stable()
    for use_shards in (True, False):
        async with open_cluster(redis_cluster_hosts) as client:
            client._refresher.use_shards = use_shards  # which topology command it asks
            await client.refresh_topology()
            primaries = [config.address for config in await client.primaries()]
            assert sorted(primaries, key=str) == sorted(
                (TCPAddress(*node.address) for node in redis_cluster.primaries()), key=str
            )


def test_valkey_reports_its_own_version(redis_server: RedisServer) -> None:
    info = redis_server.info("server")
    if "valkey_version" not in info:
        pytest.skip(f"{redis_server.binary} is not Valkey")
    assert info["valkey_version"] == ".".join(map(str, redis_server.version))
    assert info["redis_version"] == "7.2.4"  # what Valkey tells clients, for compatibility


def test_valkey_binary_is_recognised() -> None:
    binary = shutil.which("valkey-server")
    if binary is None:
        pytest.skip("no valkey-server on PATH")
    assert redis_server_version(binary) >= (7, 2, 0)
