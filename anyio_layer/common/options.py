"""Checks of option values that both layers take (``prefix``, timeouts and sizes).

Owns the small validators the option handling of both layers builds on; must
not know any layer's set of options (the queue layer's are in
:mod:`anyio_layer.queue.options`). Errors are
:class:`~anyio_layer.exceptions.ConfigurationError`.
"""

from __future__ import annotations

import math

from ..exceptions import ConfigurationError

__all__ = ["positive_number", "require_prefix"]


def positive_number(value: object, name: str) -> float:
    """A positive int or float option (seconds, sizes)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number, not {value!r}")
    return value


def require_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ConfigurationError(f"prefix must be a str, not {type(prefix).__name__}")
    return prefix
