"""Message serializers: channels_redis 4.x's registry API and wire format.

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
  sorted set that holds a channel; it is stripped unread on the way back.
* Encryption (see :mod:`anyio_layer.messages.encryption`) derives each Fernet key as
  urlsafe-base64(SHA-256(key)); the first key encrypts, all keys decrypt, and
  tokens older than ``expiry + 10`` seconds are rejected (no limit when
  ``expiry`` is None).

Public API (names as in ``channels_redis.serializers``):
:class:`SerializerDoesNotExist`, :class:`BaseMessageSerializer`,
:class:`MissingSerializer`, :class:`JSONSerializer`,
:class:`MsgPackSerializer`, :class:`SerializersRegistry` and the module-level
:data:`registry`, pre-loaded with ``"json"`` and ``"msgpack"``.
``registry.get_serializer(format, **kwargs)`` instantiates the registered
class with the layer's keyword arguments (``symmetric_encryption_keys``,
``random_prefix_length``, ``expiry``). A registered class is either a
concrete :class:`BaseMessageSerializer` subclass (implementing ``as_bytes`` /
``from_bytes``) or any class accepting those keyword arguments whose
instances have ``serialize(message) -> bytes`` and ``deserialize(bytes)``
methods (:class:`MessageSerializer`); channels_redis serializer classes
qualify.

Beyond channels_redis, errors are specific:

* a value the format cannot represent raises
  :class:`~anyio_layer.exceptions.InvalidMessage` naming where it is and its
  type; so does a msgpack map key that is not ``str``/``bytes`` (msgpack
  would encode it, but no receiver, channels_redis included, can decode it);
* undecodable, undecryptable, tampered, wrongly-keyed or expired data raises
  :class:`~anyio_layer.exceptions.MessageDecodeError`;
* configuration mistakes raise
  :class:`~anyio_layer.exceptions.ConfigurationError`, and an unknown format
  :class:`SerializerDoesNotExist` (also a ``KeyError``, as in
  channels_redis), which lists the registered formats.

Differences: ``symmetric_encryption_keys`` must be None (no encryption) or a
non-empty list of non-empty keys (channels_redis silently disables encryption
for ``[]`` or ``""``); a TTL from a fractional ``expiry`` is rounded up to
whole seconds.
"""

from __future__ import annotations

import abc
import inspect
import json
import math
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgpack  # type: ignore[import-untyped]  # ships no type information

from ..exceptions import ConfigurationError, InvalidMessage, MessageDecodeError
from .encryption import decrypt, make_crypter, make_fernet

if TYPE_CHECKING:
    from cryptography.fernet import Fernet, MultiFernet

__all__ = [
    "BaseMessageSerializer",
    "JSONSerializer",
    "MessageSerializer",
    "MissingSerializer",
    "MsgPackSerializer",
    "SerializerDoesNotExist",
    "SerializersRegistry",
    "registry",
]

#: How many seconds channels_redis adds to ``expiry`` to get the decryption TTL.
TTL_GRACE_SECONDS = 10


class SerializerDoesNotExist(ConfigurationError, KeyError):
    """No serializer is registered for the requested format.

    Like channels_redis' exception it is a ``KeyError`` whose ``args`` are
    ``(format,)``; it is also a :class:`ConfigurationError`.
    """

    def __init__(self, format: object, registered: Iterable[str] = ()) -> None:
        super().__init__(format)
        self.format = format
        self.registered = tuple(registered)

    def __str__(self) -> str:
        known = ", ".join(repr(name) for name in self.registered) or "none"
        return (
            f"no serializer is registered for format {self.format!r}; registered formats: "
            f"{known}. Register one with registry.register_serializer(format, cls)."
        )


@runtime_checkable
class MessageSerializer(Protocol):
    """What a layer needs from a serializer instance."""

    def serialize(self, message: Any) -> bytes:
        """Encode ``message`` (normally a dict) to the bytes stored in Redis."""

    def deserialize(self, message: bytes) -> Any:
        """Decode bytes read from Redis back into a message."""


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe_error(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Rules:
    """What a format can represent, to pinpoint why serialization failed."""

    def __init__(
        self,
        allowed: str,
        allowed_keys: str,
        scalars: tuple[type, ...],
        key_types: tuple[type, ...],
        int_range: tuple[int, int] | None = None,
    ) -> None:
        self.allowed = allowed
        self.allowed_keys = allowed_keys
        self.scalars = scalars
        self.key_types = key_types
        self.int_range = int_range


def _find_problem(message: object, rules: _Rules) -> str | None:
    """Describe the first value in ``message`` that ``rules`` cannot represent, if any.

    Iterative depth-first walk (so it works on any depth), with cycle
    detection; used only after serialization has failed, or for the msgpack
    map-key check after packing succeeded.
    """
    # Each entry: (value, path, ids of the containers enclosing it).
    stack: list[tuple[object, str, frozenset[int]]] = [(message, "message", frozenset())]
    while stack:
        value, path, enclosing = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if rules.int_range is not None and not (
                rules.int_range[0] <= value <= rules.int_range[1]
            ):
                return f"{path} is an int outside the 64-bit range the format can encode"
            continue
        if isinstance(value, (dict, list, tuple)):
            if id(value) in enclosing:
                return f"{path} contains itself (a circular reference)"
            inner = enclosing | {id(value)}
            children: list[tuple[object, str, frozenset[int]]] = []
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, rules.key_types):
                        return (
                            f"{path} has a key {key!r} of type {_type_name(key)}; "
                            f"keys must be {rules.allowed_keys}"
                        )
                    children.append((item, f"{path}[{key!r}]", inner))
            else:
                children.extend(
                    (item, f"{path}[{index}]", inner) for index, item in enumerate(value)
                )
            stack.extend(reversed(children))
            continue
        if not isinstance(value, rules.scalars):
            return f"{path} is of type {_type_name(value)}; allowed: {rules.allowed}"
    return None


class BaseMessageSerializer(abc.ABC):
    """Base class of the built-in serializers; subclass it to add a format.

    Subclasses implement :meth:`as_bytes` and :meth:`from_bytes`; this class
    adds encryption and the random prefix in :meth:`serialize` /
    :meth:`deserialize`.

    ``symmetric_encryption_keys``: None (no encryption) or a non-empty list of
    ``str``/``bytes`` keys; ``random_prefix_length``: bytes of random prefix
    (``>= 0``); ``expiry``: seconds a message may wait in Redis (None: no
    limit); encrypted messages older than ``expiry + 10`` are rejected.
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
        if (
            isinstance(random_prefix_length, bool)
            or not isinstance(random_prefix_length, int)
            or random_prefix_length < 0
        ):
            raise ConfigurationError(
                "random_prefix_length must be an int >= 0 (number of random bytes "
                f"prepended to each message), not {random_prefix_length!r}."
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
        self.random_prefix_length = random_prefix_length
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
        return _describe_error(error)

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
                f"message could not be decoded as {self.format_name}: {_describe_error(exc)}"
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


_JSON_RULES = _Rules(
    allowed="None, bool, int, float, str, list, tuple, dict",
    allowed_keys="str, int, float, bool or None",
    scalars=(str, int, float),
    key_types=(str, int, float, bool, type(None)),
)


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
        return _find_problem(message, _JSON_RULES) or _describe_error(error)


_MSGPACK_ALLOWED = "None, bool, int (64-bit), float, str, bytes, bytearray, list, tuple, dict"
_MSGPACK_RULES = _Rules(
    allowed=_MSGPACK_ALLOWED,
    allowed_keys="str or bytes (msgpack decoders, channels_redis' included, refuse others)",
    scalars=(str, bytes, bytearray, memoryview, float),
    key_types=(str, bytes),
    int_range=(-(2**63), 2**64 - 1),
)


_CONTAINERS = (dict, list, tuple)
_MSGPACK_KEYS = (str, bytes)


def _has_bad_map_key_recursive(value: object) -> bool:
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, _MSGPACK_KEYS):
                return True
            if isinstance(item, _CONTAINERS) and _has_bad_map_key_recursive(item):
                return True
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, _CONTAINERS) and _has_bad_map_key_recursive(item):
                return True
    return False


def _has_bad_map_key(message: object) -> bool:
    """Whether any dict in ``message`` has a key that is not ``str`` or ``bytes``.

    Runs on every msgpack serialization, so the common case is a fast
    recursive walk. Only called on data ``msgpack.packb`` accepted, so it is
    acyclic and at most about 1024 levels deep; the iterative
    :func:`_find_problem` takes over if that exceeds Python's recursion limit.
    """
    try:
        return _has_bad_map_key_recursive(message)
    except RecursionError:
        return _find_problem(message, _MSGPACK_RULES) is not None


class MsgPackSerializer(BaseMessageSerializer):
    """msgpack: ``msgpack.packb(message)`` / ``msgpack.unpackb(data)`` with default options.

    Decoding returns lists for tuples and requires ``str``/``bytes`` map keys,
    so messages with other keys are rejected when serializing.
    """

    format_name: ClassVar[str] = "msgpack"

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        data: bytes = msgpack.packb(message, *args, **kwargs)
        if _has_bad_map_key(message):
            problem = _find_problem(message, _MSGPACK_RULES)
            raise InvalidMessage(f"message cannot be serialized as msgpack: {problem}.")
        return data

    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        return msgpack.unpackb(message, *args, **kwargs)

    def explain_failure(self, message: Any, error: Exception) -> str:
        return _find_problem(message, _MSGPACK_RULES) or _describe_error(error)


class SerializersRegistry:
    """Maps format names to serializer classes (after ``django.core.serializers``)."""

    def __init__(self) -> None:
        self._registry: dict[str, type[Any]] = {}

    def register_serializer(self, format: str, serializer_class: type[Any]) -> None:
        """Register ``serializer_class`` for ``format``, replacing any previous one.

        ``serializer_class`` must be a class: a concrete
        :class:`BaseMessageSerializer` subclass, or any class with
        ``serialize`` and ``deserialize`` methods whose constructor accepts
        the keyword arguments ``symmetric_encryption_keys``,
        ``random_prefix_length`` and ``expiry``.
        """
        if not isinstance(serializer_class, type):
            raise ConfigurationError(
                f"serializer_class for format {format!r} must be a class, not an instance of "
                f"{_type_name(serializer_class)}."
            )
        if not issubclass(serializer_class, BaseMessageSerializer):
            missing = [
                name
                for name in ("serialize", "deserialize")
                if not callable(getattr(serializer_class, name, None))
            ]
            if missing:
                raise ConfigurationError(
                    f"serializer_class {serializer_class.__qualname__} for format {format!r} "
                    f"lacks {' and '.join(missing)}: it must subclass BaseMessageSerializer "
                    "or define serialize(message) -> bytes and deserialize(data) methods."
                )
        if inspect.isabstract(serializer_class):
            abstract = ", ".join(sorted(getattr(serializer_class, "__abstractmethods__", ())))
            raise ConfigurationError(
                f"serializer_class {serializer_class.__qualname__} for format {format!r} is "
                f"abstract: implement {abstract}."
            )
        self._registry[format] = serializer_class

    def get_serializer(self, format: str, *args: Any, **kwargs: Any) -> MessageSerializer:
        """Instantiate the serializer registered for ``format`` with the given arguments.

        Raises :class:`SerializerDoesNotExist` for an unknown format.
        """
        try:
            serializer_class = self._registry[format]
        except KeyError:
            raise SerializerDoesNotExist(format, self._registry) from None
        serializer: MessageSerializer = serializer_class(*args, **kwargs)
        return serializer

    @property
    def formats(self) -> tuple[str, ...]:
        """The registered format names."""
        return tuple(self._registry)

    def __contains__(self, format: object) -> bool:
        return format in self._registry


#: The default registry, with ``"json"`` and ``"msgpack"``.
registry = SerializersRegistry()
registry.register_serializer("json", JSONSerializer)
registry.register_serializer("msgpack", MsgPackSerializer)
