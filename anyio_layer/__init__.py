"""A Redis-backed channel layer, native to anyio: runs under trio and asyncio alike.

The queue layer (channels_redis's ``RedisChannelLayer`` semantics and data
layout)::

    async with anyio_layer.open_redis_layer(hosts=["redis://localhost:6379"]) as layer:
        async with layer.open_channel("room") as channel:
            await layer.group_send("room", {"type": "chat.message", "text": "hi"})
            message = await channel.receive()

The pub/sub layer (channels_redis's ``RedisPubSubChannelLayer``) is
:func:`open_pubsub_layer`. Both take the same ``hosts``: one server, several
(sharded by the client), or the seeds of a Redis Cluster
(``redis+cluster://host:port``). The Redis client underneath is usable on its
own: :func:`open_pool`.
"""

from __future__ import annotations

from .exceptions import (
    AuthenticationError,
    ChannelFull,
    ChannelLayerError,
    ClusterUnavailableError,
    ConfigurationError,
    CrossSlotError,
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
    TooManyRedirectionsError,
)
from .pubsub import PubSubLayer, PubSubStatistics, open_pubsub_layer
from .queue import LayerChannel, LayerStatistics, QueueLayer, open_redis_layer
from .redis.pool import ConnectionPool, PoolStatistics, open_pool
from .redis.scripts import Script

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ChannelFull",
    "ChannelLayerError",
    "ClusterUnavailableError",
    "ConfigurationError",
    "ConnectionPool",
    "CrossSlotError",
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
    "PubSubLayer",
    "PubSubStatistics",
    "QueueLayer",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "ResponseError",
    "Script",
    "TooManyRedirectionsError",
    "open_pool",
    "open_pubsub_layer",
    "open_redis_layer",
]
