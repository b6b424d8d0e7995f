"""Key naming and shard selection: the only place that decides where a channel lives.

The layout is channels_redis 4.x's, so both can share one Redis:

* a channel's messages live in the sorted set ``prefix + non_local_name(channel)``;
  for a process-local channel (``specific.<client>!<suffix>``) that is the
  key of its non-local part, shared by every local channel of the process;
* a group's members live in the sorted set ``prefix + ":group:" + group``;
* a key's shard is the CRC32 ring position of the name it was derived from
  (:func:`consistent_hash`).

Unlike channels_redis, which hashes a process-local channel's *full* name on
send but its *non-local* name on receive (so with several hosts a message can
land on a shard nobody reads), every decision here goes through
:meth:`Router.channel_shard`, which always hashes the non-local name.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from ..messages import non_local_name

__all__ = ["Router", "consistent_hash", "scan_pattern"]


def consistent_hash(value: str | bytes, ring_size: int) -> int:
    """channels_redis's ring: CRC32 of the value, reduced to 0..4095, scaled to the ring."""
    if ring_size == 1:
        return 0
    if isinstance(value, str):
        value = value.encode()
    return int((binascii.crc32(value) & 0xFFF) / (4096 / ring_size))


@dataclass(frozen=True, slots=True)
class Router:
    """Maps channel and group names to Redis keys and shard indexes."""

    prefix: str
    ring_size: int

    def channel_key(self, channel: str) -> bytes:
        return (self.prefix + non_local_name(channel)).encode()

    def channel_shard(self, channel: str) -> int:
        return consistent_hash(non_local_name(channel), self.ring_size)

    def group_key(self, group: str) -> bytes:
        return f"{self.prefix}:group:{group}".encode()

    def group_shard(self, group: str) -> int:
        return consistent_hash(group, self.ring_size)

    def scan_pattern(self) -> bytes:
        """A SCAN MATCH pattern for every key under this prefix (glob characters escaped)."""
        return scan_pattern(self.prefix)


def scan_pattern(prefix: str) -> bytes:
    """A SCAN MATCH pattern for every key that starts with ``prefix`` (glob characters escaped)."""
    escaped = "".join("\\" + char if char in "*?[]\\" else char for char in prefix)
    return (escaped + "*").encode()
