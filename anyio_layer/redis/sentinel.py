"""Finding the primary of a Sentinel-managed Redis.

Owns :func:`discover_primary`, which asks the sentinels of a
:class:`~anyio_layer.redis.config.SentinelConfig`, in order, for the address
of the primary (``SENTINEL get-master-addr-by-name``), each over a
short-lived connection of its own. It keeps no state and decides nothing
about when to ask: :class:`~anyio_layer.redis.pool.ConnectionPool` calls it
when it has no primary (before its first connection, after a connection
error or a ``READONLY`` reply) and checks the answer by connecting with
``ROLE`` (see :func:`~anyio_layer.redis.connection.connect`). Tested in
``tests/test_pool.py`` and ``tests/test_pubsub_layer.py`` (failover).
"""

from __future__ import annotations

from ..exceptions import RedisConnectionError, ResponseError
from .config import SentinelConfig, ServerConfig, TCPAddress
from .connection import connect

__all__ = ["discover_primary"]


async def discover_primary(config: SentinelConfig) -> ServerConfig:
    """Ask the sentinels, in order, where the primary is.

    Raises:
        RedisConnectionError: no sentinel could be reached or named the
            primary; the message has every sentinel's answer.
    """
    errors = []
    for address in config.sentinels:
        sentinel = ServerConfig(address, config.sentinel_options)
        try:
            connection = await connect(sentinel)
            try:
                reply = await connection.execute(
                    "SENTINEL", "get-master-addr-by-name", config.master_name
                )
            finally:
                await connection.aclose()
        except (RedisConnectionError, ResponseError) as exc:
            errors.append(f"{address}: {exc}")
            continue
        if isinstance(reply, list) and len(reply) == 2:
            host, port = reply
            if isinstance(host, bytes) and isinstance(port, bytes):
                return ServerConfig(TCPAddress(host.decode(), int(port)), config.options)
        errors.append(f"{address}: does not know a primary named {config.master_name!r}")
    raise RedisConnectionError(
        f"no sentinel could name the primary {config.master_name!r}: " + "; ".join(errors)
    )
