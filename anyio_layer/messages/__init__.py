"""What crosses the wire: channel and group names, serializers, encryption.

The layers (``anyio_layer.queue``, ``anyio_layer.pubsub``, ``anyio_layer.common``)
and the Channels adapter import what they need from here, not from the
modules below; the names exported here are the package's interface:

* :mod:`.names`: naming rules identical to Django Channels' (validation,
  process-local names, new channel names);
* :mod:`.serializers`: the serializer classes and channels_redis's wire
  format (random prefix, Fernet encryption, msgpack or JSON);
* :mod:`.formats`: the registry that maps ``serializer_format`` to a class;
* :mod:`.diagnostics`: why a message cannot be serialized (used by the
  serializers only);
* :mod:`.encryption`: Fernet keys derived as channels_redis derives them
  (used by the serializers only).

This package does no I/O and imports nothing from the layers or the Redis
client. ``cryptography`` is imported only when encryption is configured.
"""

from .formats import SerializerDoesNotExist, SerializersRegistry, registry
from .names import (
    is_process_local,
    new_channel_name,
    non_local_name,
    random_client_prefix,
    validate_channel_name,
    validate_channel_names,
    validate_group_name,
)
from .serializers import (
    BaseMessageSerializer,
    JSONSerializer,
    MessageSerializer,
    MissingSerializer,
    MsgPackSerializer,
    serialize_within,
)

__all__ = [
    "BaseMessageSerializer",
    "JSONSerializer",
    "MessageSerializer",
    "MissingSerializer",
    "MsgPackSerializer",
    "SerializerDoesNotExist",
    "SerializersRegistry",
    "is_process_local",
    "new_channel_name",
    "non_local_name",
    "random_client_prefix",
    "registry",
    "serialize_within",
    "validate_channel_name",
    "validate_channel_names",
    "validate_group_name",
]
