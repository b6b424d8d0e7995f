"""A fault-injecting TCP proxy: put it between a client and a real server to break the network.

:func:`run_fault_proxy` listens on a free loopback port and forwards every
connection it accepts to one upstream address (a :class:`RedisServer`'s, say).
While it runs, a test can make the network misbehave, for connections already
open and for new ones alike:

* :meth:`FaultProxy.set_latency`: every chunk waits that long before it is
  forwarded, in both directions (throughput is kept: chunks are delayed, not
  serialised);
* :meth:`FaultProxy.set_bandwidth`: at most that many bytes per second per
  direction and connection;
* :meth:`FaultProxy.blackhole`: nothing is forwarded any more and the sockets
  stay open, as behind a partitioned network or a hung server: the client's
  writes succeed, replies never come. :meth:`FaultProxy.heal` delivers what was
  held, as TCP does once a partition ends;
* :meth:`FaultProxy.cut_replies`: the next reply on every open connection is
  cut after a number of bytes and the connection is reset: a proxy or a server
  that dies in the middle of a reply;
* :meth:`FaultProxy.reset`: every open connection is reset now (TCP RST);
* :meth:`FaultProxy.refuse`: new connections are accepted and reset at once,
  as by a server that is down (existing ones are left alone).

:meth:`FaultProxy.heal` clears every fault. Usage, in async code under asyncio
or trio::

    from anyio_layer.testing import run_fault_proxy, run_redis_server

    async with run_redis_server() as server, run_fault_proxy(server.address) as proxy:
        async with anyio_layer.open_redis_layer(hosts=[proxy.url]) as layer:
            proxy.blackhole()
            ...  # the layer's calls must fail within their deadline
            proxy.heal()

The proxy's tasks live in the task group of the ``async with`` block; leaving
it resets every connection it still carries. It forwards bytes and knows
nothing of RESP, so it works for any TCP protocol. Its own tests are in
``tests/test_fault_proxy.py``.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["FaultProxy", "FaultProxyStatistics", "run_fault_proxy"]

_CHUNK = 65536
#: Chunks read ahead of the writer per direction (bounds what latency holds in memory).
_READ_AHEAD = 64


@dataclass(frozen=True, slots=True)
class FaultProxyStatistics:
    """Counters of a :class:`FaultProxy` since it started."""

    connections_accepted: int
    connections_open: int
    connections_refused: int
    connections_reset: int
    bytes_upstream: int
    bytes_downstream: int


class _Gate:
    """Open while data flows; closed while the proxy is blackholed."""

    def __init__(self) -> None:
        self.open = True
        self._opened = anyio.Event()

    def close(self) -> None:
        if self.open:
            self.open = False
            self._opened = anyio.Event()

    def release(self) -> None:
        self.open = True
        self._opened.set()

    async def wait_open(self) -> None:
        while not self.open:
            await self._opened.wait()


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, client: anyio.abc.SocketStream, upstream: anyio.abc.SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.cancel_scope = anyio.CancelScope()
        #: Bytes of the next reply to forward before resetting, or None.
        self.cut_after: int | None = None

    def reset(self) -> None:
        """Abort both sockets with a TCP RST and stop forwarding."""
        for stream in (self.client, self.upstream):
            _set_reset_on_close(stream)
        self.cancel_scope.cancel()


def _set_reset_on_close(stream: anyio.abc.SocketStream) -> None:
    raw = stream.extra(SocketAttribute.raw_socket)
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy:
    """A running proxy. Made by :func:`run_fault_proxy`; every method is synchronous."""

    def __init__(
        self,
        listener: anyio.abc.Listener[anyio.abc.SocketStream],
        host: str,
        upstream: tuple[str, int],
    ) -> None:
        self._listener = listener
        self._host = host
        self.upstream = upstream
        self._links: set[_Link] = set()
        self._gate = _Gate()
        self._latency = 0.0
        self._bandwidth: float | None = None
        self._refusing = False
        self._accepted = 0
        self._refused = 0
        self._reset = 0
        self._bytes_up = 0
        self._bytes_down = 0

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the proxy listens on (loopback)."""
        return self._host, self._listener.extra(SocketAttribute.local_port)

    @property
    def url(self) -> str:
        """``redis://host:port`` of the proxy; add credentials or a database as needed."""
        host, port = self.address
        return f"redis://{host}:{port}"

    # -- faults ---------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (0 for none)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"latency must be a finite number of seconds >= 0, not {seconds!r}")
        self._latency = seconds

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Limit each direction of each connection to this rate (``None`` for no limit)."""
        if bytes_per_second is not None and not (
            math.isfinite(bytes_per_second) and bytes_per_second > 0
        ):
            raise ValueError(
                f"bandwidth must be a positive number of bytes per second or None, "
                f"not {bytes_per_second!r}"
            )
        self._bandwidth = bytes_per_second

    def blackhole(self) -> None:
        """Stop forwarding in both directions; sockets stay open, data waits for :meth:`heal`."""
        self._gate.close()

    def cut_replies(self, after: int = 1) -> None:
        """Cut the next reply on every open connection after ``after`` bytes, then reset it.

        "Open" means carried by the proxy: a connection it has forwarded data
        for. Connections that receive nothing more from the server stay as
        they are; connections opened later are not affected.
        """
        if after < 0:
            raise ValueError(f"after must be a number of bytes >= 0, not {after!r}")
        for link in self._links:
            link.cut_after = after

    def reset(self) -> None:
        """Reset every open connection now (the client sees ECONNRESET)."""
        for link in list(self._links):
            link.reset()
            self._reset += 1

    def refuse(self, refuse: bool = True) -> None:
        """Reset new connections as soon as they are accepted (``False`` to accept again)."""
        self._refusing = refuse

    def heal(self) -> None:
        """Clear every fault: forward again (held data first), no latency, no limit, accept."""
        self._latency = 0.0
        self._bandwidth = None
        self._refusing = False
        for link in self._links:
            link.cut_after = None
        self._gate.release()

    def statistics(self) -> FaultProxyStatistics:
        return FaultProxyStatistics(
            connections_accepted=self._accepted,
            connections_open=len(self._links),
            connections_refused=self._refused,
            connections_reset=self._reset,
            bytes_upstream=self._bytes_up,
            bytes_downstream=self._bytes_down,
        )

    # -- forwarding -----------------------------------------------------------

    async def serve(self) -> None:
        """Accept and carry connections until cancelled (:func:`run_fault_proxy` runs this)."""
        async with self._listener, anyio.create_task_group() as connections:
            await self._listener.serve(self._carry, connections)

    async def _carry(self, client: anyio.abc.SocketStream) -> None:
        self._accepted += 1
        if self._refusing:
            self._refused += 1
            _set_reset_on_close(client)
            await client.aclose()
            return
        try:
            upstream = await anyio.connect_tcp(*self.upstream)
        except OSError:
            _set_reset_on_close(client)
            await client.aclose()
            return
        link = _Link(client, upstream)
        self._links.add(link)
        try:
            with link.cancel_scope:
                async with anyio.create_task_group() as pumps:
                    pumps.start_soon(self._pump, link, client, upstream, False)
                    pumps.start_soon(self._pump, link, upstream, client, True)
        finally:
            self._links.discard(link)
            with anyio.CancelScope(shield=True):
                await client.aclose()
                await upstream.aclose()

    async def _pump(
        self,
        link: _Link,
        source: anyio.abc.SocketStream,
        target: anyio.abc.SocketStream,
        downstream: bool,
    ) -> None:
        """Forward one direction: a reader that stamps chunks, a writer that delays them."""
        send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](_READ_AHEAD)
        async with anyio.create_task_group() as both:
            both.start_soon(self._read, source, send)
            await self._write(link, target, receive, downstream)
            both.cancel_scope.cancel()
        # One direction ended (EOF or error): end the other one too.
        link.cancel_scope.cancel()

    async def _read(
        self, source: anyio.abc.SocketStream, chunks: MemoryObjectSendStream[tuple[float, bytes]]
    ) -> None:
        async with chunks:
            while True:
                await self._gate.wait_open()
                try:
                    data = await source.receive(_CHUNK)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return
                await chunks.send((anyio.current_time() + self._latency, data))

    async def _write(
        self,
        link: _Link,
        target: anyio.abc.SocketStream,
        chunks: MemoryObjectReceiveStream[tuple[float, bytes]],
        downstream: bool,
    ) -> None:
        async with chunks:
            async for due, data in chunks:
                await anyio.sleep_until(due)
                await self._gate.wait_open()
                if downstream and link.cut_after is not None:
                    data = data[: link.cut_after]
                    with contextlib.suppress(anyio.BrokenResourceError, OSError):
                        await target.send(data)
                    self._bytes_down += len(data)
                    self._reset += 1
                    link.reset()
                    return
                if self._bandwidth is not None:
                    await anyio.sleep(len(data) / self._bandwidth)
                try:
                    await target.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                if downstream:
                    self._bytes_down += len(data)
                else:
                    self._bytes_up += len(data)


@contextlib.asynccontextmanager
async def run_fault_proxy(
    upstream: tuple[str, int], *, host: str = "127.0.0.1"
) -> AsyncIterator[FaultProxy]:
    """Run a :class:`FaultProxy` to ``upstream`` (``(host, port)``) for the block.

    It listens on a free port of ``host`` (loopback by default). Leaving the
    block stops it and resets every connection it still carries.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=0)
    proxy = FaultProxy(listener, host, upstream)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(proxy.serve)
        try:
            yield proxy
        finally:
            proxy.reset()
            task_group.cancel_scope.cancel()
