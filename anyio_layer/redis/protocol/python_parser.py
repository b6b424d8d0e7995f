"""The pure-Python RESP2/RESP3 reply parser.

Owns :class:`PythonParser`, which implements the
:class:`~anyio_layer.redis.protocol.Parser` interface (create parsers through
``Parser``, which picks between this one and the hiredis-backed one). It knows
bytes, not sockets: no I/O, no waiting. The value mapping it implements is in
the docstring of :mod:`anyio_layer.redis.protocol`. Tested in
``tests/test_resp.py`` (every split of every input, random reply trees).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

from ...exceptions import ProtocolError
from .replies import NEED_DATA, ErrorReply, Push

__all__ = ["MAX_AGGREGATE_LENGTH", "MAX_BULK_LENGTH", "MAX_DEPTH", "PythonParser"]

# Every byte that may start a reply.
_TYPE_BYTES: Final = frozenset(b"+-:$*_,#(=!%~>|")

# The canonical spelling of small numbers, which most lengths and many integers
# are: one dict lookup replaces validating and converting them.
_SMALL_NUMBERS: Final = {b"%d" % n: n for n in range(-1, 1024)}
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_DOUBLE = re.compile(
    rb"-?(?:inf|nan|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)", re.IGNORECASE
)
_BIG_NUMBER = re.compile(rb"-?[0-9]+")
# A bulk string larger than this that ends the buffer drops the buffer at once.
_LARGE_BULK: Final = 1 << 16

#: Aggregates nested deeper than this are a protocol error (hiredis's own limit).
MAX_DEPTH: Final = 1024
#: The longest string reply accepted: Redis's default ``proto-max-bulk-len``.
MAX_BULK_LENGTH: Final = 512 * 2**20
#: The most elements an aggregate may declare (hiredis's own limit).
MAX_AGGREGATE_LENGTH: Final = 2**32 - 1

# Markers returned by PythonParser._parse_resp3 in place of a value.
_OPENED: Final = object()  # an aggregate was opened: parse its first element
_SKIPPED: Final = object()  # an attribute was consumed: parse what it annotates


def _show(data: bytes) -> str:
    """A short printable form of offending input, for error messages."""
    return repr(bytes(data[:40])) + ("..." if len(data) > 40 else "")


def _parts(value: list[Any] | dict[Any, Any]) -> Iterator[object]:
    """The parts of an aggregate key: a list's items, a map's ``[key, value]`` pairs."""
    if isinstance(value, list):
        return iter(value)
    return ([k, v] for k, v in value.items())


def _hashable(key: object) -> object:
    """Make a map key hashable: lists (and maps) become tuples, all the way down.

    The walk keeps its own stack instead of recursing, so a deeply nested key
    cannot exhaust Python's recursion limit (nesting is bounded by
    :data:`MAX_DEPTH` anyway).
    """
    if not isinstance(key, (list, dict)):
        return key
    stack: list[tuple[Iterator[object], list[object]]] = [(_parts(key), [])]
    while True:
        parts, done = stack[-1]
        for part in parts:
            if isinstance(part, (list, dict)):
                stack.append((_parts(part), []))
                break
            done.append(part)
        else:
            stack.pop()
            value = tuple(done)
            if not stack:
                return value
            stack[-1][1].append(value)


class PythonParser:
    """The pure-Python implementation of :class:`~anyio_layer.redis.protocol.Parser`.

    It has that interface (``implementation``, ``feed``, ``get_reply``, with
    the contract documented there) without deriving from it: ``Parser``
    derives its concrete classes from this one, so this module needs no
    import of it.

    The parse buffer is an immutable ``bytes`` object read from an offset, so
    values are sliced out with a single copy. Fed chunks wait in a list and
    are joined to the unconsumed tail of the buffer only once enough bytes
    have arrived for parsing to make progress (``_need``, counted from the
    offset): a 100 MB bulk string fed in 64 KiB chunks is joined once, not
    once per chunk.

    Aggregates being parsed live on an explicit stack of frames ``(items,
    size, type byte)``, innermost last, where an aggregate is complete once
    ``len(items) == size``. A huge array that arrives in pieces is therefore
    resumed where it stopped, never re-parsed; only the header of an
    incomplete element is read again.
    """

    __slots__ = ("_buf", "_chunks", "_failure", "_need", "_pending", "_pos", "_stack")

    def __init__(self, use_hiredis: bool | None = None) -> None:
        # use_hiredis is accepted (and ignored) because Parser(...) passes it on.
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._pending = 0  # total size of _chunks
        self._need = 0
        self._stack: list[tuple[list[Any], int, int]] = []
        self._failure: str | None = None

    @property
    def implementation(self) -> str:
        return "python"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._failure is not None or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        self._chunks.append(data)
        self._pending += len(data)

    def _merge(self) -> None:
        """Join the fed chunks to the unconsumed part of the buffer."""
        buf = self._buf
        pos = self._pos
        chunks = self._chunks
        if pos < len(buf):
            self._buf = b"".join([memoryview(buf)[pos:], *chunks])
        elif len(chunks) == 1:
            self._buf = chunks[0]
        else:
            self._buf = b"".join(chunks)
        chunks.clear()
        self._pos = self._pending = self._need = 0

    def _incomplete(self, pos: int, need: int) -> object:
        """Remember where to resume and how many bytes that needs; return NEED_DATA.

        Also the place where a broken parser notices (its buffer is empty, so
        every call ends up here) and where an invalid type byte is caught
        before its line is complete.
        """
        if self._failure is not None:
            raise ProtocolError(f"parser unusable after an earlier error: {self._failure}")
        buf = self._buf
        if pos < len(buf) and buf[pos] not in _TYPE_BYTES:
            raise self.fail(f"invalid reply type byte {_show(buf[pos : pos + 1])}")
        self._pos = pos
        self._need = need
        return NEED_DATA

    def fail(self, message: str) -> ProtocolError:
        """Record a protocol error (disabling the parser) and return it to be raised.

        Every later :meth:`get_reply` raises again and fed data is ignored.
        The hiredis-backed parser also uses it, to fail for good when hiredis
        cannot go on.
        """
        self._failure = message
        self._buf = b""
        self._pos = 0
        self._chunks.clear()
        self._stack.clear()
        return ProtocolError(message)

    def get_reply(self) -> object:
        if self._chunks:
            if len(self._buf) - self._pos + self._pending < self._need:
                return NEED_DATA
            self._merge()
        buf = self._buf
        pos = self._pos
        stack = self._stack
        # The innermost open aggregate, if any, in locals.
        items: list[Any] | None = None
        size = aggregate = 0
        if stack:
            items, size, aggregate = stack[-1]
        small_number = _SMALL_NUMBERS.get
        value: object
        while True:
            end = buf.find(b"\r\n", pos)
            if end == -1:
                return self._incomplete(pos, len(buf) - pos + 1)
            kind = buf[pos]
            if kind == 36:  # "$" bulk string
                line = buf[pos + 1 : end]
                length = small_number(line)
                if length is None:
                    length = self._length(line, MAX_BULK_LENGTH, "string")
                if length >= 0:
                    start = end + 2
                    stop = start + length
                    if stop + 2 > len(buf):
                        return self._incomplete(pos, stop + 2 - pos)
                    if buf[stop] != 13 or buf[stop + 1] != 10:
                        raise self.fail(
                            f"bulk string of {length} bytes not followed by CRLF "
                            f"(got {_show(buf[stop : stop + 2])})"
                        )
                    value = buf[start:stop]
                    pos = stop + 2
                    if length > _LARGE_BULK and pos == len(buf):
                        # Do not keep a copy of a huge value alive until the
                        # next feed.
                        buf = self._buf = b""
                        pos = 0
                else:
                    value = None
                    pos = end + 2
            elif kind == 42:  # "*" array
                line = buf[pos + 1 : end]
                length = small_number(line)
                if length is None:
                    length = self._length(line, MAX_AGGREGATE_LENGTH, "aggregate")
                pos = end + 2
                if length > 0:
                    if len(stack) >= MAX_DEPTH:
                        raise self._too_deep()
                    items = []
                    size = length
                    aggregate = 42
                    stack.append((items, size, aggregate))
                    continue
                value = [] if length == 0 else None
            elif kind == 58:  # ":" integer
                line = buf[pos + 1 : end]
                value = small_number(line)
                if value is None:
                    value = self._integer(line)
                pos = end + 2
            elif kind == 43 or kind == 45:  # "+" simple string, "-" error
                line = buf[pos + 1 : end]
                if 10 in line or 13 in line:
                    raise self.fail(f"line contains a bare CR or LF: {_show(line)}")
                value = line if kind == 43 else ErrorReply(line.decode("utf-8", "replace"))
                pos = end + 2
            else:
                value, new_pos = self._parse_resp3(kind, pos, end)
                if value is NEED_DATA:
                    return self._incomplete(pos, new_pos)
                pos = new_pos
                if value is _OPENED:
                    items, size, aggregate = stack[-1]
                    continue
                if value is _SKIPPED:
                    continue
            # Add the value to the innermost open aggregate, closing every
            # aggregate that this completes; a value outside any is a reply.
            while True:
                if items is None:
                    self._pos = pos
                    return value
                items.append(value)
                if len(items) < size:
                    break
                stack.pop()
                value = items if aggregate == 42 else _close(aggregate, items)
                items = None
                if stack:
                    items, size, aggregate = stack[-1]
                if value is _SKIPPED:
                    break

    def _length(self, line: bytes, limit: int, what: str) -> int:
        """Parse a length not in _SMALL_NUMBERS: -1 or more, at most ``limit``."""
        if line.isdigit() and line[0] != 48 and len(line) < 19:  # no leading "0"
            length = int(line)
            if length > limit:
                raise self.fail(f"{what} length {length} is over the limit of {limit}")
            return length
        raise self.fail(f"invalid length {_show(line)}")

    def _too_deep(self) -> ProtocolError:
        return self.fail(f"aggregates nested more than {MAX_DEPTH} levels deep")

    def _integer(self, line: bytes) -> int:
        """Parse a ``:`` integer not in _SMALL_NUMBERS: canonical decimal, 64-bit."""
        digits = line[1:] if line[:1] == b"-" else line
        if digits.isdigit() and digits[0] != 48:  # no leading "0", no "-0"
            value = int(line)
            if _INT64_MIN <= value <= _INT64_MAX:
                return value
        raise self.fail(f"invalid integer {_show(line)}")

    def _parse_resp3(self, kind: int, pos: int, end: int) -> tuple[object, int]:
        """Parse a reply starting with a RESP3-only type byte at ``pos``.

        ``end`` is where the first line's CRLF starts. Returns the value and
        the offset after it, or one of the markers ``_OPENED`` (the aggregate
        is on the stack) and ``_SKIPPED`` (an empty attribute) with that
        offset, or :data:`NEED_DATA` with the number of bytes needed from
        ``pos``.
        """
        buf = self._buf
        line = buf[pos + 1 : end]
        after = end + 2
        if kind == 95:  # "_" null
            if line:
                raise self.fail(f"null reply with content {_show(line)}")
            return None, after
        if kind == 44:  # "," double
            if _DOUBLE.fullmatch(line) is None:
                raise self.fail(f"invalid double {_show(line)}")
            return float(line), after
        if kind == 35:  # "#" boolean
            if line == b"t":
                return True, after
            if line == b"f":
                return False, after
            raise self.fail(f"invalid boolean {_show(line)}")
        if kind == 40:  # "(" big number
            if _BIG_NUMBER.fullmatch(line) is None:
                raise self.fail(f"invalid big number {_show(line)}")
            return int(line), after
        if kind not in _TYPE_BYTES:
            raise self.fail(f"invalid reply type byte {_show(buf[pos : pos + 1])}")
        # The rest are length-prefixed; -1 means null, as for "$" and "*".
        blob = kind == 33 or kind == 61  # "!" blob error, "=" verbatim string
        length = _SMALL_NUMBERS.get(line)
        if length is None:
            if blob:
                length = self._length(line, MAX_BULK_LENGTH, "string")
            else:
                length = self._length(line, MAX_AGGREGATE_LENGTH, "aggregate")
        if length < 0:
            if kind == 124:
                raise self.fail("attribute with a null length")
            return None, after
        if blob:
            stop = after + length
            if stop + 2 > len(buf):
                return NEED_DATA, stop + 2 - pos
            if buf[stop] != 13 or buf[stop + 1] != 10:
                raise self.fail(f"blob of {length} bytes not followed by CRLF")
            payload = buf[after:stop]
            if kind == 33:
                return ErrorReply(payload.decode("utf-8", "replace")), stop + 2
            if len(payload) < 4 or payload[3] != 58:  # ":"
                raise self.fail(f"verbatim string without a format prefix: {_show(payload)}")
            return payload[4:], stop + 2
        # "%" map, "~" set, ">" push, "|" attribute: maps hold key, value pairs.
        size = length * 2 if kind == 37 or kind == 124 else length
        if size:
            if len(self._stack) >= MAX_DEPTH:
                raise self._too_deep()
            self._stack.append(([], size, kind))
            return _OPENED, after
        return _close(kind, []), after


def _close(kind: int, items: list[Any]) -> object:
    """Build the value of a complete RESP3 aggregate from its elements."""
    if kind == 37:  # "%" map
        return {
            _hashable(key) if isinstance(key, (list, dict)) else key: value
            for key, value in zip(items[::2], items[1::2], strict=True)
        }
    if kind == 62:  # ">" push
        return Push(items)
    if kind == 124:  # "|" attribute
        return _SKIPPED
    return items  # "~" set
