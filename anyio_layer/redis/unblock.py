"""Recovering a dedicated connection whose blocking command's caller was cancelled.

Owns :func:`recover_blocked`: when a task blocked in ``BZPOPMIN`` (or another
blocking command) is cancelled, the server may already have popped an
element for it. This tells the server to unblock the connection
(``CLIENT UNBLOCK``, sent through another connection), reads the reply anyway
and hands a popped element to the caller's callback, so nothing is lost and
the connection can be reused. It runs inside the shielded, time-bounded
cleanup of :meth:`~anyio_layer.redis.pool.ConnectionPool.execute_blocking`,
which owns the connection; it neither opens nor closes connections. Tested
in ``tests/test_cancellation_connection.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from ..exceptions import LayerClosedError, RedisError
from .connection import Connection
from .protocol import ErrorReply

__all__ = ["recover_blocked"]

#: How long to wait for a reply before asking the server to unblock again.
_UNBLOCK_RETRY: Final = 0.05


async def recover_blocked(
    connection: Connection,
    unread: int,
    on_reply: Callable[[object], Awaitable[None]],
    execute: Callable[..., Awaitable[object]],
) -> None:
    """Unblock a dedicated connection after its caller went away, and account for its reply.

    ``unread`` counts the replies not read yet, the blocking command's last;
    ``execute`` runs a command on another connection (the pool's pipelined
    one). On success the connection is no longer ``broken``; if anything
    fails it stays broken, to be closed.
    """
    try:
        for _ in range(unread - 1):
            await connection.read_reply()  # prelude replies come at once
        while True:
            if await execute("CLIENT", "UNBLOCK", connection.client_id):
                reply = await connection.read_reply()  # nil, or what it popped
                break
            # Not blocked: it has answered already, or the server has not
            # read the command yet (then unblock it again shortly).
            with anyio.move_on_after(_UNBLOCK_RETRY):
                reply = await connection.read_reply()
                break
    except (RedisError, LayerClosedError):
        return  # the connection stays broken and is closed
    connection.broken = False
    if reply is not None and not isinstance(reply, ErrorReply):
        await on_reply(reply)
