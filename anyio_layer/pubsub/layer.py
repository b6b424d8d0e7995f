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

**Redis Cluster** (``hosts`` of ``redis+cluster://`` seeds, see
:mod:`anyio_layer.redis.hosts`) uses *sharded* pub/sub, which needs Redis (or
Valkey) 7 or later: a Redis channel belongs to the hash slot of its name, like
a key, and lives on the primary serving that slot. ``send()`` and
``group_send()`` are one ``SPUBLISH`` routed by the name's slot (redirections
are followed; a ``SPUBLISH`` that failed with a connection error is not
retried, since it may have been delivered). Subscriptions are ``SSUBSCRIBE``:
one subscriber connection per primary that serves a slot of a subscribed name
(not one per channel), carrying every name of those slots. The same
names and encoding as on a single server are used, and a name's slot is that
of the whole name, so channels spread over the cluster. On a Redis 6.2
cluster, which has no sharded pub/sub, the first ``send()`` or subscription
raises :class:`~anyio_layer.exceptions.ConfigurationError`.

Delivery is pub/sub's: a message published while nobody is subscribed, or
while a subscriber connection is down, is gone. That is why the layer tells
consumers about gaps: when a subscription is lost, every local channel that
listens on it (itself or through a group) gets one ``{"type": on_disconnect}``
message, and once every subscription lost in that event is back, each of
those channels gets one ``{"type": on_reconnect}``. An event is a subscriber
connection that drops (all of its subscriptions at once) or, on a cluster, a
slot that moves away from the node we subscribed on (its channels). Between
the two messages the layer reconnects and resubscribes with back-off.

On a cluster, a slot moves when it is migrated (resharding) or when its
primary fails over. The node that gives up a slot pushes an ``sunsubscribe``
for each of its channels; a node that dies drops the connection. Either way
the layer re-learns the topology and subscribes those names on the slot's
new owner (backing off while no node can be reached, or while the topology
is still settling). **Messages published to a slot between the moment its
subscription is lost and the moment it is back are lost**: after a
migration that is normally a few milliseconds, during a failover it is
until a replica has taken over (about ``cluster-node-timeout`` plus the
election, seconds). This is inherent to Redis pub/sub, and the reason
``on_disconnect`` / ``on_reconnect`` exist.

Cancelling :meth:`~PubSubLayer.receive` loses nothing that was buffered.
Channels stay subscribed until :meth:`~PubSubLayer.close_channel` (or the end
of an :meth:`~PubSubLayer.open_channel` block); the Channels adapter decides
when to close channels, since Channels has no delete-channel call.
Cancelling ``new_channel()`` or a first ``receive()`` while it waits for the
server's confirmation leaves no stray subscription: a command already written
is followed by its opposite, and the layer's view of what is subscribed always
converges to the server's. A cancelled (or timed-out) ``group_add()`` counts
as done: the channel is in the group, and the group's subscription completes
in the background.

Local buffers hold at most ``capacity`` messages per channel; when a consumer
falls that far behind, its oldest message is dropped, logged and counted in
:attr:`PubSubStatistics.local_buffer_overflows`.

This module owns the public API and the layer's in-process state (channels,
groups, idle times). It must NOT touch sockets or replies (``subscriber``,
``subscriber_protocol``) nor decide which connection carries a name
(``placement``). Covered by ``tests/test_pubsub_layer.py``,
``tests/test_cancellation_pubsub.py``, ``tests/test_channels_redis_pubsub_compat.py``
and ``tests/test_pubsub_cluster.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.abc

from ..common.channels import LayerChannel, LocalBuffer, ScopedChannels
from ..common.sharding import consistent_hash
from ..exceptions import (
    ConfigurationError,
    InvalidChannelName,
    InvalidMessage,
    LayerClosedError,
    ResponseError,
)
from ..messages import (
    MessageSerializer,
    serialize_within,
    validate_channel_name,
    validate_group_name,
)
from ..redis.cluster import ClusterClient
from ..redis.pool import ConnectionPool
from .cluster_placement import ClusterSubscriptions
from .delivery import LocalDelivery
from .janitor import close_idle_channels
from .outages import Outages
from .placement import ShardedSubscriptions, SubscriptionEvents, Subscriptions
from .statistics import Counters, PubSubStatistics
from .subscriber import Subscriber

__all__ = ["LayerChannel", "PubSubLayer", "PubSubStatistics"]


class PubSubLayer(ScopedChannels):
    """A channel layer over Redis pub/sub. Create it with :func:`open_pubsub_layer`."""

    extensions: Final = ("groups", "flush")

    def __init__(
        self,
        *,
        pools: Sequence[ConnectionPool] = (),
        cluster: ClusterClient | None = None,
        task_group: anyio.abc.TaskGroup,
        prefix: str,
        capacity: int,
        serializer: MessageSerializer,
        max_message_size: int,
        on_disconnect: str | None,
        on_reconnect: str | None,
        idle_channel_timeout: float | None = None,
        dict_messages_only: bool = True,
    ) -> None:
        self._task_group = task_group
        self.prefix = prefix
        self.capacity = capacity
        self.serializer = serializer
        self.max_message_size = max_message_size
        #: Whether only dicts may be sent and are delivered (see :func:`open_pubsub_layer`).
        self.dict_messages_only = dict_messages_only
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        #: Local channels and their buffers.
        self._channels: dict[str, LocalBuffer] = {}
        #: Group Redis channel -> member local channels.
        self._groups: dict[str, set[str]] = {}
        self._counters = Counters()
        self._closed = False
        #: Close channels nobody has received from for this long (None: never).
        self.idle_channel_timeout = idle_channel_timeout
        self._idle_since: dict[str, float] = {}
        self._janitor_started = False
        delivery = LocalDelivery(
            self._channels, self._groups, serializer, self._counters, dict_messages_only
        )
        outages = Outages(delivery, self._counters, on_disconnect, on_reconnect)
        events = SubscriptionEvents(
            deliver=delivery.deliver,
            names_lost=outages.names_lost,
            names_restored=outages.names_restored,
            names_abandoned=outages.names_abandoned,
        )
        self._subscriptions: Subscriptions
        if cluster is not None:
            where = f"the Redis Cluster at {', '.join(map(str, cluster.seeds))}"
            self._subscriptions = ClusterSubscriptions(events, task_group, cluster, where)
        elif pools:
            self._subscriptions = ShardedSubscriptions(events, task_group, pools)
        else:
            raise ConfigurationError("the pub/sub layer needs at least one server or a cluster")

    # -- the channel layer API ------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Publish ``message`` to ``channel`` (lost if nobody is subscribed).

        Cancelled, it published the message once or not at all, and the
        connection stays usable.
        """
        self._check_open()
        validate_channel_name(channel)
        payload = self._encode(message)
        await self._subscriptions.publish(channel, payload)
        self._counters.sent += 1

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish ``message`` once to the group's Redis channel.

        Cancelled, it published the message once or not at all, and the
        connection stays usable.
        """
        self._check_open()
        validate_group_name(group)
        payload = self._encode(message)
        await self._subscriptions.publish(self._group_channel(group), payload)
        self._counters.group_sends += 1

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Create and subscribe a new channel, named as channels_redis's pub/sub layer does.

        Cancelled (or timed out), it leaves no channel and no subscription
        behind: a SUBSCRIBE already written is followed by an UNSUBSCRIBE.
        """
        self._check_open()
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        validate_channel_name(channel)
        await self._open(channel)
        return channel

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``, subscribing it first if needed.

        Cancelling loses nothing: the message stays buffered for the next call;
        cancelled while subscribing the channel, it undoes that subscription
        unless the channel has another receiver or a buffered message.
        """
        self._check_open()
        buffer = self._channels.get(channel)
        if buffer is None:  # names of known channels were validated when they were opened
            validate_channel_name(channel)
            buffer = await self._open(channel)
        buffer.receivers += 1
        self._idle_since.pop(channel, None)
        try:
            while not buffer.messages:
                await buffer.changed()
            # No checkpoint from here on: the message is taken and returned atomically.
            message = buffer.take()
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
        """Add a channel of this process to ``group`` (subscribing the group if needed).

        Cancelled (or timed out), it counts as done: the channel is in the
        group, and the group's subscription completes in the background.
        """
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
        try:
            await self._subscriptions.subscribe(group_channel)
        except (ResponseError, ConfigurationError):
            # Refused for good (a timeout keeps the group wanted: it is retried).
            await self._leave(group_channel, channel)
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; unsubscribe the group when it has no local member.

        Cancellation does not interrupt it: its only await is a shielded UNSUBSCRIBE write.
        """
        self._check_open()
        validate_group_name(group)
        validate_channel_name(channel)
        await self._leave(self._group_channel(group), channel)

    async def close_channel(self, channel: str) -> None:
        """Unsubscribe ``channel``, take it out of its groups and drop its buffer.

        Cancellation does not interrupt it: its only awaits are shielded UNSUBSCRIBE writes.
        """
        self._check_open()
        buffer = self._channels.pop(channel, None)
        self._idle_since.pop(channel, None)
        if buffer is None:
            return
        buffer.close()
        for group_channel in [g for g, members in self._groups.items() if channel in members]:
            await self._leave(group_channel, channel)
        await self._subscriptions.unsubscribe(channel)

    async def flush(self) -> None:
        """Unsubscribe everything and forget every channel, group and buffered message.

        Cancellation does not interrupt it: its only awaits are shielded UNSUBSCRIBE writes.
        """
        self._check_open()
        for name in self._subscriptions.names():
            await self._subscriptions.unsubscribe(name)
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
            subscriptions=self._subscriptions.subscription_count(),
            subscriber_connections=self._subscriptions.connection_count(),
        )

    def consistent_hash(self, value: str) -> int:
        """The shard index of a channel name or group channel name (0 on a cluster)."""
        subscriptions = self._subscriptions
        if isinstance(subscriptions, ShardedSubscriptions):
            return consistent_hash(value, len(subscriptions.shards))
        return 0  # one cluster is one logical server

    def __repr__(self) -> str:
        return f"<PubSubLayer prefix={self.prefix!r} {self._subscriptions.describe()}>"

    # -- internals ------------------------------------------------------------------

    async def _release_channel(self, name: str) -> None:
        if not self._closed:
            await self.close_channel(name)

    def _start_janitor(self) -> None:
        timeout = self.idle_channel_timeout
        if timeout is not None and not self._janitor_started:
            self._janitor_started = True
            self._task_group.start_soon(
                close_idle_channels,
                self._idle_since,
                timeout,
                self.close_channel,
                name="anyio_layer janitor",
            )

    def mark_closed(self) -> None:
        """Make every later call raise LayerClosedError (its factory's block has exited)."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LayerClosedError("the channel layer is closed (its async with block has exited)")

    @property
    def _subscribers(self) -> list[Subscriber]:
        """Every subscriber: one per server, or one per cluster node used so far."""
        return self._subscriptions.subscribers()

    def _group_channel(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"

    async def _open(self, channel: str) -> LocalBuffer:
        buffer = self._channels.get(channel)
        if buffer is None:
            buffer = self._channels[channel] = LocalBuffer(self.capacity)
            self._idle_since[channel] = time.monotonic()
            self._start_janitor()
        try:
            await self._subscriptions.subscribe(channel)
        except BaseException:
            if not buffer.receivers and not buffer.messages:
                self._channels.pop(channel, None)
                await self._subscriptions.unsubscribe(channel)
            raise
        return buffer

    async def _leave(self, group_channel: str, channel: str) -> None:
        members = self._groups.get(group_channel)
        if not members or channel not in members:
            return
        members.discard(channel)
        if not members:
            del self._groups[group_channel]
            await self._subscriptions.unsubscribe(group_channel)

    def _encode(self, message: object) -> bytes:
        if not isinstance(message, dict) and self.dict_messages_only:
            raise InvalidMessage(f"message must be a dict, not {type(message).__name__}")
        return serialize_within(self.serializer, message, self.max_message_size)
