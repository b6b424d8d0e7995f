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
from dataclasses import dataclass
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
    InvalidMessage,
    LayerClosedError,
    MessageDecodeError,
    MessageTooLarge,
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
from ..redis.scripts import Script
from .keyspace import ClusterKeySpace, KeyServer, KeySpace, ShardedKeySpace

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DRAIN_BATCH",
    "LayerChannel",
    "LayerStatistics",
    "QueueLayer",
    "open_redis_layer",
]

logger = logging.getLogger("anyio_layer")

RESERVED_KEY: Final = "__asgi_channel__"
#: Largest serialized message accepted by default (the ASGI spec asks for at least 1 MB).
DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
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

# KEYS[1]: channel key. ARGV: message, score (now), prune cutoff, capacity, ttl.
# Returns {added (0 or 1), messages pruned as expired}.
_SEND: Final = Script(
    """
local pruned = redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return {0, pruned}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, pruned}
"""
)

# KEYS: n channel keys. ARGV: n messages, n capacities, score (now), prune cutoff, ttl.
# Returns {copies added, keys skipped because full, messages pruned as expired}.
_GROUP_SEND: Final = Script(
    """
local n = #KEYS
local now, cutoff, ttl = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local added, skipped, pruned = 0, 0, 0
for i = 1, n do
    pruned = pruned + redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], ttl)
        added = added + 1
    else
        skipped = skipped + 1
    end
end
return {added, skipped, pruned}
"""
)


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """A snapshot of a layer's counters since it was opened."""

    #: Messages accepted by ``send()``.
    messages_sent: int
    #: Messages handed to callers of ``receive()``.
    messages_received: int
    #: ``send()`` calls refused with ChannelFull.
    channel_full: int
    #: ``group_send()`` calls, and copies they wrote (one per Redis key).
    group_sends: int
    group_deliveries: int
    #: Group members skipped because their channel was at capacity.
    group_skipped_over_capacity: int
    #: Messages this layer saw dropped for outliving ``expiry``: pruned by a send,
    #: popped too late, or aged out of a local buffer. (Keys that Redis expires
    #: whole, when nobody sent to them for ``expiry`` seconds, are not counted.)
    expired: int
    #: Oldest local messages dropped because a consumer's buffer was full.
    local_buffer_overflows: int
    #: Messages that could not be decrypted or deserialized.
    decode_errors: int
    #: Connections re-established after a failure, over all shards.
    reconnects: int
    #: Local channels with buffered messages or waiting receivers.
    local_channels: int


class _Counters:
    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.channel_full = 0
        self.group_sends = 0
        self.group_deliveries = 0
        self.group_skipped = 0
        self.expired = 0
        self.overflows = 0
        self.decode_errors = 0


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
        self._counters = _Counters()
        self._closed = False

    # -- sending --------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raise ChannelFull if it is at capacity."""
        self._check_open()
        validate_channel_name(channel)
        _check_message(message)
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
            _SEND,
            [key],
            [
                payload,
                repr(now),
                int(now) - int(self.expiry),
                self.capacities.for_channel(channel),
                self._ttl,
            ],
        )
        added, pruned = _int_pair(reply)
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
        _check_message(message)
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
        for reply in await self._keys.eval_batched(_GROUP_SEND, routes, arguments):
            added, skipped, pruned = _int_triple(reply)
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
            await self._put_back(home, key, [_popped_entry(reply)])

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
            entry = _popped_entry(reply)
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
            entries = _popped_entries(reply) if use_bzmpop else [_popped_entry(reply)]
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
                        entries = _popped_entries(reply)
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
    ) -> list[tuple[bytes, float]]:
        """BZPOPMIN for one message, then ZPOPMIN for whatever else is waiting."""
        first = _popped_entry(
            await home.execute_blocking(
                "BZPOPMIN", key, _BLOCK_SECONDS, on_cancelled_reply=put_back
            )
        )
        if first is None:
            return []
        with anyio.CancelScope(shield=True):  # popped messages must reach the buffers
            rest = await home.execute("ZPOPMIN", key, DRAIN_BATCH - 1)
        entries = [first]
        if isinstance(rest, list):
            entries += [
                (member, float(score))
                for member, score in zip(rest[::2], rest[1::2], strict=True)
                if isinstance(member, bytes) and isinstance(score, bytes)
            ]
        return entries

    async def _return_unreceived(self) -> None:
        """Put messages buffered for local channels back in Redis, each at its original score."""
        by_key: dict[str, list[tuple[bytes, float]]] = {}
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

    async def _put_back(
        self, home: KeyServer, key: bytes, entries: Iterable[tuple[bytes, float] | None]
    ) -> None:
        """Return popped messages to Redis at their original scores (so they come first)."""
        flat: list[bytes | str] = []
        for entry in entries:
            if entry is not None:
                flat += [repr(entry[1]), entry[0]]
        if flat:
            # Not retried after a connection error: had the first ZADD run, another
            # receiver could have popped the message before a retry added it again.
            await home.pipeline([("ZADD", key, *flat), ("EXPIRE", key, self._ttl)])

    def _dispatch_local(
        self, local_key: str, entries: Iterable[tuple[bytes, float]], demand: _Demand
    ) -> None:
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
        counters = self._counters
        return LayerStatistics(
            messages_sent=counters.sent,
            messages_received=counters.received,
            channel_full=counters.channel_full,
            group_sends=counters.group_sends,
            group_deliveries=counters.group_deliveries,
            group_skipped_over_capacity=counters.group_skipped,
            expired=counters.expired,
            local_buffer_overflows=counters.overflows,
            decode_errors=counters.decode_errors,
            reconnects=self._keys.reconnects(),
            local_channels=len(self._buffers),
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

    def _encode(self, message: dict[str, Any]) -> bytes:
        payload = self.serializer.serialize(message)
        if len(payload) > self.max_message_size:
            raise MessageTooLarge(
                f"message is {len(payload)} bytes once serialized; the limit is "
                f"{self.max_message_size} bytes (max_message_size)"
            )
        return payload

    def _decode(self, payload: bytes) -> dict[str, Any]:
        try:
            message = self.serializer.deserialize(payload)
        except MessageDecodeError:
            self._counters.decode_errors += 1
            raise
        except Exception as exc:
            self._counters.decode_errors += 1
            raise MessageDecodeError(f"a message could not be decoded: {exc}") from exc
        if not isinstance(message, dict):
            self._counters.decode_errors += 1
            raise MessageDecodeError(f"decoded message is a {type(message).__name__}, not a dict")
        return message


def _check_message(message: object) -> None:
    if not isinstance(message, dict):
        raise InvalidMessage(f"message must be a dict, not {type(message).__name__}")
    if RESERVED_KEY in message:
        raise InvalidMessage(f"message must not contain the reserved key {RESERVED_KEY!r}")


def _int_pair(reply: object) -> tuple[int, int]:
    if isinstance(reply, list) and len(reply) == 2 and all(isinstance(x, int) for x in reply):
        return reply[0], reply[1]
    raise ResponseError(f"unexpected reply from the send script: {reply!r:.100}")


def _int_triple(reply: object) -> tuple[int, int, int]:
    if isinstance(reply, list) and len(reply) == 3 and all(isinstance(x, int) for x in reply):
        return reply[0], reply[1], reply[2]
    raise ResponseError(f"unexpected reply from the group send script: {reply!r:.100}")


def _popped_entry(reply: object) -> tuple[bytes, float] | None:
    """``(member, score)`` from a BZPOPMIN reply ``[key, member, score]``."""
    if isinstance(reply, list) and len(reply) == 3:
        _, member, score = reply
        if isinstance(member, bytes) and isinstance(score, bytes):
            return member, float(score)
    return None


def _popped_entries(reply: object) -> list[tuple[bytes, float]]:
    """``[(member, score), ...]`` from a BZMPOP reply ``[key, [[member, score], ...]]``."""
    if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], list)):
        return []
    entries = []
    for pair in reply[1]:
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], bytes):
            entries.append((pair[0], float(pair[1])))
    return entries


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
