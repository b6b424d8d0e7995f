"""Blocking commands on dedicated connections, and recovering one whose caller was cancelled.

Owns :func:`run_blocking` (behind
:meth:`~anyio_layer.redis.pool.ConnectionPool.execute_blocking`) and
:func:`recover_blocked`: when a task blocked in ``BZPOPMIN`` (or another
blocking command) is cancelled, the server may already have popped an
element for it. This tells the server to unblock the connection
(``CLIENT UNBLOCK``, sent through another connection), reads the reply anyway
and hands a popped element to the caller's callback, so nothing is lost and
the connection can be reused. Connections come from the pool, which lends
and takes them back; this module neither opens nor closes them. Tested in
``tests/test_cancellation_connection.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Final

import anyio

from ..exceptions import LayerClosedError, RedisError
from .connection import Connection, raise_for_reply
from .protocol import Arg, ErrorReply, encode_commands

__all__ = ["recover_blocked", "run_blocking"]

#: How long to wait for a reply before asking the server to unblock again.
_UNBLOCK_RETRY: Final = 0.05
#: How long cancellation cleanup of a blocking command may take.
_UNBLOCK_TIMEOUT: Final = 2.0


async def run_blocking(
    borrow: Callable[[], AbstractAsyncContextManager[Connection]],
    execute: Callable[..., Awaitable[object]],
    args: Sequence[Arg],
    on_cancelled_reply: Callable[[object], Awaitable[None]] | None,
    prelude: Sequence[Sequence[Arg]],
) -> object:
    """Run ``prelude`` + ``args`` on a dedicated connection from ``borrow()``.

    The contract is :meth:`~anyio_layer.redis.pool.ConnectionPool.execute_blocking`'s;
    ``execute`` runs a command on another connection (for ``CLIENT UNBLOCK``).
    """
    async with borrow() as connection:
        await connection.send(encode_commands([*prelude, args]))
        connection.broken = True  # until every reply is read
        unread = len(prelude) + 1
        try:
            prelude_replies = []
            while unread > 1:
                prelude_replies.append(await connection.read_reply())
                unread -= 1
            reply = await connection.read_reply()
        except anyio.get_cancelled_exc_class():
            if on_cancelled_reply is not None:
                with anyio.move_on_after(_UNBLOCK_TIMEOUT, shield=True):
                    await recover_blocked(connection, unread, on_cancelled_reply, execute)
            raise
        connection.broken = False
        for prelude_reply in prelude_replies:
            raise_for_reply(prelude_reply)
        return raise_for_reply(reply)


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
