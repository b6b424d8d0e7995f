"""The queue layer's group commands: joining, leaving, and sending to every member.

Owns what :meth:`~.layer.QueueLayer.group_add`, ``group_discard`` and
``group_send`` do once the layer has validated their arguments: the Redis
commands on the group's sorted set (channels_redis's layout, see
:mod:`.keyspace`), telling :class:`~.leases.Leases` about memberships of the
layer's own channels, and the fan-out of ``group_send`` (one copy per
channel key, one round trip per server or cluster node; the layer's own
channels get theirs in memory). Must not validate names or messages (the
layer does) nor run tasks. Covered by ``tests/test_queue_layer.py`` and
``tests/test_leases.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

from ..exceptions import InvalidChannelName
from ..messages import is_process_local, non_local_name, validate_channel_name
from .codec import RESERVED_KEY, MessageCodec
from .keyspace import KeySpace
from .leases import Leases
from .options import CapacityRules
from .readers import LocalReaders
from .replies import group_send_counts
from .scripts import GROUP_SEND
from .statistics import Counters

__all__ = ["GroupCommands"]

logger = logging.getLogger("anyio_layer")

#: Groups whose routes (see ``GroupCommands._routes_for``) are kept, the most recently sent to.
ROUTE_CACHE_GROUPS: Final = 1024


@dataclasses.dataclass(slots=True)
class _Routes:
    """Where a ``group_send`` goes, worked out from the names in the group's set."""

    #: This layer's own channels: delivered in memory.
    own: list[str] = dataclasses.field(default_factory=list)
    #: One Redis key per process-local family (or normal channel): the members stored in it.
    remote: dict[bytes, list[str]] = dataclasses.field(default_factory=dict)
    #: Names that are not valid channel names (skipped, counted as decode errors).
    invalid: int = 0


class GroupCommands:
    """One layer's group commands (its readers, leases and counters are shared with it)."""

    def __init__(
        self,
        *,
        keys: KeySpace,
        local: LocalReaders,
        leases: Leases,
        counters: Counters,
        codec: MessageCodec,
        capacities: CapacityRules,
        expiry: float,
        group_expiry: int,
        is_own: Callable[[str], bool],
        owns: Callable[[str], bool],
    ) -> None:
        self._keys = keys
        self._local = local
        self._leases = leases
        self._counters = counters
        self._encode = codec.encode
        self._capacities = capacities
        self._expiry = expiry
        self._ttl = math.ceil(expiry)  # as the layer's
        self._group_expiry = group_expiry
        self._is_own = is_own
        self._owns = owns
        #: By group: the member names last read from Redis and where they go.
        self._routes: dict[str, tuple[list[object], _Routes]] = {}

    async def add(self, group: str, channel: str) -> None:
        """``ZADD`` + ``EXPIRE``; a membership of the layer's own channel becomes a lease.

        If cancelled, the channel was either added or not, and is not leased.
        """
        key, server = self._keys.group(group)
        leased = is_process_local(channel) and self._owns(non_local_name(channel))
        ticket = self._leases.begin_add(group, channel) if leased else None
        try:
            await server.pipeline(
                [("ZADD", key, repr(time.time()), channel), ("EXPIRE", key, self._group_expiry)],
                idempotent=True,
            )
        except BaseException:
            if ticket is not None:
                self._leases.add_failed(group, channel, ticket)
            raise
        if ticket is not None:
            self._leases.added(group, channel, ticket)

    async def discard(self, group: str, channel: str) -> None:
        """End the lease at once, then ``ZREM`` (sent again by the next renewal if it fails).

        If cancelled, the channel was either removed or not; the renewal task
        removes it again either way.
        """
        key, server = self._keys.group(group)
        self._leases.discard(group, channel)  # before the ZREM is written: see .leases
        try:
            await server.execute("ZREM", key, channel, idempotent=True)
        except BaseException:
            self._leases.discard_failed(group, channel)
            raise

    def _routes_for(self, group: str, members: list[object]) -> _Routes:
        """Where ``members`` (ZRANGE's reply) go, reused while the group's set is unchanged."""
        cache = self._routes
        cached = cache.pop(group, None)
        unchanged = cached is not None and cached[0] == members
        routes = cached[1] if cached is not None and unchanged else self._route(members)
        cache[group] = (members, routes)  # most recently used last
        if len(cache) > ROUTE_CACHE_GROUPS:
            del cache[next(iter(cache))]
        return routes

    def _route(self, members: list[object]) -> _Routes:
        # Members that are this layer's own channels get the message in memory;
        # the rest get one copy per Redis key, naming every member stored in it.
        routes = _Routes()
        # Where a channel goes depends only on its name up to "!": work it out once
        # per process-local key (None: this layer's own channels).
        key_of: dict[str, bytes | None] = {}
        for member in members:
            try:  # a foreign writer may have put anything in the group's set
                channel = validate_channel_name(
                    member.decode() if isinstance(member, bytes) else member
                )
            except (UnicodeDecodeError, InvalidChannelName):
                routes.invalid += 1
                continue
            name = non_local_name(channel)
            if name in key_of:
                key = key_of[name]
            else:
                own = is_process_local(channel) and self._is_own(channel)
                key = key_of[name] = None if own else self._keys.channel_key(channel)
            if key is None:
                routes.own.append(channel)
            else:
                routes.remote.setdefault(key, []).append(channel)
        return routes

    async def send(self, group: str, message: dict[str, Any]) -> None:
        """Read the members (pruning expired ones), then one copy per channel key.

        If cancelled, each member either got the message or did not, independently.
        """
        plain = self._encode(message)  # also rejects what cannot be sent, even to nobody
        now = time.time()
        group_key, group_server = self._keys.group(group)
        _, members = await group_server.pipeline(
            [
                ("ZREMRANGEBYSCORE", group_key, 0, int(now) - self._group_expiry),
                ("ZRANGE", group_key, 0, -1),
            ],
            idempotent=True,
        )
        self._counters.group_sends += 1
        if not isinstance(members, list) or not members:
            return
        routes = self._routes_for(group, members)
        if routes.own:
            delivered = self._local.deliver(routes.own, plain, now)
            self._counters.group_deliveries += delivered
            self._counters.group_skipped += len(routes.own) - delivered
        if routes.invalid:
            self._counters.decode_errors += routes.invalid
            logger.warning(
                "group_send to %r skipped %d invalid member names", group, routes.invalid
            )
        targets = routes.remote
        if not targets:
            return

        def arguments(keys: list[bytes]) -> list[bytes | str | int]:
            payloads = [self._encode({**message, RESERVED_KEY: targets[key]}) for key in keys]
            capacities = [self._capacities.for_channel(targets[key][0]) for key in keys]
            return [*payloads, *capacities, repr(now), int(now) - int(self._expiry), self._ttl]

        skipped_total = 0
        first_members = {key: channels[0] for key, channels in targets.items()}
        for reply in await self._keys.eval_batched(GROUP_SEND, first_members, arguments):
            added, skipped, pruned = group_send_counts(reply)
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
