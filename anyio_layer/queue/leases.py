"""Group memberships as leases: the queue layer's own channels keep their groups while they live.

Owns :class:`Leases`: the in-process table of the groups each of this layer's
process-local channels has joined, and the renewal task (in the layer's task
group) that keeps those memberships fresh in Redis. Must not send messages
or decide who is a member of what: the table follows ``group_add`` and
``group_discard`` (and closed scoped channels), never the other way round.

**Layout.** Renewal writes what ``group_add`` writes, channels_redis's
layout: ``ZADD <group key> <now> <channel> ...`` (the current time as the
score) and ``EXPIRE <group key> <group_expiry>``. A channels_redis process in
the same fleet sees the renewed members as fresh.

**Renewal.** Every ``group_expiry / 4`` seconds (at least
:data:`MIN_RENEWAL_INTERVAL`), one pipeline per server (or cluster node)
renews every live membership: one ``ZADD`` per group, naming all of this
layer's members of it, and one ``EXPIRE``. A channel is live while a
``receive()`` waits on it, and for ``group_expiry`` seconds after its last
receive or ``group_add`` (a consumer busy with a message has no receiver for
a moment). So a channel connected for any length of time keeps its groups;
when the process dies, its memberships lapse ``group_expiry`` seconds after
the last renewal, as they always did.

**Restore.** ``ZADD`` replies with how many members it *added*. Every
membership renewed is one the layer believes present, so a non-zero count
means the server lost it (it restarted without persistence, a replica was
promoted without it, or someone flushed it): the renewal has just restored
it. That is counted (``memberships_restored``) and logged as a warning. A
renewal also runs as soon as a connection to a server or cluster node is
lost or made
(:meth:`~anyio_layer.redis.pool.ConnectionPool.add_connection_listener`):
after a loss it waits for the server (and is tried again every
:data:`_RETRY_DELAY` seconds while the server stays away), so memberships
are back as soon as the server accepts commands again, even if nothing else
in the process uses that server.

**Discards win.** A ``group_discard`` must never be undone by a renewal
racing with it. Two rules make sure of it:

1. The table is changed synchronously, before anything is awaited: a
   discard removes the membership before sending its ``ZREM``, a
   ``group_add`` records it only after its ``ZADD`` has succeeded (and not
   at all if a discard of the same membership came in meanwhile). A renewal
   reads the table and hands its commands to the connections without an
   await in between; commands to one server share one pipelined connection
   and run in the order they were written, so a discard whose ``ZREM`` went
   before the renewal is not in it, and one that comes after it wins.
2. When the renewal could not be written at once (it waited for a
   connection, a cluster retried it after a failover, or with several
   servers its pipelines start in tasks of their own), that order no longer
   holds. So every membership discarded while a renewal is in
   flight is removed *again* (``ZREM``) once the renewal is over; a
   ``ZREM`` that fails is kept and sent with the next renewal. Renewals
   run one at a time, so that removal always comes after the renewal it
   repairs.

Covered by ``tests/test_leases.py`` (and ``tests/test_leases_failover.py``
for Sentinel and Redis Cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import anyio

from ..exceptions import ClusterClientError, LayerClosedError, RedisError
from ..redis.protocol import Arg, ErrorReply
from .keyspace import KeySpace
from .statistics import Counters

__all__ = ["MIN_RENEWAL_INTERVAL", "Leases"]

logger = logging.getLogger("anyio_layer")

#: Shortest time between two scheduled renewals, whatever ``group_expiry`` is.
MIN_RENEWAL_INTERVAL: Final = 1.0
#: Pause before a failed renewal is tried again.
_RETRY_DELAY: Final = 0.5

Membership = tuple[str, str]  # (group, channel)


class Leases:
    """The groups this layer's own channels are in, and the task that renews them."""

    def __init__(
        self,
        *,
        keys: KeySpace,
        group_expiry: int,
        counters: Counters,
        has_receiver: Callable[[str], bool],
    ) -> None:
        self._keys = keys
        self._group_expiry = group_expiry
        self._counters = counters
        self._has_receiver = has_receiver
        #: How often memberships are renewed.
        self.interval = max(MIN_RENEWAL_INTERVAL, group_expiry / 4)
        #: group -> its members that are this layer's channels.
        self._members: dict[str, set[str]] = {}
        #: channel -> the groups it is in.
        self._groups: dict[str, set[str]] = {}
        #: channel (with leased memberships) -> when (time.monotonic()) it last showed life.
        self._seen: dict[str, float] = {}
        #: group_add calls under way: a discard of the same membership cancels the entry.
        self._adding: dict[Membership, object] = {}
        #: Discards to send (again) after the renewal in flight, or that failed.
        self._to_remove: set[Membership] = set()
        #: One renewal at a time: discards made during one are removed again after it,
        #: never by a renewal running alongside it.
        self._renewing = anyio.Lock()
        self._in_flight = 0
        self._wakeup = anyio.Event()

    # -- the table (synchronous: no checkpoint, see the module docstring) ------------

    def __len__(self) -> int:
        return sum(len(channels) for channels in self._members.values())

    def begin_add(self, group: str, channel: str) -> object:
        """A ``group_add`` is about to send its ``ZADD``; pass the ticket to :meth:`added`."""
        ticket = object()
        self._adding[(group, channel)] = ticket
        self._to_remove.discard((group, channel))  # joined again: no longer to be removed
        return ticket

    def added(self, group: str, channel: str, ticket: object) -> None:
        """``group_add``'s ``ZADD`` succeeded: lease the membership (unless discarded since)."""
        if self._adding.get((group, channel)) is not ticket:
            return
        del self._adding[(group, channel)]
        self._members.setdefault(group, set()).add(channel)
        self._groups.setdefault(channel, set()).add(group)
        self._seen[channel] = time.monotonic()

    def add_failed(self, group: str, channel: str, ticket: object) -> None:
        if self._adding.get((group, channel)) is ticket:
            del self._adding[(group, channel)]

    def discard(self, group: str, channel: str) -> None:
        """``group_discard`` is about to send its ``ZREM``: stop leasing the membership now."""
        self._adding.pop((group, channel), None)
        self._forget(group, channel)
        if self._in_flight:
            self._to_remove.add((group, channel))

    def discard_failed(self, group: str, channel: str) -> None:
        """The ``ZREM`` of ``group_discard`` failed: send it again with the next renewal."""
        if (group, channel) not in self._adding and group not in self._groups.get(channel, ()):
            self._to_remove.add((group, channel))
            self._wakeup.set()

    def forget_channel(self, channel: str) -> None:
        """``channel`` is closed: stop leasing all of its memberships (they lapse in Redis)."""
        for group in list(self._groups.get(channel, ())):
            self._forget(group, channel)
        self._seen.pop(channel, None)

    def clear(self) -> None:
        """Forget every membership (``flush()`` deleted them all)."""
        self._members.clear()
        self._groups.clear()
        self._seen.clear()
        self._adding.clear()
        self._to_remove.clear()

    def touch(self, channel: str) -> None:
        """``channel`` is alive right now (a receive started or ended on it).

        Remembered only for channels with leased memberships, so that the
        table never grows with channels that joined no group.
        """
        if channel in self._groups:
            self._seen[channel] = time.monotonic()

    def _forget(self, group: str, channel: str) -> None:
        channels = self._members.get(group)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._members[group]
        groups = self._groups.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._groups[channel]
                self._seen.pop(channel, None)

    def request_renewal(self) -> None:
        """Renew as soon as possible (a server was connected to: it may have lost data)."""
        self._wakeup.set()

    # -- renewal ----------------------------------------------------------------------

    async def run(self) -> None:
        """Renew memberships until cancelled (with the layer's task group).

        Cancellation at any moment loses nothing: discards not yet re-sent stay
        in Redis at most ``group_expiry`` longer, and the table is unchanged.
        """
        while True:
            with anyio.move_on_after(self.interval):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()
            try:
                await self.renew()
            except LayerClosedError:
                return
            except (RedisError, ClusterClientError) as exc:
                logger.warning("could not renew group memberships (trying again): %s", exc)
                await anyio.sleep(_RETRY_DELAY)
                self._wakeup.set()

    async def renew(self) -> None:
        """Renew every live membership and re-send pending discards: one round trip per server.

        If cancelled, some servers may be renewed and others not; nothing is lost.
        """
        async with self._renewing:
            await self._renew()

    async def _renew(self) -> None:
        self._expire_idle()
        group_expiry = self._group_expiry
        # From here to the first await: the snapshot is taken and handed to the
        # connections in one go (rule 1 of the module docstring).
        removals = sorted(self._to_remove)
        self._to_remove.clear()
        commands: list[tuple[str, list[Arg]]] = [
            (group, ["ZREM", self._keys.group_key(group), channel]) for group, channel in removals
        ]
        renewed = [(group, sorted(channels)) for group, channels in self._members.items()]
        score = repr(time.time())
        for group, channels in renewed:
            key = self._keys.group_key(group)
            zadd: list[Arg] = ["ZADD", key]
            for channel in channels:
                zadd += [score, channel]
            commands.append((group, zadd))
            commands.append((group, ["EXPIRE", key, group_expiry]))
        if not commands:
            return
        self._in_flight += 1
        try:
            replies = await self._keys.run_for_groups(commands)
        except BaseException:
            self._to_remove.update(removals)
            raise
        finally:
            self._in_flight -= 1
            if self._to_remove:
                self._wakeup.set()  # discards made while it was in flight: remove them again
        failed = [
            removal
            for removal, reply in zip(removals, replies, strict=False)
            if isinstance(reply, ErrorReply)
        ]
        self._to_remove.update(failed)
        restored = 0
        for reply in replies[len(removals) :: 2]:
            if isinstance(reply, int):
                restored += reply
            elif isinstance(reply, ErrorReply):
                logger.warning("renewing a group membership failed: %s", reply.message)
        self._counters.renewals += 1
        self._counters.memberships_renewed += sum(len(channels) for _, channels in renewed)
        if restored:
            self._counters.memberships_restored += restored
            logger.warning(
                "Redis had lost %d group membership(s) of live channels (a restart without "
                "persistence, a failover or a flush?); restored them",
                restored,
            )

    def _expire_idle(self) -> None:
        """Stop leasing channels that have shown no sign of life for ``group_expiry`` seconds."""
        cutoff = time.monotonic() - self._group_expiry
        for channel in list(self._groups):
            if not self._has_receiver(channel) and self._seen.get(channel, 0.0) < cutoff:
                self.forget_channel(channel)
