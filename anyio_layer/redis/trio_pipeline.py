"""The shared pipelined connection on trio's own socket primitives: the trio fast path.

Under trio, :class:`~anyio_layer.redis.pool.ConnectionPool` runs its shared
pipelined connection on :class:`TrioPipeline` instead of
:class:`~anyio_layer.redis.pipeline.StreamPipeline` whenever the connection is
a plain TCP or Unix socket (TLS keeps the stream path). Both have the same
interface (:class:`~anyio_layer.redis.pipeline.SharedPipeline`) and contract;
this one skips the layers that dominate the per-command cost on trio: anyio's
stream wrapper and resource guards, trio's ``SocketStream`` and its
"try, then wait" socket helper (two ``recv`` calls per read), a shielded
cancel scope per write, a ``fail_after`` scope and an ``Event`` per request.
Tested in ``tests/test_trio_pipeline.py`` and by every pool and cancellation
test run under trio.

How it works:

* The connection is opened and hand-shaken by
  :func:`~anyio_layer.redis.connection.connect` as any other (same code, same
  timeouts and errors); afterwards the pipeline uses the stream's socket
  directly (non-blocking ``send``/``recv``, ``trio.lowlevel.wait_readable`` /
  ``wait_writable``). Closing goes through :meth:`Connection.aclose`, which
  closes the trio socket, so a task waiting on it is woken
  (``notify_closing``).
* **Requests** park their task with ``wait_task_rescheduled``; the reader
  task (:meth:`TrioPipeline.read_loop`, run in the pool's task group) parses
  replies, matches them in FIFO order and reschedules each caller with its
  replies. A cancelled caller's abort callback just forgets its task: its
  reply is still consumed when it arrives, and dropped, so later replies stay
  matched.
* **Writes**: a command issued while the connection is idle is sent at once
  (one non-blocking ``send``). Commands issued while replies are outstanding
  go to an outbox; the first of them yields once (a cancel-shielded
  checkpoint, so the other tasks runnable in the same scheduling batch can add
  theirs) and then writes the whole outbox in one ``send``. Only when the
  socket does not take everything does a writer wait for it, shielded, so a
  cancelled caller never leaves half a command on the wire.
* **Timeouts** (the server's ``socket_timeout``): every request records its
  deadline; the reader waits under one cancel scope whose deadline is the
  earliest one that may be pending (moved lazily, not per reply). When it
  expires and a request still waiting has really outlived its deadline, the
  pipeline closes with :class:`~anyio_layer.exceptions.RedisTimeoutError`.

When the connection fails, the server sends something that is not valid RESP
(or a reply nobody asked for), or a request times out, the pipeline closes:
the pool is notified once (``on_close``) and every waiting caller gets the same
error. A caller cancelled at the moment the connection closes sees its
cancellation, never the connection error.
"""

from __future__ import annotations

import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import outcome
import trio
import trio.lowlevel

from ..exceptions import LayerClosedError, ProtocolError, RedisConnectionError, RedisTimeoutError
from .connection import READ_SIZE, Connection
from .protocol import NEED_DATA, Parser

__all__ = ["TrioPipeline", "socket_reader"]

_reschedule = trio.lowlevel.reschedule
_Value = outcome.Value


def socket_reader(sock: socket.socket) -> Callable[[], Awaitable[bytes]]:
    """``receive()`` for a dedicated connection's plain socket under trio.

    Behaves as the anyio stream's ``receive`` (the same exceptions, so
    :func:`~anyio_layer.redis.connection.translate_io_errors` applies) with
    one ``recv`` per read instead of trio's "try, then wait" two, and without
    the stream wrappers. Used once the caller has data to wait for, which is
    always the case for these connections.
    """
    wait_readable = trio.lowlevel.wait_readable

    async def receive() -> bytes:
        while True:
            try:
                await wait_readable(sock)
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except trio.ClosedResourceError as exc:
                raise anyio.ClosedResourceError from exc
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            return data

    return receive


class _Request:
    __slots__ = ("abandoned", "deadline", "expected", "replies", "result", "task")

    def __init__(self, expected: int, deadline: float) -> None:
        self.expected = expected
        self.deadline = deadline
        self.replies: list[object] = []
        #: The caller, once it waits in ``wait_task_rescheduled`` (only then may it be woken).
        self.task: trio.lowlevel.Task | None = None
        #: The outcome, when it came before the caller started waiting.
        self.result: list[object] | BaseException | None = None
        #: The caller was cancelled: its reply is dropped.
        self.abandoned = False

    def finish(self, result: list[object] | BaseException) -> None:
        """Hand ``result`` to the caller: wake it, or leave it for it to pick up."""
        if self.abandoned:
            return
        task = self.task
        if task is None:
            self.result = result
        else:
            self.task = None
            _reschedule(task, _Value(result))

    def abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        # The caller was cancelled: it stops waiting, the reader drops the reply.
        self.task = None
        self.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED


class TrioPipeline:
    """The shared connection on trio; see the module docstring for its contract.

    ``sock`` is the (non-blocking) socket under ``connection``'s stream.
    ``on_close`` is called once, synchronously, when the pipeline closes for
    any reason; :meth:`read_loop` must run (in the owner's task group) for
    replies to arrive.
    """

    def __init__(
        self,
        connection: Connection,
        sock: socket.socket,
        on_close: Callable[[TrioPipeline], None],
    ) -> None:
        self.connection = connection
        self._sock = sock
        self._on_close = on_close
        self._parser = Parser()
        self._pending: deque[_Request] = deque()
        self._outbox: list[bytes] = []
        #: A task is about to write the outbox, or is waiting for the socket to take it.
        self._writing = False
        #: The reader's timeout scope (None while the reader is not waiting under one).
        self._timer: trio.CancelScope | None = None
        self.closed = False

    @property
    def pending(self) -> int:
        """Requests written (or about to be) whose replies have not all arrived."""
        return len(self._pending)

    # -- the pool's interface ---------------------------------------------------

    async def request(self, payload: bytes, expected: int, deadline: float | None) -> list[object]:
        """Send ``payload`` (``expected`` commands) and return their replies."""
        if self.closed:
            raise RedisConnectionError(f"connection to {self.connection.server} is closed")
        when = math.inf if deadline is None else trio.current_time() + deadline
        request = _Request(expected, when)
        pending = self._pending
        if pending or self._writing:
            # Replies outstanding: coalesce with the commands of this scheduling batch.
            pending.append(request)
            self._outbox.append(payload)
            if not self._writing:
                await self._flush_soon()
        else:
            pending.append(request)  # before the write: the reply may come at once
            rest = self._send(payload)
            if rest is not None:
                await self._write_rest(rest)
        timer = self._timer
        if timer is not None and when < timer.deadline:
            timer.deadline = when
        result = request.result
        if result is None:
            request.task = trio.lowlevel.current_task()
            result = await trio.lowlevel.wait_task_rescheduled(request.abort)
        else:  # the pipeline closed before this caller got to wait
            await trio.lowlevel.checkpoint()
        if isinstance(result, BaseException):
            # A caller cancelled at the moment the connection closed gets its
            # cancellation, not the closing error.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise result
        return result

    async def close(self, error: BaseException) -> None:
        """Fail pending requests with ``error`` and close the socket (idempotent)."""
        self._close(error)
        await self.connection.aclose()  # shielded, bounded; wakes the reader

    async def read_loop(self) -> None:
        """Match replies to requests until the connection fails or the pool closes."""
        try:
            await self._read()
        except (RedisConnectionError, ProtocolError) as exc:
            await self.close(exc)
        finally:
            with trio.CancelScope(shield=True):
                await self.close(LayerClosedError("the connection pool was closed"))

    # -- writing ----------------------------------------------------------------------

    def _send(self, data: bytes | memoryview) -> memoryview | None:
        """Send what the socket takes now; return the rest, or None when all went out."""
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._close(self._io_error(exc))
            return None
        if sent == len(data):
            return None
        return memoryview(data)[sent:]

    async def _flush_soon(self) -> None:
        """Let this scheduling batch add to the outbox, then write it."""
        self._writing = True
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
            outbox = self._outbox
            while outbox and not self.closed:
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                rest = self._send(data)
                if rest is not None:
                    await self._wait_and_send(rest)
        finally:
            self._writing = False

    async def _write_rest(self, rest: memoryview) -> None:
        """Finish a write the socket did not take at once, then whatever queued meanwhile."""
        self._writing = True
        try:
            await self._wait_and_send(rest)
            outbox = self._outbox
            while outbox and not self.closed:
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                more = self._send(data)
                if more is not None:
                    await self._wait_and_send(more)
        finally:
            self._writing = False

    async def _wait_and_send(self, view: memoryview | None) -> None:
        # Shielded: half a command on the wire would corrupt every later reply.
        with trio.CancelScope(shield=True):
            while view is not None and not self.closed:
                try:
                    await trio.lowlevel.wait_writable(self._sock)
                except (OSError, trio.ClosedResourceError) as exc:
                    self._close(self._io_error(exc))
                    return
                view = self._send(view)

    # -- reading ----------------------------------------------------------------------

    async def _read(self) -> None:
        sock = self._sock
        wait_readable = trio.lowlevel.wait_readable
        received = self._received
        while not self.closed:
            with trio.CancelScope(deadline=self._earliest_deadline()) as timer:
                self._timer = timer
                while True:
                    try:
                        await wait_readable(sock)
                        data = sock.recv(READ_SIZE)
                    except BlockingIOError:
                        continue
                    except (OSError, trio.ClosedResourceError) as exc:
                        # (Closed by us: read_loop's close() is then a no-op.)
                        raise self._io_error(exc) from exc
                    if not data:
                        raise RedisConnectionError(
                            f"connection to Redis at {self.connection.server} failed: "
                            "the server closed the connection"
                        )
                    received(data)
            self._timer = None
            if timer.cancelled_caught:
                self._check_timeouts()

    def _received(self, data: bytes) -> None:
        pending = self._pending
        parser = self._parser
        try:
            parser.feed(data)
            reply = parser.get_reply()
        except ProtocolError as exc:
            raise self._protocol_error(exc) from exc
        while reply is not NEED_DATA:
            if not pending:
                raise ProtocolError(
                    f"unexpected reply from Redis at {self.connection.server}: {reply!r:.100}"
                )
            request = pending[0]
            replies = request.replies
            replies.append(reply)
            if len(replies) == request.expected:
                pending.popleft()
                request.finish(replies)  # dropped if its caller was cancelled
            try:
                reply = parser.get_reply()
            except ProtocolError as exc:
                raise self._protocol_error(exc) from exc

    def _earliest_deadline(self) -> float:
        return min((r.deadline for r in self._pending if not r.abandoned), default=math.inf)

    def _check_timeouts(self) -> None:
        now = trio.current_time()
        if any(not r.abandoned and r.deadline <= now for r in self._pending):
            timeout = self.connection.server.options.socket_timeout
            raise RedisTimeoutError(
                f"Redis at {self.connection.server} did not answer within {timeout} seconds"
            )

    # -- closing ------------------------------------------------------------------------

    def _close(self, error: BaseException) -> None:
        """Close for use: notify the pool, fail every waiting request, close the socket."""
        if self.closed:
            return
        self.closed = True
        self.connection.broken = True
        self._on_close(self)
        pending = self._pending
        while pending:
            pending.popleft().finish(error)
        self._outbox.clear()
        # Close the socket now (a task waiting on it is woken); the stream's
        # aclose() later finds it closed.
        sock = self._sock
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _io_error(self, exc: BaseException) -> RedisConnectionError:
        reason = str(exc) or type(exc).__name__
        error = RedisConnectionError(
            f"connection to Redis at {self.connection.server} failed: {reason}"
        )
        error.__cause__ = exc
        return error

    def _protocol_error(self, exc: ProtocolError) -> ProtocolError:
        return ProtocolError(f"{exc} (Redis at {self.connection.server})")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pending={len(self._pending)}"
        return f"<TrioPipeline {self.connection.server} {state}>"
