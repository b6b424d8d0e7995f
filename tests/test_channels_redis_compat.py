"""Wire compatibility with channels_redis 4.x: both libraries share one Redis.

A ``channels_redis.core.RedisChannelLayer`` and our ``open_redis_layer`` with
the same hosts, prefix and serializer options exchange messages both ways on
normal channels, process-local channels (each library's ``new_channel()``)
and groups with members from both, with msgpack, JSON and encryption. The
Redis key layout is checked directly: a channel's messages live in the sorted
set ``prefix + non_local_name(channel)`` scored with send timestamps, a
group's members in ``prefix + ":group:" + group`` scored with the time they
were added, and every key has a TTL.

Settings written for channels_redis keep working: ``random_prefix_length``
of 0 or -1 means no prefix, in the core layer and in the Channels adapter;
and a message that is not a dict is refused by both libraries.

channels_redis is asyncio-only, so these tests run on asyncio only.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgpack
import pytest
from channels_redis.core import RedisChannelLayer

from anyio_layer.exceptions import InvalidMessage
from anyio_layer.messages import non_local_name
from anyio_layer.queue import QueueLayer, open_redis_layer
from anyio_layer.testing import RedisServer
from channels_compat.core import RedisChannelLayer as AdapterChannelLayer

pytestmark = pytest.mark.anyio

KEYS = ["first compat key", "second compat key"]
CONFIGS = [
    pytest.param({}, id="msgpack"),
    pytest.param({"serializer_format": "json"}, id="json"),
    pytest.param({"symmetric_encryption_keys": KEYS}, id="msgpack-encrypted"),
    pytest.param(
        {"serializer_format": "json", "symmetric_encryption_keys": KEYS}, id="json-encrypted"
    ),
    pytest.param({"prefix": "myproject:"}, id="custom-prefix"),
]
RANDOM_PREFIX_LENGTH = 12  # both libraries' default
EXPIRY = 60
GROUP_EXPIRY = 86400
MESSAGE = {"type": "chat.message", "text": "héllo wörld", "n": 1, "nested": {"a": [1, 2.5, None]}}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """channels_redis runs on asyncio only."""
    return "asyncio"


@contextlib.asynccontextmanager
async def both_layers(
    redis_url: str, config: dict[str, Any]
) -> AsyncIterator[tuple[QueueLayer, RedisChannelLayer]]:
    """Ours and theirs on the same Redis with the same options; theirs' pools closed after."""
    theirs = RedisChannelLayer(hosts=[redis_url], **config)
    try:
        async with open_redis_layer(hosts=[redis_url], **config) as ours:
            yield ours, theirs
    finally:
        await theirs.close_pools()


async def receive(receive_call: Callable[[str], Awaitable[dict[str, Any]]], channel: str) -> Any:
    with anyio.fail_after(10):
        return await receive_call(channel)


async def timed(call: Awaitable[None]) -> tuple[float, float]:
    """Run ``call``; return the wall-clock interval it ran in."""
    before = time.time()
    await call
    return before, time.time()


def key_name(config: dict[str, Any], channel: str) -> bytes:
    return (config.get("prefix", "asgi") + non_local_name(channel)).encode()


def zrange_with_scores(server: RedisServer, key: bytes) -> list[tuple[bytes, float]]:
    assert server.execute("TYPE", key) == b"zset"
    reply = server.execute("ZRANGE", key, 0, -1, "WITHSCORES")
    assert isinstance(reply, list)
    return [(member, float(score)) for member, score in zip(reply[::2], reply[1::2], strict=True)]


def assert_expires(server: RedisServer, key: bytes, limit: int) -> None:
    ttl = server.execute("TTL", key)
    assert isinstance(ttl, int)
    assert 0 < ttl <= limit, f"{key!r} has TTL {ttl}"


def assert_plain_payload(config: dict[str, Any], member: bytes, expected: dict[str, Any]) -> None:
    """The stored member is random prefix + payload, payload as the config says."""
    body = member[RANDOM_PREFIX_LENGTH:]
    if config.get("symmetric_encryption_keys"):
        assert body.startswith(b"gAAAAA")  # a Fernet token (version byte 0x80, base64)
        assert expected["text"].encode() not in body
    elif config.get("serializer_format") == "json":
        assert json.loads(body) == expected
    else:
        assert msgpack.unpackb(body) == expected


def assert_nothing_left(server: RedisServer, config: dict[str, Any]) -> None:
    """Every message was consumed: only group keys remain under the prefix."""
    prefix = config.get("prefix", "asgi")
    keys = server.execute("KEYS", "*")
    assert isinstance(keys, list)
    leftovers = [key for key in keys if not key.startswith(f"{prefix}:group:".encode())]
    assert leftovers == []


async def assert_ours_gets_nothing_more(ours: QueueLayer, channel: str) -> None:
    with anyio.move_on_after(0.1) as scope:
        extra = await ours.receive(channel)
        pytest.fail(f"{channel} received a second message {extra!r}")
    assert scope.cancelled_caught


def assert_theirs_holds_nothing_more(theirs: RedisChannelLayer, channel: str) -> None:
    buffered = theirs.receive_buffer.get(channel)
    assert buffered is None or buffered.empty(), f"{channel} has a second message buffered"


@pytest.mark.parametrize("config", CONFIGS)
async def test_normal_channel_both_ways(
    redis_url: str, redis_server: RedisServer, config: dict[str, Any]
) -> None:
    channel = "compat-queue"
    key = key_name(config, channel)
    async with both_layers(redis_url, config) as (ours, theirs):
        # theirs sends, ours receives
        before, after = await timed(theirs.send(channel, MESSAGE))
        [(member, score)] = zrange_with_scores(redis_server, key)
        assert before <= score <= after  # the score is the send time
        assert_expires(redis_server, key, EXPIRY)
        assert_plain_payload(config, member, MESSAGE)
        assert ours.serializer.deserialize(member) == MESSAGE
        assert await receive(ours.receive, channel) == MESSAGE
        assert redis_server.execute("EXISTS", key) == 0

        # ours sends, theirs receives
        second = {**MESSAGE, "n": 2}
        before, after = await timed(ours.send(channel, second))
        [(member, score)] = zrange_with_scores(redis_server, key)
        assert before <= score <= after
        assert_expires(redis_server, key, EXPIRY)
        assert_plain_payload(config, member, second)
        assert theirs.deserialize(member) == second
        assert await receive(theirs.receive, channel) == second

        # Several in a row keep their order across the libraries.
        for number in range(5):
            sender = ours if number % 2 else theirs
            await sender.send(channel, {"type": "seq", "n": number})
        got = [await receive(ours.receive if n % 2 else theirs.receive, channel) for n in range(5)]
        assert got == [{"type": "seq", "n": n} for n in range(5)]
        await theirs.wait_received()  # channels_redis cleans its "$inflight" key in a task
        assert_nothing_left(redis_server, config)


@pytest.mark.parametrize("config", CONFIGS)
async def test_process_local_channels_both_ways(
    redis_url: str, redis_server: RedisServer, config: dict[str, Any]
) -> None:
    async with both_layers(redis_url, config) as (ours, theirs):
        # Our send() to a channel made by their new_channel().
        their_channel = await theirs.new_channel()
        key = key_name(config, their_channel)
        assert key.endswith(f"specific.{theirs.client_prefix}!".encode())
        before, after = await timed(ours.send(their_channel, MESSAGE))
        [(member, score)] = zrange_with_scores(redis_server, key)
        assert before <= score <= after
        assert_expires(redis_server, key, EXPIRY)
        stored = {**MESSAGE, "__asgi_channel__": their_channel}  # the full name rides along
        assert_plain_payload(config, member, stored)
        assert theirs.deserialize(member) == stored
        assert await receive(theirs.receive, their_channel) == MESSAGE

        # Their send() to a channel made by our new_channel().
        our_channel = await ours.new_channel()
        key = key_name(config, our_channel)
        assert key.endswith(f"specific.{ours.client_prefix}!".encode())
        second = {**MESSAGE, "n": 2}
        before, after = await timed(theirs.send(our_channel, second))
        [(member, score)] = zrange_with_scores(redis_server, key)
        assert before <= score <= after
        assert_expires(redis_server, key, EXPIRY)
        stored = {**second, "__asgi_channel__": our_channel}
        assert_plain_payload(config, member, stored)
        assert ours.serializer.deserialize(member) == stored
        assert await receive(ours.receive, our_channel) == second

        await assert_ours_gets_nothing_more(ours, our_channel)
        assert_theirs_holds_nothing_more(theirs, their_channel)
        assert_nothing_left(redis_server, config)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("direction", ["theirs-add-ours-send", "ours-add-theirs-send"])
async def test_groups_with_members_from_both_libraries(
    redis_url: str, redis_server: RedisServer, config: dict[str, Any], direction: str
) -> None:
    group = "compat-group"
    group_key = f"{config.get('prefix', 'asgi')}:group:{group}".encode()
    async with (
        both_layers(redis_url, config) as (ours, theirs),
        # Our members live in another layer of ours (another process, in
        # effect): a layer's own channels are served in memory, not via Redis.
        open_redis_layer(hosts=[redis_url], **config) as peer,
    ):
        adder: QueueLayer | RedisChannelLayer
        sender: QueueLayer | RedisChannelLayer
        adder, sender = (theirs, ours) if direction.startswith("theirs") else (ours, theirs)
        our_members = [await peer.new_channel() for _ in range(2)]
        their_members = [await theirs.new_channel() for _ in range(2)]
        added: dict[str, tuple[float, float]] = {}
        for member in [*our_members, *their_members]:
            added[member] = await timed(adder.group_add(group, member))

        # The group: a sorted set of channel names scored with the time they were added.
        members = zrange_with_scores(redis_server, group_key)
        assert {name.decode() for name, _ in members} == set(added)
        for name, score in members:
            before, after = added[name.decode()]
            assert before <= score <= after
        assert_expires(redis_server, group_key, GROUP_EXPIRY)

        before, after = await timed(sender.group_send(group, MESSAGE))
        # One copy per Redis key, naming every member channel stored in it.
        for names in (our_members, their_members):
            key = key_name(config, names[0])
            [(stored, score)] = zrange_with_scores(redis_server, key)
            assert before <= score <= after
            assert_expires(redis_server, key, EXPIRY)
            decoded = ours.serializer.deserialize(stored)
            assert decoded == theirs.deserialize(stored)
            assert sorted(decoded.pop("__asgi_channel__")) == sorted(names)
            assert decoded == MESSAGE

        # Each member receives the message exactly once.
        for member in our_members:
            assert await receive(peer.receive, member) == MESSAGE
        for member in their_members:
            assert await receive(theirs.receive, member) == MESSAGE
        for member in our_members:
            await assert_ours_gets_nothing_more(peer, member)
        for member in their_members:
            assert_theirs_holds_nothing_more(theirs, member)
        assert_nothing_left(redis_server, config)

        # The sender discards one member of each library; the others still get messages.
        await sender.group_discard(group, our_members[0])
        await sender.group_discard(group, their_members[0])
        names = {name for name, _ in zrange_with_scores(redis_server, group_key)}
        assert names == {our_members[1].encode(), their_members[1].encode()}
        second = {**MESSAGE, "n": 2}
        await adder.group_send(group, second)
        assert await receive(peer.receive, our_members[1]) == second
        assert await receive(theirs.receive, their_members[1]) == second
        await assert_ours_gets_nothing_more(peer, our_members[0])
        assert_theirs_holds_nothing_more(theirs, their_members[0])
        assert_nothing_left(redis_server, config)


async def test_key_layout_of_both_libraries_is_identical(
    redis_url: str, redis_server: RedisServer
) -> None:
    """The same operations by either library leave the same keys, types and scores."""
    async with (
        both_layers(redis_url, {}) as (ours, theirs),
        open_redis_layer(hosts=[redis_url]) as peer,  # owns our channel: see above
    ):
        our_channel = await peer.new_channel()
        their_channel = await theirs.new_channel()
        sends: list[tuple[float, float]] = []
        for layer in (ours, theirs):
            sends.append(await timed(layer.send("layout-queue", MESSAGE)))
            sends.append(await timed(layer.send(our_channel, MESSAGE)))
            sends.append(await timed(layer.send(their_channel, MESSAGE)))
            await layer.group_add("layout-group", our_channel)
            await layer.group_add("layout-group", their_channel)

        keys = redis_server.execute("KEYS", "*")
        assert isinstance(keys, list)
        assert sorted(keys) == sorted(
            [
                b"asgilayout-queue",
                f"asgispecific.{peer.client_prefix}!".encode(),
                f"asgispecific.{theirs.client_prefix}!".encode(),
                b"asgi:group:layout-group",
            ]
        )
        # Each channel key: one message from each library, in send order, scored with the
        # send time; ours first, so its score is the lower.
        for index, key in enumerate(
            [b"asgilayout-queue", key_name({}, our_channel), key_name({}, their_channel)]
        ):
            entries = zrange_with_scores(redis_server, key)
            assert len(entries) == 2
            (our_member, our_score), (their_member, their_score) = entries
            assert sends[index][0] <= our_score <= sends[index][1]
            assert sends[3 + index][0] <= their_score <= sends[3 + index][1]
            assert len(our_member) == len(their_member)  # same prefix length and payload
            assert our_member[RANDOM_PREFIX_LENGTH:] == their_member[RANDOM_PREFIX_LENGTH:]
            assert_expires(redis_server, key, EXPIRY)
        members = zrange_with_scores(redis_server, b"asgi:group:layout-group")
        assert sorted(name for name, _ in members) == sorted(
            [our_channel.encode(), their_channel.encode()]
        )
        assert_expires(redis_server, b"asgi:group:layout-group", GROUP_EXPIRY)

        # Either library reads what either wrote, oldest first.
        assert await receive(theirs.receive, "layout-queue") == MESSAGE
        assert await receive(ours.receive, "layout-queue") == MESSAGE
        assert await receive(peer.receive, our_channel) == MESSAGE
        assert await receive(peer.receive, our_channel) == MESSAGE
        assert await receive(theirs.receive, their_channel) == MESSAGE
        assert await receive(theirs.receive, their_channel) == MESSAGE
        await theirs.wait_received()
        assert_nothing_left(redis_server, {})


@pytest.mark.parametrize("length", [0, -1])
async def test_random_prefix_length_of_zero_or_less_means_no_prefix(
    redis_url: str, redis_server: RedisServer, length: int
) -> None:
    """channels_redis adds a random prefix only if ``random_prefix_length > 0``; so do we.

    Settings with ``-1`` (or 0) work with the core layer and with the Channels
    adapter, and every stored member is the bare payload, as channels_redis
    stores it.
    """
    config = {"random_prefix_length": length}
    second = {**MESSAGE, "n": 2}
    async with both_layers(redis_url, config) as (ours, theirs):
        await ours.send("bare-queue", MESSAGE)
        await theirs.send("bare-queue", second)
        members = [member for member, _ in zrange_with_scores(redis_server, b"asgibare-queue")]
        assert members == [msgpack.packb(MESSAGE), msgpack.packb(second)]
        assert await receive(theirs.receive, "bare-queue") == MESSAGE
        assert await receive(ours.receive, "bare-queue") == second
        await theirs.wait_received()
    adapter = AdapterChannelLayer(hosts=[redis_url], **config)
    try:
        assert adapter.serialize(MESSAGE) == msgpack.packb(MESSAGE)
        await adapter.send("bare-adapter", MESSAGE)
        [(member, _)] = zrange_with_scores(redis_server, b"asgibare-adapter")
        assert member == msgpack.packb(MESSAGE)
        assert await receive(adapter.receive, "bare-adapter") == MESSAGE
    finally:
        await adapter.close()
    assert_nothing_left(redis_server, config)


async def test_queue_layer_refuses_non_dict_messages_as_channels_redis_does(
    redis_url: str,
) -> None:
    """channels_redis.core asserts that a message is a dict; here it is InvalidMessage.

    ``InvalidMessage`` is a ``TypeError``, and the core layer and the adapter
    raise it for ``send()`` and ``group_send()`` alike.
    """
    async with both_layers(redis_url, {}) as (ours, theirs):
        with pytest.raises(AssertionError, match="message is not a dict"):
            await theirs.send("strict-queue", "message.1")
        with pytest.raises(InvalidMessage, match="must be a dict, not str"):
            await ours.send("strict-queue", "message.1")  # type: ignore[arg-type]
        with pytest.raises(InvalidMessage, match="must be a dict, not list"):
            await ours.group_send("strict-group", ["message.1"])  # type: ignore[arg-type]
    adapter = AdapterChannelLayer(hosts=[redis_url])
    try:
        with pytest.raises(InvalidMessage) as info:
            await adapter.send("strict-queue", "message.1")  # type: ignore[arg-type]
        assert isinstance(info.value, TypeError)
    finally:
        await adapter.close()
