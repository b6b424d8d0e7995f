"""Subscriber connections of the pub/sub layer: who carries which subscription.

:class:`Subscriber` owns one connection in subscribe mode and makes it carry
the names it *wants*; :class:`Subscriptions` decides which subscriber that is,
and what happens when a subscription is lost or refused:

* :class:`ShardedSubscriptions`: independent servers (plain ``SUBSCRIBE``),
  one subscriber per server, a name on the server channels_redis's ring
  hashes it to. A lost connection is re-established by its subscriber, which
  subscribes its names again.
* :class:`ClusterSubscriptions`: a Redis Cluster (sharded ``SSUBSCRIBE``), one
  subscriber per primary serving subscribed slots. A lost subscription goes
  to a placer task that re-learns the topology and subscribes the name on its
  slot's current owner.

The layer (:mod:`anyio_layer.pubsub.layer`) is told about lost and restored
names, to deliver ``on_disconnect``/``on_reconnect``, and gets every message
through its ``_dispatch``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio

from ..common.sharding import consistent_hash
from ..exceptions import (
    ConfigurationError,
    ProtocolError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
)
from ..redis.cluster import ClusterClient, key_slot
from ..redis.connection import Connection
from ..redis.hosts import TCPAddress
from ..redis.pool import MAX_BACKOFF, ConnectionPool
from ..redis.protocol import Arg, ErrorReply, encode_commands

if TYPE_CHECKING:
    from .layer import PubSubLayer

__all__ = [
    "HEALTH_CHECK_INTERVAL",
    "SUBSCRIBE_TIMEOUT",
    "ClusterSubscriptions",
    "ShardedSubscriptions",
    "Subscriber",
    "Subscriptions",
]

logger = logging.getLogger("anyio_layer")

#: Seconds of silence on a subscriber connection before it is checked with PING.
HEALTH_CHECK_INTERVAL: Final = 15.0
#: How long ``new_channel()`` / ``group_add()`` wait for the server to confirm a subscription.
SUBSCRIBE_TIMEOUT: Final = 10.0
_MIN_RETRY_DELAY: Final = 0.05
#: Replies to SSUBSCRIBE that mean "not here, or not now": find the slot's owner and retry.
_REROUTE_CODES: Final = frozenset({"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "LOADING"})
#: After this long without a resubscription round, the next one starts without back-off.
_QUIET_PERIOD: Final = 2 * MAX_BACKOFF


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


class Subscriber:
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

    The owner (:class:`ShardedSubscriptions` or :class:`ClusterSubscriptions`)
    decides what happens to names after a refusal, a dropped connection or a
    server-side unsubscribe.
    """

    def __init__(self, owner: Subscriptions, dialect: _Dialect, label: str) -> None:
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


class _Shard(Subscriber):
    """The subscriber connection of one server (or Sentinel-managed primary)."""

    def __init__(self, owner: Subscriptions, pool: ConnectionPool) -> None:
        super().__init__(owner, _PLAIN, str(pool.config))
        self.pool = pool

    async def _open_pool(self) -> ConnectionPool:
        return self.pool


class _NodeSubscriber(Subscriber):
    """The sharded-pub/sub subscriber connection to one primary of a Redis Cluster."""

    def __init__(self, owner: Subscriptions, client: ClusterClient, address: TCPAddress) -> None:
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


class Subscriptions:
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

    def subscribers(self) -> list[Subscriber]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """Every name currently wanted."""
        raise NotImplementedError

    def is_confirmed(self, name: str) -> bool:
        raise NotImplementedError

    async def _want(self, name: str) -> None:
        """Want ``name``, and subscribe it now where possible (synchronously up to the write)."""
        raise NotImplementedError

    def _unwant(self, name: str) -> Subscriber | None:
        """Stop wanting ``name``; return the subscriber that may carry it."""
        raise NotImplementedError

    async def publish(self, name: str, payload: bytes) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def dropped(self, subscriber: Subscriber) -> None:
        """``subscriber`` lost its connection (or could not connect) while wanting names."""
        raise NotImplementedError

    def unsubscribed_by_server(self, subscriber: Subscriber, name: str) -> None:
        """The server dropped the confirmed subscription of ``name`` on its own."""
        raise NotImplementedError

    def refused(self, subscriber: Subscriber, names: list[str], error: ErrorReply | None) -> None:
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
                f"{SUBSCRIBE_TIMEOUT} seconds"
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

    def _fail(self, subscriber: Subscriber, names: Iterable[str], error: Exception) -> None:
        """Give up on ``names``: their waiters raise ``error``.

        A name that was being subscribed *again* (after a lost connection or
        a moved slot) has no waiter: its listeners got ``on_disconnect`` and,
        since it is not back, get no ``on_reconnect``.
        """
        names = list(names)
        for name in names:
            logger.error("could not subscribe %r: %s", name, error)
            self.failures[name] = error
            self._unwant(name)
        subscriber.forget(names)
        self.layer._names_abandoned(names)


class ShardedSubscriptions(Subscriptions):
    """Independent servers: a name lives on the server channels_redis's ring hashes it to."""

    def __init__(self, layer: PubSubLayer, pools: Sequence[ConnectionPool]) -> None:
        super().__init__(layer)
        self.shards = [_Shard(self, pool) for pool in pools]

    def shard(self, name: str) -> _Shard:
        return self.shards[consistent_hash(name, len(self.shards))]

    def subscribers(self) -> list[Subscriber]:
        return list(self.shards)

    def names(self) -> list[str]:
        return [name for shard in self.shards for name in shard.wanted]

    def is_confirmed(self, name: str) -> bool:
        return self.shard(name).is_confirmed(name)

    async def _want(self, name: str) -> None:
        await self.shard(name).subscribe((name,))

    def _unwant(self, name: str) -> Subscriber | None:
        return self.shard(name)  # its unsubscribe() stops wanting it

    async def publish(self, name: str, payload: bytes) -> None:
        await self.shard(name).pool.execute("PUBLISH", name, payload)

    def describe(self) -> str:
        return f"Redis at {', '.join(str(shard.pool.config) for shard in self.shards)}"

    def dropped(self, subscriber: Subscriber) -> None:
        # The names stay wanted: the subscriber reconnects and subscribes them again.
        self.layer._names_lost(subscriber.wanted)

    def unsubscribed_by_server(self, subscriber: Subscriber, name: str) -> None:
        self.layer._names_lost((name,))
        subscriber.defer(subscriber.dialect.subscribe, [name])

    def refused(self, subscriber: Subscriber, names: list[str], error: ErrorReply | None) -> None:
        if error is None:  # unsubscribed again before the command closed: subscribe again
            subscriber.defer(subscriber.dialect.subscribe, names)
            return
        self._fail(
            subscriber,
            names,
            ResponseError(f"{subscriber.label} refused to subscribe: {error.message}", error.code),
        )


class ClusterSubscriptions(Subscriptions):
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

    def subscribers(self) -> list[Subscriber]:
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

    def _unwant(self, name: str) -> Subscriber | None:
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

    def dropped(self, subscriber: Subscriber) -> None:
        names = list(subscriber.wanted)
        self.layer._names_lost(names)
        self._reroute(subscriber, names)

    def unsubscribed_by_server(self, subscriber: Subscriber, name: str) -> None:
        # The node pushes one sunsubscribe per channel of a slot it gave up: one event.
        self.layer._names_lost((name,), cause=(subscriber, key_slot(name)))
        self._reroute(subscriber, (name,))

    def refused(self, subscriber: Subscriber, names: list[str], error: ErrorReply | None) -> None:
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

    def _reroute(self, subscriber: Subscriber, names: Iterable[str]) -> None:
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
            for subscriber, names in placed.items():
                # Writing to one node lets other tasks run: a name unsubscribed
                # meanwhile (it left ``home``) must not be subscribed again.
                names = [name for name in names if self.home.get(name) is subscriber]
                if names:
                    await subscriber.subscribe(names)


def _needs_redis_7(where: str) -> ConfigurationError:
    return ConfigurationError(
        f"the pub/sub layer uses sharded pub/sub (SPUBLISH/SSUBSCRIBE) on a Redis Cluster, "
        f"which needs Redis or Valkey 7 or later; {where} does not support it. Upgrade the "
        f"cluster, or use the queue layer (open_redis_layer), which works with Redis 6.2"
    )
