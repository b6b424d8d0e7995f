"""Leased group memberships through a Sentinel failover and a Redis Cluster primary's death.

After the failover the layer's memberships are on the new primary (replicated,
or restored by the renewal that follows its first connection); when the new
primary then loses them too (a flush and dropped connections), the next
reconnect restores them. Group messages reach every live channel once, and a
discarded membership stays discarded. Slow: real failovers.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from anyio_layer import QueueLayer, open_redis_layer
from anyio_layer.testing import RedisServer, run_redis_server, run_sentinel
from anyio_layer.testing.cluster import RedisCluster

pytestmark = pytest.mark.anyio


def members(server: RedisServer, key: str) -> set[str]:
    reply = server.execute("ZRANGE", key, 0, -1)
    assert isinstance(reply, list)
    return {member.decode() for member in reply}


async def wait_until(predicate: Any, timeout: float = 30) -> float:
    """Wait until ``predicate()``; return how long that took (printed, never asserted on)."""
    started = anyio.current_time()
    with anyio.fail_after(timeout):
        while True:
            try:
                if predicate():
                    return anyio.current_time() - started
            except OSError:
                pass  # the node is restarting
            await anyio.sleep(0.01)


class Room:
    """Five channels of ``layer`` receiving forever; one more joined and then discarded."""

    def __init__(self, layer: QueueLayer) -> None:
        self.layer = layer
        self.channels: list[str] = []
        self.discarded = ""
        self.received: dict[str, list[dict[str, Any]]] = {}

    async def join(self) -> None:
        self.channels = [await self.layer.new_channel() for _ in range(5)]
        self.discarded = await self.layer.new_channel()
        for channel in [*self.channels, self.discarded]:
            await self.layer.group_add("room", channel)
        await self.layer.group_discard("room", self.discarded)

    async def receive_forever(self, channel: str) -> None:
        got = self.received.setdefault(channel, [])
        while True:
            got.append(await self.layer.receive(channel))

    async def until(self, count: int) -> None:
        with anyio.fail_after(30):
            while any(len(got) < count for got in self.received.values()):
                await anyio.sleep(0.01)

    def check(self, *types: str) -> None:
        for channel in self.channels:
            assert [message["type"] for message in self.received[channel]] == list(types)


async def lose_data(node: RedisServer) -> None:
    """The node forgets everything and drops its clients (a promoted empty replica, say)."""
    await node.aexecute("FLUSHALL")
    await node.aexecute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


@pytest.mark.skipif(os.environ.get("CI_SKIP_SENTINEL") == "1", reason="sentinel disabled")
async def test_memberships_survive_a_sentinel_failover() -> None:
    async with (
        run_redis_server() as primary,
        run_redis_server(replica_of=primary) as replica,
        run_sentinel(primary, master_name="leases") as sentinel,
    ):
        host = {"sentinels": [sentinel.address], "master_name": "leases"}
        async with (
            open_redis_layer(hosts=[host]) as layer,
            open_redis_layer(hosts=[host]) as sender,
        ):
            room = Room(layer)
            await room.join()
            async with anyio.create_task_group() as tg:
                for channel in room.channels:
                    tg.start_soon(room.receive_forever, channel)
                await anyio.sleep(0.1)
                await anyio.to_thread.run_sync(sentinel.failover)
                await anyio.to_thread.run_sync(
                    lambda: sentinel.wait_for_master(
                        address_not_equal_to=primary.address, timeout=30
                    )
                )
                await wait_until(lambda: members(replica, "asgi:group:room") == set(room.channels))
                await sender.group_send("room", {"type": "after failover"})
                await room.until(1)
                # The new primary loses the data: the reconnect restores the memberships.
                await lose_data(replica)
                restored_in = await wait_until(
                    lambda: members(replica, "asgi:group:room") == set(room.channels)
                )
                print(f"Sentinel: memberships restored {restored_in:.3f} s after the data loss")
                await sender.group_send("room", {"type": "after loss"})
                await room.until(2)
                await anyio.sleep(0.3)  # nothing more arrives
                tg.cancel_scope.cancel()
            room.check("after failover", "after loss")
            assert layer.statistics().memberships_restored >= len(room.channels)


async def test_memberships_survive_a_cluster_primary_killed(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    group_key = "asgi:group:{room}"
    victim = redis_cluster.node_for_key(group_key)
    async with (
        open_redis_layer(hosts=redis_cluster_hosts) as layer,
        open_redis_layer(hosts=redis_cluster_hosts) as sender,
    ):
        room = Room(layer)
        await room.join()
        async with anyio.create_task_group() as tg:
            for channel in room.channels:
                tg.start_soon(room.receive_forever, channel)
            await anyio.sleep(0.1)
            redis_cluster.kill(victim)
            with anyio.fail_after(30):
                promoted = await redis_cluster.await_for_failover(victim)
            await wait_until(lambda: members(promoted, group_key) == set(room.channels))
            await sender.group_send("room", {"type": "after failover"})
            await room.until(1)
            # The promoted replica loses the data: the reconnect restores the memberships.
            await lose_data(promoted)
            restored_in = await wait_until(
                lambda: members(promoted, group_key) == set(room.channels)
            )
            print(f"cluster: memberships restored {restored_in:.3f} s after the data loss")
            await sender.group_send("room", {"type": "after loss"})
            await room.until(2)
            await anyio.sleep(0.3)  # nothing more arrives
            tg.cancel_scope.cancel()
        room.check("after failover", "after loss")
        assert layer.statistics().memberships_restored >= len(room.channels)
