"""Encoding commands for Redis: a command is a RESP array of bulk strings.

Owns :func:`encode_command`, :func:`encode_commands` and the :data:`Arg` type
of a command argument. It only turns arguments into bytes: no parsing, no
I/O. Tested in ``tests/test_resp.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

__all__ = ["Arg", "encode_command", "encode_commands"]

Arg: TypeAlias = bytes | bytearray | memoryview | str | int | float
"""A command argument :func:`encode_command` accepts."""


_ALLOWED = "bytes, bytearray, memoryview, str, int or float"


# "\r\n$<n>\r\n" for the lengths most arguments have: the CRLF closing the
# previous argument (or the array header) and the next argument's header.
_ARG_HEADERS: Final = [b"\r\n$%d\r\n" % n for n in range(1024)]


def _append_command(parts: list[bytes | bytearray | memoryview], args: Sequence[Arg]) -> None:
    """Append the RESP encoding of one command to ``parts``, ready for ``b"".join``."""
    if (
        type(args) is not list
        and type(args) is not tuple
        and isinstance(args, (str, bytes, bytearray, memoryview))
    ):
        raise TypeError(
            f"a command must be a sequence of arguments, not a single "
            f"{type(args).__name__} (write [{args!r}] to send one argument)"
        )
    if not args:
        raise ValueError("a command needs at least one argument (the command name)")
    append = parts.append
    headers = _ARG_HEADERS
    append(b"*%d" % len(args))
    for arg in args:
        data: bytes | bytearray | memoryview
        if type(arg) is bytes:
            data = arg
        elif type(arg) is str:
            data = arg.encode()
        elif type(arg) is int:
            data = b"%d" % arg
        elif type(arg) is float:
            data = _encode_float(arg)
        else:
            data = _encode_other(arg, args)
        size = data.nbytes if type(data) is memoryview else len(data)
        append(headers[size] if size < 1024 else b"\r\n$%d\r\n" % size)
        append(data)
    append(b"\r\n")


def _encode_float(value: float) -> bytes:
    """``repr`` of a float as bytes; NaN has no meaning for Redis and is refused."""
    if value != value:
        raise ValueError("cannot send NaN to Redis: it has no RESP representation")
    return repr(value).encode()


def _encode_other(arg: object, args: Sequence[Arg]) -> bytes | bytearray | memoryview:
    """Encode an argument that is not exactly bytes, str, int or float."""
    if isinstance(arg, bool):
        raise TypeError(
            f"invalid Redis command argument {arg!r} at position {_position(arg, args)}: "
            f"bool is not allowed, because True and False would silently go out as "
            f"1 and 0; convert it explicitly, e.g. int(flag) or b'1' if flag else b'0'"
        )
    if isinstance(arg, (bytes, bytearray)):
        return arg
    if isinstance(arg, memoryview):
        # Contiguous views are joined as they are; others are copied once.
        return arg if arg.c_contiguous else arg.tobytes()
    if isinstance(arg, str):
        return str.encode(arg)
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return _encode_float(float(arg))
    raise TypeError(
        f"invalid Redis command argument at position {_position(arg, args)}: "
        f"{type(arg).__name__} is not allowed (expected {_ALLOWED})"
    )


def _position(arg: object, args: Sequence[Arg]) -> int:
    return next(i for i, candidate in enumerate(args) if candidate is arg)


def encode_command(args: Sequence[Arg]) -> bytes:
    """Encode one command as a RESP array of bulk strings.

    ``args`` is the command name followed by its arguments, for example
    ``["SET", b"key", 42]``. Each argument is sent as follows:

    * ``bytes``, ``bytearray``, ``memoryview``: as they are (binary safe);
    * ``str``: UTF-8;
    * ``int``: its decimal form (``42`` is ``b"42"``);
    * ``float``: its ``repr`` (``0.1`` is ``b"0.1"``, infinities are
      ``b"inf"`` / ``b"-inf"``); NaN is rejected with :class:`ValueError`.

    Anything else raises :class:`TypeError`, naming the type and position.
    That includes ``bool`` (an ``int`` subclass, but passing ``True`` is almost
    always a bug) and ``None``. An empty command raises :class:`ValueError`:
    Redis never answers one, so the caller would wait forever.
    """
    parts: list[bytes | bytearray | memoryview] = []
    _append_command(parts, args)
    return b"".join(parts)


def encode_commands(commands: Iterable[Sequence[Arg]]) -> bytes:
    """Encode several commands back to back, for a pipeline.

    Equivalent to joining :func:`encode_command` of each command, without the
    intermediate copies.
    """
    parts: list[bytes | bytearray | memoryview] = []
    for args in commands:
        _append_command(parts, args)
    return b"".join(parts)
