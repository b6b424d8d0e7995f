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

from anyio_layer.messages import random_client_prefix
from anyio_layer.queue import (
    DEFAULT_MAX_MESSAGE_SIZE,
    LayerStatistics,
    QueueLayer,
    QueueOptions,
    open_queue_layer,
)
from anyio_layer.redis.hosts import ClusterConfig

from ._base import CoreLayerAdapter
from ._runtime import LoopRuntime

__all__ = ["RedisChannelLayer"]


class RedisChannelLayer(CoreLayerAdapter[QueueLayer]):
    """The sorted-set channel layer, with channels_redis's options and behaviour.

    Internally there is one core :class:`~anyio_layer.queue.QueueLayer`
    per event loop (see :mod:`channels_compat._runtime`). Each names its
    channels ``<client_prefix>-<n>`` and may receive from any channel of this
    object's ``client_prefix`` family, so a channel made by ``new_channel()``
    in one loop (say, an ``async_to_sync`` call) can be received from in
    another, while loops receiving at the same time never read each other's
    Redis key.
    """

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
        self.client_prefix = random_client_prefix()
        # Validate everything now, so a bad CONFIG fails at start-up, not on first use.
        self._options = QueueOptions.parse(
            hosts=hosts,
            prefix=prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            symmetric_encryption_keys=symmetric_encryption_keys,
            random_prefix_length=random_prefix_length,
            serializer_format=serializer_format,
            max_message_size=max_message_size,
            client_prefix_family=self.client_prefix,
        )
        self._capacities = self._options.capacities
        self._serializer = self._options.serializer
        self.hosts = hosts
        self.prefix = prefix
        self.group_expiry = group_expiry
        # A cluster is one logical server: channels_redis's ring has nothing to spread.
        configs = self._options.hosts
        self.ring_size = 1 if isinstance(configs, ClusterConfig) else len(configs)
        loop_numbers = itertools.count(1)
        self._runtime: LoopRuntime[QueueLayer] = LoopRuntime(
            lambda: open_queue_layer(
                self._options.with_client_prefix(f"{self.client_prefix}-{next(loop_numbers)}")
            )
        )

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name (``<prefix>.<client_prefix>-<n>!<hex>``)."""
        return await self._new_channel(prefix)

    async def wait_received(self) -> None:
        """channels_redis API; nothing to wait for here (no detached cleaners)."""

    def get_capacity(self, channel: str) -> int:
        return self._capacities.for_channel(channel)

    def statistics(self) -> LayerStatistics | None:
        """The current loop's core layer statistics, or None if none is open."""
        layer = self._runtime.current()
        return None if layer is None else layer.statistics()
