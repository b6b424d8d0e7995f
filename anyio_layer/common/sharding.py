"""channels_redis's CRC32 host ring: which of several servers a name lives on.

Owns the hash only (the queue layer's key space and the pub/sub layer's
subscriptions both place names with it, and the Channels adapter exposes it
as ``consistent_hash``); must not name keys or know about either layer. The
ring is channels_redis 4.x's exactly, so both libraries agree on where every
name lives while they share servers.
"""

from __future__ import annotations

import binascii

__all__ = ["consistent_hash"]


def consistent_hash(value: str | bytes, ring_size: int) -> int:
    """channels_redis's ring: CRC32 of the value, reduced to 0..4095, scaled to the ring."""
    if ring_size == 1:
        return 0
    if isinstance(value, str):
        value = value.encode()
    return int((binascii.crc32(value) & 0xFFF) / (4096 / ring_size))
