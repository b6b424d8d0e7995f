"""Decoders for the replies the queue layer gets from Redis: scripts and pops.

Owns turning a raw RESP reply into typed values; pure functions, no I/O, no
state. No Redis sends a reply of the wrong shape, but a broken or hostile
server might: a script reply of the wrong shape raises
:class:`~anyio_layer.exceptions.ProtocolError` to the caller; a pop reply
that carries no element decodes to nothing (the pop timed out on the
server), and one whose scores are not numbers raises ``ProtocolError``,
which the pop loops wait out like a broken connection. Covered through
``tests/test_queue_layer.py`` (BZMPOP replies on Redis 7, BZPOPMIN and ZPOPMIN
replies on 6.2).
"""

from __future__ import annotations

from typing import TypeAlias

from ..exceptions import ProtocolError

__all__ = [
    "Entry",
    "group_send_counts",
    "popped_entries",
    "popped_entry",
    "send_counts",
    "zpopmin_entries",
]

#: A message as stored in a sorted set: ``(member, score)``, the score being when it was sent.
Entry: TypeAlias = tuple[bytes, float]


def send_counts(reply: object) -> tuple[int, int]:
    """``(added, pruned)`` from the reply of :data:`~.scripts.SEND`."""
    if isinstance(reply, list) and len(reply) == 2 and all(isinstance(x, int) for x in reply):
        return reply[0], reply[1]
    raise ProtocolError(f"unexpected reply from the send script: {reply!r:.100}")


def group_send_counts(reply: object) -> tuple[int, int, int]:
    """``(added, skipped, pruned)`` from the reply of :data:`~.scripts.GROUP_SEND`."""
    if isinstance(reply, list) and len(reply) == 3 and all(isinstance(x, int) for x in reply):
        return reply[0], reply[1], reply[2]
    raise ProtocolError(f"unexpected reply from the group send script: {reply!r:.100}")


def _score(value: object) -> float:
    """A sorted-set score as Redis sends it (a bulk string), as a float."""
    try:
        return float(value)  # type: ignore[arg-type]  # TypeError when it is no number
    except (TypeError, ValueError):
        raise ProtocolError(
            f"a pop reply carried a score that is no number: {value!r:.60}"
        ) from None


def popped_entry(reply: object) -> Entry | None:
    """``(member, score)`` from a BZPOPMIN reply ``[key, member, score]``."""
    if isinstance(reply, list) and len(reply) == 3:
        _, member, score = reply
        if isinstance(member, bytes) and isinstance(score, bytes):
            return member, _score(score)
    return None


def popped_entries(reply: object) -> list[Entry]:
    """``[(member, score), ...]`` from a BZMPOP reply ``[key, [[member, score], ...]]``."""
    if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], list)):
        return []
    entries = []
    for pair in reply[1]:
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], bytes):
            entries.append((pair[0], _score(pair[1])))
    return entries


def zpopmin_entries(reply: object) -> list[Entry]:
    """``[(member, score), ...]`` from a ZPOPMIN reply ``[member, score, member, score, ...]``."""
    if not isinstance(reply, list):
        return []
    if len(reply) % 2:
        raise ProtocolError(f"a ZPOPMIN reply has an odd number of items: {reply!r:.100}")
    return [
        (member, _score(score))
        for member, score in zip(reply[::2], reply[1::2], strict=True)
        if isinstance(member, bytes) and isinstance(score, bytes)
    ]
