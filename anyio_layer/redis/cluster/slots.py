"""Hash slots: which of the 16384 slots of a Redis Cluster a key belongs to.

Owns :func:`key_slot` (CRC16 with hash tags, exactly as Redis computes it) and
:func:`slot_for_keys` (the one slot a group of keys shares). Pure functions:
no I/O, no knowledge of which node serves a slot (that is
:mod:`~anyio_layer.redis.cluster.topology`). Covered by
``tests/test_cluster_slots.py`` (values checked against ``CLUSTER KEYSLOT``)
and, against a running cluster, ``tests/test_cluster_client.py``.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Iterable
from typing import Final

from ...exceptions import CrossSlotError
from ..protocol import Arg

__all__ = ["CLUSTER_SLOTS", "key_slot", "slot_for_keys"]

#: Number of hash slots in a Redis Cluster.
CLUSTER_SLOTS: Final = 16384


def _key_bytes(key: Arg) -> bytes:
    """The bytes Redis sees for ``key`` (the same conversion as the RESP encoder)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, bool):
        raise TypeError("a bool is not a valid Redis key; pass a string or bytes")
    if isinstance(key, int):
        return b"%d" % key
    if isinstance(key, float):
        if key != key:
            raise ValueError("NaN is not a valid Redis key")
        return repr(key).encode()
    raise TypeError(f"a Redis key must be str, bytes or a number, not {type(key).__name__}")


def key_slot(key: Arg) -> int:
    """The hash slot (0-16383) of ``key``, exactly as Redis Cluster computes it.

    The slot is ``CRC16(key) mod 16384`` (CRC-16/XMODEM). If the key contains
    a ``{``, and a ``}`` follows it with at least one character in between,
    only the characters between the *first* ``{`` and the first ``}`` after it
    are hashed (the *hash tag*): ``{user1000}.following`` and
    ``{user1000}.followers`` share a slot. ``foo{}{bar}`` hashes whole
    (the first tag is empty), ``foo{{bar}}`` hashes ``{bar``.

    ``str`` keys are encoded as UTF-8 and numbers as their decimal form, as
    they are when sent.
    """
    data = _key_bytes(key)
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # binascii.crc_hqx is CRC-CCITT (polynomial 0x1021); with 0 as the initial
    # value it is the XMODEM variant Redis uses.
    return crc_hqx(data, 0) & (CLUSTER_SLOTS - 1)


def slot_for_keys(keys: Iterable[Arg]) -> int | None:
    """The one slot all ``keys`` hash to (None if there are no keys).

    Raises:
        CrossSlotError: the keys hash to different slots.
    """
    slot: int | None = None
    first: Arg | None = None
    for key in keys:
        this = key_slot(key)
        if slot is None:
            slot, first = this, key
        elif this != slot:
            raise CrossSlotError(
                f"keys {first!r} (slot {slot}) and {key!r} (slot {this}) hash to different "
                f"slots, but Redis Cluster needs all keys of one script or pipeline in one "
                f"slot: give them a common {{hash tag}}, e.g. '{{room}}:a' and '{{room}}:b'"
            )
    return slot
