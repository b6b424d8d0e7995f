"""The serializer registry, under ``channels_redis.serializers``' module path.

Code that registers a custom format with ``channels_redis.serializers.registry``
switches by importing ``channels_compat.serializers.registry`` instead; it is
the same registry the core uses.
"""

from __future__ import annotations

from anyio_layer.messages import (
    BaseMessageSerializer,
    JSONSerializer,
    MissingSerializer,
    MsgPackSerializer,
    SerializerDoesNotExist,
    SerializersRegistry,
    registry,
)

__all__ = [
    "BaseMessageSerializer",
    "JSONSerializer",
    "MissingSerializer",
    "MsgPackSerializer",
    "SerializerDoesNotExist",
    "SerializersRegistry",
    "registry",
]
