"""Both layers against hostile data in Redis: nothing a foreign client writes may wedge a channel.

Another client (a buggy one, one with another serializer or other keys, or
an attacker with access to Redis) can put anything where the layers read:
garbage bytes, JSON or a pickle where msgpack is expected, a message
encrypted with a key we do not have, a non-dict value, a dict naming no
channel or unhashable channels, garbage member names in a group's set, a
key of the wrong type, and for pub/sub any bytes PUBLISHed to a channel.

The contract (see ``docs/robustness.md``): such a message is skipped,
logged and counted in ``statistics().decode_errors``; the reader task keeps
running, ``receive()`` keeps waiting, and the next good message arrives.
Tested for process-local and normal channels of the queue layer, for pub/sub
channels and groups, under asyncio and trio, against a real redis-server.

Last, what no real server sends (RESP garbage or non-numeric scores in pop
replies, a channel name that is not UTF-8 on a subscriber connection), from a
small fake server: the connection is dropped or the reply refused as a
``ProtocolError``, receivers wait, and the layer goes on.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import msgpack  # type: ignore[import-untyped]
import pytest

from anyio_layer import (
    PubSubLayer,
    QueueLayer,
    open_pubsub_layer,
    open_redis_layer,
)
from anyio_layer.messages import non_local_name
from anyio_layer.queue.codec import RESERVED_KEY
from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio

OTHER_KEYS = ["a-key-this-layer-does-not-know-0123456789"]
GOOD = {"type": "test.good", "text": "still here"}
#: channels_redis's random prefix: 12 bytes the serializer strips unread.
PREFIX_LENGTH = 12


def prefixed(body: bytes) -> bytes:
    return os.urandom(PREFIX_LENGTH) + body


#: Payloads no layer with the default (msgpack) serializer can decode, by name.
UNDECODABLE: dict[str, bytes] = {
    "garbage": b"\xc1\xff\x00 not a message \xde\xad\xbe\xef",
    "empty": b"",
    "truncated": prefixed(msgpack.packb({"type": "test.cut", "text": "x" * 100})[:20]),
    "json": prefixed(json.dumps({"type": "test.json"}).encode()),
    "pickle": prefixed(pickle.dumps({"type": "test.pickle"})),
    "msgpack-list": prefixed(msgpack.packb(["test.list", 1, 2.5])),
    "msgpack-string": prefixed(msgpack.packb("message.1")),
    "msgpack-int-keys": prefixed(msgpack.packb({1: "x"})),
}

#: Decodable dicts that name no usable process-local channel (for a local channel's key).
UNROUTABLE: dict[str, Any] = {
    "no-channel": {"type": "test.x"},
    "channel-is-int": {"type": "test.x", RESERVED_KEY: 42},
    "channel-is-dict": {"type": "test.x", RESERVED_KEY: {"a": 1}},
    "channels-unhashable": {"type": "test.x", RESERVED_KEY: [["a"], {"b": 1}]},
    "channels-not-str": {"type": "test.x", RESERVED_KEY: [1, None, 2.5]},
    "channels-empty": {"type": "test.x", RESERVED_KEY: []},
}


async def zadd(server: RedisServer, key: str | bytes, member: bytes) -> None:
    """Write a member straight into a sorted set, scored now (as a send does)."""
    assert await server.aexecute("ZADD", key, repr(time.time()), member) == 1


async def receive_good(layer: QueueLayer | PubSubLayer, channel: str) -> None:
    with anyio.fail_after(10):
        assert await layer.receive(channel) == GOOD


async def assert_nothing_more(layer: QueueLayer | PubSubLayer, channel: str) -> None:
    with anyio.move_on_after(0.3) as nothing:
        message = await layer.receive(channel)
        pytest.fail(f"unexpected message {message!r}")
    assert nothing.cancelled_caught


@pytest.fixture
async def queue_layers(redis_url: str) -> AsyncIterator[tuple[QueueLayer, QueueLayer]]:
    """A receiving layer and a second one that sends it good messages through Redis."""
    async with (
        open_redis_layer(hosts=[redis_url]) as receiver,
        open_redis_layer(hosts=[redis_url]) as sender,
    ):
        yield receiver, sender


async def poison_then_good(
    server: RedisServer,
    receiver: QueueLayer,
    sender: QueueLayer,
    channel: str,
    poison: bytes,
) -> None:
    """With a receiver waiting: the poison, then a good message, which must arrive."""
    key = receiver.prefix + non_local_name(channel)
    result: list[dict[str, Any]] = []

    async def receive() -> None:
        with anyio.fail_after(10):
            result.append(await receiver.receive(channel))

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(receive)
        await anyio.sleep(0.1)  # the receiver (or its reader) is blocked on the key
        await zadd(server, key, poison)
        await anyio.sleep(0.1)  # the poison is popped on its own
        await sender.send(channel, GOOD)
    assert result == [GOOD]
    # And the channel keeps working.
    await sender.send(channel, GOOD)
    await receive_good(receiver, channel)
    assert await server.aexecute("ZCARD", key) == 0


@pytest.mark.parametrize("kind", ["local", "normal"])
@pytest.mark.parametrize("name", UNDECODABLE)
async def test_queue_skips_undecodable_messages(
    redis_server: RedisServer,
    queue_layers: tuple[QueueLayer, QueueLayer],
    name: str,
    kind: str,
) -> None:
    receiver, sender = queue_layers
    channel = await receiver.new_channel() if kind == "local" else "worker"
    await poison_then_good(redis_server, receiver, sender, channel, UNDECODABLE[name])
    stats = receiver.statistics()
    assert stats.decode_errors == 1
    assert stats.messages_received == 2


@pytest.mark.parametrize("kind", ["local", "normal"])
async def test_queue_skips_messages_encrypted_with_another_key(
    redis_server: RedisServer,
    queue_layers: tuple[QueueLayer, QueueLayer],
    redis_url: str,
    kind: str,
) -> None:
    receiver, sender = queue_layers
    channel = await receiver.new_channel() if kind == "local" else "worker"
    async with open_redis_layer(hosts=[redis_url], symmetric_encryption_keys=OTHER_KEYS) as other:
        message = {"type": "test.secret", RESERVED_KEY: channel} if kind == "local" else GOOD
        poison = other.serializer.serialize(message)
    await poison_then_good(redis_server, receiver, sender, channel, poison)
    assert receiver.statistics().decode_errors == 1


@pytest.mark.parametrize("kind", ["local", "normal"])
@pytest.mark.parametrize("writer_keys", [OTHER_KEYS, None], ids=["other-key", "clear-text"])
async def test_encrypted_queue_layer_skips_messages_it_cannot_decrypt(
    redis_server: RedisServer, redis_url: str, writer_keys: list[str] | None, kind: str
) -> None:
    """A layer with keys drops what another key encrypted, and what came in clear text."""
    keys = ["the-key-of-this-deployment-0123456789abcdef"]
    async with (
        open_redis_layer(hosts=[redis_url], symmetric_encryption_keys=keys) as receiver,
        open_redis_layer(hosts=[redis_url], symmetric_encryption_keys=keys) as sender,
        open_redis_layer(hosts=[redis_url], symmetric_encryption_keys=writer_keys) as other,
    ):
        channel = await receiver.new_channel() if kind == "local" else "worker"
        message = {"type": "test.secret", RESERVED_KEY: channel} if kind == "local" else GOOD
        poison = other.serializer.serialize(message)
        await poison_then_good(redis_server, receiver, sender, channel, poison)
        assert receiver.statistics().decode_errors == 1


@pytest.mark.parametrize("name", UNROUTABLE)
async def test_queue_skips_local_messages_naming_no_channel(
    redis_server: RedisServer, queue_layers: tuple[QueueLayer, QueueLayer], name: str
) -> None:
    receiver, sender = queue_layers
    channel = await receiver.new_channel()
    poison = receiver.serializer.serialize(UNROUTABLE[name])
    await poison_then_good(redis_server, receiver, sender, channel, poison)
    stats = receiver.statistics()
    assert stats.decode_errors == 1
    assert stats.local_channels <= 1  # no buffer was made for the garbage names


async def test_queue_local_message_for_another_channel_of_ours_does_not_block(
    redis_server: RedisServer, queue_layers: tuple[QueueLayer, QueueLayer]
) -> None:
    """A message in our key for a channel of ours nobody receives on waits in its own buffer."""
    receiver, sender = queue_layers
    channel = await receiver.new_channel()
    stranger = non_local_name(channel) + "not-ours"
    poison = receiver.serializer.serialize({"type": "test.x", RESERVED_KEY: stranger})
    await poison_then_good(redis_server, receiver, sender, channel, poison)
    assert receiver.statistics().decode_errors == 0


async def test_queue_group_with_garbage_members(
    redis_server: RedisServer, queue_layers: tuple[QueueLayer, QueueLayer]
) -> None:
    """Members that are no channel name are skipped (and counted); real members get the message."""
    receiver, sender = queue_layers
    local = await receiver.new_channel()
    await receiver.group_add("room", local)
    await receiver.group_add("room", "worker")
    group_key = receiver._keys.group_key("room")
    garbage = [b"\xff\xfe not utf-8", b"has spaces", b"a!b!c", b"x" * 200, b""]
    for member in garbage:
        await zadd(redis_server, group_key, member)
    keys_before = set(await redis_server.aexecute("KEYS", "*"))
    for sender_layer in (sender, receiver):  # through Redis, and to its own channel in memory
        await sender_layer.group_send("room", GOOD)
        await receive_good(receiver, local)
        await receive_good(receiver, "worker")
        assert sender_layer.statistics().decode_errors == len(garbage)
    # No key was made for the garbage names.
    assert set(await redis_server.aexecute("KEYS", "*")) <= keys_before
    await assert_nothing_more(receiver, local)


@pytest.mark.parametrize("kind", ["local", "normal"])
async def test_queue_channel_key_of_the_wrong_type(
    redis_server: RedisServer, queue_layers: tuple[QueueLayer, QueueLayer], kind: str
) -> None:
    """A channel key that is not a sorted set fails the sends; receivers wait it out."""
    receiver, sender = queue_layers
    channel = await receiver.new_channel() if kind == "local" else "worker"
    key = receiver.prefix + non_local_name(channel)
    assert await redis_server.aexecute("SET", key, "not a sorted set") == b"OK"
    result: list[dict[str, Any]] = []

    async def receive() -> None:
        with anyio.fail_after(10):
            result.append(await receiver.receive(channel))

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(receive)
        await anyio.sleep(0.3)  # the reader (or receiver) meets WRONGTYPE meanwhile
        assert await redis_server.aexecute("DEL", key) == 1
        await sender.send(channel, GOOD)
    assert result == [GOOD]


# -- pub/sub ------------------------------------------------------------------------


@pytest.fixture
async def pubsub_layers(redis_url: str) -> AsyncIterator[tuple[PubSubLayer, PubSubLayer]]:
    async with (
        open_pubsub_layer(hosts=[redis_url]) as receiver,
        open_pubsub_layer(hosts=[redis_url]) as sender,
    ):
        yield receiver, sender


#: What may be PUBLISHed to a pub/sub layer's channel (no random prefix there).
PUBSUB_UNDECODABLE: dict[str, bytes] = {
    "garbage": UNDECODABLE["garbage"],
    "empty": b"",
    "json": json.dumps({"type": "test.json"}).encode(),
    "pickle": pickle.dumps({"type": "test.pickle"}),
    "msgpack-list": msgpack.packb(["test.list", 1]),
    "msgpack-string": msgpack.packb("message.1"),
    "msgpack-int-keys": msgpack.packb({1: "x"}),
}


@pytest.mark.parametrize("via", ["channel", "group"])
@pytest.mark.parametrize("name", [*PUBSUB_UNDECODABLE, "other-key"])
async def test_pubsub_skips_undecodable_messages(
    redis_server: RedisServer,
    pubsub_layers: tuple[PubSubLayer, PubSubLayer],
    redis_url: str,
    name: str,
    via: str,
) -> None:
    receiver, sender = pubsub_layers
    channel = await receiver.new_channel()
    if name == "other-key":
        async with open_pubsub_layer(hosts=[redis_url], symmetric_encryption_keys=OTHER_KEYS) as o:
            poison = o._encode({"type": "test.secret"})
    else:
        poison = PUBSUB_UNDECODABLE[name]
    if via == "group":
        await receiver.group_add("room", channel)
        redis_channel = receiver._group_channel("room")
    else:
        redis_channel = channel
    result: list[dict[str, Any]] = []

    async def receive() -> None:
        with anyio.fail_after(10):
            result.append(await receiver.receive(channel))

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(receive)
        assert await redis_server.aexecute("PUBLISH", redis_channel, poison) == 1
        if via == "group":
            await sender.group_send("room", GOOD)
        else:
            await sender.send(channel, GOOD)
    assert result == [GOOD]
    await sender.send(channel, GOOD)
    await receive_good(receiver, channel)
    stats = receiver.statistics()
    assert stats.decode_errors == 1
    assert stats.disconnects == 0


@pytest.mark.parametrize("writer_keys", [OTHER_KEYS, None], ids=["other-key", "clear-text"])
async def test_encrypted_pubsub_layer_skips_messages_it_cannot_decrypt(
    redis_server: RedisServer, redis_url: str, writer_keys: list[str] | None
) -> None:
    keys = ["the-key-of-this-deployment-0123456789abcdef"]
    async with (
        open_pubsub_layer(hosts=[redis_url], symmetric_encryption_keys=keys) as receiver,
        open_pubsub_layer(hosts=[redis_url], symmetric_encryption_keys=keys) as sender,
        open_pubsub_layer(hosts=[redis_url], symmetric_encryption_keys=writer_keys) as other,
    ):
        channel = await receiver.new_channel()
        await other.send(channel, {"type": "test.secret"})
        await sender.send(channel, GOOD)
        await receive_good(receiver, channel)
        await assert_nothing_more(receiver, channel)
        assert receiver.statistics().decode_errors == 1


# -- a hostile server ---------------------------------------------------------------------


#: A message push for a channel name that is not UTF-8. No real Redis sends this to a
#: client that never subscribed such a name (nor the replies below): these cases need a
#: fake server.
NON_UTF8_PUSH = b"*3\r\n$7\r\nmessage\r\n$2\r\n\xff\xfe\r\n$1\r\nx\r\n"


async def test_pubsub_survives_a_server_sending_non_utf8_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The subscriber drops such a connection (ProtocolError) and retries; the layer lives."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive()
                await stream.send(b":7\r\n")  # the handshake's CLIENT ID
                while True:
                    await stream.receive()
                    await stream.send(NON_UTF8_PUSH)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as server:
            server.start_soon(listener.serve, serve)
            async with open_pubsub_layer(hosts=[f"redis://127.0.0.1:{port}"]) as layer:
                with anyio.move_on_after(0.5) as waiting:
                    await layer.new_channel()  # never confirmed by this server
                assert waiting.cancelled_caught
            server.cancel_scope.cancel()
    assert any("not UTF-8" in record.getMessage() for record in caplog.records)


#: Replies to the pops (after the handshake) that no real Redis sends, by kind of channel:
#: process-local channels are read with BZMPOP, normal ones with BZPOPMIN.
HOSTILE_POP_REPLIES: dict[str, dict[str, bytes]] = {
    "not-resp": {"local": b"?garbage\r\n", "normal": b"?garbage\r\n"},
    "score-not-a-number": {
        "local": b"*2\r\n$1\r\nk\r\n*1\r\n*2\r\n$1\r\nm\r\n$3\r\nabc\r\n",
        "normal": b"*3\r\n$1\r\nk\r\n$1\r\nm\r\n$3\r\nabc\r\n",
    },
}


@pytest.mark.parametrize("kind", ["local", "normal"])
@pytest.mark.parametrize("reply", HOSTILE_POP_REPLIES)
async def test_queue_receivers_survive_a_server_sending_garbage_to_pops(
    caplog: pytest.LogCaptureFixture, reply: str, kind: str
) -> None:
    """Receivers wait out a server that answers pops with garbage; the layer lives."""
    answer = HOSTILE_POP_REPLIES[reply][kind]

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive()
                await stream.send(b":7\r\n")  # the handshake's CLIENT ID
                while True:
                    await stream.receive()
                    await stream.send(answer)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as server:
            server.start_soon(listener.serve, serve)
            async with open_redis_layer(hosts=[f"redis://127.0.0.1:{port}"]) as layer:
                channel = await layer.new_channel() if kind == "local" else "worker"
                with anyio.move_on_after(0.5) as waiting:
                    await layer.receive(channel)
                assert waiting.cancelled_caught
            server.cancel_scope.cancel()
    assert any("waiting for Redis" in record.getMessage() for record in caplog.records)
