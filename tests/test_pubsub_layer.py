"""The pub/sub layer against real servers, under asyncio and trio."""

from __future__ import annotations

import re
from collections.abc import Callable

import anyio
import pytest

from anyio_layer.exceptions import (
    ChannelClosedError,
    ConfigurationError,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
    LayerClosedError,
    MessageTooLarge,
    RedisConnectionError,
)
from anyio_layer.pubsub import PubSubLayer, open_pubsub_layer
from anyio_layer.pubsub import subscriber as subscriber_module
from anyio_layer.testing import RedisServer, run_fault_proxy

pytestmark = pytest.mark.anyio

ServerFactory = Callable[..., RedisServer]


def numsub(server: RedisServer, name: str) -> int:
    reply = server.execute("PUBSUB", "NUMSUB", name)
    assert isinstance(reply, list)
    count = reply[1]
    assert isinstance(count, int)
    return count


async def nothing_arrives(layer: PubSubLayer, channel: str, wait: float = 0.2) -> bool:
    with anyio.move_on_after(wait) as scope:
        await layer.receive(channel)
    return scope.cancelled_caught


async def test_send_receive(redis_url: str, redis_server: RedisServer) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        assert re.fullmatch(r"asgispecific\.[0-9a-f]{32}", channel)
        # Subscribed before new_channel() returned.
        assert numsub(redis_server, channel) == 1
        await layer.send(channel, {"type": "hello", "data": b"\x00\x01"})
        assert await layer.receive(channel) == {"type": "hello", "data": b"\x00\x01"}
        stats = layer.statistics()
        assert stats.messages_sent == stats.messages_received == 1
        assert stats.subscriptions == 1


async def test_receive_subscribes_unknown_channels(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        got: list[dict[str, object]] = []

        async def receive() -> None:
            got.append(await layer.receive("plain.channel"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            with anyio.fail_after(5):
                while numsub(redis_server, "plain.channel") == 0:
                    await anyio.sleep(0.01)
            await layer.send("plain.channel", {"type": "x"})
        assert got == [{"type": "x"}]


async def test_order_is_kept(redis_url: str) -> None:
    async with open_pubsub_layer(hosts=[redis_url], capacity=1000) as layer:
        channel = await layer.new_channel()
        for i in range(500):
            await layer.send(channel, {"type": "n", "i": i})
        assert [(await layer.receive(channel))["i"] for _ in range(500)] == list(range(500))


async def test_groups(redis_url: str, redis_server: RedisServer) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", a)
        await layer.group_add("room", b)
        assert numsub(redis_server, "asgi__group__room") == 1  # one subscription per group
        await layer.group_send("room", {"type": "all"})
        assert await layer.receive(a) == {"type": "all"}
        assert await layer.receive(b) == {"type": "all"}
        await layer.group_discard("room", a)
        assert numsub(redis_server, "asgi__group__room") == 1
        await layer.group_send("room", {"type": "b only"})
        assert await layer.receive(b) == {"type": "b only"}
        assert await nothing_arrives(layer, a)
        await layer.group_discard("room", b)
        await layer.group_discard("room", b)  # not a member any more: no error
        assert numsub(redis_server, "asgi__group__room") == 0


async def test_group_add_needs_a_local_channel(redis_url: str) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        with pytest.raises(InvalidChannelName, match="channels that exist in-process"):
            await layer.group_add("room", "somebody.elses")


async def test_close_channel(redis_url: str, redis_server: RedisServer) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        errors: list[BaseException] = []

        async def receive() -> None:
            try:
                await layer.receive(channel)
            except ChannelClosedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.sleep(0.05)
            await layer.close_channel(channel)
        assert len(errors) == 1
        assert numsub(redis_server, channel) == 0
        assert numsub(redis_server, "asgi__group__g") == 0
        assert layer.statistics().subscriptions == 0
        await layer.close_channel(channel)  # idempotent


async def test_scoped_channel(redis_url: str, redis_server: RedisServer) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        async with layer.open_channel("lobby") as channel:
            await layer.group_send("lobby", {"type": "hi"})
            async for message in channel:
                assert message == {"type": "hi"}
                break
        assert redis_server.execute("PUBSUB", "CHANNELS", "*") == []


async def test_cancelled_receive_keeps_the_message(redis_url: str) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        assert await nothing_arrives(layer, channel, 0.05)
        await layer.send(channel, {"type": "kept"})
        assert await layer.receive(channel) == {"type": "kept"}


async def test_buffer_overflow_drops_oldest(redis_url: str) -> None:
    async with open_pubsub_layer(hosts=[redis_url], capacity=3) as layer:
        channel = await layer.new_channel()
        for i in range(5):
            await layer.send(channel, {"type": "n", "i": i})
        with anyio.fail_after(5):
            while layer.statistics().local_buffer_overflows < 2:
                await anyio.sleep(0.01)
        assert [(await layer.receive(channel))["i"] for _ in range(3)] == [2, 3, 4]


async def test_flush(redis_url: str, redis_server: RedisServer) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        await layer.flush()
        with anyio.fail_after(5):
            while redis_server.execute("PUBSUB", "CHANNELS", "*"):
                await anyio.sleep(0.01)
        fresh = await layer.new_channel()
        await layer.send(fresh, {"type": "after flush"})
        assert await layer.receive(fresh) == {"type": "after flush"}


async def test_bad_input(redis_url: str) -> None:
    async with open_pubsub_layer(hosts=[redis_url], max_message_size=100) as layer:
        with pytest.raises(InvalidChannelName):
            await layer.send("no spaces", {"type": "x"})
        with pytest.raises(InvalidGroupName):
            await layer.group_send("bad group", {"type": "x"})
        with pytest.raises(InvalidMessage):
            await layer.send("fine", "not a dict")  # type: ignore[arg-type]
        with pytest.raises(MessageTooLarge):
            await layer.send("fine", {"type": "x", "blob": b"x" * 200})
        with pytest.raises(InvalidChannelName):
            await layer.new_channel("bad prefix!")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"expiry": 60}, "unknown option(s) for the pub/sub layer: expiry"),
        ({"on_disconnect": 5}, "on_disconnect must be a message type string"),
        ({"capacity": 0}, "capacity must be a positive integer"),
        ({"hosts": "redis://x"}, "must be a list"),
    ],
)
async def test_bad_configuration(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        async with open_pubsub_layer(**config):  # type: ignore[arg-type]
            pass
    assert message in str(info.value)


async def test_lifetime(redis_url: str, redis_server: RedisServer) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "x"})
    listing = redis_server.execute("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    assert len(listing.decode().splitlines()) == 1  # only the admin connection
    with pytest.raises(LayerClosedError):
        await layer.send(channel, {"type": "x"})


async def test_disconnect_and_reconnect_notifications_on_client_kill(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_pubsub_layer(
        hosts=[redis_url], on_disconnect="redis.disconnect", on_reconnect="redis.reconnect"
    ) as layer:
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", a)
        await layer.group_add("room", b)
        assert redis_server.execute("CLIENT", "KILL", "TYPE", "pubsub") == 1
        for channel in (a, b):
            assert await layer.receive(channel) == {"type": "redis.disconnect"}
            assert await layer.receive(channel) == {"type": "redis.reconnect"}
        # Exactly once each: nothing more is queued.
        assert await nothing_arrives(layer, a)
        # Everything is subscribed again.
        await layer.group_send("room", {"type": "after"})
        await layer.send(a, {"type": "direct"})
        assert await layer.receive(a) == {"type": "after"}
        assert await layer.receive(a) == {"type": "direct"}
        assert await layer.receive(b) == {"type": "after"}
        stats = layer.statistics()
        assert (stats.disconnects, stats.reconnects) == (1, 1)


async def test_health_check_pings_a_quiet_connection_and_detects_a_dead_one(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_module, "HEALTH_CHECK_INTERVAL", 0.2)

    def pings() -> int:
        stat = redis_server.info("commandstats").get("cmdstat_ping", "calls=0,")
        return int(stat.split(",")[0].removeprefix("calls="))

    async with (
        run_fault_proxy(redis_server.address) as proxy,
        open_pubsub_layer(
            hosts=[proxy.url], on_disconnect="redis.disconnect", on_reconnect="redis.reconnect"
        ) as layer,
    ):
        channel = await layer.new_channel()
        # Traffic keeps the check away; a quiet connection is pinged and stays.
        for i in range(10):
            await layer.send(channel, {"type": "t", "i": i})
            assert (await layer.receive(channel))["i"] == i
            await anyio.sleep(0.05)
        before = pings()
        await anyio.sleep(0.7)
        assert pings() >= before + 2
        assert layer.statistics().disconnects == 0
        # A connection that stops answering is given up within two intervals.
        proxy.blackhole()
        with anyio.fail_after(5):
            assert await layer.receive(channel) == {"type": "redis.disconnect"}
        proxy.heal()
        with anyio.fail_after(10):
            assert await layer.receive(channel) == {"type": "redis.reconnect"}


async def test_notifications_across_a_server_restart(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    async with open_pubsub_layer(
        hosts=[server.url], on_disconnect="redis.disconnect", on_reconnect="redis.reconnect"
    ) as layer:
        channel = await layer.new_channel()
        await anyio.to_thread.run_sync(server.stop)
        assert await layer.receive(channel) == {"type": "redis.disconnect"}
        with pytest.raises(RedisConnectionError):
            await layer.send(channel, {"type": "while down"})
        await anyio.sleep(0.5)  # several failed reconnect attempts: still one notification
        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(15):
            assert await layer.receive(channel) == {"type": "redis.reconnect"}
        with anyio.fail_after(15):
            while True:
                try:
                    await layer.send(channel, {"type": "back"})
                    break
                except RedisConnectionError:
                    await anyio.sleep(0.05)
        assert await layer.receive(channel) == {"type": "back"}
        assert await nothing_arrives(layer, channel)


async def test_without_callbacks_nothing_is_injected(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_pubsub_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        redis_server.execute("CLIENT", "KILL", "TYPE", "pubsub")
        with anyio.fail_after(5):
            while layer.statistics().reconnects < 1:
                await anyio.sleep(0.01)
        assert await nothing_arrives(layer, channel)
        await layer.send(channel, {"type": "x"})
        assert await layer.receive(channel) == {"type": "x"}


async def test_sharding(redis_server_factory: ServerFactory) -> None:
    servers = [redis_server_factory() for _ in range(3)]
    async with open_pubsub_layer(hosts=[server.url for server in servers]) as layer:
        channels = [await layer.new_channel() for _ in range(12)]
        for channel in channels:
            await layer.group_add("everyone", channel)
            await layer.send(channel, {"type": "direct"})
        await layer.group_send("everyone", {"type": "group"})
        for channel in channels:
            assert await layer.receive(channel) == {"type": "direct"}
            assert await layer.receive(channel) == {"type": "group"}
        # Each channel is subscribed on the shard it hashes to, and only there.
        used = set()
        for channel in channels:
            shard = layer.consistent_hash(channel)
            used.add(shard)
            for index, server in enumerate(servers):
                assert numsub(server, channel) == (1 if index == shard else 0)
        assert len(used) > 1


async def test_sentinel_failover(redis_server_factory: ServerFactory) -> None:
    from anyio_layer.testing import run_redis_server, run_sentinel

    async with (
        run_redis_server() as primary,
        run_redis_server(replica_of=primary) as replica,
        run_sentinel(primary, master_name="pubsub") as sentinel,
    ):
        config = {"sentinels": [sentinel.address], "master_name": "pubsub"}
        async with open_pubsub_layer(
            hosts=[config], on_disconnect="redis.disconnect", on_reconnect="redis.reconnect"
        ) as layer:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "before"})
            assert await layer.receive(channel) == {"type": "before"}
            await anyio.to_thread.run_sync(sentinel.failover)
            await anyio.to_thread.run_sync(
                lambda: sentinel.wait_for_master(address_not_equal_to=primary.address, timeout=20)
            )
            # Sentinel disconnects the clients of the demoted primary; the
            # subscriber rediscovers the primary and resubscribes there.
            with anyio.fail_after(30):
                while numsub(replica, channel) == 0:
                    await anyio.sleep(0.05)
            # Each disconnect was announced as one disconnect/reconnect pair.
            with anyio.fail_after(30):
                while True:
                    try:
                        await layer.send(channel, {"type": "after"})
                        break
                    except RedisConnectionError:
                        await anyio.sleep(0.1)
                seen = []
                while (message := await layer.receive(channel))["type"] != "after":
                    seen.append(message["type"])
            assert seen
            assert seen == ["redis.disconnect", "redis.reconnect"] * (len(seen) // 2)
            stats = layer.statistics()
            assert stats.disconnects == stats.reconnects == len(seen) // 2
            assert numsub(replica, channel) == 1


async def test_idle_channels_are_closed_after_the_timeout(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_pubsub_layer(hosts=[redis_url], idle_channel_timeout=0.3) as layer:
        kept = await layer.new_channel()
        dropped = await layer.new_channel()
        await layer.group_add("g", dropped)

        async def keep_receiving() -> None:
            while True:
                await layer.receive(kept)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_receiving)
            # A receive that times out loses nothing within the grace period.
            assert await nothing_arrives(layer, dropped, 0.05)
            await layer.send(dropped, {"type": "kept for the next receive"})
            await anyio.sleep(0.1)
            assert await layer.receive(dropped) == {"type": "kept for the next receive"}
            # A consumer busy with a message keeps its channel, however long.
            await anyio.sleep(0.6)
            assert numsub(redis_server, dropped) == 1
            # A receive that ends without a message (the consumer exits), and
            # then nobody receives: the channel and its group subscription go.
            assert await nothing_arrives(layer, dropped, 0.05)
            with anyio.fail_after(5):
                while numsub(redis_server, dropped) or numsub(redis_server, "asgi__group__g"):
                    await anyio.sleep(0.05)
            assert numsub(redis_server, kept) == 1
            tg.cancel_scope.cancel()


async def test_resubscription_refused_for_good_sends_no_reconnect(
    redis_server_factory: ServerFactory,
) -> None:
    """An ACL change that drops the subscriber and refuses it back: disconnect, no reconnect.

    The channel is not subscribed again, so its listeners must not be told it is.
    """
    server = redis_server_factory()
    async with open_pubsub_layer(
        hosts=[server.url], on_disconnect="redis.disconnect", on_reconnect="redis.reconnect"
    ) as layer:
        channel = await layer.new_channel()
        server.execute("ACL", "SETUSER", "default", "resetchannels")  # drops subscribers
        with anyio.fail_after(5):
            assert await layer.receive(channel) == {"type": "redis.disconnect"}
            while layer.statistics().subscriptions or not layer.statistics().disconnects:
                await anyio.sleep(0.02)
        await anyio.sleep(0.5)  # the reconnect has been refused by now
        server.execute("ACL", "SETUSER", "default", "allchannels")
        with anyio.move_on_after(0.5) as scope:
            await layer.receive(channel)
        assert scope.cancelled_caught  # no reconnect notice
        assert layer.statistics().reconnects == 0
