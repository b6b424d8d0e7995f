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
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from channels.layers import BaseChannelLayer

from anyio_layer._hosts import parse_hosts
from anyio_layer._routing import consistent_hash
from anyio_layer.exceptions import ConfigurationError
from anyio_layer.pubsub_layer import (
    DEFAULT_MAX_MESSAGE_SIZE,
    PubSubLayer,
    PubSubStatistics,
    open_pubsub_layer,
)
from anyio_layer.serializers import registry

from ._errors import channels_errors
from ._runtime import LoopRuntime

__all__ = ["RedisPubSubChannelLayer"]

logger = logging.getLogger("channels_compat")

#: channels_redis's queue-layer options: its pub/sub layer silently accepts them,
#: so configurations copied from one to the other must keep working here.
_QUEUE_ONLY_OPTIONS = frozenset(
    {"expiry", "group_expiry", "channel_capacity", "random_prefix_length"}
)


class RedisPubSubChannelLayer(BaseChannelLayer):
    """The pub/sub channel layer, with channels_redis's options and naming."""

    extensions: ClassVar[list[str]] = ["groups", "flush"]

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
        }
        self._runtime: LoopRuntime[PubSubLayer] = LoopRuntime(lambda: open_pubsub_layer(**options))

    # -- channel layer API ----------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        layer = await self._runtime.layer()
        with channels_errors():
            await layer.send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Receive from a channel, subscribing it first if this process does not yet.

        Cancelling loses nothing; the channel is unsubscribed only once it has
        had no receiver for ``channel_close_delay`` seconds.
        """
        layer = await self._runtime.layer()
        with channels_errors():
            return await layer.receive(channel)

    async def new_channel(self, prefix: str = "specific.") -> str:
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
        """Unsubscribe everything this process listens to and forget it."""
        layer = await self._runtime.layer()
        await layer.flush()

    # -- helpers ----------------------------------------------------------------------

    async def close_channel(self, channel: str) -> None:
        """Unsubscribe a channel now, without waiting for ``channel_close_delay``."""
        layer = await self._runtime.layer()
        await layer.close_channel(channel)

    async def close_pools(self) -> None:
        await self._runtime.close()

    async def close(self) -> None:
        """Close this event loop's core layer and its connections."""
        await self._runtime.close()

    def consistent_hash(self, value: str) -> int:
        return consistent_hash(value, len(self._hosts))

    def serialize(self, message: dict[str, Any]) -> bytes:
        return self._serializer.serialize(message)

    def deserialize(self, message: bytes) -> Any:
        return self._serializer.deserialize(message)

    def statistics(self) -> PubSubStatistics | None:
        """The current loop's core layer statistics, or None if it is not open."""
        layer = self._runtime.current()
        return None if layer is None else layer.statistics()

    def __str__(self) -> str:
        return f"{self.__class__.__name__}(hosts={self.hosts})"
