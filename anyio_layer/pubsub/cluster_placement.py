"""Placement of subscriptions on a Redis Cluster: each name on the primary serving its slot.

:class:`ClusterSubscriptions` uses sharded pub/sub (``SSUBSCRIBE``, Redis 7+):
one :class:`~anyio_layer.pubsub.subscriber.NodeSubscriber` per primary that
serves a slot of a subscribed name. A subscription that is lost (a dropped
connection, a slot that moved away) or redirected goes to a placer task,
started in the layer's task group on first use, that re-learns the topology
(backing off while that, or the subscription, keeps failing) and subscribes
the name on its slot's current owner.

It must NOT read or write sockets (the subscribers do) nor know the layer's
channels, groups or buffers. Covered by ``tests/test_pubsub_cluster.py``
(real clusters, migrations and failovers) and ``tests/test_cluster_tls_acl.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Final

import anyio
import anyio.abc

from ..common.backoff import MAX_DELAY, Backoff
from ..exceptions import ConfigurationError, RedisError, ResponseError
from ..redis.cluster import ClusterClient, key_slot
from ..redis.hosts import TCPAddress
from ..redis.protocol import ErrorReply
from .placement import SubscriptionEvents, Subscriptions
from .subscriber import NodeSubscriber, Subscriber

__all__ = ["ClusterSubscriptions"]

logger = logging.getLogger("anyio_layer")

#: Replies to SSUBSCRIBE that mean "not here, or not now": find the slot's owner and retry.
_REROUTE_CODES: Final = frozenset({"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "LOADING"})
#: After this long without a resubscription round, the next one starts without back-off.
_QUIET_PERIOD: Final = 2 * MAX_DELAY


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
        backoff = Backoff()
        last_round = -math.inf
        while True:
            while not self._unplaced:
                self._placer_wakeup = anyio.Event()
                await self._placer_wakeup.wait()
            self._placer_wakeup = None
            if anyio.current_time() - last_round > _QUIET_PERIOD:
                backoff.succeeded()  # a new event, not the same one failing again
            if backoff.delay:
                await anyio.sleep(backoff.delay)
            last_round = anyio.current_time()
            backoff.failed()
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
