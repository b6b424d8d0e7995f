"""What a test cluster's nodes say about it: ``CLUSTER NODES`` lines and slot ranges.

Owns :class:`ClusterNodeInfo`, the parsing of ``CLUSTER NODES`` and the even
split of the hash slots among primaries. Pure: no I/O, no process, no
waiting. Covered by tests/test_cluster_client.py (through the cluster
fixtures) and the cluster tests of the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLUSTER_SLOTS", "ClusterNodeInfo", "parse_cluster_nodes", "slot_ranges"]

#: Number of hash slots in a Redis Cluster.
CLUSTER_SLOTS = 16384


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``, as seen by one node.

    Attributes:
        node_id: the 40-character node id.
        host, port: the client address the node announces.
        flags: e.g. ``{"myself", "master"}``, ``{"slave"}``, ``{"master", "fail"}``.
        master_id: for a replica, its primary's id; else None.
        slots: ``(first, last)`` ranges the node serves (migration markers omitted).
        link_connected: whether the cluster bus link is ``connected``.
    """

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]
    link_connected: bool

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    """One :class:`ClusterNodeInfo` per line of a ``CLUSTER NODES`` reply."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split(",", 1)[0].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # "[slot->-importing-id]": a migration in progress
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            ClusterNodeInfo(
                node_id=fields[0],
                host=host,
                port=int(port) if port.isdigit() else 0,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(sorted(slots)),
                link_connected=fields[7] == "connected",
            )
        )
    return nodes


def slot_ranges(count: int) -> list[tuple[int, int]]:
    """Split the 16384 slots into ``count`` contiguous ranges, as redis-cli does."""
    per_node = CLUSTER_SLOTS / count
    ranges = []
    first = 0
    for index in range(count):
        last = CLUSTER_SLOTS - 1 if index == count - 1 else round(per_node * (index + 1)) - 1
        ranges.append((first, last))
        first = last + 1
    return ranges
