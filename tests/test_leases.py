"""Group memberships of a layer's own channels are leases: renewed, restored, never resurrected.

Against real servers: a membership outlives ``group_expiry`` while its
channel lives and lapses after its layer is gone; after ``FLUSHALL`` with
the connections killed, or a SIGKILL and restart without persistence, every
live membership is back and group messages reach every channel once; a
``group_discard`` racing with a renewal or a restore stays discarded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from anyio_layer import QueueLayer, open_redis_layer
from anyio_layer.redis.pool import ConnectionPool
from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio

GROUP_KEY = "asgi:group:room"


def members(server: RedisServer, key: str = GROUP_KEY) -> set[str]:
    reply = server.execute("ZRANGE", key, 0, -1)
    assert isinstance(reply, list)
    return {member.decode() for member in reply}


class Inbox:
    """Receives forever on some channels of one layer, recording what arrives."""

    def __init__(self, layer: QueueLayer) -> None:
        self.layer = layer
        self.received: dict[str, list[dict[str, Any]]] = {}

    async def receive_forever(self, channel: str) -> None:
        got = self.received.setdefault(channel, [])
        while True:
            got.append(await self.layer.receive(channel))

    async def until(self, count: int) -> None:
        """Wait until every channel has at least ``count`` messages."""
        with anyio.fail_after(20):
            while any(len(got) < count for got in self.received.values()):
                await anyio.sleep(0.01)


async def wait_for(predicate: Callable[[], bool], timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def test_membership_outlives_group_expiry_and_lapses_after_its_layer(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    async with open_redis_layer(hosts=[server.url], group_expiry=2) as sender:
        async with open_redis_layer(hosts=[server.url], group_expiry=2) as layer:
            inbox = Inbox(layer)
            channel = await layer.new_channel()
            await layer.group_add("room", channel)
            async with anyio.create_task_group() as tg:
                tg.start_soon(inbox.receive_forever, channel)
                await anyio.sleep(6)  # three times group_expiry
                # group_send prunes members older than group_expiry: this one is fresh.
                await sender.group_send("room", {"type": "still here"})
                await inbox.until(1)
                tg.cancel_scope.cancel()
            assert inbox.received[channel] == [{"type": "still here"}]
            stats = layer.statistics()
            assert stats.lease_renewals >= 4
            assert stats.leased_memberships == 1
            assert stats.memberships_restored == 0
        # The layer is gone (the channel was never discarded): the lease lapses.
        await anyio.sleep(3)
        await sender.group_send("room", {"type": "nobody"})
        assert members(server) == set()


async def test_discarded_and_released_channels_are_not_renewed(redis_url: str) -> None:
    async with open_redis_layer(hosts=[redis_url], group_expiry=2) as layer:
        kept = await layer.new_channel()
        left = await layer.new_channel()
        await layer.group_add("room", kept)
        await layer.group_add("room", left)
        await layer.group_discard("room", left)
        async with layer.open_channel("room") as scoped:
            assert layer.statistics().leased_memberships == 2
        assert layer.statistics().leased_memberships == 1
        await layer._leases.renew()
        assert layer.statistics().leased_memberships == 1
        assert scoped.name not in str(layer._leases._members)


async def test_other_channels_are_not_leased(redis_url: str) -> None:
    async with open_redis_layer(hosts=[redis_url]) as layer:
        await layer.group_add("room", "worker-queue")  # a normal channel: no lease
        await layer.group_add("room", "specific.someoneelse!abc")  # another process's
        assert layer.statistics().leased_memberships == 0


async def flush_and_kill_connections(server: RedisServer) -> None:
    await server.aexecute("FLUSHALL")
    await server.aexecute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


async def sigkill_and_restart(server: RedisServer) -> None:
    await anyio.to_thread.run_sync(server.kill)
    await anyio.sleep(0.5)
    await anyio.to_thread.run_sync(server.start)


@pytest.mark.parametrize("loss", [flush_and_kill_connections, sigkill_and_restart])
async def test_memberships_are_restored_after_data_loss(
    redis_server_factory: Callable[..., RedisServer],
    loss: Callable[[RedisServer], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    async with (
        open_redis_layer(hosts=[server.url]) as layer,
        open_redis_layer(hosts=[server.url]) as sender,
    ):
        inbox = Inbox(layer)
        channels = [await layer.new_channel() for _ in range(5)]
        discarded = channels.pop()
        for channel in [*channels, discarded]:
            await layer.group_add("room", channel)
            await layer.group_add("other", channel)
        await layer.group_discard("room", discarded)
        async with anyio.create_task_group() as tg:
            for channel in channels:
                tg.start_soon(inbox.receive_forever, channel)
            await sender.group_send("room", {"type": "before"})
            await inbox.until(1)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="anyio_layer"):
                await loss(server)
                # Nobody calls the layer: its renewal task notices the reconnect.
                expected = set(channels)
                await wait_for(
                    lambda: (
                        server.running
                        and members(server) == expected
                        and members(server, "asgi:group:other") == {*channels, discarded}
                        # Logged once the restoring pipeline's replies are in, which
                        # can be a moment after the server shows the members.
                        and any("had lost" in record.getMessage() for record in caplog.records)
                    )
                )
            await sender.group_send("room", {"type": "after"})
            await inbox.until(2)
            await anyio.sleep(0.3)  # no duplicate arrives
            tg.cancel_scope.cancel()
        for channel in channels:
            assert inbox.received[channel] == [{"type": "before"}, {"type": "after"}]
        assert layer.statistics().memberships_restored == 2 * len(channels) + 1


async def test_discard_racing_with_renewals_stays_discarded(redis_url: str) -> None:
    """Renewals run back to back while half the members leave: none of them comes back."""
    async with open_redis_layer(hosts=[redis_url]) as layer:
        channels = [await layer.new_channel() for _ in range(200)]
        for channel in channels:
            await layer.group_add("room", channel)
        leaving = channels[::2]
        staying = set(channels[1::2])

        async def renew_repeatedly(stop: anyio.Event) -> None:
            while not stop.is_set():
                await layer._leases.renew()

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(renew_repeatedly, stop)
            tg.start_soon(renew_repeatedly, stop)
            for channel in leaving:
                await layer.group_discard("room", channel)
                await anyio.lowlevel.checkpoint()
            stop.set()
        await layer._leases.renew()
        assert await anyio_server_members(layer) == staying


async def anyio_server_members(layer: QueueLayer) -> set[str]:
    key, server = layer._keys.group("room")
    reply = await server.execute("ZRANGE", key, 0, -1)
    assert isinstance(reply, list)
    return {member.decode() for member in reply}


async def test_discard_during_an_outage_is_not_undone_by_the_restore(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """The restore and the discards all wait for the connection: the discards still win."""
    server = redis_server_factory()
    async with open_redis_layer(hosts=[server.url]) as layer:
        channels = [await layer.new_channel() for _ in range(20)]
        for channel in channels:
            await layer.group_add("room", channel)
        leaving = channels[:10]
        await anyio.to_thread.run_sync(server.kill)
        await anyio.sleep(0.2)  # the layer has seen its connection close
        async with anyio.create_task_group() as tg:
            # A renewal waiting for the connection, with every membership in its snapshot...
            tg.start_soon(layer._leases.renew)
            await anyio.sleep(0.1)
            # ...and discards that wait too.
            for channel in leaving:
                tg.start_soon(layer.group_discard, "room", channel)
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(server.start)
        staying = set(channels[10:])
        await wait_for(lambda: members(server) == staying)
        await layer._leases.renew()
        assert members(server) == staying


async def test_flush_forgets_the_leases(redis_url: str) -> None:
    async with open_redis_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.flush()
        await layer._leases.renew()
        assert layer.statistics().leased_memberships == 0
        assert await anyio_server_members(layer) == set()


def count_requests(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """Count round trips per connection pool (every pipeline is one ``_request``)."""
    requests: dict[int, int] = {}
    original = ConnectionPool._request

    async def counting(self: ConnectionPool, payload: bytes, expected: int) -> list[object]:
        requests[id(self)] = requests.get(id(self), 0) + 1
        return await original(self, payload, expected)

    monkeypatch.setattr(ConnectionPool, "_request", counting)
    return requests


async def test_renewal_is_one_round_trip_per_server(
    redis_server_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = [redis_server_factory(), redis_server_factory()]
    async with open_redis_layer(hosts=[server.url for server in servers]) as layer:
        channels = [await layer.new_channel() for _ in range(50)]
        for index, channel in enumerate(channels):
            await layer.group_add(f"group-{index % 25}", channel)
        requests = count_requests(monkeypatch)
        await layer._leases.renew()
        monkeypatch.undo()
        assert sorted(requests.values()) == [1, 1]  # 25 groups over two servers

        def stored() -> int:
            return sum(len(members(s, f"asgi:group:group-{g}")) for s in servers for g in range(25))

        assert stored() == 50
        # One server restarts empty: its memberships come back, the other's stay.
        await sigkill_and_restart(servers[1])
        await wait_for(lambda: stored() == 50)


async def test_renewal_is_one_round_trip_per_cluster_node(
    redis_cluster_hosts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_redis_layer(hosts=redis_cluster_hosts) as layer:
        channels = [await layer.new_channel() for _ in range(60)]
        for index, channel in enumerate(channels):
            await layer.group_add(f"group-{index % 30}", channel)
        renewed = layer.statistics().memberships_renewed  # by renewals after first connects
        requests = count_requests(monkeypatch)
        await layer._leases.renew()
        monkeypatch.undo()
        # 30 groups spread over the 3 primaries: one pipeline each.
        assert sorted(requests.values()) == [1, 1, 1]
        assert layer.statistics().memberships_renewed == renewed + 60


async def test_scoped_exit_while_redis_is_down_ends_every_lease(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Leaving waits for the connection until the scope's leave timeout: the leases end anyway."""
    server = redis_server_factory()
    async with open_redis_layer(hosts=[server.url]) as layer:
        async with layer.open_channel("a", "b", "c"):
            assert layer.statistics().leased_memberships == 3
            await anyio.to_thread.run_sync(server.kill)
            await anyio.sleep(0.2)
        # The first ZREM waited out the leave timeout, the others never ran.
        assert layer.statistics().leased_memberships == 0
