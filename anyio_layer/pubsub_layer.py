"""The PUBLISH/SUBSCRIBE layer: channels_redis's ``RedisPubSubChannelLayer``, structured.

Open it with :func:`open_pubsub_layer`::

    async with open_pubsub_layer(hosts=["redis://localhost:6379"],
                                 on_disconnect="redis.disconnect") as layer:
        async with layer.open_channel("room") as channel:
            await layer.group_send("room", {"type": "chat.message", "text": "hi"})
            message = await channel.receive()

Naming and encoding are channels_redis's, so both can share one Redis: a new
channel is ``prefix + "specific." + 32 hex digits``, a group is the Redis
channel ``prefix + "__group__" + group``, and messages are published as the
serializer's bytes (no random prefix).

How messages move:

* :meth:`PubSubLayer.send` is one ``PUBLISH`` on the shard the channel name
  hashes to; :meth:`~PubSubLayer.group_send` is one ``PUBLISH`` to the group's
  Redis channel. Group membership lives in this process: the group channel is
  subscribed while at least one local channel is a member.
* Each shard has one subscriber connection, read by a task in the layer's
  task group that blocks on the socket (no polling) and files each message
  into the bounded local buffer of every local channel it is for.
* Subscribing is confirmed by the server before ``new_channel()``,
  ``group_add()`` or a first ``receive()`` return, so a message published
  right afterwards is not missed.

Delivery is pub/sub's: a message published while nobody is subscribed, or
while a subscriber connection is down, is gone. That is why the layer tells
consumers about gaps: when a shard's subscriber connection drops, every local
channel that listens on that shard (itself or through a group) gets one
``{"type": on_disconnect}`` message; after the connection is back and every
channel and group is subscribed again, each gets one
``{"type": on_reconnect}``. Between the two, the shard reconnects with
back-off.

Cancelling :meth:`~PubSubLayer.receive` loses nothing that was buffered.
Channels stay subscribed until :meth:`~PubSubLayer.close_channel` (or the end
of an :meth:`~PubSubLayer.open_channel` block); the Channels adapter decides
when to close channels, since Channels has no delete-channel call.

Local buffers hold at most ``capacity`` messages per channel; when a consumer
falls that far behind, its oldest message is dropped, logged and counted in
:attr:`PubSubStatistics.local_buffer_overflows`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc

from ._config import positive_number, require_prefix
from ._connection import Connection
from ._hosts import ClusterConfig, parse_hosts
from ._local import LayerChannel, LocalBuffer, ScopedChannels
from ._pool import MAX_BACKOFF, ConnectionPool, open_pool
from ._resp import encode_command
from ._routing import consistent_hash
from ._tasks import open_service_task_group
from .exceptions import (
    ConfigurationError,
    InvalidChannelName,
    InvalidMessage,
    LayerClosedError,
    MessageDecodeError,
    MessageTooLarge,
    ProtocolError,
    RedisConnectionError,
    RedisTimeoutError,
)
from .names import validate_channel_name, validate_group_name
from .serializers import MessageSerializer, registry

__all__ = ["LayerChannel", "PubSubLayer", "PubSubStatistics", "open_pubsub_layer"]

logger = logging.getLogger("anyio_layer")

#: Seconds of silence on a subscriber connection before it is checked with PING.
HEALTH_CHECK_INTERVAL: Final = 15.0
#: How long ``new_channel()`` / ``group_add()`` wait for the server to confirm a subscription.
SUBSCRIBE_TIMEOUT: Final = 10.0
DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
_MIN_RETRY_DELAY: Final = 0.05


@dataclass(frozen=True, slots=True)
class PubSubStatistics:
    """A snapshot of a pub/sub layer's counters since it was opened."""

    #: Messages published by ``send()`` and ``group_send()``.
    messages_sent: int
    group_sends: int
    #: Messages handed to callers of ``receive()``.
    messages_received: int
    #: Messages that arrived for a channel or group this process no longer has.
    unroutable: int
    #: Oldest messages dropped because a consumer's buffer was full.
    local_buffer_overflows: int
    #: Messages that could not be decrypted or deserialized.
    decode_errors: int
    #: Subscriber connections lost, and re-established with every subscription restored.
    disconnects: int
    reconnects: int
    #: Redis channels (local channels and groups) currently subscribed.
    subscriptions: int


class _Counters:
    def __init__(self) -> None:
        self.sent = 0
        self.group_sends = 0
        self.received = 0
        self.unroutable = 0
        self.overflows = 0
        self.decode_errors = 0
        self.disconnects = 0
        self.reconnects = 0


class _Shard:
    """One server's subscriber connection and the subscriptions it should carry.

    ``wanted`` is the desired state; the reader task makes the connection
    converge to it after every (re)connect. A name is *confirmed* when the
    server acknowledged its last SUBSCRIBE and no command for it is in flight.
    """

    def __init__(self, layer: PubSubLayer, pool: ConnectionPool) -> None:
        self.layer = layer
        self.pool = pool
        self.wanted: set[str] = set()
        self.confirmed: set[str] = set()
        self._in_flight: dict[str, int] = {}
        self._changed = anyio.Event()
        self._connection: Connection | None = None
        self._write_lock = anyio.Lock()
        self._started = False
        self._lost = False  # a disconnect was announced, the reconnect not yet
        self._awaiting_ping = False

    # -- called by the layer ------------------------------------------------------

    async def subscribe(self, name: str) -> None:
        """Subscribe ``name`` and wait until the server confirms it."""
        self.wanted.add(name)
        if name in self.confirmed and name not in self._in_flight:
            return
        self._ensure_started()
        if self._connection is not None:
            with contextlib.suppress(RedisConnectionError):  # then the reconnect subscribes it
                await self._write("SUBSCRIBE", name)
        try:
            with anyio.fail_after(SUBSCRIBE_TIMEOUT):
                while not (name in self.confirmed and name not in self._in_flight):
                    await self._changed.wait()
        except TimeoutError:
            raise RedisTimeoutError(
                f"Redis at {self.pool.config} did not confirm the subscription to {name!r} "
                f"within {SUBSCRIBE_TIMEOUT} seconds; it stays wanted and is retried on reconnect"
            ) from None

    async def unsubscribe(self, name: str) -> None:
        self.wanted.discard(name)
        self.confirmed.discard(name)
        if self._connection is not None:
            try:
                await self._write("UNSUBSCRIBE", name)
            except RedisConnectionError:
                pass  # the reconnect resubscribes only what is wanted

    # -- the reader task ------------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self._started:
            self._started = True
            self.layer._task_group.start_soon(
                self._run, name=f"anyio_layer subscriber {self.pool.config}"
            )

    async def _run(self) -> None:
        delay = 0.0
        while True:
            connected = False
            try:
                async with self.pool.connection() as connection:
                    connection.broken = True  # in subscribe mode: never back to the pool
                    connected = True
                    await self._serve(connection)
            except (RedisConnectionError, ProtocolError) as exc:
                logger.warning("subscriber for %s lost: %s", self.pool.config, exc)
            finally:
                self._connection = None
                self.confirmed.clear()
                self._in_flight.clear()
                self._notify()
            if not self._lost and self.wanted:
                self._lost = True
                self.layer._connection_lost(self)
            delay = _MIN_RETRY_DELAY if connected else min(delay * 2, MAX_BACKOFF)
            await anyio.sleep(delay)

    async def _serve(self, connection: Connection) -> None:
        self._connection = connection
        self._awaiting_ping = False
        names = sorted(self.wanted)
        if names:
            await self._write("SUBSCRIBE", *names)
        elif self._lost:
            self._restored()
        while True:
            # One scope per silent period, its deadline pushed back as data
            # arrives: cheaper than a new timeout around every read.
            with anyio.CancelScope(deadline=anyio.current_time() + HEALTH_CHECK_INTERVAL) as scope:
                while True:
                    data = await connection.receive_raw()
                    scope.deadline = anyio.current_time() + HEALTH_CHECK_INTERVAL
                    self._awaiting_ping = False
                    for reply in connection.feed_and_drain(data):
                        self._handle(reply)
            if self._awaiting_ping:
                raise RedisConnectionError(
                    f"subscriber connection to {self.pool.config} stopped answering"
                )
            self._awaiting_ping = True
            await self._write("PING")

    def _handle(self, reply: object) -> None:
        if not (isinstance(reply, list) and len(reply) >= 2 and isinstance(reply[0], bytes)):
            raise ProtocolError(f"unexpected reply on a subscriber connection: {reply!r:.100}")
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            channel, data = reply[1], reply[2]
            if isinstance(channel, bytes) and isinstance(data, bytes):
                self.layer._dispatch(channel.decode(), data)
            return
        if kind in (b"subscribe", b"unsubscribe") and isinstance(reply[1], bytes):
            name = reply[1].decode()
            remaining = self._in_flight.get(name, 1) - 1
            if remaining > 0:
                self._in_flight[name] = remaining
            else:
                self._in_flight.pop(name, None)
                if kind == b"subscribe" and name in self.wanted:
                    self.confirmed.add(name)
                else:
                    self.confirmed.discard(name)
            self._notify()
            if self._lost and not self._in_flight and self.wanted <= self.confirmed:
                self._restored()
        # b"pong" and anything else: liveness only.

    def _restored(self) -> None:
        self._lost = False
        self.layer._connection_restored(self)

    async def _write(self, *args: str) -> None:
        connection = self._connection
        if connection is None:
            raise RedisConnectionError(f"no subscriber connection to {self.pool.config}")
        # Shielded as a whole, lock included: a command is counted in flight
        # only once it is certain to be written, and never half written.
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                if self._connection is not connection:
                    raise RedisConnectionError(f"subscriber connection to {self.pool.config} lost")
                if args[0] in ("SUBSCRIBE", "UNSUBSCRIBE"):
                    for name in args[1:]:
                        self._in_flight[name] = self._in_flight.get(name, 0) + 1
                await connection.send(encode_command(args))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class PubSubLayer(ScopedChannels):
    """A channel layer over Redis pub/sub. Create it with :func:`open_pubsub_layer`."""

    extensions: Final = ("groups", "flush")

    def __init__(
        self,
        *,
        pools: Sequence[ConnectionPool],
        task_group: anyio.abc.TaskGroup,
        prefix: str,
        capacity: int,
        serializer: MessageSerializer,
        max_message_size: int,
        on_disconnect: str | None,
        on_reconnect: str | None,
        idle_channel_timeout: float | None = None,
    ) -> None:
        self._task_group = task_group
        self._shards = [_Shard(self, pool) for pool in pools]
        self.prefix = prefix
        self.capacity = capacity
        self.serializer = serializer
        self.max_message_size = max_message_size
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        #: Local channels and their buffers.
        self._channels: dict[str, LocalBuffer] = {}
        #: Group Redis channel -> member local channels.
        self._groups: dict[str, set[str]] = {}
        self._counters = _Counters()
        self._closed = False
        #: Close channels nobody has received from for this long (None: never).
        self.idle_channel_timeout = idle_channel_timeout
        self._idle_since: dict[str, float] = {}
        self._janitor_started = False

    # -- the channel layer API ------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Publish ``message`` to ``channel`` (lost if nobody is subscribed)."""
        self._check_open()
        validate_channel_name(channel)
        payload = self._encode(message)
        await self._shard(channel).pool.execute("PUBLISH", channel, payload)
        self._counters.sent += 1

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish ``message`` once to the group's Redis channel."""
        self._check_open()
        validate_group_name(group)
        payload = self._encode(message)
        group_channel = self._group_channel(group)
        await self._shard(group_channel).pool.execute("PUBLISH", group_channel, payload)
        self._counters.group_sends += 1

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Create and subscribe a new channel, named as channels_redis's pub/sub layer does."""
        self._check_open()
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        validate_channel_name(channel)
        await self._open(channel)
        return channel

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``, subscribing it first if needed.

        Cancelling loses nothing: the message stays buffered for the next call.
        """
        self._check_open()
        buffer = self._channels.get(channel)
        if buffer is None:  # names of known channels were validated when they were opened
            validate_channel_name(channel)
            buffer = await self._open(channel)
        buffer.receivers += 1
        self._idle_since.pop(channel, None)
        try:
            await buffer.wait()
            # No checkpoint from here on: the message is taken and returned atomically.
            _, message = buffer.messages.popleft()
        except BaseException:
            # A receive that ends without a message is how a consumer that
            # exits looks; one busy handling a message just has not called
            # receive() again yet, and must keep its subscriptions.
            buffer.receivers -= 1
            if not buffer.receivers and not buffer.closed:
                self._idle_since[channel] = time.monotonic()
            raise
        buffer.receivers -= 1
        self._counters.received += 1
        return message

    async def group_add(self, group: str, channel: str) -> None:
        """Add a channel of this process to ``group`` (subscribing the group if needed)."""
        self._check_open()
        validate_group_name(group)
        validate_channel_name(channel)
        if channel not in self._channels:
            raise InvalidChannelName(
                "You can only call group_add() on channels that exist in-process.\n"
                "Consumers are encouraged to use the common pattern:\n"
                f"   self.channel_layer.group_add({group!r}, self.channel_name)"
            )
        group_channel = self._group_channel(group)
        members = self._groups.setdefault(group_channel, set())
        members.add(channel)
        await self._shard(group_channel).subscribe(group_channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; unsubscribe the group when it has no local member."""
        self._check_open()
        validate_group_name(group)
        validate_channel_name(channel)
        await self._leave(self._group_channel(group), channel)

    async def close_channel(self, channel: str) -> None:
        """Unsubscribe ``channel``, take it out of its groups and drop its buffer."""
        self._check_open()
        buffer = self._channels.pop(channel, None)
        self._idle_since.pop(channel, None)
        if buffer is None:
            return
        buffer.close()
        for group_channel in [g for g, members in self._groups.items() if channel in members]:
            await self._leave(group_channel, channel)
        await self._shard(channel).unsubscribe(channel)

    async def flush(self) -> None:
        """Unsubscribe everything and forget every channel, group and buffered message."""
        self._check_open()
        for shard in self._shards:
            for name in list(shard.wanted):
                await shard.unsubscribe(name)
        for buffer in self._channels.values():
            buffer.close()
        self._channels.clear()
        self._groups.clear()
        self._idle_since.clear()

    def statistics(self) -> PubSubStatistics:
        counters = self._counters
        return PubSubStatistics(
            messages_sent=counters.sent,
            group_sends=counters.group_sends,
            messages_received=counters.received,
            unroutable=counters.unroutable,
            local_buffer_overflows=counters.overflows,
            decode_errors=counters.decode_errors,
            disconnects=counters.disconnects,
            reconnects=counters.reconnects,
            subscriptions=sum(len(shard.confirmed) for shard in self._shards),
        )

    def consistent_hash(self, value: str) -> int:
        """The shard index of a channel name or group channel name."""
        return consistent_hash(value, len(self._shards))

    def __repr__(self) -> str:
        hosts = ", ".join(str(shard.pool.config) for shard in self._shards)
        return f"<PubSubLayer prefix={self.prefix!r} hosts=[{hosts}]>"

    # -- internals ------------------------------------------------------------------

    async def _release_channel(self, name: str) -> None:
        if not self._closed:
            await self.close_channel(name)

    def _start_janitor(self) -> None:
        if self.idle_channel_timeout is not None and not self._janitor_started:
            self._janitor_started = True
            self._task_group.start_soon(self._close_idle_channels, name="anyio_layer janitor")

    async def _close_idle_channels(self) -> None:
        """Close channels that had no receiver for ``idle_channel_timeout`` seconds."""
        timeout = self.idle_channel_timeout
        if timeout is None:
            return
        while True:
            await anyio.sleep(max(timeout / 4, 0.01))
            cutoff = time.monotonic() - timeout
            for channel in [name for name, since in self._idle_since.items() if since < cutoff]:
                if self._idle_since.get(channel, cutoff + 1) >= cutoff:
                    continue  # a receiver arrived while an earlier channel was closed
                try:
                    await self.close_channel(channel)
                except RedisConnectionError as exc:  # unsubscribed on reconnect anyway
                    logger.debug("closing idle channel %r: %s", channel, exc)

    def _check_open(self) -> None:
        if self._closed:
            raise LayerClosedError("the channel layer is closed (its async with block has exited)")

    def _shard(self, name: str) -> _Shard:
        return self._shards[consistent_hash(name, len(self._shards))]

    def _group_channel(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"

    async def _open(self, channel: str) -> LocalBuffer:
        buffer = self._channels.get(channel)
        if buffer is None:
            buffer = self._channels[channel] = LocalBuffer(self.capacity)
            self._idle_since[channel] = time.monotonic()
            self._start_janitor()
        try:
            await self._shard(channel).subscribe(channel)
        except BaseException:
            if not buffer.receivers and not buffer.messages:
                self._channels.pop(channel, None)
                await self._shard(channel).unsubscribe(channel)
            raise
        return buffer

    async def _leave(self, group_channel: str, channel: str) -> None:
        members = self._groups.get(group_channel)
        if not members or channel not in members:
            return
        members.discard(channel)
        if not members:
            del self._groups[group_channel]
            await self._shard(group_channel).unsubscribe(group_channel)

    def _encode(self, message: dict[str, Any]) -> bytes:
        if not isinstance(message, dict):
            raise InvalidMessage(f"message must be a dict, not {type(message).__name__}")
        payload = self.serializer.serialize(message)
        if len(payload) > self.max_message_size:
            raise MessageTooLarge(
                f"message is {len(payload)} bytes once serialized; the limit is "
                f"{self.max_message_size} bytes (max_message_size)"
            )
        return payload

    def _dispatch(self, name: str, data: bytes) -> None:
        """File a published message into the buffers of the local channels it is for."""
        members = self._groups.get(name)
        targets = list(members) if members else ([name] if name in self._channels else [])
        if not targets:
            self._counters.unroutable += 1
            return
        try:
            message = self.serializer.deserialize(data)
            if not isinstance(message, dict):
                raise MessageDecodeError(f"decoded message is a {type(message).__name__}")
        except Exception as exc:
            self._counters.decode_errors += 1
            logger.error("dropping a message published to %r: %s", name, exc)
            return
        now = time.monotonic()
        for index, channel in enumerate(targets):
            self._deliver(channel, now, message if index == 0 else dict(message))

    def _deliver(self, channel: str, now: float, message: dict[str, Any]) -> None:
        buffer = self._channels.get(channel)
        if buffer is None:
            self._counters.unroutable += 1
        elif not buffer.put(now, message):
            self._counters.overflows += 1
            logger.warning(
                "local buffer of %r is full (%d messages): dropped its oldest message",
                channel,
                buffer.capacity,
            )

    def _listeners_of(self, shard: _Shard) -> list[str]:
        """Local channels that hear something through ``shard`` (each once)."""
        listeners: dict[str, None] = {}
        for name in shard.wanted:
            if name in self._channels:
                listeners[name] = None
            for member in self._groups.get(name, ()):
                listeners[member] = None
        return list(listeners)

    def _connection_lost(self, shard: _Shard) -> None:
        self._counters.disconnects += 1
        if self.on_disconnect:
            now = time.monotonic()
            for channel in self._listeners_of(shard):
                self._deliver(channel, now, {"type": self.on_disconnect})

    def _connection_restored(self, shard: _Shard) -> None:
        self._counters.reconnects += 1
        if self.on_reconnect:
            now = time.monotonic()
            for channel in self._listeners_of(shard):
                self._deliver(channel, now, {"type": self.on_reconnect})


_OPTIONS: Final = (
    "hosts",
    "prefix",
    "symmetric_encryption_keys",
    "serializer_format",
    "on_disconnect",
    "on_reconnect",
    "capacity",
    "max_message_size",
    "idle_channel_timeout",
)


@contextlib.asynccontextmanager
async def open_pubsub_layer(
    *,
    hosts: object = None,
    prefix: str = "asgi",
    symmetric_encryption_keys: object = None,
    serializer_format: str = "msgpack",
    on_disconnect: str | None = None,
    on_reconnect: str | None = None,
    capacity: int = 100,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    idle_channel_timeout: float | None = None,
    **unknown: object,
) -> AsyncIterator[PubSubLayer]:
    """Open the pub/sub layer; its options are channels_redis's pub/sub ``CONFIG`` keys.

    Additions to channels_redis's options: ``capacity`` bounds each local
    channel's buffer (channels_redis's are unbounded); ``idle_channel_timeout``
    closes (unsubscribes, drops the buffer of) a channel that has had no
    receiver for that many seconds since its creation or since a
    ``receive()`` ended *without* a message (cancelled: what a consumer that
    exits looks like). A consumer busy handling a message keeps its channel
    however long it takes. ``None`` (the default) keeps channels until
    :meth:`PubSubLayer.close_channel`. Leaving the block stops every task and closes every
    connection; calls made afterwards raise
    :class:`~anyio_layer.exceptions.LayerClosedError`.
    """
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for the pub/sub layer: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(_OPTIONS)}"
        )
    configs = parse_hosts(hosts)
    if isinstance(configs, ClusterConfig):
        raise ConfigurationError("the pub/sub layer does not support Redis Cluster yet")
    prefix = require_prefix(prefix)
    for name, value in (("on_disconnect", on_disconnect), ("on_reconnect", on_reconnect)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(
                f"{name} must be a message type string such as 'redis.disconnect', not {value!r}"
            )
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ConfigurationError(f"capacity must be a positive integer, not {capacity!r}")
    max_message_size = int(positive_number(max_message_size, "max_message_size"))
    if idle_channel_timeout is not None:
        idle_channel_timeout = positive_number(idle_channel_timeout, "idle_channel_timeout")
    serializer = registry.get_serializer(
        serializer_format, symmetric_encryption_keys=symmetric_encryption_keys
    )
    async with contextlib.AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(open_pool(config)) for config in configs]
        async with open_service_task_group() as task_group:
            layer = PubSubLayer(
                pools=pools,
                task_group=task_group,
                prefix=prefix,
                capacity=capacity,
                serializer=serializer,
                max_message_size=max_message_size,
                on_disconnect=on_disconnect,
                on_reconnect=on_reconnect,
                idle_channel_timeout=idle_channel_timeout,
            )
            try:
                yield layer
            finally:
                layer._closed = True
