"""Our pub/sub layer and channels_redis's ``RedisPubSubChannelLayer`` share one Redis.

Both directions, with every serializer configuration they have in common
(msgpack, JSON, each with and without ``symmetric_encryption_keys``):

* channels_redis's ``send()`` reaches a channel from our ``new_channel()``,
  and ours reaches one of theirs;
* a group with members on both sides gets every ``group_send()`` (from
  either side) exactly once per member, in order;
* names are the same: ``asgispecific.`` + 32 hex digits for new channels,
  ``asgi__group__<group>`` for the Redis channel of a group (seen with
  ``PUBSUB CHANNELS``).

channels_redis only runs on asyncio, so this module does too. Its layer is
flushed at the end of every test, which closes its connections (no
ResourceWarning).

Unlike ours, channels_redis's ``new_channel()`` / ``group_add()`` return
before the server has confirmed the subscription, so the tests wait for
``PUBSUB NUMSUB`` before publishing to one of its channels. Cancelling its
``receive()`` unsubscribes the channel, so its receives are never cancelled
here (a ``fail_after`` only turns a lost message into a failure).

channels_redis's pub/sub layer sends any value its serializer can encode, not
only dicts; the Channels adapter does the same, while the core layer keeps
the Channels rule (dicts only).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from anyio_layer.exceptions import InvalidMessage
from anyio_layer.pubsub import PubSubLayer, open_pubsub_layer
from anyio_layer.testing import RedisServer
from channels_compat.pubsub import RedisPubSubChannelLayer as AdapterPubSubLayer

pytestmark = pytest.mark.anyio

#: Names of the two layers' connections, so ``CLIENT LIST`` can tell them apart.
OUR_NAME = "anyio-pubsub-compat"
THEIR_NAME = "channels-redis-pubsub-compat"

NEW_CHANNEL = re.compile(r"asgispecific\.[0-9a-f]{32}")

CONFIGS: dict[str, dict[str, Any]] = {
    "msgpack": {},
    "msgpack-encrypted": {"symmetric_encryption_keys": ["compat-secret", "older-secret"]},
    "json": {"serializer_format": "json"},
    "json-encrypted": {"serializer_format": "json", "symmetric_encryption_keys": ["compat-secret"]},
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """channels_redis is asyncio-only."""
    return "asyncio"


@pytest.fixture(params=list(CONFIGS))
def options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Serializer options, given to both layers."""
    return CONFIGS[request.param]


@contextlib.asynccontextmanager
async def their_layer(redis_url: str, **options: Any) -> AsyncIterator[Any]:
    """channels_redis's pub/sub layer, flushed (connections closed) at the end."""
    their = RedisPubSubChannelLayer(
        hosts=[{"address": redis_url, "client_name": THEIR_NAME}], **options
    )
    try:
        yield their
    finally:
        await their.flush()


@contextlib.asynccontextmanager
async def both_layers(
    redis_url: str, redis_server: RedisServer, **options: Any
) -> AsyncIterator[tuple[PubSubLayer, Any]]:
    """Our layer and theirs on one server; afterwards nothing is left on the server."""
    async with (
        their_layer(redis_url, **options) as their,
        open_pubsub_layer(hosts=[f"{redis_url}?client_name={OUR_NAME}"], **options) as ours,
    ):
        yield ours, their
        assert ours.statistics().decode_errors == 0
    await assert_server_clean(redis_server)


async def server_channels(server: RedisServer) -> set[str]:
    reply = await server.aexecute("PUBSUB", "CHANNELS", "*", decode=True)
    assert isinstance(reply, list)
    return set(reply)


async def numsub(server: RedisServer, name: str) -> int:
    reply = await server.aexecute("PUBSUB", "NUMSUB", name)
    assert isinstance(reply, list)
    count = reply[1]
    assert isinstance(count, int)
    return count


async def wait_numsub(server: RedisServer, name: str, count: int) -> None:
    """Wait until ``name`` has ``count`` subscribers (channels_redis does not wait for it)."""
    with anyio.fail_after(5):
        while await numsub(server, name) != count:
            await anyio.sleep(0.005)


async def clients(server: RedisServer, name: str) -> list[str]:
    reply = await server.aexecute("CLIENT", "LIST", decode=True)
    assert isinstance(reply, str)
    return [line for line in reply.splitlines() if f" name={name} " in f" {line} "]


async def assert_server_clean(server: RedisServer) -> None:
    """No subscription and no connection of either layer remains."""

    async def leftovers() -> tuple[set[str], list[str]]:
        return await server_channels(server), [
            *await clients(server, OUR_NAME),
            *await clients(server, THEIR_NAME),
        ]

    with anyio.move_on_after(5):
        while any(await leftovers()):
            await anyio.sleep(0.01)
    assert await leftovers() == (set(), [])


async def their_receive(their: Any, channel: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        message: dict[str, Any] = await their.receive(channel)
    return message


async def our_receive(ours: PubSubLayer, channel: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        return await ours.receive(channel)


async def assert_nothing_more(ours: PubSubLayer, channel: str) -> None:
    with anyio.move_on_after(0.05) as scope:
        extra = await ours.receive(channel)
        pytest.fail(f"{channel} received an extra message {extra!r}")
    assert scope.cancelled_caught


def sample(number: int, options: dict[str, Any], sender: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "compat.message",
        "n": number,
        "sender": sender,
        "text": "héllo ✓",
        "nested": {"list": [1, 2.5, None, True], "empty": {}},
    }
    if options.get("serializer_format", "msgpack") == "msgpack":
        message["bytes"] = bytes(range(256))
    return message


async def test_messages_flow_both_ways(
    redis_url: str, redis_server: RedisServer, options: dict[str, Any]
) -> None:
    count = 25
    async with both_layers(redis_url, redis_server, **options) as (ours, their):
        our_channel = await ours.new_channel()
        their_channel = await their.new_channel()
        await wait_numsub(redis_server, their_channel, 1)

        # Theirs to ours.
        for number in range(count):
            await their.send(our_channel, sample(number, options, "theirs"))
        for number in range(count):
            assert await our_receive(ours, our_channel) == sample(number, options, "theirs")
        await assert_nothing_more(ours, our_channel)

        # Ours to theirs.
        for number in range(count):
            await ours.send(their_channel, sample(number, options, "ours"))
        for number in range(count):
            assert await their_receive(their, their_channel) == sample(number, options, "ours")

        statistics = ours.statistics()
        assert statistics.messages_sent == count
        assert statistics.messages_received == count
        assert statistics.unroutable == 0


async def test_group_send_from_either_side_reaches_every_member_once(
    redis_url: str, redis_server: RedisServer, options: dict[str, Any]
) -> None:
    group = "compat-room"
    group_channel = f"asgi__group__{group}"
    rounds = 10
    async with both_layers(redis_url, redis_server, **options) as (ours, their):
        our_members = [await ours.new_channel() for _ in range(2)]
        their_members = [await their.new_channel() for _ in range(2)]
        for member in our_members:
            await ours.group_add(group, member)
        # Ours confirms the subscription before group_add() returns.
        assert await numsub(redis_server, group_channel) == 1
        for member in their_members:
            await their.group_add(group, member)
            await wait_numsub(redis_server, member, 1)
        # One subscription to the group's Redis channel per layer, whatever its member count.
        await wait_numsub(redis_server, group_channel, 2)

        # Alternating, each publish completed before the next: one global order.
        expected = []
        for number in range(rounds):
            for sender, layer in (("ours", ours), ("theirs", their)):
                message = sample(number, options, sender)
                await layer.group_send(group, message)
                expected.append(message)

        # A direct message after the group messages: it comes next, so nothing was doubled.
        barrier = {"type": "barrier"}
        for member in our_members:
            await their.send(member, barrier)
        for member in their_members:
            await ours.send(member, barrier)

        for member in our_members:
            got = [await our_receive(ours, member) for _ in range(len(expected) + 1)]
            assert got == [*expected, barrier], member
            await assert_nothing_more(ours, member)
        for member in their_members:
            got = [await their_receive(their, member) for _ in range(len(expected) + 1)]
            assert got == [*expected, barrier], member

        statistics = ours.statistics()
        assert statistics.group_sends == rounds
        assert statistics.messages_received == len(our_members) * (len(expected) + 1)
        assert statistics.unroutable == 0

        # Our members leave: our subscription to the group goes, theirs stays and still works.
        for member in our_members:
            await ours.group_discard(group, member)
        await wait_numsub(redis_server, group_channel, 1)
        last = {"type": "after.discard"}
        await ours.group_send(group, last)
        for member in their_members:
            assert await their_receive(their, member) == last
        for member in our_members:
            await assert_nothing_more(ours, member)


async def test_channel_and_group_names_match_channels_redis(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with both_layers(redis_url, redis_server) as (ours, their):
        our_channel = await ours.new_channel()
        their_channel = await their.new_channel()
        assert NEW_CHANNEL.fullmatch(our_channel), our_channel
        assert NEW_CHANNEL.fullmatch(their_channel), their_channel
        # With a new_channel() prefix of their own choosing.
        our_custom = await ours.new_channel("custom.")
        their_custom = await their.new_channel("custom.")
        for name in (our_custom, their_custom):
            assert re.fullmatch(r"asgicustom\.[0-9a-f]{32}", name), name

        await ours.group_add("names", our_channel)
        await their.group_add("names", their_channel)
        await wait_numsub(redis_server, their_custom, 1)
        await wait_numsub(redis_server, "asgi__group__names", 2)
        assert await server_channels(redis_server) == {
            our_channel,
            their_channel,
            our_custom,
            their_custom,
            "asgi__group__names",
        }
        # A send to a name from the other layer's new_channel() is a PUBLISH to that very name.
        await ours.send(their_custom, {"type": "to.custom"})
        await their.send(our_custom, {"type": "to.custom"})
        assert await their_receive(their, their_custom) == {"type": "to.custom"}
        assert await our_receive(ours, our_custom) == {"type": "to.custom"}


async def test_layer_prefix_matches_channels_redis(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with (
        their_layer(redis_url, prefix="myapp") as their,
        open_pubsub_layer(hosts=[f"{redis_url}?client_name={OUR_NAME}"], prefix="myapp") as ours,
    ):
        our_channel = await ours.new_channel()
        their_channel = await their.new_channel()
        for name in (our_channel, their_channel):
            assert re.fullmatch(r"myappspecific\.[0-9a-f]{32}", name), name
        await ours.group_add("room", our_channel)
        await their.group_add("room", their_channel)
        await wait_numsub(redis_server, their_channel, 1)
        await wait_numsub(redis_server, "myapp__group__room", 2)
        assert await server_channels(redis_server) == {
            our_channel,
            their_channel,
            "myapp__group__room",
        }
        await their.group_send("room", {"type": "prefixed"})
        assert await our_receive(ours, our_channel) == {"type": "prefixed"}
        assert await their_receive(their, their_channel) == {"type": "prefixed"}
    await assert_server_clean(redis_server)


@pytest.mark.parametrize("config", ["msgpack", "json"])
async def test_published_bytes_are_identical(redis_url: str, config: str) -> None:
    """Unencrypted, both layers put the very same bytes on the wire."""
    options = CONFIGS[config]
    message = sample(7, options, "either")
    async with (
        their_layer(redis_url, **options) as their,
        open_pubsub_layer(hosts=[f"{redis_url}?client_name={OUR_NAME}"], **options) as ours,
    ):
        assert ours.serializer.serialize(message) == their.serialize(message)
        assert their.deserialize(ours.serializer.serialize(message)) == message


async def test_encryption_is_applied_and_keys_rotate(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Encrypted messages need the key; a layer with new and old keys reads the old one's."""
    message = {"type": "secret", "text": "hush"}
    async with (
        their_layer(redis_url, symmetric_encryption_keys=["old-secret"]) as their,
        open_pubsub_layer(hosts=[f"{redis_url}?client_name={OUR_NAME}"]) as plain,
        open_pubsub_layer(
            hosts=[f"{redis_url}?client_name={OUR_NAME}"],
            symmetric_encryption_keys=["new-secret", "old-secret"],
        ) as rotated,
    ):
        plain_channel = await plain.new_channel()
        rotated_channel = await rotated.new_channel()
        # Without the key, the message cannot be read: counted, dropped, nothing delivered.
        await their.send(plain_channel, message)
        with anyio.fail_after(5):
            while plain.statistics().decode_errors == 0:
                await anyio.sleep(0.005)
        await assert_nothing_more(plain, plain_channel)
        # With the old key among its keys, it can.
        await their.send(rotated_channel, message)
        assert await our_receive(rotated, rotated_channel) == message
        assert rotated.statistics().decode_errors == 0
    await assert_server_clean(redis_server)


#: Messages channels_redis's pub/sub layer sends besides dicts (its own tests send "message.1").
NON_DICTS: list[Any] = ["message.1", ["a", 1, 2.5, None], 42, None]


async def test_adapter_sends_and_receives_non_dict_messages_like_channels_redis(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Any msgpack-encodable value goes both ways, to channels and to groups."""
    adapter = AdapterPubSubLayer(hosts=[f"{redis_url}?client_name={OUR_NAME}"])
    try:
        async with their_layer(redis_url) as their:
            our_channel = await adapter.new_channel()
            our_other = await adapter.new_channel()
            their_channel = await their.new_channel()
            await wait_numsub(redis_server, their_channel, 1)
            for channel in (our_channel, our_other):
                await adapter.group_add("mixed", channel)
            await their.group_add("mixed", their_channel)
            await wait_numsub(redis_server, "asgi__group__mixed", 2)
            for value in NON_DICTS:
                await their.send(our_channel, value)
                with anyio.fail_after(5):
                    assert await adapter.receive(our_channel) == value
                await adapter.send(their_channel, value)
                assert await their_receive(their, their_channel) == value
                await adapter.group_send("mixed", value)
                with anyio.fail_after(5):
                    first = await adapter.receive(our_channel)
                    second = await adapter.receive(our_other)
                assert first == second == value
                if isinstance(value, list):
                    assert first is not second  # each member gets its own copy
                assert await their_receive(their, their_channel) == value
            # What the serializer cannot encode is refused, with a TypeError on both sides.
            with pytest.raises(InvalidMessage) as info:
                await adapter.send(their_channel, object())  # type: ignore[arg-type]
            assert isinstance(info.value, TypeError)
            with pytest.raises(TypeError):
                await their.send(our_channel, object())
            statistics = adapter.statistics()
            assert statistics is not None
            assert statistics.decode_errors == 0
    finally:
        await adapter.close()
    await assert_server_clean(redis_server)


async def test_core_layer_accepts_only_dicts(redis_url: str, redis_server: RedisServer) -> None:
    """``open_pubsub_layer`` keeps the Channels rule: a non-dict is refused or dropped."""
    async with (
        their_layer(redis_url) as their,
        open_pubsub_layer(hosts=[f"{redis_url}?client_name={OUR_NAME}"]) as ours,
    ):
        channel = await ours.new_channel()
        await ours.group_add("strict", channel)
        with pytest.raises(InvalidMessage, match="must be a dict, not str"):
            await ours.send(channel, "message.1")  # type: ignore[arg-type]
        with pytest.raises(InvalidMessage, match="must be a dict, not list"):
            await ours.group_send("strict", ["message.1"])  # type: ignore[arg-type]
        # Published by channels_redis: dropped and counted; the next dict arrives.
        await their.send(channel, "message.1")
        await their.send(channel, {"type": "after"})
        assert await our_receive(ours, channel) == {"type": "after"}
        assert ours.statistics().decode_errors == 1
    await assert_server_clean(redis_server)
