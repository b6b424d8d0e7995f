"""The shared pipelined connection as an :class:`asyncio.Protocol`: the asyncio fast path.

Under asyncio, :class:`~anyio_layer.redis.pool.ConnectionPool` runs its shared
pipelined connection on :class:`AsyncioPipeline` instead of
:class:`~anyio_layer.redis.pipeline.StreamPipeline` (an anyio byte stream plus
a reader task). (Trio has its own fast path,
:mod:`~anyio_layer.redis.trio_pipeline`; the dedicated connections of blocking
commands and subscribers keep the anyio stream.) The pipelines have the same
interface (:class:`~anyio_layer.redis.pipeline.SharedPipeline`) and the same
contract; this one just skips anyio's stream machinery, which dominates the
per-command cost under asyncio (a shielded cancel scope per write, an extra
checkpoint per send, two ``epoll_ctl`` calls per read, a hop through the
reader task). Tested in ``tests/test_asyncio_pipeline.py``.

How it works:

* **Replies** are parsed in :meth:`~AsyncioPipeline.data_received` with the
  usual :class:`~anyio_layer.redis.protocol.Parser` and matched in FIFO order to
  pending requests, each of which waits on its own ``loop.create_future()``.
* **Writes**: ``transport.write()`` is synchronous and takes the whole payload
  (the transport buffers what the socket does not take), so a command is
  never half written and nothing needs shielding. A command issued while the
  connection is idle is written at once; commands issued while replies are
  outstanding are collected in an outbox and written together by one
  ``loop.call_soon`` callback, once per loop iteration.
* **Flow control**: between ``pause_writing()`` and ``resume_writing()`` the
  outbox only collects; it is written once the transport has drained.

Contract (the same as ``StreamPipeline``'s, see :mod:`anyio_layer.redis.pipeline`):

* A cancelled caller stops waiting (its future is cancelled or abandoned).
  Its reply is still consumed when it arrives, and dropped, so later replies
  stay matched. A caller cancelled at the moment the connection fails sees its
  cancellation, never the connection error.
* When the connection is lost, the server sends something that is not valid
  RESP (or a reply nobody asked for), or a request outlives the server's
  ``socket_timeout``, the pipeline closes: the pool is notified once (its
  ``on_close`` callback does the reconnect accounting and Sentinel
  rediscovery), every pending request fails with the same
  :class:`~anyio_layer.exceptions.RedisConnectionError` (or
  :class:`~anyio_layer.exceptions.RedisTimeoutError`,
  :class:`~anyio_layer.exceptions.ProtocolError`) naming the server, and the
  transport is aborted. The pool then reconnects on the next call.
* There is no background task. :meth:`AsyncioPipeline.close` (called by the
  pool when it closes, with :class:`~anyio_layer.exceptions.LayerClosedError`)
  fails pending requests and returns once the socket is closed (waiting at
  most about a second), so nothing outlives ``open_pool``'s block.

Connecting: :func:`open_asyncio_pipeline` has the pool open the connection
with :func:`~anyio_layer.redis.connection.connect` as for any other connection,
passing an ``open_stream`` that connects with ``loop.create_connection()``
(TCP, TLS through asyncio's SSL transport, or ``create_unix_connection()``)
and returns a small anyio ``ByteStream`` over this protocol. The handshake
(AUTH, SELECT, CLIENT SETNAME, CLIENT ID, ROLE for Sentinel), its timeout
and its error handling are therefore the very same code; once it is done, the
protocol switches to pipelining.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeAlias, cast

import anyio
import anyio.abc
import anyio.lowlevel

from ..exceptions import ProtocolError, RedisConnectionError, RedisTimeoutError
from .asyncio_stream import create_connection
from .config import ServerConfig
from .connection import Connection, OpenStream
from .protocol import NEED_DATA, Parser

try:
    from sniffio import current_async_library
except ImportError:  # pragma: no cover - recent anyio no longer requires sniffio (trio does)

    def current_async_library() -> str:
        # anyio's own rule without sniffio: a running asyncio loop means asyncio.
        asyncio.get_running_loop()
        return "asyncio"


__all__ = ["AsyncioPipeline", "open_asyncio_pipeline", "running_on_asyncio"]

#: What a request's future resolves to: its replies, or the error that closed the pipeline.
#: (An error is passed as a result, not set as the future's exception, so a
#: future whose caller went away never logs "exception was never retrieved".)
_Outcome: TypeAlias = list[object] | BaseException


def running_on_asyncio() -> bool:
    """Whether the calling task runs on anyio's asyncio backend (so the fast path applies)."""
    try:
        return current_async_library() == "asyncio"
    except RuntimeError:  # sniffio.AsyncLibraryNotFoundError is a RuntimeError
        return False


async def open_asyncio_pipeline(
    connect: Callable[[OpenStream], Awaitable[Connection]],
    on_close: Callable[[AsyncioPipeline], None],
) -> AsyncioPipeline:
    """Connect a new :class:`AsyncioPipeline`; call only on the asyncio backend.

    ``connect(open_stream)`` must open and hand-shake a connection with
    :func:`~anyio_layer.redis.connection.connect`, passing ``open_stream`` on (the
    pool's ``_connect`` does, with its back-off and bookkeeping). ``on_close``
    is called once, synchronously, when the pipeline closes for any reason.
    """
    pipeline = AsyncioPipeline(on_close)
    connection = await connect(pipeline._open_stream)
    pipeline._start(connection)
    return pipeline


class _Request:
    __slots__ = ("expected", "future", "replies")

    def __init__(self, future: asyncio.Future[_Outcome], expected: int) -> None:
        self.future = future
        self.expected = expected
        self.replies: list[object] = []


class AsyncioPipeline(asyncio.Protocol):
    """The shared connection on asyncio; see the module docstring for its contract.

    Create it with :func:`open_asyncio_pipeline`. Until the handshake is done
    the protocol serves a :class:`_HandshakeStream`; after that it pipelines.
    """

    #: The connection (from :func:`~anyio_layer.redis.connection.connect`); set once connected.
    connection: Connection

    def __init__(self, on_close: Callable[[AsyncioPipeline], None]) -> None:
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._server: ServerConfig | None = None
        self._parser = Parser()
        self._pending: deque[_Request] = deque()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._paused = False  # by the transport's flow control
        self._pipelining = False  # False during the handshake
        #: Closed for use: set once, when the pipeline closes for any reason.
        self.closed = False
        # Transport state, and tasks waiting for data (handshake) or for connection_lost.
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._aborted = False
        self._inbox = bytearray()  # handshake replies not read yet
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def pending(self) -> int:
        """Requests written (or about to be) whose replies have not all arrived."""
        return len(self._pending)

    # -- the pool's interface ---------------------------------------------------

    async def request(self, payload: bytes, expected: int, deadline: float | None) -> list[object]:
        """Send ``payload`` (``expected`` commands) and return their replies.

        Raises the error that closed the pipeline if it closes first; with a
        ``deadline`` (the server's ``socket_timeout``), a reply later than
        that closes the pipeline with :class:`RedisTimeoutError`.
        """
        if self.closed:
            raise RedisConnectionError(f"connection to {self.connection.server} is closed")
        transport = self._transport
        if transport is None:  # pragma: no cover - connection_made precedes the handshake
            raise RuntimeError("AsyncioPipeline.request() before the connection was made")
        loop = self._loop
        future: asyncio.Future[_Outcome] = loop.create_future()
        pending = self._pending
        outbox = self._outbox
        if not pending and not outbox and not self._paused:
            # Idle: nothing to coalesce with, so write now (lowest latency).
            pending.append(_Request(future, expected))
            transport.write(payload)
        else:
            pending.append(_Request(future, expected))
            outbox.append(payload)
            if not self._flush_scheduled and not self._paused:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        if deadline is None:
            outcome = await future
        else:
            timer = loop.call_later(deadline, self._timed_out, future, deadline)
            try:
                outcome = await future
            finally:
                timer.cancel()
        # A cancelled caller never gets here: its future was cancelled (or it
        # was resolved and the cancellation was thrown in instead), and
        # data_received drops the reply of a future that is already done.
        if isinstance(outcome, BaseException):
            # A caller cancelled at the moment the connection closed gets its
            # cancellation, not the closing error.
            await anyio.lowlevel.checkpoint_if_cancelled()
            raise outcome
        return outcome

    async def close(self, error: BaseException) -> None:
        """Fail pending requests with ``error``, abort the transport and wait until it is closed.

        Idempotent; the pool is notified (``on_close``) only the first time.
        """
        self._close(error)
        await self.connection.aclose()  # shielded, bounded; waits for connection_lost

    # -- internals ------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the outbox in one go (scheduled with ``call_soon``, or on resume)."""
        self._flush_scheduled = False
        outbox = self._outbox
        if self.closed or self._paused or not outbox or self._transport is None:
            return
        self._transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
        outbox.clear()

    def _timed_out(self, future: asyncio.Future[_Outcome], deadline: float) -> None:
        if not future.done() and self._pipelining:
            self._close(
                RedisTimeoutError(
                    f"Redis at {self.connection.server} did not answer within {deadline} seconds"
                )
            )

    def _close(self, error: BaseException) -> None:
        """Close for use: notify the pool, fail every pending request, abort the transport."""
        if self.closed:
            return
        self.closed = True
        if self._pipelining:
            self.connection.broken = True
            self._on_close(self)
        pending = self._pending
        while pending:
            future = pending.popleft().future
            if not future.done():  # done: its caller was cancelled
                future.set_result(error)
        self._outbox.clear()
        self._abort()

    def _abort(self) -> None:
        """Abort the transport (discarding unsent data); connection_lost follows shortly."""
        if not self._aborted and not self._lost and self._transport is not None:
            self._aborted = True
            self._transport.abort()

    def _start(self, connection: Connection) -> None:
        """The handshake is done: pipeline from now on."""
        self.connection = connection
        self._pipelining = True
        if self._lost:  # lost between the handshake and now
            self._close(self._lost_error())
            return
        leftover = bytes(self._inbox)
        self._inbox.clear()
        if leftover:  # nothing was asked: data_received reports a protocol error
            self.data_received(leftover)

    def _lost_error(self) -> RedisConnectionError:
        exc = self._lost_exc
        reason = "the server closed the connection" if exc is None else str(exc)
        error = RedisConnectionError(
            f"connection to Redis at {self._server} failed: {reason or type(exc).__name__}"
        )
        error.__cause__ = exc
        return error

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        """Wait until data arrives or the connection is lost (for the handshake stream)."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def _aclose_transport(self) -> None:
        """Abort the transport and wait until the socket is closed (for the stream's aclose)."""
        self._abort()
        while not self._lost and self._transport is not None:
            await self._wait()

    async def _open_stream(self, server: ServerConfig) -> anyio.abc.ByteStream:
        """Connect this protocol to ``server``: the ``open_stream`` of :func:`connect`."""
        self._server = server
        await create_connection(server, lambda: self)
        return _HandshakeStream(self)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._pipelining:
            self._inbox += data
            self._wake()
            return
        if self.closed:
            return
        parser = self._parser
        pending = self._pending
        try:
            parser.feed(data)
            reply = parser.get_reply()
            while reply is not NEED_DATA:
                if not pending:
                    raise ProtocolError(f"unexpected reply from Redis: {reply!r:.100}")
                request = pending[0]
                replies = request.replies
                replies.append(reply)
                if len(replies) == request.expected:
                    pending.popleft()
                    future = request.future
                    if not future.done():  # done: its caller was cancelled, drop the reply
                        future.set_result(replies)
                reply = parser.get_reply()
        except ProtocolError as exc:
            error = ProtocolError(f"{exc} (Redis at {self.connection.server})")
            error.__cause__ = exc
            self._close(error)

    def eof_received(self) -> bool | None:
        return None  # let the transport close itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc
        if self._pipelining:
            self._close(self._lost_error())
        self._wake()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._outbox and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pending={len(self._pending)}"
        return f"<AsyncioPipeline {self._server} {state}>"


class _HandshakeStream(anyio.abc.ByteStream):
    """An anyio byte stream over an :class:`AsyncioPipeline` still doing its handshake.

    Only :func:`~anyio_layer.redis.connection.connect`'s handshake (a few hundred
    bytes, one round trip) reads and writes through it; afterwards its
    :meth:`aclose`, called through :meth:`Connection.aclose`, is what closes
    the transport.
    """

    def __init__(self, protocol: AsyncioPipeline) -> None:
        self._protocol = protocol
        self._closed = False

    def _check(self) -> asyncio.Transport:
        protocol = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if protocol._lost or protocol._aborted or protocol._transport is None:
            raise anyio.BrokenResourceError from protocol._lost_exc
        return protocol._transport

    async def send(self, item: bytes) -> None:
        # Far below the transport's high-water mark: no need to wait for a drain.
        self._check().write(item)
        await anyio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        inbox = protocol._inbox
        while not inbox:
            if self._closed:
                raise anyio.ClosedResourceError
            if protocol._lost:
                if protocol._lost_exc is None:
                    raise anyio.EndOfStream
                raise anyio.BrokenResourceError from protocol._lost_exc
            self._check()
            await protocol._wait()
        data = bytes(inbox[:max_bytes])
        del inbox[:max_bytes]
        return data

    async def send_eof(self) -> None:
        transport = self._check()
        if transport.can_write_eof():
            transport.write_eof()

    async def aclose(self) -> None:
        self._closed = True
        await self._protocol._aclose_transport()
