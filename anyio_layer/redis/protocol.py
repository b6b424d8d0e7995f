"""A sans-IO codec for RESP, the Redis serialization protocol (RESP2 and RESP3).

Nothing here touches a socket or imports anyio: :func:`encode_command` turns a
command into the bytes to write, and a :class:`Parser` turns the bytes read
back into Python values. The connection layer owns all I/O and all waiting::

    parser = Parser()
    await stream.send(encode_command(["GET", "key"]))
    while (reply := parser.get_reply()) is NEED_DATA:
        parser.feed(await stream.receive())

Keeping the codec free of I/O makes it easy to test exhaustively (every split
of every input, random reply trees) and lets one codec serve trio and asyncio.

Replies map to Python values as follows, whichever implementation parses them:

==========================  ==================================================
RESP type                   Python value
==========================  ==================================================
``+`` simple string         :class:`bytes` (``+OK`` is ``b"OK"``)
``$`` bulk string           :class:`bytes`
``$-1``, ``*-1``, ``_``     ``None``
``:`` integer               :class:`int`
``*`` array                 :class:`list`
``-`` error, ``!`` error    :class:`ErrorReply` (returned, never raised)
``,`` double                :class:`float` (``inf``, ``-inf`` and ``nan`` too)
``#`` boolean               :class:`bool`
``(`` big number            :class:`int`
``=`` verbatim string       :class:`bytes`, without the ``txt:`` format prefix
``%`` map                   :class:`dict`; list keys become tuples, recursively
``~`` set                   :class:`list`
``>`` push                  :class:`Push` (a :class:`list` subclass)
``|`` attribute             skipped: the attribute map is discarded and the
                            value it annotates is returned in its place
==========================  ==================================================

Error replies are values rather than exceptions because a pipeline or a
``MULTI``/``EXEC`` block has to report each command's outcome in place; the
caller decides what to raise.

There are two parser implementations behind one interface: a pure-Python one,
and one wrapping ``hiredis.Reader`` (C, several times faster) that is used when
hiredis is installed. Their results are identical; see :class:`Parser` for how
the hiredis one hands over to the pure-Python one when a connection switches
to RESP3.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeAlias

from ..exceptions import ProtocolError

try:
    import hiredis
except ImportError:  # pragma: no cover - depends on the environment
    HIREDIS_AVAILABLE = False
else:
    HIREDIS_AVAILABLE = True

__all__ = [
    "HIREDIS_AVAILABLE",
    "NEED_DATA",
    "Arg",
    "ErrorReply",
    "Parser",
    "Push",
    "encode_command",
    "encode_commands",
]

Arg: TypeAlias = bytes | bytearray | memoryview | str | int | float
"""A command argument :func:`encode_command` accepts."""


# -- Reply values ---------------------------------------------------------------


class _NeedData:
    """Type of :data:`NEED_DATA`; there is exactly one instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`Parser.get_reply` when no complete reply is buffered yet."""


class ErrorReply:
    """An error reply from the server (RESP2 ``-`` or RESP3 ``!``), as a value.

    The parser returns these in place, it never raises them, so a pipeline can
    report which commands failed. ``message`` is the full text
    (``"WRONGTYPE Operation against a key ..."``) and ``code`` its first word
    (``"WRONGTYPE"``), or ``"ERR"`` if the message is empty, exactly as in
    :class:`~anyio_layer.exceptions.ResponseError`. Two error replies are equal
    when their messages are.
    """

    __slots__ = ("code", "message")

    def __init__(self, message: str) -> None:
        self.message = message
        self.code = message.split(" ", 1)[0] if message else "ERR"

    def __repr__(self) -> str:
        return f"ErrorReply({self.message!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ErrorReply):
            return self.message == other.message
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.message)


class Push(list[Any]):
    """A RESP3 push message (``>``): out-of-band data such as a pub/sub message.

    It is a :class:`list` of the push's elements, but a distinct type so that
    code reading a RESP3 connection can tell pushes from ordinary array replies
    (``isinstance(reply, Push)``). Note that list equality ignores the type:
    ``Push([b"a"]) == [b"a"]``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Push({list.__repr__(self)})"


# -- Encoding -------------------------------------------------------------------

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


# -- Parsing --------------------------------------------------------------------

# Every byte that may start a reply.
_TYPE_BYTES: Final = frozenset(b"+-:$*_,#(=!%~>|")
# The reply types hiredis represents exactly as this module specifies.
_RESP2_TYPE_BYTES: Final = frozenset(b"+-:$*")

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

# Markers returned by _PythonParser._parse_resp3 in place of a value.
_OPENED: Final = object()  # an aggregate was opened: parse its first element
_SKIPPED: Final = object()  # an attribute was consumed: parse what it annotates


def _show(data: bytes) -> str:
    """A short printable form of offending input, for error messages."""
    return repr(bytes(data[:40])) + ("..." if len(data) > 40 else "")


def _hashable(key: object) -> object:
    """Make a map key hashable: lists (and maps) become tuples, recursively."""
    if isinstance(key, list):
        return tuple(_hashable(item) for item in key)
    if isinstance(key, dict):
        return tuple((_hashable(k), _hashable(v)) for k, v in key.items())
    return key


class Parser:
    """An incremental RESP2/RESP3 reply parser.

    Feed it bytes as they arrive with :meth:`feed`, then call
    :meth:`get_reply` until it returns :data:`NEED_DATA`; each other call
    returns the next complete reply (see the module docstring for the value
    mapping). Replies may be split across feeds anywhere, and one feed may hold
    many replies.

    ``use_hiredis`` picks the implementation: ``True`` for the hiredis-backed
    one (:class:`ImportError` if hiredis is not installed), ``False`` for the
    pure-Python one, ``None`` (the default) for hiredis when
    :data:`HIREDIS_AVAILABLE`. :attr:`implementation` says which one is
    parsing.

    hiredis reports some RESP3 types differently from this module (big
    numbers as bytes, attributes as ordinary arrays, no ``!`` errors), so the
    hiredis-backed parser parses only until it sees the connection is speaking
    RESP3: when a reply that begins a fed chunk, with every earlier reply
    already taken out by :meth:`get_reply`, starts with a RESP3-only type byte,
    it hands that chunk and everything after it to the pure-Python parser for
    good. A successful ``HELLO 3`` is answered with a map (``%``), so a
    connection that waits for that reply before sending more commands switches
    exactly there; before it, Redis sends only RESP2 types, which hiredis
    parses exactly.

    Malformed input raises :class:`~anyio_layer.exceptions.ProtocolError`
    saying what was wrong. The stream cannot be resynchronised after that, so
    the parser is then unusable: every later :meth:`get_reply` raises
    :class:`~anyio_layer.exceptions.ProtocolError` again (and fed data is
    ignored). Discard the connection.
    """

    __slots__ = ()

    def __new__(cls, use_hiredis: bool | None = None) -> Parser:
        if cls is not Parser:
            return object.__new__(cls)
        if use_hiredis and not HIREDIS_AVAILABLE:
            raise ImportError(
                "Parser(use_hiredis=True) needs the hiredis package; install it "
                "(pip install anyio-channel-layer[hiredis]) or pass use_hiredis=None"
            )
        use_hiredis = HIREDIS_AVAILABLE if use_hiredis is None else use_hiredis
        return object.__new__(_HiredisParser if use_hiredis else _PythonParser)

    @property
    def implementation(self) -> str:
        """``"hiredis"`` or ``"python"``: which implementation parses the next reply."""
        raise NotImplementedError

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes to the parser's buffer; ``data`` may be reused afterwards."""
        raise NotImplementedError

    def get_reply(self) -> object:
        """Return the next complete reply, or :data:`NEED_DATA` if there is none yet.

        Raises :class:`~anyio_layer.exceptions.ProtocolError` on malformed input.
        """
        raise NotImplementedError


class _PythonParser(Parser):
    """The pure-Python implementation of :class:`Parser`.

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
            raise self._error(f"invalid reply type byte {_show(buf[pos : pos + 1])}")
        self._pos = pos
        self._need = need
        return NEED_DATA

    def _error(self, message: str) -> ProtocolError:
        """Record a protocol error (disabling the parser) and return it to be raised."""
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
                    length = self._length(line)
                if length >= 0:
                    start = end + 2
                    stop = start + length
                    if stop + 2 > len(buf):
                        return self._incomplete(pos, stop + 2 - pos)
                    if buf[stop] != 13 or buf[stop + 1] != 10:
                        raise self._error(
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
                    length = self._length(line)
                pos = end + 2
                if length > 0:
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
                    raise self._error(f"line contains a bare CR or LF: {_show(line)}")
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

    def _length(self, line: bytes) -> int:
        """Parse a length (of a string or aggregate) not in _SMALL_NUMBERS: -1 or more."""
        if line.isdigit() and line[0] != 48 and len(line) < 19:  # no leading "0"
            return int(line)
        raise self._error(f"invalid length {_show(line)}")

    def _integer(self, line: bytes) -> int:
        """Parse a ``:`` integer not in _SMALL_NUMBERS: canonical decimal, 64-bit."""
        digits = line[1:] if line[:1] == b"-" else line
        if digits.isdigit() and digits[0] != 48:  # no leading "0", no "-0"
            value = int(line)
            if _INT64_MIN <= value <= _INT64_MAX:
                return value
        raise self._error(f"invalid integer {_show(line)}")

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
                raise self._error(f"null reply with content {_show(line)}")
            return None, after
        if kind == 44:  # "," double
            if _DOUBLE.fullmatch(line) is None:
                raise self._error(f"invalid double {_show(line)}")
            return float(line), after
        if kind == 35:  # "#" boolean
            if line == b"t":
                return True, after
            if line == b"f":
                return False, after
            raise self._error(f"invalid boolean {_show(line)}")
        if kind == 40:  # "(" big number
            if _BIG_NUMBER.fullmatch(line) is None:
                raise self._error(f"invalid big number {_show(line)}")
            return int(line), after
        if kind not in _TYPE_BYTES:
            raise self._error(f"invalid reply type byte {_show(buf[pos : pos + 1])}")
        # The rest are length-prefixed; -1 means null, as for "$" and "*".
        length = _SMALL_NUMBERS.get(line)
        if length is None:
            length = self._length(line)
        if length < 0:
            if kind == 124:
                raise self._error("attribute with a null length")
            return None, after
        if kind == 33 or kind == 61:  # "!" blob error, "=" verbatim string
            stop = after + length
            if stop + 2 > len(buf):
                return NEED_DATA, stop + 2 - pos
            if buf[stop] != 13 or buf[stop + 1] != 10:
                raise self._error(f"blob of {length} bytes not followed by CRLF")
            payload = buf[after:stop]
            if kind == 33:
                return ErrorReply(payload.decode("utf-8", "replace")), stop + 2
            if len(payload) < 4 or payload[3] != 58:  # ":"
                raise self._error(f"verbatim string without a format prefix: {_show(payload)}")
            return payload[4:], stop + 2
        # "%" map, "~" set, ">" push, "|" attribute: maps hold key, value pairs.
        size = length * 2 if kind == 37 or kind == 124 else length
        if size:
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


class _HiredisParser(Parser):
    """The hiredis-backed implementation of :class:`Parser`.

    RESP2 replies come straight from ``hiredis.Reader``, configured to build
    :class:`ErrorReply` values, raise :class:`ProtocolError` and return
    :data:`NEED_DATA`, so they need no post-processing.

    ``_drained`` is true while the reader holds no bytes at all, the only time
    the next fed byte is known to start a reply and can be checked for RESP3
    (see :class:`Parser`): before the first feed, and from a reply that left
    ``has_data()`` false until the next feed. ``has_data()`` alone cannot
    tell, because hiredis consumes the start of an incomplete reply.
    """

    __slots__ = ("_drained", "_fallback", "_gets", "_reader")

    def __init__(self, use_hiredis: bool | None = None) -> None:
        # use_hiredis is accepted (and ignored) because Parser(...) passes it on.
        # hiredis' stubs say replyError must build an Exception, but any
        # callable taking the message works.
        make_reader: Callable[..., Any] = hiredis.Reader
        self._reader = make_reader(
            protocolError=ProtocolError, replyError=ErrorReply, notEnoughData=NEED_DATA
        )
        self._gets: Callable[[], object] = self._reader.gets
        self._drained = True
        self._fallback: _PythonParser | None = None

    @property
    def implementation(self) -> str:
        return "hiredis" if self._fallback is None else "python"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._fallback is not None:
            self._fallback.feed(data)
            return
        if not data:
            return
        if self._drained and data[0] not in _RESP2_TYPE_BYTES:
            self._fallback = _PythonParser()
            self._fallback.feed(data)
            return
        self._drained = False
        self._reader.feed(data)

    def get_reply(self) -> object:
        if self._fallback is not None:
            return self._fallback.get_reply()
        try:
            reply = self._gets()
        except TypeError as exc:
            # A map with a list key, which only RESP3 can send: hiredis cannot
            # build the dict and its reader is left broken.
            fallback = self._fallback = _PythonParser()
            raise fallback._error(f"hiredis could not build a reply: {exc}") from exc
        if reply is not NEED_DATA and not self._reader.has_data():
            self._drained = True
        return reply
