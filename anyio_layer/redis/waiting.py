"""Waiting for a connection: how a command outlasts a short outage without being sent twice.

Owns :func:`wait_for_connection`, the loop :class:`~.pool.ConnectionPool`
runs when a non-blocking command finds no shared connection: it tries to
connect at each step of the pool's back-off schedule until one is made or the
host's ``reconnect_timeout`` is used up, then raises
:class:`~anyio_layer.exceptions.ConnectionUnavailableError`. Every failure it
sees happens before the command is written, which is what makes waiting
safe for any command: it is sent once, or not at all. It must not decide
the back-off schedule (the pool's) nor touch a connection. Covered by
``tests/test_reconnect_wait.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ..exceptions import (
    ConnectionUnavailableError,
    ConnectTimeoutUnavailableError,
    LayerClosedError,
    RedisConnectionError,
    RedisTimeoutError,
)

__all__ = ["wait_for_connection"]

T = TypeVar("T")


async def wait_for_connection(
    connect: Callable[[], Awaitable[T]],
    *,
    patience: float,
    next_attempt: Callable[[], float],
    on_wait: Callable[[], None],
) -> T:
    """``await connect()``, again after each connection error, for up to ``patience`` seconds.

    ``next_attempt()`` is when (``anyio.current_time()``) the back-off allows the
    next attempt; ``on_wait()`` is called once if the caller has to wait at all.
    Raises ``ConnectionUnavailableError`` (chained to the last error) when the
    time is up; with ``patience=0``, after the first failure. If cancelled,
    nothing was sent.
    """
    deadline: float | None = None
    while True:
        try:
            return await connect()
        except LayerClosedError:
            raise
        except RedisConnectionError as exc:
            now = anyio.current_time()
            if deadline is None:
                deadline = now + patience
                if patience > 0:
                    on_wait()
            if now >= deadline:
                unavailable = (
                    ConnectTimeoutUnavailableError
                    if isinstance(exc, RedisTimeoutError)
                    else ConnectionUnavailableError
                )
                waited = f" after {patience:g} s" if patience else ""
                raise unavailable(f"{exc}; gave up waiting for a connection{waited}") from exc
            await anyio.sleep(min(max(next_attempt() - now, 0.01), deadline - now))
