"""Drop-in for ``channels_redis.core.RedisChannelLayer``, over the anyio core.

Switch a Django project by changing the backend path only::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_compat.core.RedisChannelLayer",
            "CONFIG": {"hosts": [("localhost", 6379)]},
        },
    }

Every ``CONFIG`` key of channels_redis is accepted with the same default
(see the README for the full reference). Errors are the ones Channels users
expect: :class:`channels.exceptions.ChannelFull` at capacity, ``TypeError``
(Channels' wording) for invalid names.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

from channels.layers import BaseChannelLayer

from anyio_layer._config import CapacityRules
from anyio_layer._hosts import parse_hosts
from anyio_layer._routing import consistent_hash
from anyio_layer.names import random_client_prefix
from anyio_layer.queue_layer import (
    DEFAULT_MAX_MESSAGE_SIZE,
    LayerStatistics,
    QueueLayer,
    open_redis_layer,
)
from anyio_layer.serializers import registry

from ._errors import channels_errors
from ._runtime import LoopRuntime

__all__ = ["RedisChannelLayer"]


class RedisChannelLayer(BaseChannelLayer):
    """The sorted-set channel layer, with channels_redis's options and behaviour.

    Internally there is one core :class:`~anyio_layer.queue_layer.QueueLayer`
    per event loop (see :mod:`channels_compat._runtime`). Each names its
    channels ``<client_prefix>-<n>`` and may receive from any channel of this
    object's ``client_prefix`` family, so a channel made by ``new_channel()``
    in one loop (say, an ``async_to_sync`` call) can be received from in
    another, while loops receiving at the same time never read each other's
    Redis key.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        hosts: object = None,
        prefix: str = "asgi",
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: object = None,
        symmetric_encryption_keys: object = None,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity)
        # Validate everything now, so a bad CONFIG fails at start-up, not on first use.
        self._hosts = parse_hosts(hosts)
        self._capacities = CapacityRules.parse(capacity, channel_capacity)
        self.hosts = hosts
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.ring_size = len(self._hosts)
        self.client_prefix = random_client_prefix()
        self._serializer = registry.get_serializer(
            serializer_format,
            symmetric_encryption_keys=symmetric_encryption_keys,
            random_prefix_length=random_prefix_length,
            expiry=expiry,
        )
        self._options: dict[str, Any] = {
            "hosts": self._hosts,
            "prefix": prefix,
            "expiry": expiry,
            "group_expiry": group_expiry,
            "capacity": capacity,
            "channel_capacity": channel_capacity,
            "symmetric_encryption_keys": symmetric_encryption_keys,
            "random_prefix_length": random_prefix_length,
            "serializer_format": serializer_format,
            "max_message_size": max_message_size,
            "client_prefix_family": self.client_prefix,
        }
        loop_numbers = itertools.count(1)
        self._runtime: LoopRuntime[QueueLayer] = LoopRuntime(
            lambda: open_redis_layer(
                **self._options, client_prefix=f"{self.client_prefix}-{next(loop_numbers)}"
            )
        )

    # -- channel layer API ----------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send a message onto a channel; raises ChannelFull at capacity."""
        layer = await self._runtime.layer()
        with channels_errors():
            await layer.send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Receive the first message on the channel; safe to cancel at any moment."""
        layer = await self._runtime.layer()
        with channels_errors():
            return await layer.receive(channel)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name."""
        layer = await self._runtime.layer()
        with channels_errors():
            return await layer.new_channel(prefix)

    async def group_add(self, group: str, channel: str) -> None:
        layer = await self._runtime.layer()
        with channels_errors():
            await layer.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        layer = await self._runtime.layer()
        with channels_errors():
            await layer.group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        layer = await self._runtime.layer()
        with channels_errors():
            await layer.group_send(group, message)

    async def flush(self) -> None:
        """Delete every message and group under this prefix (SCAN, never KEYS)."""
        layer = await self._runtime.layer()
        with channels_errors():
            await layer.flush()

    # -- helpers channels_redis users call ----------------------------------------------

    async def close_pools(self) -> None:
        """Close this event loop's connections (they reopen on next use)."""
        await self._runtime.close()

    async def close(self) -> None:
        """Close this event loop's core layer and its connections."""
        await self._runtime.close()

    async def wait_received(self) -> None:
        """channels_redis API; nothing to wait for here (no detached cleaners)."""

    def get_capacity(self, channel: str) -> int:
        return self._capacities.for_channel(channel)

    def consistent_hash(self, value: str) -> int:
        return consistent_hash(value, self.ring_size)

    def serialize(self, message: dict[str, Any]) -> bytes:
        return self._serializer.serialize(message)

    def deserialize(self, message: bytes) -> Any:
        return self._serializer.deserialize(message)

    def statistics(self) -> LayerStatistics | None:
        """The current loop's core layer statistics, or None if it is not open."""
        layer = self._runtime.current()
        return None if layer is None else layer.statistics()

    def __str__(self) -> str:
        return f"{self.__class__.__name__}(hosts={self.hosts})"
