"""A subscriber connection's I/O: the reader task that connects, reads and writes.

:class:`Subscriber` owns one connection in subscribe mode, opened by a task
it starts in the task group it is given (the layer's) when it first has a
name to carry, and makes that connection converge to what its
:class:`~anyio_layer.pubsub.subscriber_protocol.SubscriberProtocol` wants
after every (re)connect. :class:`ServerSubscriber` is the connection to one
server, :class:`NodeSubscriber` the one to a primary of a Redis Cluster.

It must NOT match replies or keep subscription state itself (the protocol
does), nor decide where a name goes after a refusal, a dropped connection or
a server-side unsubscribe: it reports those to its :class:`SubscriberOwner`
(:mod:`anyio_layer.pubsub.placement`). A server that sends what no
subscription can produce (a reply that is not RESP, out of order, or a name
that is not UTF-8) gets its connection dropped with a ProtocolError and
reconnected, like a connection that broke; the layer goes on. Covered by
``tests/test_pubsub_layer.py``, ``tests/test_cancellation_pubsub.py`` and
``tests/test_pubsub_cluster.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Final, Protocol

import anyio
import anyio.abc

from ..common.backoff import Backoff
from ..exceptions import ProtocolError, RedisConnectionError, RedisError
from ..redis.cluster import ClusterClient, key_slot
from ..redis.connection import Connection
from ..redis.hosts import TCPAddress
from ..redis.pool import ConnectionPool
from ..redis.protocol import ErrorReply
from .subscriber_protocol import PLAIN, SHARDED, Dialect, SubscriberProtocol

__all__ = [
    "HEALTH_CHECK_INTERVAL",
    "NodeSubscriber",
    "ServerSubscriber",
    "Subscriber",
    "SubscriberOwner",
]

logger = logging.getLogger("anyio_layer")

#: Seconds of silence on a subscriber connection before it is checked with PING.
HEALTH_CHECK_INTERVAL: Final = 15.0
#: A connection that lasted this long was healthy: the next attempt starts the back-off
#: afresh. One that failed sooner (a server that answers the handshake, then garbage)
#: counts as a failed attempt, so a broken server is not hammered.
HEALTHY_AFTER: Final = 1.0


class SubscriberOwner(Protocol):
    """Whoever decides which subscriber carries which name; told what happens to them."""

    def notify(self) -> None:
        """Subscription state changed (waiters re-check it)."""

    def dropped(self, subscriber: Subscriber) -> None:
        """``subscriber`` lost its connection (or could not connect) while wanting names."""

    def unsubscribed_by_server(self, subscriber: Subscriber, name: str) -> None:
        """The server dropped the confirmed subscription of ``name`` on its own."""

    def refused(self, subscriber: Subscriber, names: list[str], error: ErrorReply | None) -> None:
        """The subscribe command for wanted ``names`` did not subscribe them."""

    def settled(self, confirmed: list[str]) -> None:
        """Commands closed on a subscriber; ``confirmed`` are now subscribed there."""


class Subscriber:
    """One subscriber connection to one server, and the subscriptions it should carry.

    Every (un)subscribe command is written at once while connected, and all
    of ``wanted`` again after each (re)connect. The owner (``owner``) is told
    about refusals, drops and server-side unsubscribes and decides what
    happens to those names.
    """

    def __init__(
        self,
        owner: SubscriberOwner,
        dialect: Dialect,
        label: str,
        *,
        task_group: anyio.abc.TaskGroup,
        deliver: Callable[[str, bytes], None],
    ) -> None:
        self.owner = owner
        self.dialect = dialect
        self.label = label
        self.protocol = SubscriberProtocol(dialect, deliver, self)
        self._task_group = task_group
        self._connection: Connection | None = None
        self._write_lock = anyio.Lock()
        self._started = False
        self._wakeup: anyio.Event | None = None
        self._serve_scope: anyio.CancelScope | None = None
        self._awaiting_ping = False
        #: Why the last connection (or attempt) ended; None once one succeeds.
        self.last_error: RedisError | None = None

    # -- to be provided by subclasses ------------------------------------------------

    async def _open_pool(self) -> ConnectionPool:
        raise NotImplementedError

    def _batches(self, names: list[str]) -> list[list[str]]:
        """Split the names of one (un)subscribe into commands the server accepts."""
        return [names]

    # -- called by the owner ------------------------------------------------------------

    @property
    def wanted(self) -> set[str]:
        return self.protocol.wanted

    @property
    def confirmed(self) -> set[str]:
        return self.protocol.confirmed

    @property
    def _in_flight(self) -> dict[str, int]:
        """(For the tests' bookkeeping checks.)"""
        return self.protocol.in_flight

    def is_confirmed(self, name: str) -> bool:
        return self.protocol.is_confirmed(name)

    async def subscribe(self, names: Collection[str]) -> None:
        """Want ``names`` here and subscribe them now if connected (else on connect)."""
        self.protocol.wanted.update(names)
        self._start()
        if self._connection is not None:
            with contextlib.suppress(RedisConnectionError):  # then the reconnect subscribes them
                await self._write(self.dialect.subscribe, names)

    async def unsubscribe(self, name: str) -> None:
        self.protocol.forget((name,))
        if self._connection is not None:
            with contextlib.suppress(RedisConnectionError):  # then it is gone anyway
                await self._write(self.dialect.unsubscribe, (name,))

    def forget(self, names: Iterable[str]) -> None:
        """Stop wanting ``names`` here without a command (they are not subscribed here)."""
        self.protocol.forget(names)

    def retire(self) -> None:
        """Close the connection if it carries nothing (its server serves no slot any more)."""
        if self.protocol.idle and self._serve_scope is not None:
            self._serve_scope.cancel()

    def defer(self, verb: str, names: list[str]) -> None:
        """Have the reader write a command once it has handled the replies at hand."""
        self.protocol.defer(verb, names)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    # -- ReplyEvents: what the protocol reports, passed on to the owner -----------------

    def server_unsubscribed(self, name: str) -> None:
        self.owner.unsubscribed_by_server(self, name)

    def refused(self, names: list[str], error: ErrorReply | None) -> None:
        self.owner.refused(self, names, error)

    def settled(self, confirmed: list[str]) -> None:
        self.last_error = None
        self.owner.settled(confirmed)

    # -- the reader task ------------------------------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._task_group.start_soon(self._run, name=f"anyio_layer subscriber {self.label}")
        elif self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            while not self.protocol.wanted:  # connect only for something to subscribe
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            self._wakeup = None
            connected_at: float | None = None
            try:
                with anyio.CancelScope() as self._serve_scope:  # retire() cancels it
                    pool = await self._open_pool()
                    async with pool.connection() as connection:
                        connection.broken = True  # in subscribe mode: never back to the pool
                        connected_at = anyio.current_time()
                        await self._serve(connection)
            except RedisError as exc:
                self.last_error = exc
                logger.warning("subscriber for %s lost: %s", self.label, exc)
            finally:
                self._serve_scope = None
                self._connection = None
                self.protocol.reset()
                self.owner.notify()
            if self.protocol.wanted:
                self.owner.dropped(self)
            if connected_at is not None and anyio.current_time() - connected_at >= HEALTHY_AFTER:
                backoff.succeeded()  # a new outage, not the same attempt failing again
            await anyio.sleep(backoff.failed())

    async def _serve(self, connection: Connection) -> None:
        protocol = self.protocol
        self._connection = connection
        self._awaiting_ping = False
        if protocol.wanted:
            await self._write(self.dialect.subscribe, sorted(protocol.wanted))
        handle = protocol.handle
        current_time = anyio.current_time
        quiet_since = current_time()
        while True:
            # One scope per silent period, expiring HEALTH_CHECK_INTERVAL after
            # the last data: its deadline is not moved on every read (that
            # re-arms a timer each time), it is checked when it expires.
            with anyio.CancelScope(deadline=quiet_since + HEALTH_CHECK_INTERVAL):
                while True:
                    data = await connection.receive_raw()
                    quiet_since = current_time()
                    self._awaiting_ping = False
                    try:
                        for reply in connection.feed_and_drain(data):
                            handle(reply)
                    except UnicodeDecodeError as exc:  # no name we subscribe is like that
                        raise ProtocolError(
                            f"subscriber connection to {self.label} sent a name that is "
                            f"not UTF-8: {exc}"
                        ) from None
                    while protocol.deferred:
                        verb, names = protocol.deferred.pop(0)
                        await self._write(verb, names)
            if current_time() - quiet_since < HEALTH_CHECK_INTERVAL:
                continue  # data came during the period: wait for the rest of it
            if self._awaiting_ping:
                raise RedisConnectionError(
                    f"subscriber connection to {self.label} stopped answering"
                )
            self._awaiting_ping = True
            await self._write(None, ())
            quiet_since = current_time()  # the PING's answer is due within an interval

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
                    # Decided now, under the lock, by what is wanted at this moment.
                    names = self.protocol.still_wanted(verb, names)
                    if not names:
                        return
                batches = self._batches(list(names)) if verb is not None else [[]]
                try:
                    await connection.send(self.protocol.encode(verb, batches))
                except BaseException:
                    await connection.aclose()  # so that the reader notices too
                    raise


class ServerSubscriber(Subscriber):
    """The subscriber connection of one server (or Sentinel-managed primary)."""

    def __init__(
        self,
        owner: SubscriberOwner,
        pool: ConnectionPool,
        *,
        task_group: anyio.abc.TaskGroup,
        deliver: Callable[[str, bytes], None],
    ) -> None:
        super().__init__(owner, PLAIN, str(pool.config), task_group=task_group, deliver=deliver)
        self.pool = pool

    async def _open_pool(self) -> ConnectionPool:
        return self.pool


class NodeSubscriber(Subscriber):
    """The sharded-pub/sub subscriber connection to one primary of a Redis Cluster."""

    def __init__(
        self,
        owner: SubscriberOwner,
        client: ClusterClient,
        address: TCPAddress,
        *,
        task_group: anyio.abc.TaskGroup,
        deliver: Callable[[str, bytes], None],
    ) -> None:
        super().__init__(owner, SHARDED, str(address), task_group=task_group, deliver=deliver)
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
