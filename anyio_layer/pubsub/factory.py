"""The pub/sub layer's factory: :func:`open_pubsub_layer` and the checking of its options.

Owns turning channels_redis's pub/sub ``CONFIG`` keys into a
:class:`~anyio_layer.pubsub.layer.PubSubLayer`, and the lifetime of what the
layer stands on: the connection pools or cluster client, and the task group
that runs its subscribers, placer and janitor. It must NOT implement any of
the layer's behaviour. Covered by ``tests/test_pubsub_layer.py`` (options)
and every pub/sub test that opens a layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

from ..common.options import positive_number, require_prefix
from ..common.tasks import open_service_task_group
from ..exceptions import ConfigurationError
from ..messages import registry
from ..redis.cluster import ClusterClient, open_cluster
from ..redis.hosts import ClusterConfig, parse_hosts
from ..redis.pool import ConnectionPool, open_pool
from .layer import PubSubLayer

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "open_pubsub_layer"]

DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024

_OPTIONS: Final = (
    "hosts",
    "prefix",
    "symmetric_encryption_keys",
    "serializer_format",
    "on_disconnect",
    "on_reconnect",
    "capacity",
    "max_message_size",
    "idle_channel_timeout",
    "dict_messages_only",
)


@contextlib.asynccontextmanager
async def open_pubsub_layer(
    *,
    hosts: object = None,
    prefix: str = "asgi",
    symmetric_encryption_keys: object = None,
    serializer_format: str = "msgpack",
    on_disconnect: str | None = None,
    on_reconnect: str | None = None,
    capacity: int = 100,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    idle_channel_timeout: float | None = None,
    dict_messages_only: bool = True,
    **unknown: object,
) -> AsyncIterator[PubSubLayer]:
    """Open the pub/sub layer; its options are channels_redis's pub/sub ``CONFIG`` keys.

    Additions to channels_redis's options: ``capacity`` bounds each local
    channel's buffer (channels_redis's are unbounded); ``idle_channel_timeout``
    closes (unsubscribes, drops the buffer of) a channel that has had no
    receiver for that many seconds since its creation or since a
    ``receive()`` ended *without* a message (cancelled: what a consumer that
    exits looks like). A consumer busy handling a message keeps its channel
    however long it takes. ``None`` (the default) keeps channels until
    :meth:`PubSubLayer.close_channel`. Leaving the block stops every task and closes every
    connection; calls made afterwards raise
    :class:`~anyio_layer.exceptions.LayerClosedError`.

    Messages are dicts, as the Channels specification says: anything else
    raises :class:`~anyio_layer.exceptions.InvalidMessage` when sent, and a
    non-dict published by another process is dropped and counted in
    :attr:`PubSubStatistics.decode_errors`. ``dict_messages_only=False``
    lifts that rule, as channels_redis's pub/sub layer has none: any value
    the serializer can encode is sent and delivered (the Channels adapter
    sets it).

    ``hosts`` may name independent servers (sharded by channels_redis's ring),
    a Sentinel-managed primary, or the seeds of a Redis Cluster (Redis 7+:
    sharded pub/sub; see :mod:`anyio_layer.pubsub.layer` for what a moving
    slot means for delivery). Nothing is connected before the first call that needs it.
    """
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for the pub/sub layer: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(_OPTIONS)}"
        )
    configs = parse_hosts(hosts)
    prefix = require_prefix(prefix)
    for name, value in (("on_disconnect", on_disconnect), ("on_reconnect", on_reconnect)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(
                f"{name} must be a message type string such as 'redis.disconnect', not {value!r}"
            )
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ConfigurationError(f"capacity must be a positive integer, not {capacity!r}")
    max_message_size = int(positive_number(max_message_size, "max_message_size"))
    if idle_channel_timeout is not None:
        idle_channel_timeout = positive_number(idle_channel_timeout, "idle_channel_timeout")
    if not isinstance(dict_messages_only, bool):
        raise ConfigurationError(
            f"dict_messages_only must be True or False, not {dict_messages_only!r}"
        )
    serializer = registry.get_serializer(
        serializer_format, symmetric_encryption_keys=symmetric_encryption_keys
    )
    async with contextlib.AsyncExitStack() as stack:
        cluster: ClusterClient | None = None
        pools: list[ConnectionPool] = []
        if isinstance(configs, ClusterConfig):
            cluster = await stack.enter_async_context(open_cluster(configs.seeds))
        else:
            pools = [await stack.enter_async_context(open_pool(config)) for config in configs]
        async with open_service_task_group() as task_group:
            layer = PubSubLayer(
                pools=pools,
                cluster=cluster,
                task_group=task_group,
                prefix=prefix,
                capacity=capacity,
                serializer=serializer,
                max_message_size=max_message_size,
                on_disconnect=on_disconnect,
                on_reconnect=on_reconnect,
                idle_channel_timeout=idle_channel_timeout,
                dict_messages_only=dict_messages_only,
            )
            try:
                yield layer
            finally:
                layer.mark_closed()
