"""The tiny blocking admin client the toolkit talks to its own servers with.

Owns the RESP2 encoding of commands and decoding of replies for it, connecting
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

from .errors import RedisReplyError, RESPProtocolError
from .tls import TLSFiles

__all__ = ["Arg", "Endpoint", "connect", "encode_command", "read_reply", "run_command"]

Arg = str | bytes | bytearray | memoryview | int | float


def encode_command(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bool):
            raise TypeError("booleans are not valid Redis arguments; pass a string or an int")
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, int):
            data = str(arg).encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: use str, bytes or numbers")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def read_reply(reader: BinaryIO, decode: bool) -> object:
    """Read one RESP2 reply; error replies come back as :class:`RedisReplyError` objects."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(
            "the server closed the connection" if not line else f"truncated reply {line!r}"
        )
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode("utf-8", "surrogateescape") if decode else bytes(body)
    if kind == b"-":
        return RedisReplyError(body.decode("utf-8", "replace"))
    try:
        number = int(body)
    except ValueError:
        raise RESPProtocolError(f"invalid RESP2 reply line {line!r}") from None
    if kind == b":":
        return number
    if kind == b"$":
        if number < 0:
            return None
        data = reader.read(number + 2)
        if len(data) != number + 2 or not data.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection inside a bulk reply")
        payload = data[:-2]
        return payload.decode("utf-8", "surrogateescape") if decode else payload
    if kind == b"*":
        if number < 0:
            return None
        return [read_reply(reader, decode) for _ in range(number)]
    raise RESPProtocolError(f"unknown RESP2 reply type in {line!r}")


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
    with connect(endpoint, timeout) as sock, sock.makefile("rb") as reader:
        sock.sendall(payload)
        if endpoint.password is not None:
            auth_reply = read_reply(reader, decode=True)
            if isinstance(auth_reply, RedisReplyError):
                raise auth_reply
        reply = read_reply(reader, decode)
    if isinstance(reply, RedisReplyError):
        raise reply
    return reply
