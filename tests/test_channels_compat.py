"""The Django Channels adapter: drop-in behaviour and event-loop handling (asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import threading
import warnings
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

import channels_compat
from anyio_layer.exceptions import ConfigurationError
from anyio_layer.testing import RedisServer
from anyio_layer.testing.cluster import RedisCluster
from channels_compat import RedisChannelLayer, RedisPubSubChannelLayer
from channels_compat import serializers as compat_serializers

LAYERS = [RedisChannelLayer, RedisPubSubChannelLayer]


def clients(server: RedisServer) -> int:
    """Connections on the server other than the admin one asking."""
    listing = server.execute("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return len(listing.decode().splitlines()) - 1


@pytest.fixture
def strict_asyncio_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record warnings (ResourceWarning included) and asyncio's complaints."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    gc.collect()


def test_public_names() -> None:
    assert channels_compat.RedisChannelLayer is RedisChannelLayer
    assert issubclass(RedisChannelLayer, BaseChannelLayer)
    assert issubclass(RedisPubSubChannelLayer, BaseChannelLayer)
    assert RedisChannelLayer.extensions == ["groups", "flush"]
    for name in (
        "registry",
        "BaseMessageSerializer",
        "JSONSerializer",
        "MsgPackSerializer",
        "SerializersRegistry",
        "SerializerDoesNotExist",
    ):
        assert hasattr(compat_serializers, name)


def test_config_is_validated_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="must be a list"):
        RedisChannelLayer(hosts="redis://localhost:6379")
    with pytest.raises(TypeError):
        RedisChannelLayer(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="unknown option"):
        RedisPubSubChannelLayer(bogus=1)
    # Queue-layer keys copied into a pub/sub config are accepted (channels_redis ignores them).
    RedisPubSubChannelLayer(expiry=10, group_expiry=100)


def test_defaults_match_channels_redis() -> None:
    layer = RedisChannelLayer()
    assert (layer.prefix, layer.expiry, layer.group_expiry, layer.capacity) == (
        "asgi",
        60,
        86400,
        100,
    )
    assert re.fullmatch(r"[0-9a-f]{32}", layer.client_prefix)
    assert layer.consistent_hash("anything") == 0
    assert layer.deserialize(layer.serialize({"type": "x"})) == {"type": "x"}
    capped = RedisChannelLayer(channel_capacity={"http.response!*": 10, re.compile(r"^ws"): 3})
    assert capped.get_capacity("http.response!abc") == 10
    assert capped.get_capacity("wsfoo") == 3
    assert capped.get_capacity("other") == 100


def test_round_trip_from_sync_code(redis_url: str) -> None:
    layer = RedisChannelLayer(hosts=[redis_url])
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("room", channel)
    async_to_sync(layer.group_send)("room", {"type": "hello"})
    async_to_sync(layer.send)(channel, {"type": "direct"})
    # Each call above ran in its own short-lived event loop.
    received = [async_to_sync(layer.receive)(channel) for _ in range(2)]
    assert received == [{"type": "hello"}, {"type": "direct"}]


def test_round_trip_from_sync_code_on_a_cluster(
    redis_cluster: RedisCluster, redis_cluster_hosts: list[str]
) -> None:
    """The same CONFIG with cluster seeds as hosts; every loop's layer closes its connections."""
    layer = RedisChannelLayer(hosts=redis_cluster_hosts)
    assert layer.ring_size == 1
    channel = async_to_sync(layer.new_channel)()
    for group in ("room", "lobby"):
        async_to_sync(layer.group_add)(group, channel)
        async_to_sync(layer.group_add)(group, "worker")
    for i in range(100):
        async_to_sync(layer.group_send)("room" if i % 2 else "lobby", {"type": "n", "i": i})
    received = [async_to_sync(layer.receive)(channel)["i"] for _ in range(100)]
    assert received == list(range(100))
    assert [async_to_sync(layer.receive)("worker")["i"] for _ in range(100)] == received
    gc.collect()
    for node in redis_cluster.running_nodes():
        listing = node.execute("CLIENT", "LIST", "TYPE", "normal")
        assert isinstance(listing, bytes)
        assert len(listing.splitlines()) == 1  # only the connection asking
    assert layer._runtime.open_loops() == 0


def test_cluster_config_is_validated_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="hash tag"):
        RedisChannelLayer(hosts=["redis+cluster://127.0.0.1:7000"], prefix="app{1}")
    with pytest.raises(ConfigurationError, match="mixes Redis Cluster seeds"):
        RedisChannelLayer(hosts=["redis+cluster://127.0.0.1:7000", "redis://127.0.0.1:6379"])


def test_pubsub_round_trip(redis_url: str) -> None:
    # Pub/sub subscriptions belong to an event loop (as with channels_redis):
    # a channel is created, joined and received from in one loop.
    layer = RedisPubSubChannelLayer(hosts=[redis_url])

    async def main() -> None:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "hello"})
        await layer.send(channel, {"type": "direct"})
        assert [await layer.receive(channel) for _ in range(2)] == [
            {"type": "hello"},
            {"type": "direct"},
        ]
        await layer.close()

    asyncio.run(main())


def test_channel_full_is_channels_exception(redis_url: str) -> None:
    layer = RedisChannelLayer(hosts=[redis_url], capacity=1)

    async def main() -> None:
        await layer.send("full", {"type": "x"})
        with pytest.raises(ChannelFull):
            await layer.send("full", {"type": "x"})
        await layer.close()

    asyncio.run(main())


@pytest.mark.parametrize("layer_class", LAYERS)
def test_invalid_names_are_type_errors_with_channels_wording(
    layer_class: type, redis_url: str
) -> None:
    layer = layer_class(hosts=[redis_url])

    async def main() -> None:
        with pytest.raises(TypeError, match="Channel name must be a valid unicode string"):
            await layer.send("bad name", {"type": "x"})
        with pytest.raises(TypeError, match="Group name must be a valid unicode string"):
            await layer.group_send("bad group", {"type": "x"})
        await layer.close()

    asyncio.run(main())


def test_pubsub_group_add_needs_in_process_channel(redis_url: str) -> None:
    layer = RedisPubSubChannelLayer(hosts=[redis_url])

    async def main() -> None:
        with pytest.raises(TypeError, match="You can only call group_add"):
            await layer.group_add("room", "not.ours")
        await layer.close()

    asyncio.run(main())


@pytest.mark.parametrize("layer_class", LAYERS)
def test_a_thousand_sync_group_sends_leave_nothing_behind(
    layer_class: type,
    redis_url: str,
    redis_server: RedisServer,
    strict_asyncio_warnings: list[warnings.WarningMessage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = layer_class(hosts=[redis_url])
    group_send = async_to_sync(layer.group_send)
    for i in range(1000):
        group_send("busy", {"type": "n", "i": i})
    gc.collect()
    assert clients(redis_server) == 0
    assert layer._runtime.open_loops() == 0
    messages = [str(w.message) for w in strict_asyncio_warnings] + [
        r.getMessage() for r in caplog.records
    ]
    for complaint in ("Task was destroyed", "Event loop is closed", "unclosed", "never awaited"):
        assert not [m for m in messages if complaint in m], messages


@pytest.mark.parametrize("layer_class", LAYERS)
def test_threads_with_their_own_loops_share_one_layer_object(
    layer_class: type, redis_url: str, redis_server: RedisServer
) -> None:
    layer = layer_class(hosts=[redis_url])
    errors: list[BaseException] = []

    async def conversation(n: int) -> None:
        channel = await layer.new_channel()
        await layer.group_add(f"t{n}", channel)
        for i in range(50):
            await layer.group_send(f"t{n}", {"type": "m", "i": i})
            assert await layer.receive(channel) == {"type": "m", "i": i}
        await layer.close()

    def thread_main(n: int) -> None:
        try:
            asyncio.run(conversation(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert clients(redis_server) == 0


def test_loop_shutdown_closes_the_loops_layer(redis_url: str, redis_server: RedisServer) -> None:
    """asyncio.run() cancels the host task at shutdown: the core layer exits cleanly."""
    layer = RedisChannelLayer(hosts=[redis_url])

    async def main() -> None:
        channel = await layer.new_channel()
        await layer.send("jobs", {"type": "x"})
        await layer.receive("jobs")  # a blocking pop on a dedicated connection
        # Receiving on the local channel starts the reader (another connection).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.1)
        assert clients(redis_server) >= 2

    asyncio.run(main())
    assert clients(redis_server) == 0
    assert int(redis_server.info("clients")["blocked_clients"]) == 0


def test_a_loop_stopped_without_shutdown_has_its_layer_closed_at_exit(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A loop stopped and never closed (daphne's): close_stopped_loops() closes its layer."""
    layer = RedisChannelLayer(hosts=[redis_url])
    loop = asyncio.new_event_loop()
    try:

        async def use() -> None:
            await layer.send("jobs", {"type": "x"})
            await layer.receive("jobs")

        loop.run_until_complete(use())  # the loop stops with the layer's tasks pending
        assert layer._runtime.open_loops() == 1
        assert clients(redis_server) >= 1
        layer._runtime.close_stopped_loops()  # what runs at interpreter exit
        assert layer._runtime.open_loops() == 0
        assert clients(redis_server) == 0
        assert not [task for task in asyncio.all_tasks(loop) if not task.done()]
    finally:
        loop.close()


def test_cancelled_pubsub_receive_keeps_messages_and_subscription(
    redis_url: str, redis_server: RedisServer
) -> None:
    layer = RedisPubSubChannelLayer(hosts=[redis_url], channel_close_delay=0.5)

    async def main() -> None:
        channel = await layer.new_channel()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.05)
        await layer.send(channel, {"type": "not lost"})
        assert await layer.receive(channel) == {"type": "not lost"}
        # The consumer exits (its receive is cancelled): after the delay the
        # subscription goes.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.05)
        for _ in range(100):
            reply = redis_server.execute("PUBSUB", "NUMSUB", channel)
            assert isinstance(reply, list)
            if reply[1] == 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the idle channel was never unsubscribed")
        await layer.close()

    asyncio.run(main())


def test_receive_on_a_channel_from_another_loop(redis_url: str) -> None:
    """new_channel() in one loop, receive() in the next: one client_prefix for all loops."""
    layer = RedisChannelLayer(hosts=[redis_url])
    channel = async_to_sync(layer.new_channel)()
    for i in range(3):
        async_to_sync(layer.send)(channel, {"type": "n", "i": i})
    assert [async_to_sync(layer.receive)(channel)["i"] for _ in range(3)] == [0, 1, 2]
