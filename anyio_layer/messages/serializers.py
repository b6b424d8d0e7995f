"""Message serializers: channels_redis 4.x's serializer classes and wire format.

Owns :class:`BaseMessageSerializer` (encryption and random prefix around a
format's ``as_bytes`` / ``from_bytes``), the built-in formats
:class:`JSONSerializer` and :class:`MsgPackSerializer`,
:class:`MissingSerializer`, and :class:`MessageSerializer`, the protocol a
layer needs from a serializer instance. It must not know format names or
choose a class (that is :mod:`anyio_layer.messages.formats`, the registry),
nor explain in detail why a value cannot be encoded (that is
:mod:`anyio_layer.messages.diagnostics`). ``serialize`` / ``deserialize``
are on every send and receive: keep them free of extra layers.

Contract
--------

Wire format (identical to channels_redis 4.x, so both libraries can share
Redis in either direction)::

    random prefix (random_prefix_length bytes) + body
    body = Fernet token of payload      if symmetric_encryption_keys are set
         = payload                      otherwise

* ``payload`` is ``msgpack.packb(message)`` for ``"msgpack"`` (msgpack's
  default options: ``use_bin_type=True``; decoded with ``msgpack.unpackb``'s
  defaults: ``raw=False``, ``strict_map_key=True``, arrays become lists) or
  ``json.dumps(message).encode("utf-8")`` for ``"json"`` (``json``'s default
  options; decoded with ``json.loads``).
* The random prefix only makes equal messages distinct members of the Redis
  sorted set that holds a channel; it is stripped unread on the way back. As
  in channels_redis, a ``random_prefix_length`` of 0 or less (``-1`` is
  common in settings) means no prefix.
* Encryption (see :mod:`anyio_layer.messages.encryption`) derives each Fernet key as
  urlsafe-base64(SHA-256(key)); the first key encrypts, all keys decrypt, and
  tokens older than ``expiry + 10`` seconds are rejected (no limit when
  ``expiry`` is None).

Beyond channels_redis, errors are specific:

* a value the format cannot represent raises
  :class:`~anyio_layer.exceptions.InvalidMessage` naming where it is and its
  type; so does a msgpack map key that is not ``str``/``bytes`` (msgpack
  would encode it, but no receiver, channels_redis included, can decode it);
* undecodable, undecryptable, tampered, wrongly-keyed or expired data raises
  :class:`~anyio_layer.exceptions.MessageDecodeError`;
* configuration mistakes raise
  :class:`~anyio_layer.exceptions.ConfigurationError`.

Differences: ``symmetric_encryption_keys`` must be None (no encryption) or a
non-empty list of non-empty keys (channels_redis silently disables encryption
for ``[]`` or ``""``); a TTL from a fractional ``expiry`` is rounded up to
whole seconds. Covered by ``tests/test_serializers.py``.
"""

from __future__ import annotations

import abc
import json
import math
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgpack  # type: ignore[import-untyped]  # ships no type information

from ..exceptions import ConfigurationError, InvalidMessage, MessageDecodeError, MessageTooLarge
from .diagnostics import (
    JSON_RULES,
    MSGPACK_RULES,
    describe_error,
    find_problem,
    has_bad_map_key,
)
from .encryption import decrypt, make_crypter, make_fernet

if TYPE_CHECKING:
    from cryptography.fernet import Fernet, MultiFernet

__all__ = [
    "BaseMessageSerializer",
    "JSONSerializer",
    "MessageSerializer",
    "MissingSerializer",
    "MsgPackSerializer",
    "serialize_within",
]

#: How many seconds channels_redis adds to ``expiry`` to get the decryption TTL.
TTL_GRACE_SECONDS = 10


@runtime_checkable
class MessageSerializer(Protocol):
    """What a layer needs from a serializer instance."""

    def serialize(self, message: Any) -> bytes:
        """Encode ``message`` (normally a dict) to the bytes stored in Redis."""

    def deserialize(self, message: bytes) -> Any:
        """Decode bytes read from Redis back into a message."""


def serialize_within(serializer: MessageSerializer, message: Any, limit: int) -> bytes:
    """``serializer.serialize(message)``, refused with ``MessageTooLarge`` over ``limit`` bytes.

    The one size check both layers make before anything is sent.
    """
    payload = serializer.serialize(message)
    if len(payload) > limit:
        raise MessageTooLarge(
            f"message is {len(payload)} bytes once serialized; the limit is "
            f"{limit} bytes (max_message_size)"
        )
    return payload


class BaseMessageSerializer(abc.ABC):
    """Base class of the built-in serializers; subclass it to add a format.

    Subclasses implement :meth:`as_bytes` and :meth:`from_bytes`; this class
    adds encryption and the random prefix in :meth:`serialize` /
    :meth:`deserialize`.

    ``symmetric_encryption_keys``: None (no encryption) or a non-empty list of
    ``str``/``bytes`` keys; ``random_prefix_length``: bytes of random prefix,
    an int, where 0 or less (channels_redis settings often say ``-1``) means
    no prefix and is stored as 0; ``expiry``: seconds a message may wait in
    Redis (None: no limit); encrypted messages older than ``expiry + 10`` are
    rejected.
    """

    #: Name of the format, for error messages.
    format_name: ClassVar[str] = "custom"

    crypter: MultiFernet | None
    """The ``MultiFernet`` used for encryption, or None when encryption is off."""

    def __init__(
        self,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        random_prefix_length: int = 0,
        expiry: float | None = None,
    ) -> None:
        if isinstance(random_prefix_length, bool) or not isinstance(random_prefix_length, int):
            raise ConfigurationError(
                "random_prefix_length must be an int (number of random bytes prepended "
                f"to each message; 0 or less for none), not {random_prefix_length!r}."
            )
        if expiry is not None and (
            isinstance(expiry, bool)
            or not isinstance(expiry, (int, float))
            or not math.isfinite(expiry)
            or expiry < 0
        ):
            raise ConfigurationError(
                f"expiry must be None or a finite number of seconds >= 0, not {expiry!r}."
            )
        # channels_redis adds a prefix only when the length is > 0: -1 means none too.
        self.random_prefix_length = max(random_prefix_length, 0)
        self.expiry = expiry
        self.crypter = (
            None if symmetric_encryption_keys is None else make_crypter(symmetric_encryption_keys)
        )

    @property
    def ttl(self) -> int | None:
        """Maximum age in seconds of an encrypted message (``expiry + 10``), or None."""
        if self.expiry is None:
            return None
        return math.ceil(self.expiry) + TTL_GRACE_SECONDS

    def make_fernet(self, key: str | bytes) -> Fernet:
        """A ``Fernet`` for one key, derived as channels_redis does."""
        return make_fernet(key)

    @abc.abstractmethod
    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        """Encode ``message`` to bytes (before encryption and prefixing)."""
        raise NotImplementedError

    @abc.abstractmethod
    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        """Decode bytes produced by :meth:`as_bytes`."""
        raise NotImplementedError

    def explain_failure(self, message: Any, error: Exception) -> str:
        """Say why :meth:`as_bytes` failed on ``message``; override for a new format."""
        return describe_error(error)

    def serialize(self, message: Any) -> bytes:
        """Encode, encrypt if configured, and prefix ``message``.

        Raises :class:`InvalidMessage` if the format cannot represent it.
        """
        try:
            data = self.as_bytes(message)
        except InvalidMessage:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            reason = self.explain_failure(message, exc)
            raise InvalidMessage(
                f"message cannot be serialized as {self.format_name}: {reason}"
            ) from exc
        if self.crypter is not None:
            data = self.crypter.encrypt(data)
        if self.random_prefix_length:
            # Uniqueness, not secrecy, is needed here (channels_redis uses `random` too).
            data = random.randbytes(self.random_prefix_length) + data
        return data

    def deserialize(self, message: bytes) -> Any:
        """Strip the prefix, decrypt if configured, and decode ``message``.

        Raises :class:`MessageDecodeError` if that fails at any step.
        """
        raw: object = message  # typed bytes, but checked: it comes from the network layer
        if isinstance(raw, bytes):
            data = raw
        elif isinstance(raw, (bytearray, memoryview)):
            data = bytes(raw)
        else:
            raise MessageDecodeError(
                f"a serialized message must be bytes, not {type(raw).__name__}."
            )
        if self.random_prefix_length:
            if len(data) < self.random_prefix_length:
                raise MessageDecodeError(
                    f"message is {len(data)} bytes long, shorter than the "
                    f"{self.random_prefix_length}-byte random prefix it must start with."
                )
            data = data[self.random_prefix_length :]
        if self.crypter is not None:
            data = decrypt(self.crypter, data, self.ttl)
        try:
            return self.from_bytes(data)
        except MessageDecodeError:
            raise
        except Exception as exc:
            raise MessageDecodeError(
                f"message could not be decoded as {self.format_name}: {describe_error(exc)}"
            ) from exc


class MissingSerializer(BaseMessageSerializer):
    """Placeholder for a format whose dependency is not installed.

    Set ``exception`` to the ``ImportError``; instantiating the class raises
    :class:`ConfigurationError` chained to it.
    """

    exception: ClassVar[BaseException | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        detail = f": {self.exception}" if self.exception is not None else ""
        raise ConfigurationError(
            f"serializer {type(self).__name__} cannot be used, a dependency is missing{detail}"
        ) from self.exception

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        raise NotImplementedError  # pragma: no cover - never instantiated

    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - never instantiated


class JSONSerializer(BaseMessageSerializer):
    """JSON: ``json.dumps(message)`` encoded as UTF-8; ``json.loads`` to decode.

    JSON turns tuples into lists and non-``str`` keys into strings.
    """

    format_name: ClassVar[str] = "json"

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        return json.dumps(message, *args, **kwargs).encode("utf-8")

    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        return json.loads(message, *args, **kwargs)

    def explain_failure(self, message: Any, error: Exception) -> str:
        return find_problem(message, JSON_RULES) or describe_error(error)


class MsgPackSerializer(BaseMessageSerializer):
    """msgpack: ``msgpack.packb(message)`` / ``msgpack.unpackb(data)`` with default options.

    Decoding returns lists for tuples and requires ``str``/``bytes`` map keys,
    so messages with other keys are rejected when serializing.
    """

    format_name: ClassVar[str] = "msgpack"

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        data: bytes = msgpack.packb(message, *args, **kwargs)
        if has_bad_map_key(message):
            problem = find_problem(message, MSGPACK_RULES)
            raise InvalidMessage(f"message cannot be serialized as msgpack: {problem}.")
        return data

    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        return msgpack.unpackb(message, *args, **kwargs)

    def explain_failure(self, message: Any, error: Exception) -> str:
        return find_problem(message, MSGPACK_RULES) or describe_error(error)
