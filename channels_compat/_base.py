"""What both Channels backends share: delegation to the current loop's core layer."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Protocol, TypeVar

from channels.layers import BaseChannelLayer

from anyio_layer.common.sharding import consistent_hash
from anyio_layer.messages import MessageSerializer

from ._errors import channels_errors
from ._runtime import LoopRuntime

__all__ = ["CoreLayerAdapter"]


class _CoreLayer(Protocol):
    async def send(self, channel: str, message: dict[str, Any]) -> None: ...
    async def receive(self, channel: str) -> dict[str, Any]: ...
    async def new_channel(self, prefix: str = ...) -> str: ...
    async def group_add(self, group: str, channel: str) -> None: ...
    async def group_discard(self, group: str, channel: str) -> None: ...
    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...
    async def flush(self) -> None: ...
    def statistics(self) -> Any: ...


L = TypeVar("L", bound=_CoreLayer)


class CoreLayerAdapter(BaseChannelLayer, Generic[L]):
    """A Channels layer whose every call goes to the current event loop's core layer.

    Subclasses set ``_runtime`` (how to open a core layer for a loop),
    ``_serializer``, ``ring_size`` and ``hosts``, and define ``new_channel``
    (the default channel-name prefix differs between the two layers).
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    _runtime: LoopRuntime[L]
    _serializer: MessageSerializer
    ring_size: int
    hosts: object

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send a message onto a channel; raises Channels' ChannelFull at capacity."""
        layer = await self._runtime.layer()
        with channels_errors():
            await layer.send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Receive the next message on the channel; safe to cancel at any moment."""
        layer = await self._runtime.layer()
        with channels_errors():
            return await layer.receive(channel)

    async def _new_channel(self, prefix: str) -> str:
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
        """Queue layer: delete this prefix's keys (SCAN, never KEYS); pub/sub: unsubscribe all."""
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

    def consistent_hash(self, value: str) -> int:
        return consistent_hash(value, self.ring_size)

    def serialize(self, message: dict[str, Any]) -> bytes:
        return self._serializer.serialize(message)

    def deserialize(self, message: bytes) -> Any:
        return self._serializer.deserialize(message)

    def statistics(self) -> Any:
        """The current loop's core layer statistics, or None if none is open."""
        layer = self._runtime.current()
        return None if layer is None else layer.statistics()

    def __str__(self) -> str:
        return f"{self.__class__.__name__}(hosts={self.hosts})"
