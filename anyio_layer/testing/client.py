"""The tiny blocking admin client the toolkit talks to its own servers with.

Owns sending commands and reading RESP2 replies for it with the project's own
sans-IO codec (:mod:`anyio_layer.redis.protocol`), connecting
to a process (TCP, unix socket or TLS with the client certificate),
authenticating and running one command per connection. It is not the
project's client and must stay off the layers' paths; it starts no process.
Covered by the "admin client" tests of tests/test_testing.py.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from ..exceptions import ProtocolError
from ..redis.protocol import NEED_DATA, ErrorReply, Parser
from ..redis.protocol import encode_command as encode_resp_command
from .errors import RedisReplyError, RESPProtocolError
from .tls import TLSFiles

__all__ = [
    "Arg",
    "Endpoint",
    "ReplyReader",
    "connect",
    "encode_command",
    "read_reply",
    "run_command",
]

Arg = str | bytes | bytearray | memoryview | int | float


def encode_command(args: Sequence[Arg]) -> bytes:
    """The RESP encoding of one command, by the project's codec.

    Arguments are checked first so that a wrong one raises this client's
    :class:`TypeError` messages (``bool`` is refused, as by the codec).
    """
    for arg in args:
        if isinstance(arg, bool):
            raise TypeError("booleans are not valid Redis arguments; pass a string or an int")
        if not isinstance(arg, (str, bytes, bytearray, memoryview, int, float)):
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: use str, bytes or numbers")
    return encode_resp_command(args)


class ReplyReader:
    """Reads RESP2 replies from a blocking binary stream with the project's :class:`Parser`.

    One reader per connection: bytes read past one reply stay in its parser
    for the next :meth:`read`.
    """

    __slots__ = ("_parser", "_stream")

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._parser = Parser()

    def read(self, decode: bool) -> object:
        """Read one reply; error replies come back as :class:`RedisReplyError` objects.

        Strings are ``bytes``, or ``str`` with ``decode`` (UTF-8,
        ``surrogateescape``). Raises :class:`ConnectionError` if the stream ends
        first and :class:`RESPProtocolError` if it holds no valid RESP2 reply.
        """
        parser = self._parser
        started = False
        while True:
            try:
                reply = parser.get_reply()
            except ProtocolError as exc:
                raise RESPProtocolError(f"invalid RESP2 reply: {exc}") from None
            if reply is not NEED_DATA:
                return _convert(reply, decode)
            # Each line ends with the LF of a CRLF, so this never waits for more
            # than the reply being read.
            line = self._stream.readline()
            if not line:
                raise ConnectionError(
                    "the server closed the connection inside a reply"
                    if started
                    else "the server closed the connection"
                )
            started = True
            parser.feed(line)


def read_reply(reader: BinaryIO, decode: bool) -> object:
    """Read one RESP2 reply from ``reader``; see :meth:`ReplyReader.read`."""
    return ReplyReader(reader).read(decode)


def _convert(value: object, decode: bool) -> object:
    """The codec's value as this client returns it (str with ``decode``, error objects)."""
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape") if decode else value
    if value is None or type(value) is int:
        return value
    if type(value) is list:
        return [_convert(item, decode) for item in value]
    if isinstance(value, ErrorReply):
        return RedisReplyError(value.message)
    raise RESPProtocolError(f"invalid RESP2 reply: a RESP3 value {value!r}")


class Endpoint(Protocol):
    """Where a process listens and how to log in: what the admin client needs of it."""

    @property
    def unix_path(self) -> Path | None: ...
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def tls(self) -> TLSFiles | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...


def connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    """A connected socket to ``endpoint``: its unix socket, TCP, or TLS over TCP."""
    if endpoint.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(endpoint.unix_path))
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = endpoint.address
    sock = socket.create_connection((host, port), timeout=timeout)
    if endpoint.tls is None:
        return sock
    try:
        return endpoint.tls.client_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def run_command(endpoint: Endpoint, args: Sequence[Arg], *, decode: bool, timeout: float) -> object:
    """Run one command on a fresh connection, authenticating first; see ``RedisProcess.execute``."""
    payload = encode_command(args)
    if endpoint.password is not None:
        auth: list[Arg] = ["AUTH", endpoint.password]
        if endpoint.username is not None:
            auth.insert(1, endpoint.username)
        payload = encode_command(auth) + payload
    with connect(endpoint, timeout) as sock, sock.makefile("rb") as stream:
        sock.sendall(payload)
        replies = ReplyReader(stream)
        if endpoint.password is not None:
            auth_reply = replies.read(decode=True)
            if isinstance(auth_reply, RedisReplyError):
                raise auth_reply
        reply = replies.read(decode)
    if isinstance(reply, RedisReplyError):
        raise reply
    return reply
