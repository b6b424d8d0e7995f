"""The serializer registry: which ``serializer_format`` names exist, and their classes.

Owns :class:`SerializersRegistry`, the module-level :data:`registry`
(pre-loaded with ``"json"`` and ``"msgpack"``) and
:class:`SerializerDoesNotExist`, with channels_redis 4.x's names and API, so
code written for ``channels_redis.serializers.registry`` works unchanged
(``channels_compat.serializers`` re-exports it under that module path).

``registry.get_serializer(format, **kwargs)`` instantiates the registered
class with the layer's keyword arguments (``symmetric_encryption_keys``,
``random_prefix_length``, ``expiry``). A registered class is either a
concrete :class:`~anyio_layer.messages.serializers.BaseMessageSerializer`
subclass (implementing ``as_bytes`` / ``from_bytes``) or any class accepting
those keyword arguments whose instances have ``serialize(message) -> bytes``
and ``deserialize(bytes)`` methods
(:class:`~anyio_layer.messages.serializers.MessageSerializer`);
channels_redis serializer classes qualify.

Unlike channels_redis (an ``assert``), registering something that is not
such a class raises :class:`~anyio_layer.exceptions.ConfigurationError`
saying what is missing; an unknown format raises
:class:`SerializerDoesNotExist` (a ``KeyError``, as in channels_redis, and a
``ConfigurationError``), which lists the registered formats.

It must not encode or decode anything itself: the formats live in
:mod:`anyio_layer.messages.serializers`. Covered by ``tests/test_serializers.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from ..exceptions import ConfigurationError
from .diagnostics import type_name
from .serializers import BaseMessageSerializer, JSONSerializer, MessageSerializer, MsgPackSerializer

__all__ = ["SerializerDoesNotExist", "SerializersRegistry", "registry"]


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
                f"{type_name(serializer_class)}."
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
