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

Input from a broken or hostile server only ever raises :class:`ProtocolError`,
in time linear in its size: aggregates nested more than :data:`MAX_DEPTH`
levels deep are refused (both parsers), and so are declared lengths above
Redis's own limits (:data:`MAX_BULK_LENGTH`, :data:`MAX_AGGREGATE_LENGTH`: at
once by the pure-Python parser; hiredis refuses such aggregates and waits for
such strings). Neither parser allocates a declared length before its bytes
arrive (tested in ``tests/test_resp_hostile.py``).

Error replies are values rather than exceptions because a pipeline or a
``MULTI``/``EXEC`` block has to report each command's outcome in place; the
caller decides what to raise.

There are two parser implementations behind one interface: a pure-Python one,
and one wrapping ``hiredis.Reader`` (C, several times faster) that is used when
hiredis is installed. Their results are identical; see :class:`Parser` for how
the hiredis one hands over to the pure-Python one when a connection switches
to RESP3.

The package is one module per part, all free of I/O: :mod:`.replies` (the
reply values), :mod:`.encoder` (commands to bytes), :mod:`.python_parser`
and :mod:`.hiredis_parser` (the two parser implementations). This module
holds :class:`Parser`, the interface both implement and the one place that
picks between them, and re-exports the names callers use; import them from
here. Tested in ``tests/test_resp.py``.
"""

from __future__ import annotations

from .encoder import Arg, encode_command, encode_commands
from .hiredis_parser import HIREDIS_AVAILABLE, HiredisParser
from .python_parser import MAX_AGGREGATE_LENGTH, MAX_BULK_LENGTH, MAX_DEPTH, PythonParser
from .replies import NEED_DATA, ErrorReply, Push

__all__ = [
    "MAX_AGGREGATE_LENGTH",
    "MAX_BULK_LENGTH",
    "MAX_DEPTH",
    "HIREDIS_AVAILABLE",
    "NEED_DATA",
    "Arg",
    "ErrorReply",
    "Parser",
    "Push",
    "encode_command",
    "encode_commands",
]


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


# The concrete classes Parser(...) instantiates: each implementation, as a Parser.


class _PythonParser(PythonParser, Parser):
    __slots__ = ()


class _HiredisParser(HiredisParser, Parser):
    __slots__ = ()
