"""Blocking pops from Redis, shared by the local readers and the normal-channel receivers.

Owns what both pop loops need to take messages out of Redis without losing
any: the server- and client-side timeouts of a blocked pop, which failures
mean "Redis is away, wait and pop again", the back-off while it is, and
putting popped messages back at their original scores. Must not decide where
a popped message goes (that is :mod:`.readers` and :mod:`.receive`).
Covered by ``tests/test_cancellation_layer.py`` (put-back after a cancelled
pop) and ``tests/test_queue_layer.py`` (receivers outlasting an outage).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

import anyio

from ..common.backoff import Backoff
from ..exceptions import (
    ClusterUnavailableError,
    RedisConnectionError,
    TooManyRedirectionsError,
)
from .keyspace import KeyServer
from .replies import Entry

__all__ = ["BLOCK_GRACE", "BLOCK_SECONDS", "REDIS_AWAY", "RetryDelay", "put_back"]

logger = logging.getLogger("anyio_layer")

#: Server-side timeout of blocking pops; the client allows this much more before giving up.
BLOCK_SECONDS: Final = 5
BLOCK_GRACE: Final = 10.0
#: What makes a blocked pop wait and try again instead of failing its receiver: the
#: server is unreachable, or (on a cluster) still refusing after the client's own retries.
REDIS_AWAY: Final = (
    RedisConnectionError,
    ClusterUnavailableError,
    TooManyRedirectionsError,
    TimeoutError,
)


class RetryDelay:
    """Exponential back-off for a loop that waits for Redis to come back."""

    __slots__ = ("_backoff",)

    def __init__(self) -> None:
        self._backoff = Backoff()

    async def wait(self, waiter: str, error: Exception) -> None:
        # A warning when the outage starts; the retries (twice a second) only at debug level.
        log = logger.debug if self._backoff.delay else logger.warning
        delay = self._backoff.failed()
        log("%s waiting for Redis: %s", waiter, error)
        await anyio.sleep(delay)

    def reset(self) -> None:
        self._backoff.succeeded()


async def put_back(
    server: KeyServer, key: bytes, entries: Iterable[Entry | None], ttl: int
) -> None:
    """Return popped messages to Redis at their original scores (so they come first)."""
    flat: list[bytes | str] = []
    for entry in entries:
        if entry is not None:
            flat += [repr(entry[1]), entry[0]]
    if flat:
        # Not retried after a connection error: had the first ZADD run, another
        # receiver could have popped the message before a retry added it again.
        await server.pipeline([("ZADD", key, *flat), ("EXPIRE", key, ttl)])
