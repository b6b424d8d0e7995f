"""Placement of the pub/sub layer's subscriptions: which connection carries which name.

:class:`Subscriptions` decides which :class:`~anyio_layer.pubsub.subscriber.Subscriber`
carries a name, and what happens when a subscription is lost or refused:

* :class:`ShardedSubscriptions`: independent servers (plain ``SUBSCRIBE``),
  one subscriber per server, a name on the server channels_redis's ring
  hashes it to. A lost connection is re-established by its subscriber, which
  subscribes its names again.
* :class:`ClusterSubscriptions`: a Redis Cluster (sharded ``SSUBSCRIBE``), one
  subscriber per primary serving subscribed slots. A lost subscription goes
  to a placer task (in the task group it is given: the layer's) that
  re-learns the topology and subscribes the name on its slot's current owner.

The layer hands down :class:`SubscriptionEvents` (where published messages
go, and whom to tell about lost and restored names, for ``on_disconnect`` /
``on_reconnect``) and its task group. This module must NOT read or write
sockets (the subscribers do) nor know the layer's channels, groups or
buffers. Covered by ``tests/test_pubsub_layer.py``,
``tests/test_cancellation_pubsub.py`` and ``tests/test_pubsub_cluster.py``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc

from ..common.sharding import consistent_hash
from ..exceptions import ConfigurationError, RedisError, RedisTimeoutError, ResponseError
from ..redis.cluster.client import ClusterClient, key_slot
from ..redis.hosts import TCPAddress
from ..redis.pool import MAX_BACKOFF, ConnectionPool
from ..redis.protocol import ErrorReply
from .subscriber import MIN_RETRY_DELAY, NodeSubscriber, ServerSubscriber, Subscriber

__all__ = [
    "SUBSCRIBE_TIMEOUT",
    "ClusterSubscriptions",
    "ShardedSubscriptions",
    "SubscriptionEvents",
    "Subscriptions",
]

logger = logging.getLogger("anyio_layer")

#: How long ``new_channel()`` / ``group_add()`` wait for the server to confirm a subscription.
SUBSCRIBE_TIMEOUT: Final = 10.0
#: Replies to SSUBSCRIBE that mean "not here, or not now": find the slot's owner and retry.
_REROUTE_CODES: Final = frozenset({"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "LOADING"})
#: After this long without a resubscription round, the next one starts without back-off.
_QUIET_PERIOD: Final = 2 * MAX_BACKOFF


@dataclass(frozen=True, slots=True)
class SubscriptionEvents:
    """What subscriptions tell the layer: the callbacks it hands down."""

    #: A message published to the Redis channel ``name`` arrived (the hot path).
    deliver: Callable[[str, bytes], None]
    #: Subscriptions of these names were lost; the second argument (not None)
    #: groups losses with the same cause into one outage.
    names_lost: Callable[[Collection[str], object], None]
    #: These names are subscribed again, or no longer wanted.
    names_restored: Callable[[Iterable[str]], None]
    #: These names will not be subscribed again (the server refused them).
    names_abandoned: Callable[[Iterable[str]], None]


class Subscriptions:
    """Where the layer's Redis channels are subscribed, and what to do when that fails.

    The layer asks it to subscribe and unsubscribe names and to publish;
    the subscribers it owns report back through :meth:`dropped`,
    :meth:`unsubscribed_by_server`, :meth:`refused` and :meth:`settled`.
    """

    def __init__(self, events: SubscriptionEvents, task_group: anyio.abc.TaskGroup) -> None:
        self.events = events
        self.task_group = task_group
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
        self.events.names_restored((name,))  # an outage does not wait for names nobody wants
        if subscriber is not None:
            await subscriber.unsubscribe(name)

    def settled(self, confirmed: list[str]) -> None:
        """Commands closed on a subscriber; ``confirmed`` are now subscribed there."""
        if confirmed:
            self.events.names_restored(confirmed)
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
        self.events.names_abandoned(names)


class ShardedSubscriptions(Subscriptions):
    """Independent servers: a name lives on the server channels_redis's ring hashes it to."""

    def __init__(
        self,
        events: SubscriptionEvents,
        task_group: anyio.abc.TaskGroup,
        pools: Sequence[ConnectionPool],
    ) -> None:
        super().__init__(events, task_group)
        #: One subscriber per server, in the order of the ring.
        self.shards = [
            ServerSubscriber(self, pool, task_group=task_group, deliver=events.deliver)
            for pool in pools
        ]

    def shard(self, name: str) -> ServerSubscriber:
        """The subscriber of the server ``name`` hashes to."""
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
        self.events.names_lost(subscriber.wanted, None)

    def unsubscribed_by_server(self, subscriber: Subscriber, name: str) -> None:
        self.events.names_lost((name,), None)
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

    def __init__(
        self,
        events: SubscriptionEvents,
        task_group: anyio.abc.TaskGroup,
        client: ClusterClient,
        where: str,
    ) -> None:
        super().__init__(events, task_group)
        self.client = client
        self._where = where
        self.nodes: dict[TCPAddress, NodeSubscriber] = {}
        self.home: dict[str, NodeSubscriber] = {}
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
        self.events.names_lost(names, None)
        self._reroute(subscriber, names)

    def unsubscribed_by_server(self, subscriber: Subscriber, name: str) -> None:
        # The node pushes one sunsubscribe per channel of a slot it gave up: one event.
        self.events.names_lost((name,), (subscriber, key_slot(name)))
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

    def _node(self, address: TCPAddress) -> NodeSubscriber:
        subscriber = self.nodes.get(address)
        if subscriber is None:
            subscriber = self.nodes[address] = NodeSubscriber(
                self, self.client, address, task_group=self.task_group, deliver=self.events.deliver
            )
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
            self.task_group.start_soon(self._place, name="anyio_layer cluster subscriber")
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
            delay = min(max(delay * 2, MIN_RETRY_DELAY), MAX_BACKOFF)
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
            placed: dict[NodeSubscriber, list[str]] = {}
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
