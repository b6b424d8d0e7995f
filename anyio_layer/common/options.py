"""Validation of layer options shared by the queue and pub/sub layers."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..exceptions import ConfigurationError

__all__ = ["CapacityRules", "positive_number", "require_prefix"]


@dataclass(frozen=True, slots=True)
class CapacityRules:
    """``capacity`` and ``channel_capacity``: the first matching pattern wins, in order."""

    default: int
    patterns: tuple[tuple[re.Pattern[str], int], ...] = ()

    @classmethod
    def parse(cls, capacity: object, channel_capacity: object) -> CapacityRules:
        default = _positive_int(capacity, "capacity")
        if channel_capacity is None:
            return cls(default)
        if isinstance(channel_capacity, Mapping):
            items = list(channel_capacity.items())
        elif isinstance(channel_capacity, (list, tuple)):
            items = list(channel_capacity)
        else:
            raise ConfigurationError(
                f"channel_capacity must be a dict (or a list of (pattern, capacity) pairs), "
                f"not {type(channel_capacity).__name__}"
            )
        patterns = []
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ConfigurationError(
                    f"channel_capacity entry {item!r} must be a (pattern, capacity) pair"
                )
            pattern, value = item
            if isinstance(pattern, str):
                compiled = re.compile(fnmatch.translate(pattern))
            elif isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
                compiled = pattern
            else:
                raise ConfigurationError(
                    f"channel_capacity pattern {pattern!r} must be a glob string or a "
                    f"compiled regular expression (re.compile(...)) over str"
                )
            patterns.append((compiled, _positive_int(value, f"channel_capacity[{pattern!r}]")))
        return cls(default, tuple(patterns))

    def for_channel(self, channel: str) -> int:
        for pattern, capacity in self.patterns:
            if pattern.match(channel):
                return capacity
        return self.default


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return value


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
