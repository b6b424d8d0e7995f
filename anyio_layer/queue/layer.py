"""The sorted-set queue layer's public API: :class:`QueueLayer`.

Open it with :func:`~anyio_layer.queue.factory.open_redis_layer`; everything
it runs lives inside that ``async with`` block::

    async with open_redis_layer(hosts=["redis://localhost:6379"]) as layer:
        async with layer.open_channel("room") as channel:
            await layer.group_send("room", {"type": "chat.message", "text": "hi"})
            message = await channel.receive()

This module owns what each call does: validating, the one round trip of a
send, group membership, and taking a message from a local buffer. It must
not touch a connection (every command goes through the
:class:`~anyio_layer.queue.keyspace.KeySpace`) nor run tasks of its own (the
reader tasks are :mod:`.readers`'s). Data layout and message encoding are
channels_redis 4.x's (see :mod:`.keyspace` and :mod:`.codec`), so processes
running either library can share one Redis during a migration.

How messages move:

* :meth:`QueueLayer.send` is one round trip: a Lua script (:mod:`.scripts`)
  prunes expired messages, refuses the message if the channel is at capacity
  (:class:`~anyio_layer.exceptions.ChannelFull`), adds it with the current
  time as its score and refreshes the key's TTL.
* Process-local channels (``new_channel()`` names, with a ``!``) are read from
  Redis by one reader task per key into local buffers (:mod:`.readers`);
  :meth:`QueueLayer.receive` only waits on the channel's buffer.
* A message for one of this layer's *own* local channels (named by its
  ``new_channel()``), by ``send()`` or as a ``group_send()`` member, goes
  straight into the channel's buffer: sender and receiver share the layer, so
  Redis would only add two round trips. The receiver still gets a decoded
  copy, and the channel's capacity still applies (ChannelFull when its buffer
  is full). Every message this layer sends to its own channel takes that
  path, so its order is kept.
* Normal channels (no ``!``, e.g. a worker queue shared by many processes):
  :meth:`QueueLayer.receive` pops from Redis directly (:mod:`.receive`).

Cancellation contract (tested in ``tests/test_cancellation_layer.py``):
cancelling :meth:`~QueueLayer.receive` at any moment leaves every message that
:meth:`~QueueLayer.send` accepted available to the next ``receive()`` on that
channel, exactly once. For local channels, ``receive()`` waits for the buffer
to be non-empty and then takes a message without any further checkpoint, so
there is no moment at which a message belongs to a cancelled receiver. For
normal channels, a pop that completes just as its receiver is cancelled is
put back in Redis at its original score. Cancelling :meth:`~QueueLayer.send`
or :meth:`~QueueLayer.group_send` either sent the message or did not; it
never disturbs the connection. Each coroutine states its own contract.
The rest of the layer's behaviour is covered by ``tests/test_queue_layer.py``
and ``tests/test_queue_cluster.py``.

Group memberships of this layer's own channels are leases, renewed while the
channel lives and restored after a server lost them (:mod:`.leases`).

Failures: when Redis goes away, ``send()`` and friends wait for a connection
for up to the host's ``reconnect_timeout`` (default 5 s; a command that may
have reached the server is never sent again), then fail with
:class:`~anyio_layer.exceptions.RedisConnectionError` (nothing is queued in
memory). Receivers keep waiting: the reader tasks and normal-channel
receivers retry with back-off and resume delivering after the server is
back, without being called again. On a Redis Cluster the same holds while the
cluster refuses commands (``CLUSTERDOWN`` during a failover, or a whole shard
down): senders get :class:`~anyio_layer.exceptions.ClusterUnavailableError`
once the client's own retries are used up, receivers keep waiting.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Final

import anyio.abc

from ..common.channels import LocalBuffer, ScopedChannels
from ..exceptions import ChannelFull, InvalidChannelName, LayerClosedError
from ..messages import (
    MessageSerializer,
    is_process_local,
    new_channel_name,
    non_local_name,
    random_client_prefix,
    validate_channel_name,
    validate_group_name,
)
from .codec import RESERVED_KEY, MessageCodec, check_message
from .groups import GroupCommands
from .keyspace import KeySpace
from .leases import Leases
from .options import CapacityRules
from .readers import LocalReaders
from .receive import NormalReceivers
from .replies import send_counts
from .scripts import SEND
from .statistics import Counters, LayerStatistics

__all__ = ["QueueLayer"]

logger = logging.getLogger("anyio_layer")


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
        self._counters = Counters()
        codec = MessageCodec(serializer, max_message_size, self._counters)
        self._encode = codec.encode
        self._decode = codec.decode
        self._local = LocalReaders(
            keys=keys,
            task_group=task_group,
            codec=codec,
            counters=self._counters,
            capacities=capacities,
            expiry=expiry,
            ttl=self._ttl,
        )
        #: The local readers' buffers (by channel) and reader demands (by key), shared.
        self._buffers = self._local.buffers
        self._readers = self._local.demands
        self._normal = NormalReceivers(
            keys=keys, codec=codec, counters=self._counters, expiry=expiry, ttl=self._ttl
        )
        #: Group memberships of this layer's own channels, renewed while they live.
        self._leases = Leases(
            keys=keys,
            group_expiry=group_expiry,
            counters=self._counters,
            has_receiver=self._has_receiver,
        )
        self._groups = GroupCommands(
            keys=keys,
            local=self._local,
            leases=self._leases,
            counters=self._counters,
            codec=codec,
            capacities=capacities,
            expiry=expiry,
            group_expiry=group_expiry,
            is_own=self._is_own,
            owns=self._owns,
        )
        keys.add_connection_listener(self._leases.request_renewal)
        task_group.start_soon(self._leases.run, name="anyio_layer group leases")
        self._closed = False

    # -- sending --------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raise ChannelFull if it is at capacity.

        If cancelled, the message was either sent or not (unknown which); the
        connection stays usable. To this layer's own channels it never checkpoints.
        """
        self._check_open()
        validate_channel_name(channel)
        check_message(message)
        if is_process_local(channel):
            if self._is_own(channel):
                # Sender and receiver share this layer: no need to go through Redis.
                if not self._local.deliver((channel,), self._encode(message), time.time()):
                    self._counters.channel_full += 1
                    raise ChannelFull(f"channel {channel!r} is at capacity")
                self._counters.sent += 1
                return
            message = {**message, RESERVED_KEY: channel}
        payload = self._encode(message)
        now = time.time()
        key, server = self._keys.channel(channel)
        reply = await server.evalsha(
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
        at capacity are skipped (and counted), never raising; so are members of the group's
        set that are no valid channel name (written by another client; counted in
        ``decode_errors``).

        If cancelled, each member either got the message or did not, independently
        (this layer's own channels have it once the members are read); the
        connections stay usable.
        """
        self._check_open()
        validate_group_name(group)
        check_message(message)
        await self._groups.send(group, message)

    # -- groups ---------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; own channels hold it as a lease (:mod:`.leases`).

        Other channels' memberships expire after ``group_expiry``. If cancelled,
        the channel was either added or not; the connection stays usable.
        """
        self._check_open()
        validate_group_name(group)
        validate_channel_name(channel)
        await self._groups.add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; no error if it was not a member.

        The lease ends at once, whatever happens to the ``ZREM`` (if it fails,
        the next renewal sends it again). If cancelled, the channel was either
        removed or not; the connection stays usable.
        """
        self._check_open()
        validate_group_name(group)
        validate_channel_name(channel)
        await self._groups.discard(group, channel)

    # -- receiving ------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name that this layer can receive on.

        Never checkpoints, so cancellation does not affect it.
        """
        self._check_open()
        return new_channel_name(prefix, self.client_prefix)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel`` and return it.

        If cancelled, at any moment, no message is lost: it stays for the next
        ``receive()`` (a normal channel's last-moment pop is put back in Redis,
        which only a Redis failure at that moment can prevent).
        """
        self._check_open()
        buffer = self._buffers.get(channel)
        if buffer is None:
            validate_channel_name(channel)
            if not is_process_local(channel):
                return await self._normal.receive(channel)
            if not self._owns(non_local_name(channel)):
                raise InvalidChannelName(
                    f"channel {channel!r} was not created by this layer's new_channel(): only "
                    f"the process that created a process-local channel can receive from it"
                )
            buffer = self._buffers[channel] = LocalBuffer(self.capacities.for_channel(channel))
        # (A buffer only exists for a valid channel of this layer: known channels skip the checks.)
        local_key = non_local_name(channel)
        demand = self._readers.get(local_key)
        if demand is None:
            demand = self._local.start_reader(local_key)
        buffer.receivers += 1
        demand.update(buffer)
        self._leases.touch(channel)
        try:
            while True:
                while not buffer.messages:
                    await buffer.changed()
                # No checkpoint from here on: the message is taken and returned atomically.
                expired = buffer.drop_expired(time.time() - self.expiry)
                if not expired:
                    message = buffer.take()
                    break
                self._counters.expired += expired
                demand.update(buffer)
        finally:
            buffer.receivers -= 1
            demand.update(buffer)
            self._leases.touch(channel)
            # An idle buffer stays for the channel's next receive() (consumers call
            # again at once); the sweep forgets those left idle.
            self._local.sweep_soon()
        self._counters.received += 1
        return message

    def _is_own(self, channel: str) -> bool:
        """Whether ``channel`` was named by this very layer (not just its family)."""
        client = channel[: channel.index("!")].rsplit(".", 1)[-1]
        return client == self.client_prefix

    def _owns(self, local_key: str) -> bool:
        """Whether process-local channels under ``local_key`` are this layer's to receive."""
        client = local_key[:-1].rsplit(".", 1)[-1]
        family = self.client_prefix_family
        return client == self.client_prefix or (
            family is not None and (client == family or client.startswith(family + "-"))
        )

    def _has_receiver(self, channel: str) -> bool:
        buffer = self._buffers.get(channel)
        return buffer is not None and buffer.receivers > 0

    async def _release_channel(self, name: str) -> None:
        self._buffers.pop(name, None)
        self._leases.forget_channel(name)

    # -- maintenance ------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key under this layer's prefix on every shard, and local buffers.

        Uses ``SCAN`` and ``UNLINK`` in batches, never ``KEYS``, so it does not
        block the server however many keys there are. If cancelled, some keys
        may be deleted and others not, and the local buffers are left as they were.
        """
        self._check_open()
        await self._keys.delete_matching()
        self._local.clear()
        self._leases.clear()

    def statistics(self) -> LayerStatistics:
        return self._counters.snapshot(
            reconnects=self._keys.reconnects(),
            local_channels=sum(1 for b in self._buffers.values() if b.receivers or b.messages),
            leased_memberships=len(self._leases),
            connection_waits=self._keys.connection_waits(),
        )

    def consistent_hash(self, value: str) -> int:
        """The shard index of a channel or group name (channels_redis's public helper)."""
        return self._keys.shard_of(value)

    def __repr__(self) -> str:
        return f"<QueueLayer prefix={self.prefix!r} hosts=[{self._keys.describe()}]>"

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Refuse every later call with LayerClosedError.

        :func:`open_redis_layer` calls this as its block ends; the reader tasks
        then stop with the block's task group, and the connections with it.
        """
        self._closed = True

    async def return_unreceived(self) -> None:
        """Put messages buffered for local channels back in Redis, each at its original score.

        :func:`open_redis_layer` calls this once the readers are stopped, shielded
        and bounded in time; a key whose put-back fails loses its messages (logged).
        If cancelled, messages not put back yet are lost: the buffers are emptied first.
        """
        await self._local.return_unreceived()

    def _check_open(self) -> None:
        if self._closed:
            raise LayerClosedError("the channel layer is closed (its async with block has exited)")
