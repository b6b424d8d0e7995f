"""Dedicated connections under asyncio on a small ``asyncio.Protocol`` stream: the read fast path.

Subscribers and blocking pops read their dedicated connection all the time.
anyio's asyncio ``SocketStream`` resumes and pauses the transport's reading
around every ``receive()`` (two ``epoll_ctl`` calls and a reader handle per
read) and waits on an ``asyncio.Event``. :class:`ProtocolStream` leaves
reading on, hands chunks over through one loop future per wait, and pauses
reading only while more than :data:`HIGH_WATER` bytes wait unread (a
connection nobody reads cannot grow without bound).

Owns :func:`open_protocol_stream` (the ``open_stream`` the pool passes to
:func:`~anyio_layer.redis.connection.connect` for dedicated connections under
asyncio) and :func:`create_connection`, which both it and
:mod:`anyio_layer.redis.asyncio_pipeline` use to connect a protocol over TCP,
TLS or a Unix socket. It must NOT know RESP or the pool's bookkeeping; it
behaves as an anyio byte stream (the same exceptions, so
:func:`~anyio_layer.redis.connection.translate_io_errors` applies). Covered by
``tests/test_asyncio_pipeline.py`` and every pool, pub/sub and queue test run
under asyncio.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import anyio
import anyio.abc
import anyio.lowlevel

from .config import ServerConfig, TCPAddress
from .connection import translate_io_errors

__all__ = ["HIGH_WATER", "ProtocolStream", "create_connection", "open_protocol_stream"]

#: Unread bytes above which the stream stops reading from the socket (resumed below a quarter).
HIGH_WATER: Final = 4 * 1024 * 1024


async def create_connection(
    server: ServerConfig, protocol_factory: Callable[[], asyncio.Protocol]
) -> None:
    """Connect a protocol to ``server`` (TCP, TLS or Unix socket), I/O errors translated.

    The addresses a host name resolves to are tried one after the other (no
    ``happy_eyeballs_delay``: on Python 3.11 a connect cancelled during a
    happy-eyeballs race can leak a connected socket, whereas a sequential
    connect always closes what it opened).
    """
    loop = asyncio.get_running_loop()
    address = server.address
    tls = server.options.tls
    with translate_io_errors(server):
        if isinstance(address, TCPAddress):
            if tls is None:
                await loop.create_connection(protocol_factory, address.host, address.port)
            else:
                await loop.create_connection(
                    protocol_factory,
                    address.host,
                    address.port,
                    ssl=tls.create_context(),
                    server_hostname=tls.server_hostname or address.host,
                )
        else:
            await loop.create_unix_connection(protocol_factory, address.path)


async def open_protocol_stream(server: ServerConfig) -> anyio.abc.ByteStream:
    """Connect a :class:`ProtocolStream` to ``server``."""
    protocol = _StreamProtocol()
    await create_connection(server, lambda: protocol)
    return ProtocolStream(protocol)


class _StreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.inbox: deque[bytes] = deque()
        self.unread = 0
        self.reading_paused = False
        self.writing_paused = False
        self.eof = False
        self.lost = False
        self.exc: BaseException | None = None
        #: Tasks waiting for data, for the transport to drain or to be closed.
        self.waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        waiters = self.waiters
        if waiters:
            self.waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> None:
        """Wait until something happens (data, drained, EOF, lost); the caller re-checks."""
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.inbox.append(data)
        self.unread += len(data)
        if self.unread > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self.wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self.wake()
        return None  # let the transport close itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exc = exc
        self.wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.wake()


class ProtocolStream(anyio.abc.ByteStream):
    """An anyio byte stream over a protocol that keeps reading (see the module docstring).

    One task reads and one writes at a time (a dedicated connection is lent
    to one task), as with anyio's streams.
    """

    def __init__(self, protocol: _StreamProtocol) -> None:
        self._protocol = protocol
        self._closed = False

    def _transport(self) -> asyncio.Transport:
        protocol = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if protocol.lost or protocol.transport is None or protocol.transport.is_closing():
            raise anyio.BrokenResourceError from protocol.exc
        return protocol.transport

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        inbox = protocol.inbox
        if inbox:
            # No wait: still honour a pending cancellation, as a checkpoint would.
            await anyio.lowlevel.checkpoint_if_cancelled()
        while not inbox:
            if self._closed:
                raise anyio.ClosedResourceError
            if protocol.lost or protocol.eof:
                if protocol.exc is None:
                    raise anyio.EndOfStream
                raise anyio.BrokenResourceError from protocol.exc
            await protocol.wait()
        data = inbox.popleft()
        if len(data) > max_bytes:
            inbox.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.unread -= len(data)
        if protocol.reading_paused and protocol.unread < HIGH_WATER // 4:
            protocol.reading_paused = False
            if protocol.transport is not None and not protocol.transport.is_closing():
                protocol.transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        # Cancellation is honoured before the write, never after it (as anyio's
        # streams do): a caller told "cancelled" has not sent anything.
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._transport().write(item)
        protocol = self._protocol
        while protocol.writing_paused:
            self._transport()  # raises once the connection is gone
            await protocol.wait()

    async def send_eof(self) -> None:
        transport = self._transport()
        if transport.can_write_eof():
            transport.write_eof()

    async def aclose(self) -> None:
        self._closed = True
        protocol = self._protocol
        transport = protocol.transport
        if transport is not None and not protocol.lost:
            transport.abort()  # a dedicated connection being closed has nothing worth sending
            while not protocol.lost:
                await protocol.wait()
