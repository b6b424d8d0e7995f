"""The shared pipelined connection over an anyio byte stream, and the interface of both.

Non-blocking commands from any number of tasks share **one pipelined
connection**. A caller appends its encoded command to an outbox and, if no
write is in progress, writes the whole outbox itself; commands issued while a
write is in progress are written together by that writer. A reader task
matches replies to callers in FIFO order. This is where the speed comes from:
fifty concurrent senders cost a handful of syscalls, not fifty round trips.

This module owns :class:`SharedPipeline`, what
:class:`~anyio_layer.redis.pool.ConnectionPool` needs of its shared
connection, and :class:`StreamPipeline`, the implementation on an anyio
stream, used under trio for TLS connections. (Under asyncio the pool uses
:class:`~anyio_layer.redis.asyncio_pipeline.AsyncioPipeline`, and under trio on
plain sockets :class:`~anyio_layer.redis.trio_pipeline.TrioPipeline`: same
interface and contract, without anyio's stream machinery.)
Its reader, :meth:`StreamPipeline.read_loop`, runs in the pool's task group;
the pool starts it. A pipeline does not reconnect, back off or know about
Sentinel: when it closes it tells the pool (``on_close``), which does.

Contract (tested in ``tests/test_cancellation_connection.py`` and
``tests/test_pool.py``): a cancelled caller stops waiting, and the reader
still consumes its reply and drops it, so later replies stay matched; writes
are shielded, so a cancelled caller never leaves half a command on the wire.
When the connection fails, or a reply outlives the server's
``socket_timeout``, the pipeline closes and every waiting caller gets the
same error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.lowlevel

from ..exceptions import LayerClosedError, ProtocolError, RedisConnectionError, RedisTimeoutError
from .connection import Connection

__all__ = ["SharedPipeline", "StreamPipeline"]


class _Request:
    __slots__ = ("error", "event", "expected", "replies")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.replies: list[object] = []
        self.event = anyio.Event()
        self.error: BaseException | None = None


class SharedPipeline(Protocol):
    """What the pool needs of its shared connection (stream, asyncio or trio pipeline).

    ``request(payload, expected, deadline)`` writes ``payload`` (``expected``
    encoded commands) and returns their replies, or raises the error that
    closed the pipeline (:class:`RedisConnectionError` if it was closed
    already); ``close(error)``, idempotent, fails every waiting request with
    ``error`` and closes the connection.
    """

    @property
    def connection(self) -> Connection: ...
    @property
    def closed(self) -> bool: ...
    @property
    def pending(self) -> int: ...
    async def request(
        self, payload: bytes, expected: int, deadline: float | None
    ) -> list[object]: ...
    async def close(self, error: BaseException) -> None: ...


class StreamPipeline:
    """The shared connection on an anyio stream: FIFO matching of replies to concurrent requests.

    ``on_close`` is called once, synchronously, when the pipeline closes for
    any reason; :meth:`read_loop` must run (in the owner's task group) for
    replies to arrive.
    """

    def __init__(self, connection: Connection, on_close: Callable[[StreamPipeline], None]) -> None:
        self.connection = connection
        self._on_close = on_close
        self._pending: deque[_Request] = deque()
        self._outbox: list[bytes] = []
        self._writing = False
        self.closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def request(self, payload: bytes, expected: int, deadline: float | None) -> list[object]:
        if self.closed:
            raise RedisConnectionError(f"connection to {self.connection.server} is closed")
        request = _Request(expected)
        self._pending.append(request)
        self._outbox.append(payload)
        if not self._writing:
            await self._flush()
        try:
            if deadline is None:
                await request.event.wait()
            else:
                with anyio.fail_after(deadline):
                    await request.event.wait()
        except TimeoutError:
            error = RedisTimeoutError(
                f"Redis at {self.connection.server} did not answer within {deadline} seconds"
            )
            await self.close(error)
            raise error from None
        # A cancelled caller simply stops waiting: the reader still consumes
        # its reply and sets an event nobody waits on, so replies stay matched.
        if request.error is not None:
            # A caller cancelled at the moment the connection closed gets its
            # cancellation, not the closing error.
            await anyio.lowlevel.checkpoint_if_cancelled()
            raise request.error
        return request.replies

    async def _flush(self) -> None:
        # Shielded: half a command on the wire would corrupt every later reply.
        self._writing = True
        try:
            with anyio.CancelScope(shield=True):
                outbox = self._outbox
                while outbox:
                    data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                    outbox.clear()
                    await self.connection.send(data)
        except RedisConnectionError as exc:
            await self.close(exc)
        finally:
            self._writing = False

    async def read_loop(self) -> None:
        """Match replies to requests until the connection fails or the pool closes."""
        connection = self.connection
        pending = self._pending
        try:
            while True:
                data = await connection.receive_raw()
                for reply in connection.feed_and_drain(data):
                    if not pending:
                        raise ProtocolError(f"unexpected reply from Redis: {reply!r:.100}")
                    request = pending[0]
                    request.replies.append(reply)
                    if len(request.replies) == request.expected:
                        pending.popleft()
                        request.event.set()
        except (RedisConnectionError, ProtocolError) as exc:
            await self.close(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self.close(LayerClosedError("the connection pool was closed"))

    async def close(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_close(self)
        while self._pending:
            request = self._pending.popleft()
            request.error = error
            request.event.set()
        self._outbox.clear()
        await self.connection.aclose()
