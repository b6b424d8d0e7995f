"""Opening and closing a queue layer: :func:`open_redis_layer` and what it owns.

Owns the layer's lifetime: connecting (one pool per server, or one cluster
client), the layer's task group (where the local reader tasks run), refusing
calls once the block is left, and returning unreceived local messages to
Redis after the readers have stopped. Must not validate options itself
(:mod:`.options` does, for this module and the Channels adapter alike) nor
move messages. Covered by ``tests/test_queue_layer.py`` (lifetime, no task
outliving the layer, errors propagating unwrapped) and
``tests/test_cancellation_layer.py`` (messages returned on close).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

import anyio

from ..common.tasks import open_service_task_group
from ..redis.cluster import open_cluster
from ..redis.hosts import ClusterConfig
from ..redis.pool import open_pool
from .codec import DEFAULT_MAX_MESSAGE_SIZE
from .keyspace import ClusterKeySpace, KeySpace, ShardedKeySpace
from .layer import QueueLayer
from .options import QueueOptions, reject_unknown_options

__all__ = ["open_queue_layer", "open_redis_layer"]

#: How long closing may spend returning buffered messages to Redis.
_RETURN_TIMEOUT: Final = 5.0


@contextlib.asynccontextmanager
async def open_redis_layer(
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
    **unknown: object,
) -> AsyncIterator[QueueLayer]:
    """Open the queue layer; its options are channels_redis's ``CONFIG`` keys.

    ``client_prefix`` and ``client_prefix_family`` (additions) let several
    layers of one process hand process-local channels to each other, as the
    Channels adapter does with its one layer per event loop: each layer names
    its channels with its own ``client_prefix`` (``family-N``) and may receive
    from any channel of the family. Messages a layer buffered but nobody
    received go back to Redis when it closes, for the next layer. By default
    the client prefix is random and a layer receives only its own channels.

    ``hosts`` takes every form channels_redis accepts; several entries are
    sharded by channels_redis's CRC32 ring. Or it lists seed nodes of a Redis
    Cluster (``redis+cluster://host:port``, or ``"cluster": True`` in a dict):
    see ``docs/cluster.md`` for the key layout and failover behaviour.

    Leaving the block stops the layer's tasks and closes every connection;
    calls made afterwards raise :class:`~anyio_layer.exceptions.LayerClosedError`.
    Bad options raise :class:`~anyio_layer.exceptions.ConfigurationError`
    before anything is connected.
    """
    reject_unknown_options(unknown)
    options = QueueOptions.parse(
        hosts=hosts,
        prefix=prefix,
        expiry=expiry,
        group_expiry=group_expiry,
        capacity=capacity,
        channel_capacity=channel_capacity,
        symmetric_encryption_keys=symmetric_encryption_keys,
        random_prefix_length=random_prefix_length,
        serializer_format=serializer_format,
        max_message_size=max_message_size,
        client_prefix=client_prefix,
        client_prefix_family=client_prefix_family,
    )
    async with open_queue_layer(options) as layer:
        yield layer


@contextlib.asynccontextmanager
async def open_queue_layer(options: QueueOptions) -> AsyncIterator[QueueLayer]:
    """:func:`open_redis_layer` with options already checked by :meth:`QueueOptions.parse`."""
    async with contextlib.AsyncExitStack() as stack:
        keys: KeySpace
        hosts = options.hosts
        if isinstance(hosts, ClusterConfig):
            cluster = await stack.enter_async_context(open_cluster(hosts.seeds))
            keys = ClusterKeySpace(cluster, options.prefix)
        else:
            pools = [await stack.enter_async_context(open_pool(config)) for config in hosts]
            keys = ShardedKeySpace(pools, options.prefix)
        try:
            async with open_service_task_group() as task_group:
                layer = QueueLayer(
                    keys=keys,
                    task_group=task_group,
                    expiry=options.expiry,
                    group_expiry=options.group_expiry,
                    capacities=options.capacities,
                    serializer=options.serializer,
                    max_message_size=options.max_message_size,
                    client_prefix=options.client_prefix,
                    client_prefix_family=options.client_prefix_family,
                )
                try:
                    yield layer
                finally:
                    layer.close()
        finally:
            # The readers are stopped; messages they buffered that nobody took
            # go back to Redis, for another layer with the same client_prefix.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_RETURN_TIMEOUT):
                await layer.return_unreceived()
