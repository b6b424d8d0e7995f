"""The sorted-set queue layer: channels_redis's ``RedisChannelLayer``, structured.

Open it with :func:`open_redis_layer`; everything it runs lives inside that
``async with`` block::

    async with open_redis_layer(hosts=["redis://localhost:6379"]) as layer:
        async with layer.open_channel("room") as channel:
            await layer.group_send("room", {"type": "chat.message", "text": "hi"})
            message = await channel.receive()

Data layout and message encoding are channels_redis 4.x's (see
:mod:`anyio_layer.queue.keyspace`), so processes running either library can share
one Redis during a migration. On a Redis Cluster (``hosts`` listing
``redis+cluster://`` seeds) the keys carry hash tags instead, and commands
follow their slot through failovers and resharding: the layer only ever talks
to a :class:`~anyio_layer.queue.keyspace.KeySpace`, which hides the difference.

How messages move:

* :meth:`QueueLayer.send` is one round trip: a Lua script prunes expired
  messages, refuses the message if the channel is at capacity
  (:class:`~anyio_layer.exceptions.ChannelFull`), adds it with the current
  time as its score and refreshes the key's TTL.
* Process-local channels (``new_channel()`` names, with a ``!``): all local
  channels of this layer share one Redis key per ``new_channel`` prefix. One
  reader task per key (in the layer's task group) blocks on it, pops up to
  :data:`DRAIN_BATCH` messages per round trip (``BZMPOP`` on Redis 7,
  ``BZPOPMIN`` plus ``ZPOPMIN`` on 6.2) and files each into the local buffer
  of its channel. :meth:`QueueLayer.receive` only waits on that buffer.
* A message for one of this layer's *own* local channels (named by its
  ``new_channel()``), by ``send()`` or as a ``group_send()`` member, goes
  straight into the channel's buffer: sender and receiver share the layer, so
  Redis would only add two round trips. The receiver still gets a decoded
  copy, and the channel's capacity still applies (ChannelFull when its buffer
  is full). Every message this layer sends to its own channel takes that
  path, so its order is kept.
* Normal channels (no ``!``, e.g. a worker queue shared by many processes):
  :meth:`QueueLayer.receive` pops from Redis directly with ``BZPOPMIN``; the
  receivers of one process take turns (one blocked pop per channel), so they
  see the channel in order.

Cancellation contract (tested in ``tests/test_cancellation_layer.py``):
cancelling :meth:`~QueueLayer.receive` at any moment leaves every message that
:meth:`~QueueLayer.send` accepted available to the next ``receive()`` on that
channel, exactly once. For local channels, ``receive()`` waits for the buffer
to be non-empty and then takes a message without any further checkpoint, so
there is no moment at which a message belongs to a cancelled receiver. For
normal channels, a pop that completes just as its receiver is cancelled is
recovered (``CLIENT UNBLOCK`` and read the reply) and put back in Redis at
its original score, so it is the next message any receiver gets. Cancelling
:meth:`~QueueLayer.send` or :meth:`~QueueLayer.group_send` either sent the
message or did not; it never disturbs the connection.

Back-pressure and local buffers: a reader pops only while some receiver of
its key waits on an empty buffer, so messages for consumers that are busy stay
in Redis, where the capacity check makes senders back off with ChannelFull.
Buffers are still bounded by the channel's capacity: when one batch brings a
busy consumer more than its buffer holds, the **oldest** buffered message is
dropped (as channels_redis does), but not silently: it is logged and counted
in :attr:`LayerStatistics.local_buffer_overflows`. Blocking the reader instead
would stall every other channel of the process behind one slow consumer.

Failures: when Redis goes away, ``send()`` and friends fail at once with
:class:`~anyio_layer.exceptions.RedisConnectionError` (nothing is queued in
memory). Receivers keep waiting: the reader tasks and normal-channel
receivers retry with back-off and resume delivering after the server is
back, without being called again. On a Redis Cluster the same holds while the
cluster refuses commands (``CLUSTERDOWN`` during a failover, or a whole shard
down): senders get :class:`~anyio_layer.exceptions.ClusterUnavailableError`
once the client's own retries are used up, receivers keep waiting.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

import anyio
import anyio.abc

from ..common.channels import LayerChannel, LocalBuffer, ScopedChannels
from ..common.options import CapacityRules, positive_number, require_prefix
from ..common.tasks import open_service_task_group
from ..exceptions import (
    ChannelFull,
    ClusterUnavailableError,
    ConfigurationError,
    InvalidChannelName,
    LayerClosedError,
    MessageDecodeError,
    RedisConnectionError,
    RedisError,
    ResponseError,
    TooManyRedirectionsError,
)
from ..messages.names import (
    is_process_local,
    new_channel_name,
    non_local_name,
    random_client_prefix,
    validate_channel_name,
    validate_group_name,
)
from ..messages.serializers import MessageSerializer, registry
from ..redis.cluster.client import open_cluster
from ..redis.hosts import ClusterConfig, parse_hosts
from ..redis.pool import open_pool
from .codec import DEFAULT_MAX_MESSAGE_SIZE, RESERVED_KEY, MessageCodec, check_message
from .keyspace import ClusterKeySpace, KeyServer, KeySpace, ShardedKeySpace
from .replies import (
    Entry,
    group_send_counts,
    popped_entries,
    popped_entry,
    send_counts,
    zpopmin_entries,
)
from .scripts import GROUP_SEND, SEND
from .statistics import Counters, LayerStatistics

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DRAIN_BATCH",
    "LayerChannel",
    "LayerStatistics",
    "QueueLayer",
    "open_redis_layer",
]

logger = logging.getLogger("anyio_layer")

#: Most messages a process-local reader takes from Redis in one round trip.
DRAIN_BATCH: Final = 500
#: Server-side timeout of blocking pops; the client allows this much more before giving up.
_BLOCK_SECONDS: Final = 5
_BLOCK_GRACE: Final = 10.0
_MAX_RETRY_DELAY: Final = 2.0
#: What makes a blocked pop wait and try again instead of failing its receiver: the
#: server is unreachable, or (on a cluster) still refusing after the client's own retries.
_REDIS_AWAY: Final = (
    RedisConnectionError,
    ClusterUnavailableError,
    TooManyRedirectionsError,
    TimeoutError,
)
#: How long closing may spend returning buffered messages to Redis.
_RETURN_TIMEOUT: Final = 5.0


class _SharedLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class _RetryDelay:
    """Exponential back-off for a loop that waits for Redis to come back."""

    __slots__ = ("_delay",)

    def __init__(self) -> None:
        self._delay = 0.0

    async def wait(self, waiter: str, error: Exception) -> None:
        self._delay = min(max(self._delay * 2, 0.05), _MAX_RETRY_DELAY)
        logger.warning("%s waiting for Redis: %s", waiter, error)
        await anyio.sleep(self._delay)

    def reset(self) -> None:
        self._delay = 0.0


class _Demand:
    """How many buffers of one process-local key have receivers waiting and no message."""

    __slots__ = ("_event", "_hungry_buffers", "hungry")

    def __init__(self) -> None:
        self.hungry = 0
        self._hungry_buffers: set[int] = set()
        self._event = anyio.Event()

    def update(self, buffer: LocalBuffer) -> None:
        """Recount ``buffer`` after its receivers or messages changed."""
        hungry = buffer.receivers > 0 and not buffer.messages
        if hungry == (id(buffer) in self._hungry_buffers):
            return
        if hungry:
            self._hungry_buffers.add(id(buffer))
            self.hungry += 1
            self._event.set()
        else:
            self._hungry_buffers.discard(id(buffer))
            self.hungry -= 1

    async def wait(self) -> None:
        while not self.hungry:
            self._event = anyio.Event()
            await self._event.wait()


class QueueLayer(ScopedChannels):
    """A channel layer over Redis sorted sets. Create it with :func:`open_redis_layer`."""

    extensions: Final = ("groups", "flush")

    def __init__(
        self,
        *,
        keys: KeySpace,
        task_group: anyio.abc.TaskGroup,
        expiry: float,
        group_expiry: int,
        capacities: CapacityRules,
        serializer: MessageSerializer,
        max_message_size: int,
        client_prefix: str | None = None,
        client_prefix_family: str | None = None,
    ) -> None:
        self._keys = keys
        self._task_group = task_group
        self.prefix = keys.prefix
        self.expiry = expiry
        self.group_expiry = group_expiry
        self.capacities = capacities
        self.serializer = serializer
        self.max_message_size = max_message_size
        #: Identifies this layer's process-local channels (``specific.<client_prefix>!...``).
        self.client_prefix = client_prefix or random_client_prefix()
        #: Other layers' client prefixes this one may receive for (``family`` or ``family-*``).
        self.client_prefix_family = client_prefix_family
        self._ttl = math.ceil(expiry)
        self._buffers: dict[str, LocalBuffer] = {}
        #: Process-local keys with a reader task, and the demand that drives it.
        self._readers: dict[str, _Demand] = {}
        self._next_sweep = 0.0
        self._receive_locks: dict[str, _SharedLock] = {}
        self._counters = Counters()
        codec = MessageCodec(serializer, max_message_size, self._counters)
        self._encode = codec.encode
        self._decode = codec.decode
        self._closed = False

    # -- sending --------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raise ChannelFull if it is at capacity."""
        self._check_open()
        validate_channel_name(channel)
        check_message(message)
        if is_process_local(channel):
            if self._is_own(channel):
                # Sender and receiver share this layer: no need to go through Redis.
                if not self._deliver_own(channel, self._encode(message), time.time()):
                    self._counters.channel_full += 1
                    raise ChannelFull(f"channel {channel!r} is at capacity")
                self._counters.sent += 1
                return
            message = {**message, RESERVED_KEY: channel}
        payload = self._encode(message)
        now = time.time()
        key, home = self._keys.channel(channel)
        reply = await home.evalsha(
            SEND,
            [key],
            [
                payload,
                repr(now),
                int(now) - int(self.expiry),
                self.capacities.for_channel(channel),
                self._ttl,
            ],
        )
        added, pruned = send_counts(reply)
        self._counters.expired += pruned
        if not added:
            self._counters.channel_full += 1
            raise ChannelFull(f"channel {channel!r} is at capacity")
        self._counters.sent += 1

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``.

        Costs one round trip to read the members, then one per server (or
        cluster node) holding member channels, whatever the group's size. Members whose channel is
        at capacity are skipped (and counted), never raising.
        """
        self._check_open()
        validate_group_name(group)
        check_message(message)
        plain = self._encode(message)  # also rejects what cannot be sent, even to nobody
        now = time.time()
        group_key, group_home = self._keys.group(group)
        _, members = await group_home.pipeline(
            [
                ("ZREMRANGEBYSCORE", group_key, 0, int(now) - self.group_expiry),
                ("ZRANGE", group_key, 0, -1),
            ],
            idempotent=True,
        )
        self._counters.group_sends += 1
        if not isinstance(members, list) or not members:
            return
        # Members that are this layer's own channels get the message in memory;
        # the rest get one copy per Redis key, naming every member stored in it.
        targets: dict[bytes, list[str]] = {}
        for member in members:
            channel = member.decode() if isinstance(member, bytes) else str(member)
            if is_process_local(channel) and self._is_own(channel):
                if self._deliver_own(channel, plain, now):
                    self._counters.group_deliveries += 1
                else:
                    self._counters.group_skipped += 1
                continue
            key = self._keys.channel_key(channel)
            targets.setdefault(key, []).append(channel)
        if not targets:
            return

        def arguments(keys: list[bytes]) -> list[bytes | str | int]:
            payloads = [self._encode({**message, RESERVED_KEY: targets[key]}) for key in keys]
            capacities = [self.capacities.for_channel(targets[key][0]) for key in keys]
            return [*payloads, *capacities, repr(now), int(now) - int(self.expiry), self._ttl]

        skipped_total = 0
        routes = {key: channels[0] for key, channels in targets.items()}
        for reply in await self._keys.eval_batched(GROUP_SEND, routes, arguments):
            added, skipped, pruned = group_send_counts(reply)
            self._counters.group_deliveries += added
            self._counters.group_skipped += skipped
            self._counters.expired += pruned
            skipped_total += skipped
        if skipped_total:
            logger.info(
                "group_send to %r skipped %d of %d channels at capacity",
                group,
                skipped_total,
                len(targets),
            )

    # -- groups ---------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (membership expires after ``group_expiry``)."""
        self._check_open()
        validate_group_name(group)
        validate_channel_name(channel)
        key, home = self._keys.group(group)
        await home.pipeline(
            [("ZADD", key, repr(time.time()), channel), ("EXPIRE", key, self.group_expiry)],
            idempotent=True,
        )

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; no error if it was not a member."""
        self._check_open()
        validate_group_name(group)
        validate_channel_name(channel)
        key, home = self._keys.group(group)
        await home.execute("ZREM", key, channel, idempotent=True)

    # -- receiving ------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name that this layer can receive on."""
        self._check_open()
        return new_channel_name(prefix, self.client_prefix)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel`` and return it.

        Safe to cancel at any moment: see the module docstring.
        """
        self._check_open()
        validate_channel_name(channel)
        if not is_process_local(channel):
            return await self._receive_normal(channel)
        local_key = non_local_name(channel)
        if not self._owns(local_key):
            raise InvalidChannelName(
                f"channel {channel!r} was not created by this layer's new_channel(): only "
                f"the process that created a process-local channel can receive from it"
            )
        demand = self._readers.get(local_key)
        if demand is None:
            demand = self._readers[local_key] = _Demand()
            self._task_group.start_soon(
                self._read_local, local_key, demand, name=f"anyio_layer reader {local_key}"
            )
        buffer = self._buffers.get(channel)
        if buffer is None:
            buffer = self._buffers[channel] = LocalBuffer(self.capacities.for_channel(channel))
        buffer.receivers += 1
        demand.update(buffer)
        try:
            while True:
                await buffer.wait()
                # No checkpoint from here on: the message is taken and returned atomically.
                expired = buffer.drop_expired(time.time() - self.expiry)
                if not expired:
                    _, message = buffer.messages.popleft()
                    break
                self._counters.expired += expired
                demand.update(buffer)
        finally:
            buffer.receivers -= 1
            demand.update(buffer)
            if not buffer.receivers and not buffer.messages:
                self._buffers.pop(channel, None)
        self._counters.received += 1
        return message

    def _is_own(self, channel: str) -> bool:
        """Whether ``channel`` was named by this very layer (not just its family)."""
        client = channel[: channel.index("!")].rsplit(".", 1)[-1]
        return client == self.client_prefix

    def _deliver_own(self, channel: str, payload: bytes, now: float) -> bool:
        """Put a copy of a message straight into one of this layer's own buffers.

        False if the buffer is at the channel's capacity. The copy is decoded
        from the serialized payload, so the receiver gets exactly what it
        would have got through Redis, independent of the sender's dict.
        """
        buffer = self._buffers.get(channel)
        if buffer is None:
            buffer = self._buffers[channel] = LocalBuffer(self.capacities.for_channel(channel))
        if len(buffer.messages) >= buffer.capacity:
            return False
        buffer.put(now, self._decode(payload))
        demand = self._readers.get(non_local_name(channel))
        if demand is not None:
            demand.update(buffer)
        return True

    def _owns(self, local_key: str) -> bool:
        """Whether process-local channels under ``local_key`` are this layer's to receive."""
        client = local_key[:-1].rsplit(".", 1)[-1]
        family = self.client_prefix_family
        return client == self.client_prefix or (
            family is not None and (client == family or client.startswith(family + "-"))
        )

    async def _receive_normal(self, channel: str) -> dict[str, Any]:
        # One pop per channel at a time in this process: a receiver waiting
        # here takes over only after a cancelled one has put its last-moment
        # pop back, so receivers of one process see the channel in order (and
        # the server sees one blocked client per channel, not one per receiver).
        lock = self._receive_locks.get(channel)
        if lock is None:
            lock = self._receive_locks[channel] = _SharedLock()
        lock.users += 1
        try:
            async with lock.lock:
                return await self._pop_normal(channel)
        finally:
            lock.users -= 1
            if not lock.users:
                del self._receive_locks[channel]

    async def _pop_normal(self, channel: str) -> dict[str, Any]:
        key, home = self._keys.channel(channel)

        async def put_back(reply: object) -> None:
            await self._put_back(home, key, [popped_entry(reply)])

        retry = _RetryDelay()
        while True:
            try:
                with anyio.fail_after(_BLOCK_SECONDS + _BLOCK_GRACE):
                    reply = await home.execute_blocking(
                        "BZPOPMIN", key, _BLOCK_SECONDS, on_cancelled_reply=put_back
                    )
            except _REDIS_AWAY as exc:
                await retry.wait(f"receive({channel!r})", exc)
                continue
            retry.reset()
            entry = popped_entry(reply)
            if entry is None:
                continue
            member, score = entry
            if score < time.time() - self.expiry:
                self._counters.expired += 1
                continue
            message = self._decode(member)
            message.pop(RESERVED_KEY, None)
            self._counters.received += 1
            return message

    async def _read_local(self, local_key: str, demand: _Demand) -> None:
        """Move messages for this layer's local channels from Redis into their buffers.

        The reader pops only while some receiver waits on an empty buffer.
        Messages for consumers that are busy stay in Redis, where the
        capacity check makes senders back off with ChannelFull, as with
        channels_redis.
        """
        key, home = self._keys.channel(local_key)
        use_bzmpop = True

        async def put_back(reply: object) -> None:
            entries = popped_entries(reply) if use_bzmpop else [popped_entry(reply)]
            await self._put_back(home, key, entries)

        retry = _RetryDelay()
        while True:
            await demand.wait()
            try:
                with anyio.fail_after(_BLOCK_SECONDS + _BLOCK_GRACE):
                    if use_bzmpop:
                        try:
                            reply = await home.execute_blocking(
                                "BZMPOP",
                                _BLOCK_SECONDS,
                                1,
                                key,
                                "MIN",
                                "COUNT",
                                DRAIN_BATCH,
                                on_cancelled_reply=put_back,
                            )
                        except ResponseError as exc:
                            if "unknown command" not in exc.message.lower():
                                raise
                            use_bzmpop = False  # Redis < 7.0
                            continue
                        entries = popped_entries(reply)
                    else:
                        entries = await self._pop_legacy(home, key, put_back)
            except _REDIS_AWAY as exc:
                await retry.wait(f"reader for {local_key!r}", exc)
                continue
            retry.reset()
            self._dispatch_local(local_key, entries, demand)

    async def _pop_legacy(
        self,
        home: KeyServer,
        key: bytes,
        put_back: Callable[[object], Awaitable[None]],
    ) -> list[Entry]:
        """BZPOPMIN for one message, then ZPOPMIN for whatever else is waiting."""
        first = popped_entry(
            await home.execute_blocking(
                "BZPOPMIN", key, _BLOCK_SECONDS, on_cancelled_reply=put_back
            )
        )
        if first is None:
            return []
        with anyio.CancelScope(shield=True):  # popped messages must reach the buffers
            rest = await home.execute("ZPOPMIN", key, DRAIN_BATCH - 1)
        return [first, *zpopmin_entries(rest)]

    async def _return_unreceived(self) -> None:
        """Put messages buffered for local channels back in Redis, each at its original score."""
        by_key: dict[str, list[Entry]] = {}
        for name, buffer in self._buffers.items():
            entries = by_key.setdefault(non_local_name(name), [])
            for score, message in buffer.messages:
                entries.append((self._encode({**message, RESERVED_KEY: name}), score))
            buffer.messages.clear()
        for local_key, entries in by_key.items():
            if entries:
                key, home = self._keys.channel(local_key)
                try:
                    await self._put_back(home, key, entries)
                except (RedisError, LayerClosedError) as exc:
                    logger.warning("lost %d buffered messages on close: %s", len(entries), exc)

    async def _put_back(self, home: KeyServer, key: bytes, entries: Iterable[Entry | None]) -> None:
        """Return popped messages to Redis at their original scores (so they come first)."""
        flat: list[bytes | str] = []
        for entry in entries:
            if entry is not None:
                flat += [repr(entry[1]), entry[0]]
        if flat:
            # Not retried after a connection error: had the first ZADD run, another
            # receiver could have popped the message before a retry added it again.
            await home.pipeline([("ZADD", key, *flat), ("EXPIRE", key, self._ttl)])

    def _dispatch_local(self, local_key: str, entries: Iterable[Entry], demand: _Demand) -> None:
        cutoff = time.time() - self.expiry
        for member, score in entries:
            if score < cutoff:
                self._counters.expired += 1
                continue
            try:
                message = self._decode(member)
            except MessageDecodeError as exc:
                logger.error("dropping a message for %r that cannot be decoded: %s", local_key, exc)
                continue
            names = message.pop(RESERVED_KEY, None)
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, list) or not names:
                logger.error("dropping a message in %r that names no local channel", local_key)
                continue
            for name in names:
                buffer = self._buffers.get(name)
                if buffer is None:
                    buffer = self._buffers[name] = LocalBuffer(self.capacities.for_channel(name))
                copy = message if len(names) == 1 else dict(message)
                fits = buffer.put(score, copy)
                demand.update(buffer)
                if not fits:
                    self._counters.overflows += 1
                    logger.warning(
                        "local buffer of %r is full (%d messages): dropped its oldest message",
                        name,
                        buffer.capacity,
                    )
        self._sweep(cutoff)

    def _sweep(self, cutoff: float) -> None:
        """Forget expired messages of channels nobody is receiving from (at most once a second)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for name, buffer in list(self._buffers.items()):
            if not buffer.receivers and buffer.messages and buffer.messages[0][0] < cutoff:
                self._counters.expired += buffer.drop_expired(cutoff)
                if not buffer.messages:
                    del self._buffers[name]

    async def _release_channel(self, name: str) -> None:
        self._buffers.pop(name, None)

    # -- maintenance ------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key under this layer's prefix on every shard, and local buffers.

        Uses ``SCAN`` and ``UNLINK`` in batches, never ``KEYS``, so it does not
        block the server however many keys there are.
        """
        self._check_open()
        await self._keys.delete_matching()
        for name, buffer in self._buffers.items():
            buffer.messages.clear()
            demand = self._readers.get(non_local_name(name))
            if demand is not None:
                demand.update(buffer)

    def statistics(self) -> LayerStatistics:
        return self._counters.snapshot(
            reconnects=self._keys.reconnects(), local_channels=len(self._buffers)
        )

    def consistent_hash(self, value: str) -> int:
        """The shard index of a channel or group name (channels_redis's public helper)."""
        return self._keys.shard_of(value)

    def __repr__(self) -> str:
        return f"<QueueLayer prefix={self.prefix!r} hosts=[{self._keys.describe()}]>"

    # -- internals --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LayerClosedError("the channel layer is closed (its async with block has exited)")


_OPTIONS: Final = (
    "hosts",
    "prefix",
    "expiry",
    "group_expiry",
    "capacity",
    "channel_capacity",
    "symmetric_encryption_keys",
    "random_prefix_length",
    "serializer_format",
    "max_message_size",
    "client_prefix",
    "client_prefix_family",
)


@contextlib.asynccontextmanager
async def open_redis_layer(
    *,
    hosts: object = None,
    prefix: str = "asgi",
    expiry: float = 60,
    group_expiry: int = 86400,
    capacity: int = 100,
    channel_capacity: object = None,
    symmetric_encryption_keys: object = None,
    random_prefix_length: int = 12,
    serializer_format: str = "msgpack",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    client_prefix: str | None = None,
    client_prefix_family: str | None = None,
    **unknown: object,
) -> AsyncIterator[QueueLayer]:
    """Open the queue layer; its options are channels_redis's ``CONFIG`` keys.

    ``client_prefix`` and ``client_prefix_family`` (additions) let several
    layers of one process hand process-local channels to each other, as the
    Channels adapter does with its one layer per event loop: each layer names
    its channels with its own ``client_prefix`` (``family-N``) and may receive
    from any channel of the family. Messages a layer buffered but nobody
    received go back to Redis when it closes, for the next layer. By default
    the client prefix is random and a layer receives only its own channels.

    ``hosts`` takes every form channels_redis accepts; several entries are
    sharded by channels_redis's CRC32 ring. Or it lists seed nodes of a Redis
    Cluster (``redis+cluster://host:port``, or ``"cluster": True`` in a dict):
    see ``docs/cluster.md`` for the key layout and failover behaviour.

    Leaving the block stops the layer's tasks and closes every connection;
    calls made afterwards raise :class:`~anyio_layer.exceptions.LayerClosedError`.
    Bad options raise :class:`~anyio_layer.exceptions.ConfigurationError`
    before anything is connected.
    """
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for the queue layer: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(_OPTIONS)}"
        )
    configs = parse_hosts(hosts)
    prefix = require_prefix(prefix)
    expiry = positive_number(expiry, "expiry")
    group_expiry = int(positive_number(group_expiry, "group_expiry"))
    capacities = CapacityRules.parse(capacity, channel_capacity)
    max_message_size = int(positive_number(max_message_size, "max_message_size"))
    if (
        isinstance(random_prefix_length, bool)
        or not isinstance(random_prefix_length, int)
        or random_prefix_length < 0
    ):
        raise ConfigurationError(
            f"random_prefix_length must be a non-negative integer, not {random_prefix_length!r}"
        )
    serializer = registry.get_serializer(
        serializer_format,
        symmetric_encryption_keys=symmetric_encryption_keys,
        random_prefix_length=random_prefix_length,
        expiry=expiry,
    )
    for name, value in (
        ("client_prefix", client_prefix),
        ("client_prefix_family", client_prefix_family),
    ):
        if value is not None and not (
            isinstance(value, str) and re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", value)
        ):
            raise ConfigurationError(
                f"{name} must be 1-64 ASCII letters, digits, '-' or '_', not {value!r}"
            )
    async with contextlib.AsyncExitStack() as stack:
        keys: KeySpace
        if isinstance(configs, ClusterConfig):
            cluster = await stack.enter_async_context(open_cluster(configs.seeds))
            keys = ClusterKeySpace(cluster, prefix)
        else:
            pools = [await stack.enter_async_context(open_pool(config)) for config in configs]
            keys = ShardedKeySpace(pools, prefix)
        try:
            async with open_service_task_group() as task_group:
                layer = QueueLayer(
                    keys=keys,
                    task_group=task_group,
                    expiry=expiry,
                    group_expiry=group_expiry,
                    capacities=capacities,
                    serializer=serializer,
                    max_message_size=max_message_size,
                    client_prefix=client_prefix,
                    client_prefix_family=client_prefix_family,
                )
                try:
                    yield layer
                finally:
                    layer._closed = True
        finally:
            # The readers are stopped; messages they buffered that nobody took
            # go back to Redis, for another layer with the same client_prefix.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_RETURN_TIMEOUT):
                await layer._return_unreceived()
