"""The RESP parser backed by ``hiredis.Reader`` (C, several times faster), when installed.

Owns :class:`HiredisParser`, which implements the
:class:`~anyio_layer.redis.protocol.Parser` interface for RESP2 and hands over
to :class:`~anyio_layer.redis.protocol.python_parser.PythonParser` for good
once a connection speaks RESP3 (see ``Parser`` for when exactly), and
:data:`HIREDIS_AVAILABLE`. Create parsers through ``Parser``, which picks the
implementation. No I/O. Tested in ``tests/test_resp.py``, against the same
cases as the pure-Python parser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ...exceptions import ProtocolError
from .python_parser import PythonParser
from .replies import NEED_DATA, ErrorReply

try:
    import hiredis
except ImportError:  # pragma: no cover - depends on the environment
    HIREDIS_AVAILABLE = False
else:
    HIREDIS_AVAILABLE = True

__all__ = ["HIREDIS_AVAILABLE", "HiredisParser"]

# The reply types hiredis represents exactly as anyio_layer.redis.protocol specifies.
_RESP2_TYPE_BYTES: Final = frozenset(b"+-:$*")


class HiredisParser:
    """The hiredis-backed implementation of :class:`~anyio_layer.redis.protocol.Parser`.

    Like :class:`PythonParser`, it has that interface without deriving from it.

    RESP2 replies come straight from ``hiredis.Reader``, configured to build
    :class:`ErrorReply` values, raise :class:`ProtocolError` and return
    :data:`NEED_DATA`, so they need no post-processing.

    ``_drained`` is true while the reader holds no bytes at all, the only time
    the next fed byte is known to start a reply and can be checked for RESP3
    (see :class:`~anyio_layer.redis.protocol.Parser`): before the first feed,
    and from a reply that left ``has_data()`` false until the next feed. ``has_data()`` alone cannot
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
        self._fallback: PythonParser | None = None

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
            self._fallback = PythonParser()
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
            fallback = self._fallback = PythonParser()
            raise fallback.fail(f"hiredis could not build a reply: {exc}") from exc
        if reply is not NEED_DATA and not self._reader.has_data():
            self._drained = True
        return reply
