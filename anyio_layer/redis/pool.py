"""The connection pool for one server: a shared pipelined connection plus dedicated ones.

Non-blocking commands from any number of tasks share **one pipelined
connection** (:mod:`anyio_layer.redis.pipeline`), opened on first use and
reopened after it fails. Under asyncio it is an ``asyncio.Protocol`` with no
task (:mod:`anyio_layer.redis.asyncio_pipeline`); under trio it runs on trio's
socket primitives (:mod:`anyio_layer.redis.trio_pipeline`), or on an anyio
stream for TLS (:mod:`anyio_layer.redis.pipeline`), with its reader task in
the pool's task group.

Blocking commands (``BZPOPMIN``) and subscribers get **dedicated
connections**, lent to one task at a time by :meth:`ConnectionPool.connection`
(under asyncio on :mod:`anyio_layer.redis.asyncio_stream`, which keeps reading).

Cancellation contract (tested in ``tests/test_cancellation_connection.py``):

* A cancelled caller never leaves a reply for someone else. On the pipelined
  connection the reader still consumes the abandoned reply and drops it, so
  later replies stay matched; writes are shielded (on asyncio, synchronous),
  so a cancelled caller never leaves half a command on the wire.
* A dedicated connection whose request was interrupted is closed, never
  reused, unless its reply could be accounted for (see
  :meth:`ConnectionPool.execute_blocking`).
* No pool slot is lost: :meth:`ConnectionPool.statistics` returns to its
  baseline once callers are gone.

Failures: when a connection breaks, every call waiting on it fails with
:class:`~anyio_layer.exceptions.RedisConnectionError`. Later calls reconnect;
while the server stays unreachable, connection attempts back off
exponentially (up to :data:`MAX_BACKOFF` seconds). A non-blocking command
that finds no connection waits for one, trying again at each back-off step,
for up to the host's ``reconnect_timeout`` (default 3 s, see
:mod:`anyio_layer.redis.waiting`), then fails with
:class:`~anyio_layer.exceptions.ConnectionUnavailableError` (never sent; with
``reconnect_timeout=0`` at once). Only such commands wait: nothing is sent
again after it may have reached the server, with one safe exception:
``EVALSHA`` answered with ``NOSCRIPT`` did not run, so it is re-sent as ``EVAL``.

Connection hook: :meth:`ConnectionPool.add_connection_listener` tells owners
that keep state in the server (the queue layer's group memberships) when a
restarted server may have lost it.

With Sentinel, the primary's address is discovered with
``SENTINEL get-master-addr-by-name`` (:mod:`anyio_layer.redis.sentinel`),
checked with ``ROLE``, and rediscovered after a connection error or a
``READONLY`` reply.

The pool owns connections, not commands' meaning: it knows nothing of
channels or messages, nor of cluster slots (the cluster client keeps one
pool per node).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc

from ..common.backoff import MAX_DELAY, Backoff
from ..common.tasks import open_service_task_group
from ..exceptions import LayerClosedError, RedisConnectionError
from .asyncio_pipeline import running_on_asyncio
from .asyncio_stream import open_protocol_stream
from .blocking import run_blocking
from .config import HostConfig, SentinelConfig, ServerConfig
from .connection import Connection, OpenStream, connect, raise_for_reply
from .hosts import DEFAULT_HOST, parse_host
from .pipeline import SharedPipeline
from .protocol import Arg, ErrorReply, encode_command, encode_commands
from .scripts import Script
from .sentinel import discover_primary
from .shared import open_shared_pipeline
from .waiting import wait_for_connection

__all__ = ["MAX_BACKOFF", "ConnectionPool", "PoolStatistics", "open_pool"]

#: Longest pause between two connection attempts to an unreachable server (short,
#: so that callers waiting for a connection get one soon after the server is back).
MAX_BACKOFF: Final = MAX_DELAY


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a pool's counters."""

    #: Connections opened / closed since the pool started (pipelined and dedicated).
    connections_opened: int
    connections_closed: int
    #: Dedicated connections waiting in the pool, and lent out right now.
    idle_connections: int
    connections_in_use: int
    #: Whether the shared pipelined connection is up, and requests awaiting replies on it.
    pipeline_connected: bool
    pipeline_pending: int
    #: Failed connection attempts, and connections re-established after the
    #: shared connection was lost or an attempt failed.
    connect_failures: int
    reconnects: int
    #: Commands that found no connection and waited for one (``reconnect_timeout``).
    connection_waits: int = 0


class ConnectionPool:
    """Connections to one server (or one Sentinel-managed primary).

    Use :func:`open_pool` to create one; the pool's background tasks live in
    the task group of that ``async with`` block.
    """

    def __init__(
        self,
        config: HostConfig,
        task_group: anyio.abc.TaskGroup,
        *,
        reconnect_timeout: float | None = None,
    ) -> None:
        self.config = config
        #: How long a command waits for a connection (default: the host's option).
        self.reconnect_timeout = (
            config.options.reconnect_timeout if reconnect_timeout is None else reconnect_timeout
        )
        self._connection_listeners: list[Callable[[], None]] = []
        self._task_group = task_group
        self._client_name = config.options.client_name
        self._resolved: ServerConfig | None = config if isinstance(config, ServerConfig) else None
        self._pipeline: SharedPipeline | None = None
        self._pipeline_lock = anyio.Lock()
        self._idle: deque[Connection] = deque()
        self._open: set[Connection] = set()
        self._generation = 0
        self._in_use = 0
        limit = config.options.max_connections
        self._limiter = anyio.CapacityLimiter(limit) if limit else None
        self._closed = False
        # Back-off state for unreachable servers.
        self._retry_at = 0.0
        self._backoff = Backoff()
        self._last_error: RedisConnectionError | None = None
        self._failed_since_success = False
        # Counters for statistics().
        self._opened = 0
        self._closed_count = 0
        self._connect_failures = 0
        self._reconnects = 0
        self._connection_waits = 0

    # -- public API ---------------------------------------------------------

    async def execute(self, *args: Arg) -> object:
        """Run one non-blocking command on the pipelined connection and return its reply.

        Error replies raise :class:`~anyio_layer.exceptions.ResponseError`.
        """
        (reply,) = await self._request(encode_command(args), 1)
        return raise_for_reply(reply)

    async def pipeline(
        self, commands: Sequence[Sequence[Arg]], *, raise_on_error: bool = True
    ) -> list[object]:
        """Run several commands in one round trip and return their replies in order.

        With ``raise_on_error`` (the default), the first error reply raises
        :class:`~anyio_layer.exceptions.ResponseError` after all replies are
        read; otherwise error replies are returned in place as
        :class:`~anyio_layer.redis.protocol.ErrorReply`.
        """
        if not commands:
            return []
        replies = await self._request(encode_commands(commands), len(commands))
        if raise_on_error:
            for reply in replies:
                raise_for_reply(reply)
        return replies

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> object:
        """Run a Lua script by SHA-1, sending its source only if Redis lacks it."""
        tail = (len(keys), *keys, *args)
        (reply,) = await self._request(encode_command(("EVALSHA", script.sha, *tail)), 1)
        if isinstance(reply, ErrorReply) and reply.code == "NOSCRIPT":
            # NOSCRIPT means the script did not run: sending it again is safe.
            (reply,) = await self._request(encode_command(("EVAL", script.source, *tail)), 1)
        return raise_for_reply(reply)

    async def execute_blocking(
        self,
        *args: Arg,
        on_cancelled_reply: Callable[[object], Awaitable[None]] | None = None,
        prelude: Sequence[Sequence[Arg]] = (),
    ) -> object:
        """Run a blocking command (``BZPOPMIN``, ``BLPOP``, ...) on a dedicated connection.

        ``prelude`` commands (e.g. ``ASKING`` in a cluster) are written in the
        same round trip, just before it; the first error reply among them is
        raised once every reply is read.

        If the call is cancelled while the command is blocked, and
        ``on_cancelled_reply`` is given, the server is told to unblock the
        connection (``CLIENT UNBLOCK``, see :mod:`anyio_layer.redis.blocking`)
        and the reply is read anyway, so an element that was popped at the
        last moment is not lost: it is passed to (and awaited in)
        ``on_cancelled_reply`` (a nil reply is not), still inside the shielded
        cleanup. The connection then goes back to the pool in a known state.
        Without the callback, or if that cleanup does not finish within a
        couple of seconds, the connection is closed, which also frees the
        server-side blocked client.
        """
        return await run_blocking(self.connection, self.execute, args, on_cancelled_reply, prelude)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Borrow a dedicated connection for the duration of the block.

        It returns to the pool afterwards unless it is broken (a request on
        it was interrupted, or its connection failed), in which case it is
        closed. Code that writes to it directly must set ``broken`` itself
        while a reply is outstanding, as :meth:`Connection.execute` does.
        """
        self._check_open()
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            connection = await self._checkout()
            self._in_use += 1
            try:
                yield connection
            except RedisConnectionError:
                connection.broken = True
                self._connection_lost()
                raise
            finally:
                self._in_use -= 1
                await self._checkin(connection)
        finally:
            if self._limiter is not None:
                self._limiter.release()

    def statistics(self) -> PoolStatistics:
        pipeline = self._pipeline
        return PoolStatistics(
            connections_opened=self._opened,
            connections_closed=self._closed_count,
            idle_connections=len(self._idle),
            connections_in_use=self._in_use,
            pipeline_connected=pipeline is not None and not pipeline.closed,
            pipeline_pending=pipeline.pending if pipeline is not None else 0,
            connect_failures=self._connect_failures,
            reconnects=self._reconnects,
            connection_waits=self._connection_waits,
        )

    def add_connection_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the shared connection is lost, and after each reconnect.

        Also after the pool's first connection, and after a connection made
        following a failed attempt. It runs synchronously inside the
        connecting call, so it must be quick and must not raise: schedule work,
        do not do it (the queue layer sets an event its renewal task waits on).
        """
        self._connection_listeners.append(callback)

    @property
    def server(self) -> ServerConfig | None:
        """The server currently in use (for Sentinel: the last discovered primary)."""
        return self._resolved

    def __repr__(self) -> str:
        return f"<ConnectionPool {self.config}>"

    # -- internals ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LayerClosedError(f"the connection pool for {self.config} is closed")

    async def _request(self, payload: bytes, expected: int) -> list[object]:
        pipeline = self._pipeline
        if pipeline is None or pipeline.closed:
            pipeline = await self._wait_for_pipeline()
        # No checkpoint between here and the write: a pipeline found open is written to.
        replies = await pipeline.request(
            payload, expected, pipeline.connection.server.options.socket_timeout
        )
        if isinstance(self.config, SentinelConfig) and any(
            isinstance(reply, ErrorReply) and reply.code == "READONLY" for reply in replies
        ):
            # The primary we know was demoted: find the new one next time.
            self._resolved = None
            await pipeline.close(RedisConnectionError("the primary was demoted to a replica"))
        return replies

    async def _wait_for_pipeline(self) -> SharedPipeline:
        """The shared connection, waiting up to ``reconnect_timeout`` for one (see .waiting)."""

        def waited() -> None:
            self._connection_waits += 1

        return await wait_for_connection(
            self._connect_pipeline,
            patience=self.reconnect_timeout,
            next_attempt=lambda: self._retry_at,
            server=self._resolved or self.config,
            on_wait=waited,
        )

    async def _connect_pipeline(self) -> SharedPipeline:
        self._check_open()
        async with self._pipeline_lock:
            pipeline = self._pipeline
            if pipeline is not None and not pipeline.closed:
                return pipeline
            pipeline = await open_shared_pipeline(
                self._connect, self._pipeline_closed, self._task_group, str(self.config)
            )
            self._pipeline = pipeline
            return pipeline

    def _pipeline_closed(self, pipeline: SharedPipeline) -> None:
        self._forget(pipeline.connection)
        if not self._closed:
            self._connection_lost()
            for listener in self._connection_listeners:
                listener()
        self._generation += 1  # idle dedicated connections are suspect too
        if self._pipeline is pipeline:
            self._pipeline = None

    def _connection_lost(self) -> None:
        """A connection broke: the next one is a reconnect, and Sentinel is asked again."""
        self._failed_since_success = True
        if isinstance(self.config, SentinelConfig):
            self._resolved = None

    async def _checkout(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.broken:
                return connection
            await self._discard(connection)
        # Under asyncio a dedicated connection reads through a stream that keeps reading on.
        return await self._connect(open_protocol_stream if running_on_asyncio() else None)

    async def _checkin(self, connection: Connection) -> None:
        if connection.broken or self._closed or connection.generation != self._generation:
            await self._discard(connection)
        else:
            self._idle.append(connection)

    async def _discard(self, connection: Connection) -> None:
        self._forget(connection)
        await connection.aclose()

    def _forget(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._closed_count += 1

    async def _connect(self, open_stream: OpenStream | None = None) -> Connection:
        """Open a connection (with Sentinel discovery), honouring the back-off window.

        ``open_stream`` is passed on to :func:`~anyio_layer.redis.connection.connect`.
        """
        self._check_open()
        now = anyio.current_time()
        if now < self._retry_at and self._last_error is not None:
            # The same kind of error as the attempt that failed (a timeout stays a timeout).
            raise type(self._last_error)(
                f"{self._last_error} (next attempt in {self._retry_at - now:.2f}s)"
            )
        try:
            server = self._resolved or await self._discover()
            connection = await connect(
                server,
                client_name=self._client_name,
                check_role=isinstance(self.config, SentinelConfig),
                open_stream=open_stream,
            )
        except RedisConnectionError as exc:
            self._connect_failures += 1
            self._resolved = None if isinstance(self.config, SentinelConfig) else self._resolved
            self._retry_at = anyio.current_time() + self._backoff.failed()
            self._last_error = exc
            self._failed_since_success = True
            raise
        notify = self._failed_since_success or self._opened == 0
        if self._failed_since_success:
            self._reconnects += 1
        self._failed_since_success = False
        self._backoff.succeeded()
        self._last_error = None
        self._retry_at = 0.0
        connection.generation = self._generation
        self._opened += 1
        self._open.add(connection)
        if notify:
            for listener in self._connection_listeners:
                listener()
        return connection

    async def _discover(self) -> ServerConfig:
        """Ask the sentinels where the primary is, and remember it."""
        config = self.config
        if not isinstance(config, SentinelConfig):
            raise RuntimeError("_discover() called for a non-Sentinel host")
        self._resolved = await discover_primary(config)
        return self._resolved

    async def aclose(self) -> None:
        """Close every connection; later calls raise ``LayerClosedError``.

        For owners that manage the pool's lifetime themselves (the cluster
        client closes its per-node pools this way); :func:`open_pool` calls
        it when its block ends.
        """
        self._closed = True
        pipeline = self._pipeline
        if pipeline is not None:
            await pipeline.close(
                LayerClosedError(f"the connection pool for {self.config} is closed")
            )
        while self._idle:
            await self._discard(self._idle.pop())
        for connection in list(self._open):
            await self._discard(connection)


@contextlib.asynccontextmanager
async def open_pool(host: object = DEFAULT_HOST) -> AsyncIterator[ConnectionPool]:
    """Open a connection pool for one ``hosts`` entry (URL, tuple, dict or parsed config).

    Connections are made lazily, on first use. Leaving the block stops the
    pool's reader tasks and closes every connection, including dedicated
    connections still lent out (their users then get a connection error).
    """
    config = parse_host(host)
    async with open_service_task_group() as task_group:
        pool = ConnectionPool(config, task_group)
        try:
            yield pool
        finally:
            with anyio.CancelScope(shield=True):
                await pool.aclose()
