"""Placement of the pub/sub layer's subscriptions: which connection carries which name.

:class:`Subscriptions` decides which :class:`~anyio_layer.pubsub.subscriber.Subscriber`
carries a name, waits for the server to confirm a subscription, and decides
what happens when a subscription is lost or refused. Two placements:

* :class:`ShardedSubscriptions` (here): independent servers (plain
  ``SUBSCRIBE``), one subscriber per server, a name on the server
  channels_redis's ring hashes it to. A lost connection is re-established by
  its subscriber, which subscribes its names again.
* :class:`~anyio_layer.pubsub.cluster_placement.ClusterSubscriptions`: a Redis
  Cluster (sharded ``SSUBSCRIBE``), one subscriber per primary.

The layer hands down :class:`SubscriptionEvents` (where published messages
go, and whom to tell about lost and restored names, for ``on_disconnect`` /
``on_reconnect``) and its task group, in which the subscribers run. This
module must NOT read or write sockets (the subscribers do) nor know the
layer's channels, groups or buffers. Covered by ``tests/test_pubsub_layer.py``
and ``tests/test_cancellation_pubsub.py``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc

from ..common.sharding import consistent_hash
from ..exceptions import RedisTimeoutError, ResponseError
from ..redis.pool import ConnectionPool
from ..redis.protocol import ErrorReply
from .subscriber import ServerSubscriber, Subscriber

__all__ = ["SUBSCRIBE_TIMEOUT", "ShardedSubscriptions", "SubscriptionEvents", "Subscriptions"]

logger = logging.getLogger("anyio_layer")

#: How long ``new_channel()`` / ``group_add()`` wait for the server to confirm a subscription.
SUBSCRIBE_TIMEOUT: Final = 10.0


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
            message = (
                f"{self.describe()} did not confirm the subscription to {name!r} within "
                f"{SUBSCRIBE_TIMEOUT} seconds"
            )
            causes = [s.last_error for s in self.subscribers() if s.last_error is not None]
            if causes:
                message += f" (last error: {causes[0]})"
            raise RedisTimeoutError(message) from None

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
