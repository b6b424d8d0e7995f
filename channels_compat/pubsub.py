"""Drop-in for ``channels_redis.pubsub.RedisPubSubChannelLayer``, over the anyio core.

::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_compat.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [("localhost", 6379)],
                "on_disconnect": "redis.disconnect",   # calls Consumer.redis_disconnect
                "on_reconnect": "redis.reconnect",     # calls Consumer.redis_reconnect
            },
        },
    }

Differences that matter, all in the user's favour:

* channels_redis unsubscribes a channel on every cancelled ``receive()`` and
  throws away what was buffered, so a ``receive()`` that was merely timed out
  loses messages. Here a channel is unsubscribed only once it has had no
  receiver for ``channel_close_delay`` seconds (default 5) after a
  ``receive()`` ended without a message: consumers that exit leak no
  subscription, a timed-out ``receive()`` loses nothing, and a consumer busy
  in a slow handler keeps its groups.
* ``on_disconnect`` / ``on_reconnect`` really fire, once per event, to every
  consumer listening on the affected shard.
* Each channel's buffer is bounded (``capacity``, default 100).
* ``hosts`` may be the seeds of a Redis Cluster (``redis+cluster://`` URLs or
  dicts with ``"cluster": True``; Redis 7+), which channels_redis's pub/sub
  layer cannot use: messages go through sharded pub/sub, and a slot that moves
  (resharding, failover) is resubscribed on its new owner, announced with
  ``on_disconnect`` / ``on_reconnect`` (see :mod:`anyio_layer.pubsub.layer`).

As in channels_redis's pub/sub layer, a message may be any value the
serializer can encode, not only a dict (``send(channel, "message.1")``
works, and is received as ``"message.1"``): this adapter opens the core
layer with ``dict_messages_only=False``. Values the serializer cannot encode
raise :class:`~anyio_layer.exceptions.InvalidMessage` (a ``TypeError``, as
channels_redis's msgpack error is).
"""

from __future__ import annotations

import logging
from typing import Any

from anyio_layer.exceptions import ConfigurationError
from anyio_layer.messages import registry
from anyio_layer.pubsub import (
    DEFAULT_MAX_MESSAGE_SIZE,
    PubSubLayer,
    PubSubStatistics,
    open_pubsub_layer,
)
from anyio_layer.redis.hosts import ClusterConfig, parse_hosts

from ._base import CoreLayerAdapter
from ._runtime import LoopRuntime

__all__ = ["RedisPubSubChannelLayer"]

logger = logging.getLogger("channels_compat")

#: channels_redis's queue-layer options: its pub/sub layer silently accepts them,
#: so configurations copied from one to the other must keep working here.
_QUEUE_ONLY_OPTIONS = frozenset(
    {"expiry", "group_expiry", "channel_capacity", "random_prefix_length"}
)


class RedisPubSubChannelLayer(CoreLayerAdapter[PubSubLayer]):
    """The pub/sub channel layer, with channels_redis's options and naming."""

    def __init__(
        self,
        hosts: object = None,
        prefix: str = "asgi",
        on_disconnect: str | None = None,
        on_reconnect: str | None = None,
        symmetric_encryption_keys: object = None,
        serializer_format: str = "msgpack",
        capacity: int = 100,
        channel_close_delay: float = 5.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        **ignored: object,
    ) -> None:
        super().__init__(capacity=capacity)
        unknown = set(ignored) - _QUEUE_ONLY_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) for RedisPubSubChannelLayer: {', '.join(sorted(unknown))}"
            )
        if ignored:
            logger.info(
                "RedisPubSubChannelLayer ignores the queue-layer option(s) %s",
                ", ".join(sorted(ignored)),
            )
        self._hosts = parse_hosts(hosts)
        self.hosts = hosts
        # A cluster is one logical server: channels_redis's ring has nothing to spread.
        self.ring_size = 1 if isinstance(self._hosts, ClusterConfig) else len(self._hosts)
        self.prefix = prefix
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        self._serializer = registry.get_serializer(
            serializer_format, symmetric_encryption_keys=symmetric_encryption_keys
        )
        options: dict[str, Any] = {
            "hosts": self._hosts,
            "prefix": prefix,
            "on_disconnect": on_disconnect,
            "on_reconnect": on_reconnect,
            "symmetric_encryption_keys": symmetric_encryption_keys,
            "serializer_format": serializer_format,
            "capacity": capacity,
            "max_message_size": max_message_size,
            "idle_channel_timeout": channel_close_delay,
            # channels_redis.pubsub sends any value its serializer encodes, not only dicts.
            "dict_messages_only": False,
        }
        self._runtime: LoopRuntime[PubSubLayer] = LoopRuntime(lambda: open_pubsub_layer(**options))

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new channel (``prefix`` + ``prefix`` argument + 32 hex digits), already subscribed."""
        return await self._new_channel(prefix)

    # -- helpers ----------------------------------------------------------------------

    async def close_channel(self, channel: str) -> None:
        """Unsubscribe a channel now, without waiting for ``channel_close_delay``."""
        layer = await self._runtime.layer()
        await layer.close_channel(channel)

    def statistics(self) -> PubSubStatistics | None:
        """The current loop's core layer statistics, or None if none is open."""
        layer = self._runtime.current()
        return None if layer is None else layer.statistics()
