"""In-process pieces shared by both layers: local buffers and scoped channels.

Owns :class:`LocalBuffer` (one local channel's bounded, cancellation-safe
message buffer), :class:`LayerChannel` (the handle ``open_channel()`` yields)
and the :class:`ScopedChannels` mixin that gives a layer ``open_channel()``.
It must NOT know Redis or either layer's internals: a layer plugs in through
the ``_Layer`` / ``_ScopedLayer`` protocols below. Covered by
``tests/test_queue_layer.py`` and ``tests/test_pubsub_layer.py``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

import anyio

from ..exceptions import ChannelClosedError, LayerClosedError, RedisError
from ..messages import validate_group_name
from .wakeup import Waiters

__all__ = ["LayerChannel", "LocalBuffer", "ScopedChannels"]

logger = logging.getLogger("anyio_layer")

#: How long leaving a scoped channel may spend removing it from its groups.
LEAVE_TIMEOUT = 5.0


class LocalBuffer:
    """Messages for one channel of this process, waiting for ``receive()``.

    Receivers wait for the buffer to be non-empty and then take a message
    without any further checkpoint, so a cancelled receiver never holds a
    message: it stays here for the next one.

    An entry is ``(timestamp, message)`` and may sit in the buffers of several
    channels at once (a group message decoded once for all its local
    members): :meth:`take` hands each receiver its own shallow copy, so no
    copy is made, nor kept alive, for a member before it receives.
    """

    __slots__ = ("_waiters", "capacity", "closed", "messages", "receivers")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: Entries, oldest first; shared with other buffers: never mutate a message here.
        self.messages: deque[tuple[float, dict[str, Any]]] = deque()
        self.receivers = 0
        self.closed = False
        self._waiters = Waiters()

    def put(self, entry: tuple[float, dict[str, Any]]) -> bool:
        """Buffer a ``(timestamp, message)`` entry; False if the oldest one was dropped for it."""
        messages = self.messages
        dropped = len(messages) >= self.capacity
        if dropped:
            messages.popleft()
        messages.append(entry)
        self._waiters.wake_all()
        return not dropped

    def take(self) -> dict[str, Any]:
        """Remove the oldest message and return a copy of it for the receiver (no checkpoint)."""
        _, message = self.messages.popleft()
        return dict(message) if type(message) is dict else copy.copy(message)

    def changed(self) -> Awaitable[None]:
        """An awaitable that returns once a message is put (or the channel closed).

        Receivers loop ``while not buffer.messages: await buffer.changed()``.
        Raises :class:`~anyio_layer.exceptions.ChannelClosedError` once the
        channel is closed.
        """
        if self.closed:
            raise ChannelClosedError("the channel was closed while receiving from it")
        return self._waiters.wait()

    def close(self) -> None:
        """Drop buffered messages and wake receivers, who get ChannelClosedError."""
        self.closed = True
        self.messages.clear()
        self._waiters.wake_all()

    def drop_expired(self, cutoff: float) -> int:
        """Drop messages buffered before ``cutoff``; return how many."""
        dropped = 0
        while self.messages and self.messages[0][0] < cutoff:
            self.messages.popleft()
            dropped += 1
        return dropped


class _Layer(Protocol):
    async def new_channel(self, prefix: str = ...) -> str: ...
    async def receive(self, channel: str) -> dict[str, Any]: ...
    async def send(self, channel: str, message: dict[str, Any]) -> None: ...
    async def group_add(self, group: str, channel: str) -> None: ...
    async def group_discard(self, group: str, channel: str) -> None: ...


class LayerChannel:
    """A process-local channel opened with ``layer.open_channel()``.

    ``async for message in channel`` receives until the block exits. Groups
    joined with :meth:`group_add` are left automatically when it does.
    """

    def __init__(self, layer: _Layer, name: str) -> None:
        self.layer = layer
        self.name = name
        self.groups: list[str] = []

    async def receive(self) -> dict[str, Any]:
        return await self.layer.receive(self.name)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send to another channel (a convenience for ``layer.send``)."""
        await self.layer.send(channel, message)

    async def group_add(self, group: str) -> None:
        """Join ``group`` for the rest of the block."""
        await self.layer.group_add(group, self.name)
        if group not in self.groups:
            self.groups.append(group)

    async def group_discard(self, group: str) -> None:
        await self.layer.group_discard(group, self.name)
        if group in self.groups:
            self.groups.remove(group)

    async def _leave_groups(self) -> None:
        for group in list(self.groups):
            try:
                await self.group_discard(group)
            except (RedisError, LayerClosedError) as exc:
                logger.warning("could not remove %r from group %r: %s", self.name, group, exc)

    def __aiter__(self) -> LayerChannel:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.receive()

    def __repr__(self) -> str:
        return f"<LayerChannel {self.name!r} groups={self.groups!r}>"


class _ScopedLayer(_Layer, Protocol):
    async def _release_channel(self, name: str) -> None:
        """Forget everything about a channel whose scope ended."""


class ScopedChannels:
    """Mixin giving a layer :meth:`open_channel`; layers implement ``_release_channel``."""

    @contextlib.asynccontextmanager
    async def open_channel(
        self: _ScopedLayer, *groups: str, prefix: str | None = None
    ) -> AsyncIterator[LayerChannel]:
        """A new process-local channel, member of ``groups`` while the block runs.

        On exit (also on error or cancellation) the channel leaves every
        group it is in and whatever was buffered for it is dropped.
        ``prefix`` is passed to ``new_channel()`` (default: the layer's).
        """
        for group in groups:
            validate_group_name(group)
        name = await (self.new_channel() if prefix is None else self.new_channel(prefix))
        channel = LayerChannel(self, name)
        try:
            for group in groups:
                await channel.group_add(group)
            yield channel
        finally:
            with anyio.move_on_after(LEAVE_TIMEOUT, shield=True):
                try:
                    await channel._leave_groups()
                finally:
                    # Also when leaving took too long (Redis away): the layer must
                    # forget the channel, or it would keep its groups alive.
                    await self._release_channel(name)
