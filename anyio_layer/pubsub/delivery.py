"""Delivery of published messages into the buffers of this process's channels.

:class:`LocalDelivery` is what a subscriber calls for every message it reads
(the hot path): it decodes the message once and files it into the bounded
buffer of each local channel it is for (the channel itself, or every local
member of a group), counting what it cannot route, decode or keep.

The channel and group maps it reads are the layer's; it must NOT change
them, subscribe anything or await (it runs inside the reader's loop).
Covered by ``tests/test_pubsub_layer.py`` and
``tests/test_cancellation_pubsub.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from ..common.channels import LocalBuffer
from ..exceptions import MessageDecodeError
from ..messages import MessageSerializer
from .statistics import Counters

__all__ = ["LocalDelivery"]

logger = logging.getLogger("anyio_layer")


class LocalDelivery:
    """Files messages published to a Redis channel into the local channels listening on it."""

    def __init__(
        self,
        channels: dict[str, LocalBuffer],
        groups: dict[str, set[str]],
        serializer: MessageSerializer,
        counters: Counters,
        dict_messages_only: bool = True,
    ) -> None:
        #: Local channels and their buffers (the layer's map).
        self.channels = channels
        #: Group Redis channel -> member local channels (the layer's map).
        self.groups = groups
        self.serializer = serializer
        self._counters = counters
        #: Drop (and count) published values that are not dicts.
        self.dict_messages_only = dict_messages_only

    def deliver(self, name: str, data: bytes) -> None:
        """File a published message into the buffers of the local channels it is for."""
        members = self.groups.get(name)
        targets = list(members) if members else ([name] if name in self.channels else [])
        if not targets:
            self._counters.unroutable += 1
            return
        try:
            message = self.serializer.deserialize(data)
            if not isinstance(message, dict) and self.dict_messages_only:
                raise MessageDecodeError(f"decoded message is a {type(message).__name__}")
        except Exception as exc:
            self._counters.decode_errors += 1
            logger.error("dropping a message published to %r: %s", name, exc)
            return
        # One entry for every target: each receive() takes its own copy.
        entry = (time.monotonic(), message)
        for channel in targets:
            self.put(channel, entry)

    def put(self, channel: str, entry: tuple[float, dict[str, Any]]) -> None:
        """Buffer a ``(timestamp, message)`` entry for ``channel`` (its oldest dropped if full)."""
        buffer = self.channels.get(channel)
        if buffer is None:
            self._counters.unroutable += 1
        elif not buffer.put(entry):
            self._counters.overflows += 1
            logger.warning(
                "local buffer of %r is full (%d messages): dropped its oldest message",
                channel,
                buffer.capacity,
            )

    def listeners_of(self, names: Iterable[str]) -> list[str]:
        """Local channels that hear something through ``names`` (each once)."""
        listeners: dict[str, None] = {}
        for name in names:
            if name in self.channels:
                listeners[name] = None
            for member in self.groups.get(name, ()):
                listeners[member] = None
        return list(listeners)
