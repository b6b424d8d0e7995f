"""The queue layer's options: channels_redis's ``CONFIG`` keys, checked once, frozen.

Owns validating and normalizing every option of the queue layer into a
:class:`QueueOptions`, for both front doors: :func:`~.factory.open_redis_layer`
(each time it opens) and ``channels_compat.core.RedisChannelLayer`` (once, at
construction, so a bad ``CONFIG`` fails at start-up; its per-loop layers then
open with :func:`~.factory.open_queue_layer`). Also owns
:class:`CapacityRules` (``capacity`` and ``channel_capacity``). Must not
connect or start anything: every error here is a
:class:`~anyio_layer.exceptions.ConfigurationError` (or the serializer
registry's ``SerializerDoesNotExist``) raised before any I/O. Covered by
``tests/test_queue_layer.py`` (bad configuration) and
``tests/test_channels_compat.py`` (validated at construction).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..common.options import positive_number, require_prefix
from ..exceptions import ConfigurationError
from ..messages import MessageSerializer, registry
from ..redis.hosts import ClusterConfig, Hosts, parse_hosts
from .codec import DEFAULT_MAX_MESSAGE_SIZE
from .keyspace import check_cluster_prefix

__all__ = ["OPTION_NAMES", "CapacityRules", "QueueOptions", "reject_unknown_options"]

#: Every option the queue layer takes, in the order its documentation lists them.
OPTION_NAMES: Final = (
    "hosts",
    "prefix",
    "expiry",
    "group_expiry",
    "capacity",
    "channel_capacity",
    "symmetric_encryption_keys",
    "random_prefix_length",
    "serializer_format",
    "max_message_size",
    "client_prefix",
    "client_prefix_family",
)


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


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """Validated options of one queue layer (see :func:`~.factory.open_redis_layer`)."""

    hosts: Hosts
    prefix: str
    expiry: float
    group_expiry: int
    capacities: CapacityRules
    serializer: MessageSerializer
    max_message_size: int
    client_prefix: str | None
    client_prefix_family: str | None

    @classmethod
    def parse(
        cls,
        *,
        hosts: object = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: object = None,
        symmetric_encryption_keys: object = None,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        client_prefix: str | None = None,
        client_prefix_family: str | None = None,
    ) -> QueueOptions:
        """Check every option (same names and defaults as ``open_redis_layer``)."""
        configs = parse_hosts(hosts)
        prefix = require_prefix(prefix)
        expiry = positive_number(expiry, "expiry")
        group_expiry = int(positive_number(group_expiry, "group_expiry"))
        capacities = CapacityRules.parse(capacity, channel_capacity)
        max_message_size = int(positive_number(max_message_size, "max_message_size"))
        if isinstance(random_prefix_length, bool) or not isinstance(random_prefix_length, int):
            raise ConfigurationError(
                "random_prefix_length must be an integer (0 or less: no random prefix), "
                f"not {random_prefix_length!r}"
            )
        serializer = registry.get_serializer(
            serializer_format,
            symmetric_encryption_keys=symmetric_encryption_keys,
            random_prefix_length=random_prefix_length,
            expiry=expiry,
        )
        _check_client_prefix("client_prefix", client_prefix)
        _check_client_prefix("client_prefix_family", client_prefix_family)
        if isinstance(configs, ClusterConfig):
            check_cluster_prefix(prefix)
        return cls(
            hosts=configs,
            prefix=prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacities=capacities,
            serializer=serializer,
            max_message_size=max_message_size,
            client_prefix=client_prefix,
            client_prefix_family=client_prefix_family,
        )

    def with_client_prefix(self, client_prefix: str) -> QueueOptions:
        """The same options for a layer naming its channels with ``client_prefix``."""
        _check_client_prefix("client_prefix", client_prefix)
        return dataclasses.replace(self, client_prefix=client_prefix)


def reject_unknown_options(unknown: Mapping[str, object]) -> None:
    """Refuse options the queue layer does not have (a typo must not pass silently)."""
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for the queue layer: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(OPTION_NAMES)}"
        )


def _check_client_prefix(name: str, value: object) -> None:
    if value is not None and not (
        isinstance(value, str) and re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", value)
    ):
        raise ConfigurationError(
            f"{name} must be 1-64 ASCII letters, digits, '-' or '_', not {value!r}"
        )


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return value
