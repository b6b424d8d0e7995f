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
    server: object,
) -> T:
    """``await connect()``, again after each connection error, for up to ``patience`` seconds.

    ``next_attempt()`` is when (``anyio.current_time()``) the back-off allows the
    next attempt; ``on_wait()`` is called once if the caller has to wait at all;
    ``server`` names what is being connected to, in the error.
    Raises ``ConnectionUnavailableError`` (chained to the last error) when the
    time is up; with ``patience=0``, after the first failure. If cancelled,
    nothing was sent.
    """
    # With patience, an attempt that hangs (a partitioned network: the handshake gets
    # no reply) is cut off at the deadline rather than after socket_connect_timeout.
    deadline = anyio.current_time() + patience if patience > 0 else None
    waited = False
    last_error: RedisConnectionError | None = None  # what the server (or network) said last
    while True:
        try:
            with anyio.fail_after(None if deadline is None else deadline - anyio.current_time()):
                return await connect()
        except LayerClosedError:
            raise
        except (RedisConnectionError, TimeoutError) as exc:
            if isinstance(exc, RedisConnectionError):
                last_error = exc
            now = anyio.current_time()
            if not waited and patience > 0:
                waited = True
                on_wait()
            if deadline is None or now >= deadline:
                cause = last_error or exc
                unavailable = (
                    ConnectTimeoutUnavailableError
                    if isinstance(cause, (RedisTimeoutError, TimeoutError))
                    else ConnectionUnavailableError
                )
                reason = str(cause) or f"connecting to Redis at {server} did not finish"
                after = f" after {patience:g} s" if patience else ""
                raise unavailable(f"{reason}; gave up waiting for a connection{after}") from cause
            await anyio.sleep(min(max(next_attempt() - now, 0.01), deadline - now))
