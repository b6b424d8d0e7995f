"""The slot map: which primary serves which slot, learned from the cluster's own replies.

Owns parsing ``CLUSTER SHARDS`` (Redis 7+) and ``CLUSTER SLOTS`` (Redis 6.2)
into :class:`ShardInfo` records, parsing ``MOVED``/``ASK`` redirections, and
:class:`SlotMap`, the table commands are routed by. Pure: it never sends a
command or awaits anything; asking nodes for these replies, and deciding when,
is :mod:`~anyio_layer.redis.cluster.discovery`'s job. Covered by
``tests/test_cluster_slots.py`` (parsing, without a server) and
``tests/test_cluster_client.py`` (against real clusters, Redis 6.2 and 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...exceptions import ProtocolError
from ..hosts import TCPAddress
from .slots import CLUSTER_SLOTS

__all__ = [
    "ShardInfo",
    "SlotMap",
    "parse_redirection",
    "parse_shards",
    "parse_slots",
    "slots_served",
]


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One primary, its replicas and the slot ranges it serves, from a topology reply."""

    ranges: tuple[tuple[int, int], ...]
    primary: TCPAddress
    replicas: tuple[TCPAddress, ...]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


def _as_dict(value: object) -> dict[str, object]:
    """A RESP3 map, or a RESP2 flat ``[key, value, ...]`` list, as a dict with str keys."""
    if isinstance(value, dict):
        return {_text(key): item for key, item in value.items()}
    if isinstance(value, list):
        return {_text(key): item for key, item in zip(value[::2], value[1::2], strict=False)}
    raise ProtocolError(f"expected a map in the cluster topology reply, got {value!r:.100}")


def _host(value: object, asked: TCPAddress) -> str | None:
    """A node's host from a topology reply: "" means "the node you asked", "?" unknown."""
    host = _text(value)
    if not host:
        return asked.host
    if host == "?":
        return None
    return host


def parse_shards(reply: object, asked: TCPAddress, tls: bool) -> list[ShardInfo] | None:
    """Parse ``CLUSTER SHARDS`` (Redis 7+); None if a shard names two healthy primaries."""
    if not isinstance(reply, list):
        raise ProtocolError(f"CLUSTER SHARDS returned {reply!r:.100}")
    shards = []
    for item in reply:
        shard = _as_dict(item)
        bounds = shard.get("slots")
        if not isinstance(bounds, list) or not bounds:
            continue
        numbers = [int(_text(bound)) for bound in bounds]
        ranges = tuple(zip(numbers[::2], numbers[1::2], strict=True))
        primary: TCPAddress | None = None
        primary_healthy = False
        replicas: list[TCPAddress] = []
        nodes = shard.get("nodes")
        for entry in nodes if isinstance(nodes, list) else []:
            node = _as_dict(entry)
            endpoint = _text(node.get("endpoint"))
            host = _host(node.get("ip") if endpoint in ("", "?") else endpoint, asked)
            port = node.get("tls-port") if tls and "tls-port" in node else node.get("port")
            if port is None:
                port = node.get("tls-port")
            if host is None or not isinstance(port, int) or not port:
                continue
            address = TCPAddress(host, port)
            if _text(node.get("role")) == "master":
                healthy = _text(node.get("health")) != "failed"
                if healthy and primary_healthy:
                    return None  # Valkey 8.0 after CLUSTER FAILOVER; CLUSTER SLOTS is right
                if healthy or primary is None:
                    primary, primary_healthy = address, healthy
            elif _text(node.get("health")) != "failed":
                replicas.append(address)
        if primary is not None:
            shards.append(ShardInfo(ranges, primary, tuple(replicas)))
    return shards


def parse_slots(reply: object, asked: TCPAddress) -> list[ShardInfo]:
    """Parse ``CLUSTER SLOTS`` (Redis 3+): ``[[first, last, [host, port, id], replicas...]]``."""
    if not isinstance(reply, list):
        raise ProtocolError(f"CLUSTER SLOTS returned {reply!r:.100}")
    shards = []
    for item in reply:
        if not isinstance(item, list) or len(item) < 3:
            raise ProtocolError(f"unexpected CLUSTER SLOTS entry {item!r:.100}")
        first, last, *nodes = item
        addresses = []
        for node in nodes:
            if not isinstance(node, list) or len(node) < 2:
                continue
            host = _host(node[0], asked)
            if host is not None and isinstance(node[1], int) and node[1]:
                addresses.append(TCPAddress(host, node[1]))
        if addresses and isinstance(first, int) and isinstance(last, int):
            shards.append(ShardInfo(((first, last),), addresses[0], tuple(addresses[1:])))
    return shards


def parse_redirection(message: str, replied_by: TCPAddress) -> tuple[int, TCPAddress]:
    """``MOVED 3999 127.0.0.1:6381`` -> ``(3999, TCPAddress("127.0.0.1", 6381))``."""
    try:
        _, slot, target = message.split(" ", 2)
        host, _, port = target.strip().rpartition(":")
        host = host.strip("[]")
        return int(slot), TCPAddress(host or replied_by.host, int(port))
    except ValueError:
        raise ProtocolError(f"malformed redirection from {replied_by}: {message!r}") from None


def slots_served(shards: Sequence[ShardInfo]) -> int:
    """How many slots ``shards`` assign to a primary (16384 for a fully covered cluster)."""
    return sum(last - first + 1 for shard in shards for first, last in shard.ranges)


class SlotMap:
    """The primary serving each slot, as last learned, and the nodes to ask for a newer map.

    The table is replaced whole by :meth:`install` after each discovery and
    patched one slot at a time by :meth:`moved` after a ``MOVED`` reply.
    """

    __slots__ = ("seeds", "shards", "slots")

    def __init__(self, seeds: Sequence[TCPAddress]) -> None:
        #: The nodes the client was opened with: asked last, and routed to before any map.
        self.seeds = tuple(seeds)
        #: Per slot, the primary serving it (None: unknown, or served by nobody).
        self.slots: list[TCPAddress | None] = [None] * CLUSTER_SLOTS
        #: The shards of the last discovery, sorted by their first slot.
        self.shards: tuple[ShardInfo, ...] = ()

    def route(self, slot: int | None) -> TCPAddress:
        """The node to send a command for ``slot`` to (any known node if unknown)."""
        if slot is not None:
            address = self.slots[slot]
            if address is not None:
                return address
        if self.shards:
            return self.shards[0].primary
        return self.seeds[0]

    def install(self, shards: Sequence[ShardInfo]) -> None:
        """Replace the map with what a discovery found."""
        slots: list[TCPAddress | None] = [None] * CLUSTER_SLOTS
        for shard in shards:
            for first, last in shard.ranges:
                slots[first : last + 1] = [shard.primary] * (last - first + 1)
        self.slots = slots
        self.shards = tuple(sorted(shards, key=lambda shard: shard.ranges[0]))

    def moved(self, slot: int, target: TCPAddress) -> None:
        """Record that ``target`` now serves ``slot`` (a ``MOVED`` reply said so)."""
        if 0 <= slot < CLUSTER_SLOTS:
            self.slots[slot] = target

    def covered(self) -> int:
        """How many slots the map assigns to a node."""
        return sum(1 for address in self.slots if address is not None)

    def discovery_candidates(self) -> list[TCPAddress]:
        """The nodes to ask for the topology, in order: primaries, replicas, then the seeds."""
        candidates: dict[TCPAddress, None] = {}
        for shard in self.shards:
            candidates[shard.primary] = None
        for shard in self.shards:
            candidates.update(dict.fromkeys(shard.replicas))
        candidates.update(dict.fromkeys(self.seeds))
        return list(candidates)
