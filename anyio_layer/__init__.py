"""A Redis-backed channel layer, native to anyio: runs under trio and asyncio alike.

The queue layer (channels_redis's ``RedisChannelLayer`` semantics and data
layout)::

    async with anyio_layer.open_redis_layer(hosts=["redis://localhost:6379"]) as layer:
        async with layer.open_channel("room") as channel:
            await layer.group_send("room", {"type": "chat.message", "text": "hi"})
            message = await channel.receive()

The Redis client underneath is usable on its own: :func:`open_pool`.
"""

from __future__ import annotations

from ._pool import ConnectionPool, PoolStatistics, open_pool
from ._scripts import Script
from .exceptions import (
    AuthenticationError,
    ChannelFull,
    ChannelLayerError,
    ConfigurationError,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
    LayerClosedError,
    MessageDecodeError,
    MessageTooLarge,
    ProtocolError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
)
from .queue_layer import LayerChannel, LayerStatistics, QueueLayer, open_redis_layer

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ChannelFull",
    "ChannelLayerError",
    "ConfigurationError",
    "ConnectionPool",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidMessage",
    "LayerChannel",
    "LayerClosedError",
    "LayerStatistics",
    "MessageDecodeError",
    "MessageTooLarge",
    "PoolStatistics",
    "ProtocolError",
    "QueueLayer",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "ResponseError",
    "Script",
    "open_pool",
    "open_redis_layer",
]
