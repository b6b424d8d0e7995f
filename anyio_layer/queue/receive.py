"""Receiving from normal channels (no ``!``): popping straight from Redis, one pop at a time.

Owns ``receive()`` for channels shared by many processes (worker queues and
the like): the receivers of one process take turns, one blocked ``BZPOPMIN``
per channel, so they see the channel in order and the server sees one
blocked client per channel, not one per receiver. Must not buffer: a message
popped here goes to the receiver that popped it, or back to Redis.

Hostile data: a popped message that cannot be decoded (garbage, another
serializer's format, another encryption key, not a dict) is dropped, logged
and counted in ``LayerStatistics.decode_errors``, and the receiver waits for
the next one: a poisoned message never reaches, nor fails, a caller. A
channel key of the wrong type (``WRONGTYPE``) is waited out with back-off.
Covered by ``tests/test_hostile_data.py``.

Cancellation: a pop that completes just as its receiver is cancelled is
recovered (``CLIENT UNBLOCK`` and read the reply) and put back at its
original score, so it is the next message any receiver gets; the receiver
waiting for its turn only takes over after that. While Redis is away,
receivers retry with back-off and resume once it is back. Covered by
``tests/test_cancellation_layer.py`` and ``tests/test_queue_layer.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from ..exceptions import MessageDecodeError, ProtocolError, ResponseError
from .codec import RESERVED_KEY, MessageCodec
from .keyspace import KeySpace
from .popping import BLOCK_GRACE, BLOCK_SECONDS, REDIS_AWAY, RetryDelay, put_back
from .replies import popped_entry
from .statistics import Counters

__all__ = ["NormalReceivers"]

logger = logging.getLogger("anyio_layer")


class _RefCountedLock:
    """The lock receivers of one channel take turns with, and how many hold or await it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class NormalReceivers:
    """The receivers of one layer on normal channels, taking turns per channel."""

    def __init__(
        self,
        *,
        keys: KeySpace,
        codec: MessageCodec,
        counters: Counters,
        expiry: float,
        ttl: int,
    ) -> None:
        self._keys = keys
        self._decode = codec.decode
        self._counters = counters
        self._expiry = expiry
        self._ttl = ttl
        self._turns: dict[str, _RefCountedLock] = {}

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on the normal channel ``channel``; safe to cancel."""
        # One pop per channel at a time in this process: a receiver waiting
        # here takes over only after a cancelled one has put its last-moment
        # pop back, so receivers of one process see the channel in order (and
        # the server sees one blocked client per channel, not one per receiver).
        turn = self._turns.get(channel)
        if turn is None:
            turn = self._turns[channel] = _RefCountedLock()
        turn.users += 1
        try:
            async with turn.lock:
                return await self._pop(channel)
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[channel]

    async def _pop(self, channel: str) -> dict[str, Any]:
        key, server = self._keys.channel(channel)

        async def on_cancelled_reply(reply: object) -> None:
            await put_back(server, key, [popped_entry(reply)], self._ttl)

        retry = RetryDelay()
        while True:
            try:
                with anyio.fail_after(BLOCK_SECONDS + BLOCK_GRACE):
                    reply = await server.execute_blocking(
                        "BZPOPMIN", key, BLOCK_SECONDS, on_cancelled_reply=on_cancelled_reply
                    )
                entry = popped_entry(reply)
            except (*REDIS_AWAY, ProtocolError) as exc:  # a server sending garbage: wait
                await retry.wait(f"receive({channel!r})", exc)
                continue
            except ResponseError as exc:
                if exc.code != "WRONGTYPE":
                    raise
                # Another client put something else under the key: wait until it is gone.
                await retry.wait(f"receive({channel!r})", exc)
                continue
            retry.reset()
            if entry is None:
                continue
            member, score = entry
            if score < time.time() - self._expiry:
                self._counters.expired += 1
                continue
            try:
                message = self._decode(member)
            except MessageDecodeError as exc:  # counted by the codec
                logger.error("dropping a message in %r that cannot be decoded: %s", channel, exc)
                continue
            message.pop(RESERVED_KEY, None)
            self._counters.received += 1
            return message
