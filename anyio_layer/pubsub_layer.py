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
:mod:`anyio_layer._hosts`) uses *sharded* pub/sub, which needs Redis (or
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
Cancelling ``new_channel()``, ``group_add()`` or a first ``receive()`` while it
waits for the server's confirmation leaves no stray subscription: a command
already written is followed by its opposite, and the layer's view of what is
subscribed always converges to the server's.

Local buffers hold at most ``capacity`` messages per channel; when a consumer
falls that far behind, its oldest message is dropped, logged and counted in
:attr:`PubSubStatistics.local_buffer_overflows`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc

from ._cluster import ClusterClient, key_slot, open_cluster
from ._config import positive_number, require_prefix
from ._connection import Connection
from ._hosts import ClusterConfig, TCPAddress, parse_hosts
from ._local import LayerChannel, LocalBuffer, ScopedChannels
from ._pool import MAX_BACKOFF, ConnectionPool, open_pool
from ._resp import Arg, ErrorReply, encode_commands
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
    RedisError,
    RedisTimeoutError,
    ResponseError,
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
#: Replies to SSUBSCRIBE that mean "not here, or not now": find the slot's owner and retry.
_REROUTE_CODES: Final = frozenset({"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "LOADING"})
#: After this long without a resubscription round, the next one starts without back-off.
_QUIET_PERIOD: Final = 2 * MAX_BACKOFF


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
    #: Subscription losses (a subscriber connection dropped, or on a cluster a
    #: slot moved away), and recoveries from them with every lost subscription
    #: restored: one each per event, however many channels it concerned.
    disconnects: int
    reconnects: int
    #: Redis channels (local channels and groups) currently subscribed.
    subscriptions: int
    #: Subscriber connections currently open (one per server or cluster node in use).
    subscriber_connections: int


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


@dataclass(frozen=True, slots=True)
class _Dialect:
    """The commands and reply kinds of plain or sharded pub/sub."""

    subscribe: str
    unsubscribe: str
    message: bytes
    subscribed: bytes
    unsubscribed: bytes


_PLAIN: Final = _Dialect("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
_SHARDED: Final = _Dialect(
    "SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe"
)


class _Command:
    """A (un)subscribe command (or a health check) whose closing PING has not come back."""

    __slots__ = ("error", "names", "token")

    def __init__(self, token: bytes, names: Sequence[str]) -> None:
        self.token = token
        self.names = names
        self.error: ErrorReply | None = None


class _Outage:
    """Names whose subscription was lost together, and the channels told about it."""

    __slots__ = ("cause", "listeners", "names")

    def __init__(self, cause: object) -> None:
        self.cause = cause
        self.names: set[str] = set()
        self.listeners: dict[str, None] = {}


class _Subscriber:
    """One subscriber connection to one server, and the subscriptions it should carry.

    ``wanted`` is the desired state; the reader task makes the connection
    converge to it after every (re)connect, and every (un)subscribe command is
    written at once while connected. A name is *confirmed* when the server
    acknowledged its last subscribe command and no command for it is in
    flight.

    Each command is followed by a ``PING`` with a token, in the same write:
    the ``pong`` (or, outside subscribe mode, the bare token) closes the
    command, so an error reply is attributed to the right command even though
    it names no channel, and an ``unsubscribe`` the server pushes on its own
    (on a cluster, when a slot moves away) cannot be mistaken for the reply to
    one of ours. When a command closes, what the server said about each of its
    names (``*subscribe`` / ``*unsubscribe`` replies, in order) is compared
    with what is wanted: names subscribed but no longer wanted are
    unsubscribed again, names wanted but refused are reported to the owner.

    The owner (:class:`_ShardedSubscriptions` or :class:`_ClusterSubscriptions`)
    decides what happens to names after a refusal, a dropped connection or a
    server-side unsubscribe.
    """

    def __init__(self, owner: _Subscriptions, dialect: _Dialect, label: str) -> None:
        self.owner = owner
        self.dialect = dialect
        self.label = label
        self.wanted: set[str] = set()
        self.confirmed: set[str] = set()
        self._in_flight: dict[str, int] = {}
        #: What the server says this connection is subscribed to.
        self._on_server: set[str] = set()
        self._pending: deque[_Command] = deque()
        self._tokens = itertools.count(1)
        #: Commands decided while reading, written once the replies at hand are handled.
        self._deferred: list[tuple[str, list[str]]] = []
        self._connection: Connection | None = None
        self._write_lock = anyio.Lock()
        self._started = False
        self._wakeup: anyio.Event | None = None
        self._serve_scope: anyio.CancelScope | None = None
        self._awaiting_ping = False
        self._message_kind = dialect.message
        self._dispatch = owner.layer._dispatch

    # -- to be provided by subclasses ------------------------------------------------

    async def _open_pool(self) -> ConnectionPool:
        raise NotImplementedError

    def _batches(self, names: list[str]) -> list[list[str]]:
        """Split the names of one (un)subscribe into commands the server accepts."""
        return [names]

    # -- called by the owner ------------------------------------------------------------

    def is_confirmed(self, name: str) -> bool:
        return name in self.confirmed and name not in self._in_flight

    async def subscribe(self, names: Collection[str]) -> None:
        """Want ``names`` here and subscribe them now if connected (else on connect)."""
        self.wanted.update(names)
        self._start()
        if self._connection is not None:
            with contextlib.suppress(RedisConnectionError):  # then the reconnect subscribes them
                await self._write(self.dialect.subscribe, names)

    async def unsubscribe(self, name: str) -> None:
        self.wanted.discard(name)
        self.confirmed.discard(name)
        if self._connection is not None:
            with contextlib.suppress(RedisConnectionError):  # then it is gone anyway
                await self._write(self.dialect.unsubscribe, (name,))

    def forget(self, names: Iterable[str]) -> None:
        """Stop wanting ``names`` here without a command (they are not subscribed here)."""
        for name in names:
            self.wanted.discard(name)
            self.confirmed.discard(name)

    def retire(self) -> None:
        """Close the connection if it carries nothing (its server serves no slot any more)."""
        if not self.wanted and not self._in_flight and self._serve_scope is not None:
            self._serve_scope.cancel()

    def defer(self, verb: str, names: list[str]) -> None:
        """Have the reader write a command once it has handled the replies at hand."""
        self._deferred.append((verb, names))

    @property
    def connected(self) -> bool:
        return self._connection is not None

    # -- the reader task ------------------------------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self.owner.layer._task_group.start_soon(
                self._run, name=f"anyio_layer subscriber {self.label}"
            )
        elif self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        delay = 0.0
        while True:
            while not self.wanted:  # connect only for something to subscribe
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            self._wakeup = None
            connected = False
            try:
                with anyio.CancelScope() as self._serve_scope:  # retire() cancels it
                    pool = await self._open_pool()
                    async with pool.connection() as connection:
                        connection.broken = True  # in subscribe mode: never back to the pool
                        connected = True
                        await self._serve(connection)
            except RedisError as exc:
                logger.warning("subscriber for %s lost: %s", self.label, exc)
            finally:
                self._serve_scope = None
                self._connection = None
                self.confirmed.clear()
                self._in_flight.clear()
                self._on_server.clear()
                self._pending.clear()
                self._deferred.clear()
                self.owner.notify()
            if self.wanted:
                self.owner.dropped(self)
            if connected:
                delay = _MIN_RETRY_DELAY
            else:
                delay = min(max(delay * 2, _MIN_RETRY_DELAY), MAX_BACKOFF)
            await anyio.sleep(delay)

    async def _serve(self, connection: Connection) -> None:
        self._connection = connection
        self._awaiting_ping = False
        if self.wanted:
            await self._write(self.dialect.subscribe, sorted(self.wanted))
        handle = self._handle
        while True:
            # One scope per silent period, its deadline pushed back as data
            # arrives: cheaper than a new timeout around every read.
            with anyio.CancelScope(deadline=anyio.current_time() + HEALTH_CHECK_INTERVAL) as scope:
                while True:
                    data = await connection.receive_raw()
                    scope.deadline = anyio.current_time() + HEALTH_CHECK_INTERVAL
                    self._awaiting_ping = False
                    for reply in connection.feed_and_drain(data):
                        handle(reply)
                    while self._deferred:
                        verb, names = self._deferred.pop(0)
                        await self._write(verb, names)
            if self._awaiting_ping:
                raise RedisConnectionError(
                    f"subscriber connection to {self.label} stopped answering"
                )
            self._awaiting_ping = True
            await self._write(None, ())

    def _handle(self, reply: object) -> None:
        # The hot path: a published message.
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == self._message_kind:
            channel, data = reply[1], reply[2]
            if isinstance(channel, bytes) and isinstance(data, bytes):
                self._dispatch(channel.decode(), data)
                return
        self._handle_control(reply)

    def _handle_control(self, reply: object) -> None:
        if isinstance(reply, ErrorReply):
            if not self._pending:
                raise ProtocolError(f"unexpected error on a subscriber connection: {reply.message}")
            command = self._pending[0]
            if command.error is None:
                command.error = reply
            return
        if isinstance(reply, bytes):  # PING's reply outside subscribe mode: the bare token
            self._close_command(reply)
            return
        if not (isinstance(reply, list) and len(reply) >= 2 and isinstance(reply[0], bytes)):
            raise ProtocolError(f"unexpected reply on a subscriber connection: {reply!r:.100}")
        kind, subject = reply[0], reply[1]
        if kind == b"pong":
            if not isinstance(subject, bytes):
                raise ProtocolError(f"unexpected PING reply: {reply!r:.100}")
            self._close_command(subject)
            return
        if not isinstance(subject, bytes):
            return  # e.g. an unsubscribe from nothing at all
        name = subject.decode()
        if kind == self.dialect.subscribed:
            self._on_server.add(name)
        elif kind == self.dialect.unsubscribed:
            self._on_server.discard(name)
            # Our own unsubscribe commands are for names already unconfirmed:
            # a confirmed name was dropped by the server (its slot moved).
            if name in self.confirmed:
                self.confirmed.discard(name)
                self.owner.unsubscribed_by_server(self, name)
        # Anything else (a message of the other dialect): nothing to do.

    def _close_command(self, token: bytes) -> None:
        pending = self._pending
        if not pending or pending[0].token != token:
            raise ProtocolError(f"unexpected PING reply {token!r:.60} on a subscriber connection")
        command = pending.popleft()
        if not command.names:
            return  # a health check
        in_flight = self._in_flight
        confirmed: list[str] = []
        refused: list[str] = []
        stray: list[str] = []
        for name in command.names:
            remaining = in_flight[name] - 1
            if remaining:
                in_flight[name] = remaining
                continue
            del in_flight[name]
            if name in self.wanted:
                if name in self._on_server:
                    self.confirmed.add(name)
                    confirmed.append(name)
                else:
                    refused.append(name)
            else:
                self.confirmed.discard(name)
                if name in self._on_server:
                    stray.append(name)  # unwanted while its subscription was on its way
        if stray:
            self.defer(self.dialect.unsubscribe, stray)
        if refused:
            self.owner.refused(self, refused, command.error)
        self.owner.settled(confirmed)

    async def _write(self, verb: str | None, names: Collection[str]) -> None:
        """Write ``verb`` for ``names`` (None: a health check), each command closed by a PING."""
        connection = self._connection
        if connection is None:
            raise RedisConnectionError(f"no subscriber connection to {self.label}")
        # Shielded as a whole, lock included: a command is counted in flight
        # only once it is certain to be written, and never half written.
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                if self._connection is not connection:
                    raise RedisConnectionError(f"subscriber connection to {self.label} lost")
                if verb is not None:
                    # Decided now, under the lock, by what is wanted at this moment:
                    # a name (un)wanted again while this call waited is not sent,
                    # the call that changed it writes its own command.
                    wanted = self.wanted
                    subscribing = verb == self.dialect.subscribe
                    names = [name for name in names if (name in wanted) is subscribing]
                    if not names:
                        return
                commands: list[Sequence[Arg]] = []
                batches = self._batches(list(names)) if verb is not None else [[]]
                for batch in batches:
                    token = b"%d" % next(self._tokens)
                    if verb is not None:
                        commands.append((verb, *batch))
                    commands.append(("PING", token))
                    self._pending.append(_Command(token, batch))
                    for name in batch:
                        self._in_flight[name] = self._in_flight.get(name, 0) + 1
                try:
                    await connection.send(encode_commands(commands))
                except BaseException:
                    await connection.aclose()  # so that the reader notices too
                    raise


class _Shard(_Subscriber):
    """The subscriber connection of one server (or Sentinel-managed primary)."""

    def __init__(self, owner: _Subscriptions, pool: ConnectionPool) -> None:
        super().__init__(owner, _PLAIN, str(pool.config))
        self.pool = pool

    async def _open_pool(self) -> ConnectionPool:
        return self.pool


class _NodeSubscriber(_Subscriber):
    """The sharded-pub/sub subscriber connection to one primary of a Redis Cluster."""

    def __init__(self, owner: _Subscriptions, client: ClusterClient, address: TCPAddress) -> None:
        super().__init__(owner, _SHARDED, str(address))
        self.client = client
        self.address = address
        self.pool: ConnectionPool | None = None

    async def _open_pool(self) -> ConnectionPool:
        if self.pool is None:
            self.pool = await self.client.node_pool(self.address)
        return self.pool

    def _batches(self, names: list[str]) -> list[list[str]]:
        # One SSUBSCRIBE / SUNSUBSCRIBE may only name channels of one slot.
        by_slot: dict[int, list[str]] = {}
        for name in names:
            by_slot.setdefault(key_slot(name), []).append(name)
        return list(by_slot.values())


class _Subscriptions:
    """Where the layer's Redis channels are subscribed, and what to do when that fails.

    The layer asks it to subscribe and unsubscribe names and to publish;
    the subscribers it owns report back through :meth:`dropped`,
    :meth:`unsubscribed_by_server`, :meth:`refused` and :meth:`settled`.
    """

    def __init__(self, layer: PubSubLayer) -> None:
        self.layer = layer
        #: Names whose subscription the server refused for good, with the error to raise.
        self.failures: dict[str, Exception] = {}
        self._changed = anyio.Event()

    # -- to be provided by subclasses ------------------------------------------------

    def subscribers(self) -> list[_Subscriber]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """Every name currently wanted."""
        raise NotImplementedError

    def is_confirmed(self, name: str) -> bool:
        raise NotImplementedError

    async def _want(self, name: str) -> None:
        """Want ``name``, and subscribe it now where possible (synchronously up to the write)."""
        raise NotImplementedError

    def _unwant(self, name: str) -> _Subscriber | None:
        """Stop wanting ``name``; return the subscriber that may carry it."""
        raise NotImplementedError

    async def publish(self, name: str, payload: bytes) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def dropped(self, subscriber: _Subscriber) -> None:
        """``subscriber`` lost its connection (or could not connect) while wanting names."""
        raise NotImplementedError

    def unsubscribed_by_server(self, subscriber: _Subscriber, name: str) -> None:
        """The server dropped the confirmed subscription of ``name`` on its own."""
        raise NotImplementedError

    def refused(self, subscriber: _Subscriber, names: list[str], error: ErrorReply | None) -> None:
        """The subscribe command for wanted ``names`` did not subscribe them."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------

    async def subscribe(self, name: str) -> None:
        """Subscribe ``name`` and wait until the server confirms it."""
        self.failures.pop(name, None)
        if self.is_confirmed(name):
            return
        await self._want(name)
        try:
            with anyio.fail_after(SUBSCRIBE_TIMEOUT):
                while not self.is_confirmed(name):
                    failure = self.failures.get(name)
                    if failure is not None:
                        raise copy.copy(failure)
                    await self._changed.wait()
        except TimeoutError:
            raise RedisTimeoutError(
                f"{self.describe()} did not confirm the subscription to {name!r} within "
                f"{SUBSCRIBE_TIMEOUT} seconds; it stays wanted and is retried on reconnect"
            ) from None

    async def unsubscribe(self, name: str) -> None:
        self.failures.pop(name, None)
        subscriber = self._unwant(name)
        self.layer._names_restored((name,))  # an outage does not wait for names nobody wants
        if subscriber is not None:
            await subscriber.unsubscribe(name)

    def settled(self, confirmed: list[str]) -> None:
        """Commands closed on a subscriber; ``confirmed`` are now subscribed there."""
        if confirmed:
            self.layer._names_restored(confirmed)
        self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def subscription_count(self) -> int:
        return sum(len(subscriber.confirmed) for subscriber in self.subscribers())

    def connection_count(self) -> int:
        return sum(subscriber.connected for subscriber in self.subscribers())

    def _fail(self, subscriber: _Subscriber, names: Iterable[str], error: Exception) -> None:
        """Give up on ``names``: their waiters raise ``error``."""
        names = list(names)
        for name in names:
            logger.error("could not subscribe %r: %s", name, error)
            self.failures[name] = error
            self._unwant(name)
        subscriber.forget(names)
        self.layer._names_restored(names)


class _ShardedSubscriptions(_Subscriptions):
    """Independent servers: a name lives on the server channels_redis's ring hashes it to."""

    def __init__(self, layer: PubSubLayer, pools: Sequence[ConnectionPool]) -> None:
        super().__init__(layer)
        self.shards = [_Shard(self, pool) for pool in pools]

    def shard(self, name: str) -> _Shard:
        return self.shards[consistent_hash(name, len(self.shards))]

    def subscribers(self) -> list[_Subscriber]:
        return list(self.shards)

    def names(self) -> list[str]:
        return [name for shard in self.shards for name in shard.wanted]

    def is_confirmed(self, name: str) -> bool:
        return self.shard(name).is_confirmed(name)

    async def _want(self, name: str) -> None:
        await self.shard(name).subscribe((name,))

    def _unwant(self, name: str) -> _Subscriber | None:
        return self.shard(name)  # its unsubscribe() stops wanting it

    async def publish(self, name: str, payload: bytes) -> None:
        await self.shard(name).pool.execute("PUBLISH", name, payload)

    def describe(self) -> str:
        return f"Redis at {', '.join(str(shard.pool.config) for shard in self.shards)}"

    def dropped(self, subscriber: _Subscriber) -> None:
        # The names stay wanted: the subscriber reconnects and subscribes them again.
        self.layer._names_lost(subscriber.wanted)

    def unsubscribed_by_server(self, subscriber: _Subscriber, name: str) -> None:
        self.layer._names_lost((name,))
        subscriber.defer(subscriber.dialect.subscribe, [name])

    def refused(self, subscriber: _Subscriber, names: list[str], error: ErrorReply | None) -> None:
        if error is None:  # unsubscribed again before the command closed: subscribe again
            subscriber.defer(subscriber.dialect.subscribe, names)
            return
        self._fail(
            subscriber,
            names,
            ResponseError(f"{subscriber.label} refused to subscribe: {error.message}", error.code),
        )


class _ClusterSubscriptions(_Subscriptions):
    """Sharded pub/sub on a Redis Cluster: each name on the primary serving its slot.

    ``home`` maps each placed name to the node subscriber that wants it.
    Names whose node is not known yet, or whose subscription was lost or
    redirected, wait in ``_unplaced`` for the placer task, which re-learns the
    topology (backing off while that, or the subscription, keeps failing) and
    hands them to the subscriber of their slot's current owner.
    """

    def __init__(self, layer: PubSubLayer, client: ClusterClient, where: str) -> None:
        super().__init__(layer)
        self.client = client
        self._where = where
        self.nodes: dict[TCPAddress, _NodeSubscriber] = {}
        self.home: dict[str, _NodeSubscriber] = {}
        self.wanted: set[str] = set()
        self._unplaced: set[str] = set()
        self._stale = False  # the topology must be re-learned before placing
        self._placer_started = False
        self._placer_wakeup: anyio.Event | None = None

    def subscribers(self) -> list[_Subscriber]:
        return list(self.nodes.values())

    def names(self) -> list[str]:
        return list(self.wanted)

    def is_confirmed(self, name: str) -> bool:
        subscriber = self.home.get(name)
        return subscriber is not None and subscriber.is_confirmed(name)

    async def _want(self, name: str) -> None:
        self.wanted.add(name)
        subscriber = self.home.get(name)
        if subscriber is None:
            if name in self._unplaced:
                return  # the placer will
            node = self.client.node_for_slot(key_slot(name))
            if node is None or not isinstance(node.address, TCPAddress):
                self._unplace((name,), stale=False)  # the topology is not known yet
                return
            subscriber = self.home[name] = self._node(node.address)
        await subscriber.subscribe((name,))

    def _unwant(self, name: str) -> _Subscriber | None:
        self.wanted.discard(name)
        self._unplaced.discard(name)
        return self.home.pop(name, None)

    async def publish(self, name: str, payload: bytes) -> None:
        try:
            await self.client.execute("SPUBLISH", name, payload, key=name)
        except ResponseError as exc:
            if "unknown command" in exc.message.lower():
                raise _needs_redis_7(self.describe()) from None
            raise

    def describe(self) -> str:
        return self._where

    def dropped(self, subscriber: _Subscriber) -> None:
        names = list(subscriber.wanted)
        self.layer._names_lost(names)
        self._reroute(subscriber, names)

    def unsubscribed_by_server(self, subscriber: _Subscriber, name: str) -> None:
        # The node pushes one sunsubscribe per channel of a slot it gave up: one event.
        self.layer._names_lost((name,), cause=(subscriber, key_slot(name)))
        self._reroute(subscriber, (name,))

    def refused(self, subscriber: _Subscriber, names: list[str], error: ErrorReply | None) -> None:
        if error is None or error.code in _REROUTE_CODES:
            # Not this node's slot (any more), or not now: find the owner and try again.
            self._reroute(subscriber, names)
        elif "unknown command" in error.message.lower():
            self._fail(subscriber, names, _needs_redis_7(self.describe()))
        else:
            message = f"cluster node {subscriber.label} refused to subscribe: {error.message}"
            self._fail(subscriber, names, ResponseError(message, error.code))

    # -- placing names on nodes ---------------------------------------------------------

    def _node(self, address: TCPAddress) -> _NodeSubscriber:
        subscriber = self.nodes.get(address)
        if subscriber is None:
            subscriber = self.nodes[address] = _NodeSubscriber(self, self.client, address)
        return subscriber

    def _reroute(self, subscriber: _Subscriber, names: Iterable[str]) -> None:
        """Take ``names`` away from ``subscriber`` and have the placer find their owner."""
        names = list(names)
        subscriber.forget(names)
        for name in names:
            if self.home.get(name) is subscriber:
                del self.home[name]
        self._unplace(names, stale=True)

    def _unplace(self, names: Iterable[str], *, stale: bool) -> None:
        self._unplaced.update(name for name in names if name in self.wanted)
        self._stale = self._stale or stale
        if not self._placer_started:
            self._placer_started = True
            self.layer._task_group.start_soon(self._place, name="anyio_layer cluster subscriber")
        elif self._placer_wakeup is not None:
            self._placer_wakeup.set()

    async def _place(self) -> None:
        """Hand unplaced names to the subscriber of their slot's owner, with back-off."""
        delay = 0.0
        last_round = -math.inf
        while True:
            while not self._unplaced:
                self._placer_wakeup = anyio.Event()
                await self._placer_wakeup.wait()
            self._placer_wakeup = None
            if anyio.current_time() - last_round > _QUIET_PERIOD:
                delay = 0.0  # a new event, not the same one failing again
            if delay:
                await anyio.sleep(delay)
            last_round = anyio.current_time()
            delay = min(max(delay * 2, _MIN_RETRY_DELAY), MAX_BACKOFF)
            try:
                if self._stale:
                    self._stale = False
                    await self.client.refresh_topology()
                # (This learns the topology on first use.)
                primaries = {node.address for node in await self.client.primaries()}
            except RedisError as exc:
                self._stale = True
                logger.warning("could not learn the cluster topology: %s", exc)
                continue
            for address, subscriber in self.nodes.items():
                if address not in primaries:
                    subscriber.retire()  # e.g. a former primary, now a replica
            placed: dict[_NodeSubscriber, list[str]] = {}
            for name in sorted(self._unplaced):
                node = self.client.node_for_slot(key_slot(name))
                if node is None or not isinstance(node.address, TCPAddress):
                    self._stale = True  # an uncovered slot: ask again next round
                    continue
                self._unplaced.discard(name)
                subscriber = self.home[name] = self._node(node.address)
                placed.setdefault(subscriber, []).append(name)
            # Every name is wanted by its subscriber before anything is written,
            # so a name unsubscribed meanwhile is not subscribed again.
            for subscriber, names in placed.items():
                subscriber.wanted.update(names)
            for subscriber, names in placed.items():
                await subscriber.subscribe(names)


def _needs_redis_7(where: str) -> ConfigurationError:
    return ConfigurationError(
        f"the pub/sub layer uses sharded pub/sub (SPUBLISH/SSUBSCRIBE) on a Redis Cluster, "
        f"which needs Redis or Valkey 7 or later; {where} does not support it. Upgrade the "
        f"cluster, or use the queue layer (open_redis_layer), which works with Redis 6.2"
    )


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
    ) -> None:
        self._task_group = task_group
        self._subscriptions: _Subscriptions
        if cluster is not None:
            where = f"the Redis Cluster at {', '.join(map(str, cluster.seeds))}"
            self._subscriptions = _ClusterSubscriptions(self, cluster, where)
        elif pools:
            self._subscriptions = _ShardedSubscriptions(self, pools)
        else:
            raise ConfigurationError("the pub/sub layer needs at least one server or a cluster")
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
        #: Subscriptions lost and not back yet, each in the outage that lost it.
        self._lost: dict[str, _Outage] = {}
        #: Outages not over yet, by cause (when they have one).
        self._outages: dict[object, _Outage] = {}

    # -- the channel layer API ------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Publish ``message`` to ``channel`` (lost if nobody is subscribed)."""
        self._check_open()
        validate_channel_name(channel)
        payload = self._encode(message)
        await self._subscriptions.publish(channel, payload)
        self._counters.sent += 1

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish ``message`` once to the group's Redis channel."""
        self._check_open()
        validate_group_name(group)
        payload = self._encode(message)
        await self._subscriptions.publish(self._group_channel(group), payload)
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
        try:
            await self._subscriptions.subscribe(group_channel)
        except (ResponseError, ConfigurationError):
            # Refused for good (a timeout keeps the group wanted: it is retried).
            await self._leave(group_channel, channel)
            raise

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
        await self._subscriptions.unsubscribe(channel)

    async def flush(self) -> None:
        """Unsubscribe everything and forget every channel, group and buffered message."""
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
        if isinstance(subscriptions, _ShardedSubscriptions):
            return consistent_hash(value, len(subscriptions.shards))
        return 0  # one cluster is one logical server

    def __repr__(self) -> str:
        return f"<PubSubLayer prefix={self.prefix!r} {self._subscriptions.describe()}>"

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

    @property
    def _shards(self) -> list[_Subscriber]:
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

    def _listeners_of(self, names: Iterable[str]) -> list[str]:
        """Local channels that hear something through ``names`` (each once)."""
        listeners: dict[str, None] = {}
        for name in names:
            if name in self._channels:
                listeners[name] = None
            for member in self._groups.get(name, ()):
                listeners[member] = None
        return list(listeners)

    def _names_lost(self, names: Collection[str], cause: object = None) -> None:
        """Subscriptions of ``names`` were lost: an outage, announced to their listeners.

        Names already lost (in an outage not over yet) are not announced again.
        Losses with the same ``cause`` (not None) while its outage lasts are
        one outage: channels already told about it are not told again.
        """
        lost = self._lost
        new = [name for name in names if name not in lost]
        if not new:
            return
        outage = self._outages.get(cause) if cause is not None else None
        if outage is None:
            outage = _Outage(cause)
            if cause is not None:
                self._outages[cause] = outage
            self._counters.disconnects += 1
        outage.names.update(new)
        for name in new:
            lost[name] = outage
        listeners = [c for c in self._listeners_of(new) if c not in outage.listeners]
        outage.listeners.update(dict.fromkeys(listeners))
        if self.on_disconnect:
            now = time.monotonic()
            for channel in listeners:
                self._deliver(channel, now, {"type": self.on_disconnect})

    def _names_restored(self, names: Iterable[str]) -> None:
        """``names`` are subscribed again (or no longer wanted); end the outages they complete."""
        lost = self._lost
        if not lost:
            return
        for name in names:
            outage = lost.pop(name, None)
            if outage is None:
                continue
            outage.names.discard(name)
            if outage.names:
                continue
            if outage.cause is not None and self._outages.get(outage.cause) is outage:
                del self._outages[outage.cause]
            self._counters.reconnects += 1
            if self.on_reconnect:
                now = time.monotonic()
                for channel in outage.listeners:
                    if channel in self._channels:
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

    ``hosts`` may name independent servers (sharded by channels_redis's ring),
    a Sentinel-managed primary, or the seeds of a Redis Cluster (Redis 7+:
    sharded pub/sub; see the module docstring for what a moving slot means
    for delivery). Nothing is connected before the first call that needs it.
    """
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for the pub/sub layer: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(_OPTIONS)}"
        )
    configs = parse_hosts(hosts)
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
        cluster: ClusterClient | None = None
        pools: list[ConnectionPool] = []
        if isinstance(configs, ClusterConfig):
            cluster = await stack.enter_async_context(open_cluster(configs.seeds))
        else:
            pools = [await stack.enter_async_context(open_pool(config)) for config in configs]
        async with open_service_task_group() as task_group:
            layer = PubSubLayer(
                pools=pools,
                cluster=cluster,
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
