"""The queue layer's behaviour against a real server, under asyncio and trio."""

from __future__ import annotations

import re
from collections.abc import Callable

import anyio
import pytest

from anyio_layer.exceptions import (
    ChannelFull,
    ConfigurationError,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
    LayerClosedError,
    MessageTooLarge,
    RedisConnectionError,
)
from anyio_layer.messages import SerializerDoesNotExist
from anyio_layer.queue import QueueLayer, open_redis_layer
from anyio_layer.testing import RedisServer, find_all_redis_servers

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["server", "cluster"])
def layer_hosts(request: pytest.FixtureRequest) -> list[str]:
    """``hosts`` for one server, then for a Redis Cluster: the behaviour must not differ."""
    if request.param == "server":
        return [request.getfixturevalue("redis_url")]
    hosts: list[str] = request.getfixturevalue("redis_cluster_hosts")
    return hosts


async def test_send_receive_local_and_normal(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts) as layer:
        local = await layer.new_channel()
        assert re.fullmatch(rf"specific\.{layer.client_prefix}![0-9a-f]{{32}}", local)
        await layer.send(local, {"type": "a", "n": 1})
        await layer.send("worker", {"type": "b", "payload": b"\x00bytes"})
        assert await layer.receive(local) == {"type": "a", "n": 1}
        assert await layer.receive("worker") == {"type": "b", "payload": b"\x00bytes"}
        stats = layer.statistics()
        assert stats.messages_sent == stats.messages_received == 2


async def test_fifo_per_channel(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts, capacity=1000) as layer:
        channels = [await layer.new_channel() for _ in range(3)]
        for i in range(200):
            for channel in channels:
                await layer.send(channel, {"type": "n", "i": i})
            await layer.send("queue", {"type": "n", "i": i})
        for channel in channels:
            assert [(await layer.receive(channel))["i"] for _ in range(200)] == list(range(200))
        assert [(await layer.receive("queue"))["i"] for _ in range(200)] == list(range(200))


async def test_receivers_wait_for_messages(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts) as layer:
        local = await layer.new_channel()
        received: list[dict[str, object]] = []

        async def receive(channel: str) -> None:
            received.append(await layer.receive(channel))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive, local)
            tg.start_soon(receive, "jobs")
            await anyio.sleep(0.2)
            await layer.send(local, {"type": "late"})
            await layer.send("jobs", {"type": "late job"})
        assert sorted(m["type"] for m in received) == ["late", "late job"]  # type: ignore[type-var]


async def test_many_local_channels_share_one_reader(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_redis_layer(hosts=[redis_url]) as layer:
        channels = [await layer.new_channel() for _ in range(50)]
        results: dict[str, dict[str, object]] = {}

        async def receive(channel: str) -> None:
            results[channel] = await layer.receive(channel)

        async with anyio.create_task_group() as tg:
            for channel in channels:
                tg.start_soon(receive, channel)
            await anyio.sleep(0.1)
            # 50 receivers, one blocked client on the server.
            assert int(redis_server.info("clients")["blocked_clients"]) == 1
            for channel in channels:
                await layer.send(channel, {"type": "m", "to": channel})
        assert all(results[channel]["to"] == channel for channel in channels)


async def test_groups(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts) as layer:
        a, b, c = [await layer.new_channel() for _ in range(3)]
        await layer.group_add("room", a)
        await layer.group_add("room", b)
        await layer.group_add("room", "worker")
        await layer.group_add("other", c)
        await layer.group_send("room", {"type": "hello"})
        assert await layer.receive(a) == {"type": "hello"}
        assert await layer.receive(b) == {"type": "hello"}
        assert await layer.receive("worker") == {"type": "hello"}
        await layer.group_discard("room", b)
        await layer.group_discard("room", "never-a-member")
        await layer.group_send("room", {"type": "again"})
        await layer.group_send("empty-group", {"type": "nobody"})
        assert await layer.receive(a) == {"type": "again"}
        with anyio.move_on_after(0.2) as scope:
            await layer.receive(b)
        assert scope.cancelled_caught
        with anyio.move_on_after(0.2) as scope:
            await layer.receive(c)
        assert scope.cancelled_caught
        # Own channels get a copy each, in memory; other members one per Redis key.
        stats = layer.statistics()
        assert stats.group_sends == 3
        assert stats.group_deliveries == (2 + 1) + (1 + 1)


async def test_group_send_follows_membership_changes(layer_hosts: list[str]) -> None:
    # group_send reuses the routes it worked out while the group's set is
    # unchanged: every change in between must still be seen, for members in
    # memory (this layer's) and through Redis (another layer's) alike.
    async with (
        open_redis_layer(hosts=layer_hosts) as sender,
        open_redis_layer(hosts=layer_hosts) as other,
    ):
        own_a, own_b = await sender.new_channel(), await sender.new_channel()
        far_a, far_b = await other.new_channel(), await other.new_channel()
        for channel in (own_a, far_a):
            await sender.group_add("room", channel)
        await sender.group_send("room", {"type": "one"})
        await sender.group_send("room", {"type": "two"})
        await sender.group_add("room", own_b)
        await sender.group_add("room", far_b)
        await sender.group_discard("room", own_a)
        await sender.group_discard("room", far_a)
        await sender.group_send("room", {"type": "three"})
        got = {
            own_a: [await sender.receive(own_a) for _ in range(2)],
            far_a: [await other.receive(far_a) for _ in range(2)],
            own_b: [await sender.receive(own_b)],
            far_b: [await other.receive(far_b)],
        }
        assert got == {
            own_a: [{"type": "one"}, {"type": "two"}],
            far_a: [{"type": "one"}, {"type": "two"}],
            own_b: [{"type": "three"}],
            far_b: [{"type": "three"}],
        }
        for layer, channel in ((sender, own_a), (other, far_a)):
            with anyio.move_on_after(0.2) as scope:
                await layer.receive(channel)
            assert scope.cancelled_caught


async def test_group_members_in_memory_get_their_own_dicts(redis_url: str) -> None:
    # One decoded message is shared by the buffers of every local member; each
    # receive() must still hand out a dict of its own.
    async with open_redis_layer(hosts=[redis_url]) as layer:
        first, second = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", first)
        await layer.group_add("room", second)
        await layer.group_send("room", {"type": "m", "n": 1})
        mine = await layer.receive(first)
        mine["n"] = 2
        mine["extra"] = True
        assert await layer.receive(second) == {"type": "m", "n": 1}


async def test_group_send_one_round_trip_per_shard(
    redis_url: str, redis_server: RedisServer
) -> None:
    def calls() -> dict[str, int]:
        stats = redis_server.info("commandstats")
        return {
            name: int(stats.get(f"cmdstat_{name}", "calls=0").split(",")[0].split("=")[1])
            for name in ("evalsha", "eval", "zrange", "zadd")
        }

    async with open_redis_layer(hosts=[redis_url]) as layer:
        channels = [await layer.new_channel() for _ in range(100)] + [f"w{i}" for i in range(200)]
        for channel in channels:
            await layer.group_add("big", channel)
        await layer.group_add("warm-up", "w-warm-up")
        await layer.group_send("warm-up", {"type": "x"})  # loads the script
        before = calls()
        await layer.group_send("big", {"type": "fanout"})
        after = calls()
        # One membership read and one script call, whatever the group size.
        assert after["zrange"] - before["zrange"] == 1
        assert after["evalsha"] + after["eval"] - before["evalsha"] - before["eval"] == 1
        for channel in channels:
            assert await layer.receive(channel) == {"type": "fanout"}


async def test_group_membership_expires(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts, group_expiry=1) as layer:
        channel = await layer.new_channel()
        await layer.group_add("brief", channel)
        await anyio.sleep(2.1)
        await layer.group_send("brief", {"type": "too late"})
        with anyio.move_on_after(0.2) as scope:
            await layer.receive(channel)
        assert scope.cancelled_caught


async def test_capacity_and_channel_capacity(layer_hosts: list[str]) -> None:
    config = {
        "capacity": 3,
        "channel_capacity": {"small*": 1, re.compile(r"^big\..*"): 5},
    }
    async with open_redis_layer(hosts=layer_hosts, **config) as layer:  # type: ignore[arg-type]
        for _ in range(3):
            await layer.send("default", {"type": "x"})
        with pytest.raises(ChannelFull):
            await layer.send("default", {"type": "x"})
        await layer.send("small-one", {"type": "x"})
        with pytest.raises(ChannelFull):
            await layer.send("small-one", {"type": "x"})
        for _ in range(5):
            await layer.send("big.one", {"type": "x"})
        with pytest.raises(ChannelFull):
            await layer.send("big.one", {"type": "x"})
        # Group sends skip full members instead of raising.
        await layer.group_add("g", "small-one")
        await layer.group_add("g", "fresh")
        await layer.group_send("g", {"type": "y"})
        stats = layer.statistics()
        assert stats.channel_full == 3
        assert stats.group_skipped_over_capacity == 1
        assert await layer.receive("fresh") == {"type": "y"}


async def test_expiry(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts, expiry=1) as layer:
        local = await layer.new_channel()
        await layer.send(local, {"type": "stale"})
        await layer.send("normal", {"type": "stale"})
        await anyio.sleep(2.1)
        await layer.send(local, {"type": "fresh"})
        await layer.send("normal", {"type": "fresh"})
        assert await layer.receive(local) == {"type": "fresh"}
        assert await layer.receive("normal") == {"type": "fresh"}


@pytest.mark.parametrize("from_another_layer", [True, False])
async def test_busy_local_consumer_pushes_back_on_senders(
    redis_url: str, from_another_layer: bool
) -> None:
    async with (
        open_redis_layer(hosts=[redis_url], capacity=3) as layer,
        open_redis_layer(hosts=[redis_url], capacity=3) as other,
    ):
        sender = other if from_another_layer else layer
        channel = await layer.new_channel()
        await sender.send(channel, {"type": "n", "i": 0})
        assert (await layer.receive(channel))["i"] == 0  # the reader is running now
        # Nobody is receiving: messages stay in Redis (or, from this layer, in
        # the channel's buffer) and the channel's capacity applies.
        for i in range(3):
            await sender.send(channel, {"type": "n", "i": i})
        with pytest.raises(ChannelFull):
            await sender.send(channel, {"type": "n", "i": 3})
        assert [(await layer.receive(channel))["i"] for _ in range(3)] == [0, 1, 2]
        assert layer.statistics().local_buffer_overflows == 0


async def test_local_buffer_overflow_drops_oldest_and_counts(layer_hosts: list[str]) -> None:
    async with (
        open_redis_layer(hosts=layer_hosts, capacity=5) as layer,
        open_redis_layer(hosts=layer_hosts, capacity=5) as sender,  # another process
    ):
        busy = await layer.new_channel()
        other = await layer.new_channel()
        for batch in range(2):
            for i in range(5):
                await sender.send(busy, {"type": "n", "i": batch * 5 + i})
            # A receiver on another channel makes the reader pop everything waiting.
            with anyio.move_on_after(0.2):
                await layer.receive(other)
        assert layer.statistics().local_buffer_overflows == 5
        assert [(await layer.receive(busy))["i"] for _ in range(5)] == [5, 6, 7, 8, 9]


async def test_idle_local_buffers_are_kept_briefly_then_forgotten(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts) as layer:
        channels = [await layer.new_channel() for _ in range(20)]
        for i, channel in enumerate(channels):
            await layer.send(channel, {"type": "m", "i": i})
            assert (await layer.receive(channel))["i"] == i
        # Nothing buffered, nobody receiving: no local channel counts.
        assert layer.statistics().local_channels == 0
        await anyio.sleep(1.1)  # the sweep runs at most once a second
        await layer.send(channels[0], {"type": "m", "i": 0})
        assert (await layer.receive(channels[0]))["i"] == 0
        assert len(layer._buffers) <= 1


async def test_scoped_channel(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts) as layer:
        async with layer.open_channel("lobby", "news") as channel:
            assert channel.groups == ["lobby", "news"]
            await layer.group_send("lobby", {"type": "one"})
            await layer.group_send("news", {"type": "two"})
            await channel.group_add("extra")
            await layer.group_send("extra", {"type": "three"})
            seen = []
            async for message in channel:
                seen.append(message["type"])
                if len(seen) == 3:
                    break
            assert seen == ["one", "two", "three"]
            name = channel.name
        # Left every group on exit.
        await layer.group_send("lobby", {"type": "after"})
        assert layer.statistics().local_channels == 0
        with anyio.move_on_after(0.2) as scope:
            await layer.receive(name)
        assert scope.cancelled_caught


async def test_scoped_channel_leaves_groups_when_cancelled(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_redis_layer(hosts=[redis_url]) as layer:
        with anyio.move_on_after(0.1):
            async with layer.open_channel("cancelled-room") as channel:
                await channel.receive()
        assert redis_server.execute("ZCARD", b"asgi:group:cancelled-room") == 0


async def test_flush(redis_url: str, redis_server: RedisServer) -> None:
    async with open_redis_layer(hosts=[redis_url], prefix="flushme") as layer:
        redis_server.execute("SET", "unrelated", "kept")
        for i in range(2500):
            await layer.group_add(f"g{i}", "worker")
        await layer.send("worker", {"type": "x"})
        await layer.flush()
        assert redis_server.execute("KEYS", "flushme*") == []
        assert redis_server.execute("GET", "unrelated") == b"kept"


async def test_flush_prefix_with_glob_characters(redis_url: str, redis_server: RedisServer) -> None:
    redis_server.execute("SET", "a-other", "kept")
    async with open_redis_layer(hosts=[redis_url], prefix="a*") as layer:
        await layer.send("chan", {"type": "x"})
        await layer.flush()
    assert redis_server.execute("GET", "a-other") == b"kept"
    assert redis_server.execute("EXISTS", "a*chan") == 0


async def test_encryption_and_json(layer_hosts: list[str]) -> None:
    keys = ["a-key-with-enough-entropy-0123456789abcdef"]
    async with (
        open_redis_layer(
            hosts=layer_hosts, symmetric_encryption_keys=keys, serializer_format="json"
        ) as layer,
        open_redis_layer(
            hosts=layer_hosts, symmetric_encryption_keys=["another-key-entirely-0123456789"]
        ) as wrong,
    ):
        await layer.send("secret", {"type": "s", "text": "hidden"})
        assert await layer.receive("secret") == {"type": "s", "text": "hidden"}
        await layer.send("secret", {"type": "s"})
        # The wrong key cannot read it: dropped and counted, the receiver keeps waiting.
        with anyio.move_on_after(10) as waiting:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(wrong.receive, "secret")
                while wrong.statistics().decode_errors == 0:
                    await anyio.sleep(0.01)
                task_group.cancel_scope.cancel()
        assert not waiting.cancelled_caught
        assert wrong.statistics().messages_received == 0
        # Nothing is stuck afterwards.
        await layer.send("secret", {"type": "next"})
        assert await layer.receive("secret") == {"type": "next"}


async def test_bad_input(layer_hosts: list[str]) -> None:
    async with open_redis_layer(hosts=layer_hosts, max_message_size=1000) as layer:
        with pytest.raises(InvalidChannelName, match="Channel name must be a valid"):
            await layer.send("bad name", {"type": "x"})
        with pytest.raises(InvalidChannelName):
            await layer.send("x" * 100, {"type": "x"})
        with pytest.raises(InvalidChannelName):
            await layer.receive("a!b!c")
        with pytest.raises(InvalidGroupName):
            await layer.group_add("bad group", "chan")
        with pytest.raises(InvalidChannelName):
            await layer.group_add("group", "bad chan")
        with pytest.raises(InvalidMessage, match="must be a dict"):
            await layer.send("chan", ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(InvalidMessage, match="__asgi_channel__"):
            await layer.send("chan", {"__asgi_channel__": "x"})
        with pytest.raises(InvalidMessage):
            await layer.send("chan", {"type": "x", "value": object()})
        with pytest.raises(MessageTooLarge, match="limit is 1000 bytes"):
            await layer.send("chan", {"type": "x", "blob": b"x" * 2000})
        with pytest.raises(MessageTooLarge):
            await layer.group_send("group", {"type": "x", "blob": b"x" * 2000})
        # Someone else's process-local channel.
        with pytest.raises(InvalidChannelName, match="not created by this layer"):
            await layer.receive("specific.0123456789abcdef0123456789abcdef!abc")
        # After all that, the layer works.
        await layer.send("chan", {"type": "ok"})
        assert await layer.receive("chan") == {"type": "ok"}


def invalid_configs() -> list[tuple[dict[str, object], str]]:
    return [
        ({"hosts": "redis://localhost"}, "must be a list"),
        ({"bogus": 1, "other": 2}, "unknown option(s) for the queue layer: bogus, other"),
        ({"capacity": 0}, "capacity must be a positive integer"),
        ({"capacity": "100"}, "capacity must be a positive integer"),
        ({"channel_capacity": {"x": -1}}, "must be a positive integer"),
        ({"channel_capacity": {42: 1}}, "must be a glob string or a compiled regular expression"),
        ({"channel_capacity": "x"}, "channel_capacity must be a dict"),
        ({"expiry": 0}, "expiry must be a positive number"),
        ({"group_expiry": -5}, "group_expiry must be a positive number"),
        ({"prefix": b"bytes"}, "prefix must be a str"),
        ({"symmetric_encryption_keys": "one-string"}, "symmetric_encryption_keys"),
        ({"random_prefix_length": 1.5}, "random_prefix_length must be an integer"),
    ]


@pytest.mark.parametrize(("config", "message"), invalid_configs())
async def test_bad_configuration(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        async with open_redis_layer(**config):  # type: ignore[arg-type]
            pass
    assert message in str(info.value)


async def test_unknown_serializer_format() -> None:
    with pytest.raises(SerializerDoesNotExist):
        async with open_redis_layer(serializer_format="yaml"):
            pass


async def test_lifetime(redis_url: str, redis_server: RedisServer) -> None:
    def layer_clients() -> int:
        listing = redis_server.execute("CLIENT", "LIST")
        assert isinstance(listing, bytes)
        return len(listing.decode().splitlines()) - 1  # minus the admin connection

    async with open_redis_layer(hosts=[redis_url]) as layer:
        local = await layer.new_channel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(layer.receive, local)
            tg.start_soon(layer.receive, "normal")
            await anyio.sleep(0.1)
            assert layer_clients() >= 2  # the local reader and the normal receiver
            tg.cancel_scope.cancel()
        await layer.send(local, {"type": "x"})
    assert layer_clients() == 0
    assert int(redis_server.info("clients")["blocked_clients"]) == 0
    with pytest.raises(LayerClosedError):
        await layer.send("x", {"type": "x"})
    with pytest.raises(LayerClosedError):
        await layer.receive(local)


async def test_no_task_outlives_the_layer(redis_url: str, anyio_backend: str) -> None:
    def task_count() -> int:
        if anyio_backend == "asyncio":
            import asyncio

            return len(asyncio.all_tasks())
        import trio

        def walk(task: trio.lowlevel.Task) -> int:
            return 1 + sum(
                walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
            )

        root = trio.lowlevel.current_root_task()
        assert root is not None
        return walk(root)

    before = task_count()
    async with open_redis_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "x"})
        await layer.receive(channel)
        assert task_count() > before
    assert task_count() == before


async def test_errors_inside_the_block_propagate_unwrapped(layer_hosts: list[str]) -> None:
    with pytest.raises(KeyError):
        async with open_redis_layer(hosts=layer_hosts):
            raise KeyError("mine")


async def test_redis_restart_while_receivers_wait(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    async with open_redis_layer(hosts=[server.url]) as layer:
        local = await layer.new_channel()
        received: list[dict[str, object]] = []

        async def receive(channel: str) -> None:
            received.append(await layer.receive(channel))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive, local)
            tg.start_soon(receive, "normal")
            await anyio.sleep(0.2)
            await anyio.to_thread.run_sync(server.restart)
            # Right after the restart a send may fail (the pool may still be backing off).
            with anyio.fail_after(15):
                while True:
                    try:
                        await layer.send(local, {"type": "after restart"})
                        await layer.send("normal", {"type": "after restart"})
                        break
                    except RedisConnectionError:
                        await anyio.sleep(0.1)
        assert received == [{"type": "after restart"}] * 2
        assert layer.statistics().reconnects >= 1


async def test_send_fails_clearly_while_redis_is_down(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    async with open_redis_layer(hosts=[server.url]) as layer:
        await layer.send("x", {"type": "x"})
        await anyio.to_thread.run_sync(server.stop)
        with pytest.raises(RedisConnectionError):
            await layer.send("x", {"type": "x"})
        with pytest.raises(RedisConnectionError):
            await layer.group_send("g", {"type": "x"})


async def test_sharding_across_hosts(redis_server_factory: Callable[..., RedisServer]) -> None:
    servers = [redis_server_factory() for _ in range(3)]
    async with open_redis_layer(hosts=[server.url for server in servers]) as layer:
        assert isinstance(layer, QueueLayer)
        locals_ = [
            await layer.new_channel(prefix) for prefix in ("alpha", "beta", "gamma", "delta")
        ]
        normals = [f"worker{i}" for i in range(12)]
        for channel in locals_ + normals:
            await layer.group_add("everyone", channel)
            await layer.send(channel, {"type": "direct", "to": channel})
        await layer.group_send("everyone", {"type": "group"})
        for channel in locals_ + normals:
            assert await layer.receive(channel) == {"type": "direct", "to": channel}
            assert await layer.receive(channel) == {"type": "group"}
        # Each key lives on exactly the shard the router picks, for local and normal channels.
        used = set()
        for channel in locals_ + normals:
            shard = layer.consistent_hash(channel)
            key = layer._keys.channel_key(channel)
            used.add(shard)
            for index, server in enumerate(servers):
                if index != shard:
                    assert server.execute("EXISTS", key) == 0
        assert len(used) > 1, "test channels should spread over several shards"


async def test_layers_of_one_family_hand_over_buffered_messages(layer_hosts: list[str]) -> None:
    """What the Channels adapter relies on: one layer per event loop, one family."""
    family = {"hosts": layer_hosts, "client_prefix_family": "fam"}
    async with open_redis_layer(client_prefix="fam-1", **family) as first:
        channel = await first.new_channel()
        assert "fam-1!" in channel
        for i in range(5):
            await first.send(channel, {"type": "n", "i": i})
        assert (await first.receive(channel))["i"] == 0
        # The reader has buffered the rest; nobody receives them here.
        with anyio.fail_after(5):
            while not first._buffers.get(channel) or len(first._buffers[channel].messages) < 4:
                await anyio.sleep(0.01)
    async with open_redis_layer(client_prefix="fam-2", **family) as second:
        assert [(await second.receive(channel))["i"] for _ in range(4)] == [1, 2, 3, 4]
        with pytest.raises(InvalidChannelName, match="not created by this layer"):
            await second.receive("specific.other-1!abc")


async def test_bad_client_prefix() -> None:
    with pytest.raises(ConfigurationError, match="client_prefix"):
        async with open_redis_layer(client_prefix="has.dot"):
            pass


@pytest.mark.parametrize("binary", find_all_redis_servers())
async def test_every_available_redis_version(
    binary: str, redis_server_factory: Callable[..., RedisServer]
) -> None:
    """Redis 7 drains with BZMPOP; 6.2 falls back to BZPOPMIN + ZPOPMIN."""
    server = redis_server_factory(binary=binary)
    async with (
        open_redis_layer(hosts=[server.url]) as layer,
        open_redis_layer(hosts=[server.url]) as sender,  # through Redis, as another process
    ):
        channels = [await layer.new_channel() for _ in range(3)]
        for i in range(20):
            for channel in channels:
                await sender.send(channel, {"type": "n", "i": i})
        for channel in channels:
            assert [(await layer.receive(channel))["i"] for _ in range(20)] == list(range(20))
        await sender.send("jobs", {"type": "job"})
        assert await layer.receive("jobs") == {"type": "job"}
