"""One connection to one Redis server, over an anyio byte stream.

A :class:`Connection` owns a TCP, Unix-socket or TLS stream and a RESP parser.
It knows how to connect and perform the handshake (AUTH, SELECT,
CLIENT SETNAME, CLIENT ID in one round trip), how to write bytes and how to
read whole replies. It does not know who is waiting for which reply: that is
the job of :mod:`anyio_layer.redis.pool`, which either lends a connection to one
task at a time (blocking commands, subscribers) or multiplexes many tasks over
one pipelined connection (:mod:`anyio_layer.redis.pipeline`).

Cancellation contract: a connection whose request was interrupted (a write
that did not finish, or a reply that was not read) is in an unknown state.
:meth:`Connection.execute` marks it :attr:`~Connection.broken` before the
cancellation propagates, and the pool closes broken connections instead of
reusing them, so a late reply can never be read by someone else.

Every I/O failure surfaces as :class:`~anyio_layer.exceptions.RedisConnectionError`
(or its subclass :class:`~anyio_layer.exceptions.RedisTimeoutError`) naming
the server.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final, TypeAlias

import anyio
import anyio.abc

from ..exceptions import (
    AuthenticationError,
    ProtocolError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
)
from .config import ServerConfig, TCPAddress
from .protocol import NEED_DATA, Arg, ErrorReply, Parser, encode_commands

__all__ = ["Connection", "OpenStream", "connect", "raise_for_reply", "translate_io_errors"]

READ_SIZE: Final = 256 * 1024

# Error codes that mean "your credentials were refused" (Redis 6 and 7 wording).
_AUTH_CODES: Final = frozenset({"WRONGPASS", "NOAUTH", "NOPERM"})

#: Opens the byte stream to a server that :func:`connect` runs the handshake over.
OpenStream: TypeAlias = Callable[[ServerConfig], Awaitable[anyio.abc.ByteStream]]


def raise_for_reply(reply: object) -> object:
    """Return ``reply``, or raise it if it is an error reply."""
    if isinstance(reply, ErrorReply):
        raise ResponseError(reply.message)
    return reply


@contextlib.contextmanager
def translate_io_errors(server: object) -> Iterator[None]:
    """Turn anyio / OS / TLS failures into :class:`RedisConnectionError`."""
    try:
        yield
    except (
        OSError,
        ssl.SSLError,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.EndOfStream,
    ) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, anyio.EndOfStream):
            reason = "the server closed the connection"
        raise RedisConnectionError(f"connection to Redis at {server} failed: {reason}") from exc


class Connection:
    """A connection to one server; see the module docstring for its contract."""

    __slots__ = ("_parser", "_receive", "_stream", "broken", "client_id", "generation", "server")

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        server: ServerConfig,
        receive: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self._stream = stream
        #: Reads what is available (for a fast path: must behave as ``stream.receive``).
        self._receive = receive or functools.partial(stream.receive, READ_SIZE)
        self._parser = Parser()
        self.server = server
        #: ``CLIENT ID`` of this connection, learned during the handshake.
        self.client_id = 0
        #: True once the connection must not be used again.
        self.broken = False
        #: The pool's generation when this connection was opened (pool bookkeeping).
        self.generation = 0

    async def send(self, data: bytes) -> None:
        """Write ``data``; marks the connection broken if the write fails."""
        try:
            with translate_io_errors(self.server):
                await self._stream.send(data)
        except BaseException:
            self.broken = True
            raise

    async def read_reply(self) -> object:
        """Read the next whole reply (an error reply is returned, not raised)."""
        parser = self._parser
        reply = parser.get_reply()
        while reply is NEED_DATA:
            try:
                with translate_io_errors(self.server):
                    data = await self._receive()
                parser.feed(data)
            except BaseException:
                self.broken = True
                raise
            reply = parser.get_reply()
        return reply

    def feed_and_drain(self, data: bytes) -> list[object]:
        """Feed bytes read elsewhere and return every complete reply."""
        parser = self._parser
        parser.feed(data)
        replies = []
        reply = parser.get_reply()
        while reply is not NEED_DATA:
            replies.append(reply)
            reply = parser.get_reply()
        return replies

    async def receive_raw(self) -> bytes:
        """Read whatever bytes are available (for the pipelined reader)."""
        with translate_io_errors(self.server):
            return await self._receive()

    def raw_socket(self) -> socket.socket | None:
        """The socket under a plain TCP or Unix stream (None under TLS), for a fast path.

        Only :class:`~anyio_layer.redis.trio_pipeline.TrioPipeline` uses it,
        after the handshake, instead of the stream; closing still goes through
        :meth:`aclose`.
        """
        if self.server.options.tls is not None:
            return None
        sock: socket.socket | None = self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        return sock

    async def execute(self, *args: Arg) -> object:
        """Send one command and return its reply, raising error replies.

        Interrupting this call (cancellation, timeout, I/O error) leaves the
        connection :attr:`broken`.
        """
        (reply,) = await self.execute_many([args])
        return raise_for_reply(reply)

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[object]:
        """Send several commands in one write; return their raw replies in order."""
        self.broken = True  # until every reply is read
        await self.send(encode_commands(commands))
        replies = [await self.read_reply() for _ in commands]
        self.broken = False
        return replies

    async def aclose(self) -> None:
        """Close the stream (never raises, never blocks for long)."""
        self.broken = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(1), contextlib.suppress(Exception):
            await self._stream.aclose()

    def __repr__(self) -> str:
        state = " broken" if self.broken else ""
        return f"<Connection {self.server} id={self.client_id}{state}>"


async def connect(
    server: ServerConfig,
    *,
    client_name: str | None = None,
    check_role: bool = False,
    open_stream: OpenStream | None = None,
) -> Connection:
    """Open a connection to ``server`` and perform the handshake.

    The handshake (AUTH, SELECT, CLIENT SETNAME, CLIENT ID, and ROLE when
    ``check_role`` is set) is written in one go and costs one round trip. The
    whole of it, connect included, is bounded by the server's
    ``socket_connect_timeout``.

    ``open_stream`` replaces how the stream is opened (by default anyio's TCP,
    TLS or Unix-socket stream); it must turn I/O failures into
    :class:`RedisConnectionError` like :func:`translate_io_errors`. The asyncio
    fast path of :mod:`anyio_layer.redis.asyncio_pipeline` passes its own, so its
    handshake is this very code.
    """
    options = server.options
    timeout = options.socket_connect_timeout
    try:
        with anyio.fail_after(timeout):
            stream = await (open_stream or _open_stream)(server)
            connection = Connection(stream, server, _fast_receive(stream, server, open_stream))
            try:
                await _handshake(connection, client_name or options.client_name, check_role)
            except BaseException:
                await connection.aclose()
                raise
    except TimeoutError:
        raise RedisTimeoutError(
            f"connecting to Redis at {server} took longer than {timeout} seconds"
        ) from None
    return connection


async def _open_stream(server: ServerConfig) -> anyio.abc.ByteStream:
    address = server.address
    tls = server.options.tls
    with translate_io_errors(server):
        if isinstance(address, TCPAddress):
            if tls is None:
                return await anyio.connect_tcp(address.host, address.port)
            return await anyio.connect_tcp(
                address.host,
                address.port,
                ssl_context=tls.create_context(),
                tls_hostname=tls.server_hostname or address.host,
                tls_standard_compatible=False,
            )
        return await anyio.connect_unix(address.path)


def _fast_receive(
    stream: anyio.abc.ByteStream, server: ServerConfig, open_stream: OpenStream | None
) -> Callable[[], Awaitable[bytes]] | None:
    """Under trio, on a plain socket: reads straight from the socket (see trio_pipeline)."""
    if open_stream is not None or server.options.tls is not None:
        return None
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if sock is None or _running_on_asyncio():
        return None
    from .trio_pipeline import socket_reader  # trio is an optional dependency

    return socket_reader(sock)


def _running_on_asyncio() -> bool:
    from .asyncio_pipeline import running_on_asyncio  # (which imports this module)

    return running_on_asyncio()


async def _handshake(connection: Connection, client_name: str | None, check_role: bool) -> None:
    options = connection.server.options
    commands: list[tuple[Arg, ...]] = []
    if options.password is not None:
        if options.username:
            commands.append(("AUTH", options.username, options.password))
        else:
            commands.append(("AUTH", options.password))
    if options.db:
        commands.append(("SELECT", options.db))
    if client_name:
        commands.append(("CLIENT", "SETNAME", client_name))
    commands.append(("CLIENT", "ID"))
    if check_role:
        commands.append(("ROLE",))
    replies = await connection.execute_many(commands)
    for command, reply in zip(commands, replies, strict=True):
        if isinstance(reply, ErrorReply):
            if command[0] == "AUTH" or reply.code in _AUTH_CODES:
                raise AuthenticationError(
                    f"Redis at {connection.server} refused the credentials: {reply.message}",
                    reply.code,
                )
            raise ResponseError(
                f"{command[0]!r} failed on {connection.server}: {reply.message}", reply.code
            )
    client_id = replies[-2] if check_role else replies[-1]
    if not isinstance(client_id, int):
        raise ProtocolError(f"CLIENT ID returned {client_id!r}, expected an integer")
    connection.client_id = client_id
    if check_role:
        role = replies[-1]
        if not (isinstance(role, list) and role and role[0] == b"master"):
            raise RedisConnectionError(
                f"Redis at {connection.server} is not a primary (ROLE says {role!r})"
            )
