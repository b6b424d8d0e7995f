"""The exceptions of the test-server toolkit.

Owns the error types only: :class:`RedisServerError` (a process did not start or
misbehaved) and its subclasses, and :class:`RedisReplyError` (an error reply to
the admin client). It must not import anything else of the package, so every
module can raise them. Covered by tests/test_testing.py.
"""

from __future__ import annotations

__all__ = [
    "AddressInUseError",
    "RESPProtocolError",
    "RedisReplyError",
    "RedisServerError",
    "TLSNotSupportedError",
]


class RedisServerError(RuntimeError):
    """A test server could not be started, or misbehaved.

    The message includes the tail of the server's log when there is one.
    """


class TLSNotSupportedError(RedisServerError):
    """The ``redis-server`` binary was built without TLS support.

    Use a binary built with ``BUILD_TLS=yes`` (most system packages are), e.g.
    by pointing ``$REDIS_SERVER`` at it; tests can check
    :func:`redis_server_supports_tls` first and skip.
    """


class AddressInUseError(RedisServerError):
    """The port we picked was taken by someone else before the server bound it."""


class RedisReplyError(RuntimeError):
    """Redis answered with an error reply (raised by :meth:`RedisProcess.execute`).

    Inside array replies (``EXEC``, for example) error items are returned as
    instances of this class rather than raised.
    """

    @property
    def code(self) -> str:
        """The first word of the error message, e.g. ``"WRONGPASS"`` or ``"NOAUTH"``."""
        return str(self).split(" ", 1)[0]


class RESPProtocolError(RedisServerError):
    """The bytes the server sent were not a valid RESP2 reply."""
