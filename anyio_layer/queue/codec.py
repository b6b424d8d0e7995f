"""The queue layer's message format: what a message is on the wire and in Redis.

Owns turning a message dict into the bytes stored in a sorted set and back
(through the configured serializer, with the size limit on the way out and
the decode-error count on the way in), and the reserved key through which a
stored message names the process-local channel(s) it is for. Must not do
I/O or know where messages go. Covered by ``tests/test_queue_layer.py``
(size limit, reserved key, undecodable messages).
"""

from __future__ import annotations

from typing import Any, Final

from ..exceptions import InvalidMessage, MessageDecodeError
from ..messages import MessageSerializer, serialize_within
from .statistics import Counters

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "RESERVED_KEY", "MessageCodec", "check_message"]

#: The key, inside a stored message, naming the process-local channel (or, for a
#: ``group_send`` copy, the list of channels) it is for; channels_redis's name.
RESERVED_KEY: Final = "__asgi_channel__"
#: Largest serialized message accepted by default (the ASGI spec asks for at least 1 MB).
DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024


def check_message(message: object) -> None:
    """Refuse what is not a message a caller may send."""
    if not isinstance(message, dict):
        raise InvalidMessage(f"message must be a dict, not {type(message).__name__}")
    if RESERVED_KEY in message:
        raise InvalidMessage(f"message must not contain the reserved key {RESERVED_KEY!r}")


class MessageCodec:
    """Serializes messages within the size limit; decodes them, counting failures."""

    __slots__ = ("_counters", "max_message_size", "serializer")

    def __init__(
        self, serializer: MessageSerializer, max_message_size: int, counters: Counters
    ) -> None:
        self.serializer = serializer
        self.max_message_size = max_message_size
        self._counters = counters

    def encode(self, message: dict[str, Any]) -> bytes:
        return serialize_within(self.serializer, message, self.max_message_size)

    def decode(self, payload: bytes) -> dict[str, Any]:
        try:
            message = self.serializer.deserialize(payload)
        except MessageDecodeError:
            self._counters.decode_errors += 1
            raise
        except Exception as exc:
            self._counters.decode_errors += 1
            raise MessageDecodeError(f"a message could not be decoded: {exc}") from exc
        if not isinstance(message, dict):
            self._counters.decode_errors += 1
            raise MessageDecodeError(f"decoded message is a {type(message).__name__}, not a dict")
        return message
