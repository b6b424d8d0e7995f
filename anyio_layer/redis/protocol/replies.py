"""The values a RESP reply parses to that are not plain Python types.

Owns :data:`NEED_DATA` (no complete reply buffered yet), :class:`ErrorReply`
(an error reply, as a value) and :class:`Push` (a RESP3 push). Pure data: no
parsing, no I/O. Tested in ``tests/test_resp.py``.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["NEED_DATA", "ErrorReply", "Push"]


class _NeedData:
    """Type of :data:`NEED_DATA`; there is exactly one instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`~anyio_layer.redis.protocol.Parser.get_reply` when no complete
reply is buffered yet."""


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
