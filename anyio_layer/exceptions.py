"""The exceptions this library raises.

Every exception has one root, :class:`ChannelLayerError`, so callers can catch
everything the layer raises in one clause. Errors about bad input also derive
from the matching built-in (``ValueError`` or ``TypeError``), so code written
against Django Channels' conventions keeps working.

Redis failures are split by what the caller can do about them:

* :class:`RedisConnectionError`: the server could not be reached, or the
  connection broke. The command may or may not have run; it is never retried
  automatically unless it is safe to repeat.
* :class:`RedisTimeoutError`: a connect or socket timeout (a subclass of the
  connection error, since the connection is unusable afterwards).
* :class:`ConnectionUnavailableError`: no connection could be made within the
  host's ``reconnect_timeout``, so the command was never sent (a subclass of
  the connection error; safe to send again).
* :class:`ProtocolError`: the bytes on the wire were not valid RESP.
* :class:`ResponseError`: Redis answered with an error reply; ``code`` holds
  its first word (``"WRONGTYPE"``, ``"NOSCRIPT"``, ``"READONLY"``, ...).
* :class:`AuthenticationError`: the server refused our credentials.

Of these, only :class:`ResponseError` (and its :class:`AuthenticationError`)
is something the server *reported*: its own error reply, passed on as it
came. The others are what the client *observed* about the connection.

On a Redis Cluster the client also *decides* things on its own, and says so
with a :class:`ClusterClientError`:

* :class:`CrossSlotError`: the keys of one script do not share a slot; refused
  before anything is sent (also a ``ValueError``: it is a bad argument).
* :class:`ClusterUnavailableError`: the cluster kept answering that it cannot
  serve the command right now (``CLUSTERDOWN`` during a failover, say) until
  the client stopped retrying; the command did not run.
* :class:`TooManyRedirectionsError`: the cluster moved a slot more often than
  the client would follow.

The last two are give-ups that follow server replies, and they remain
:class:`ResponseError` subclasses too, with ``code`` set to the last reply's:
``except ResponseError`` catches them as it always has. Catch
:class:`ClusterClientError` (or the class itself) to tell the client's
decision from an error reply Redis sent for the command.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ChannelClosedError",
    "ChannelFull",
    "ChannelLayerError",
    "ClusterClientError",
    "ClusterUnavailableError",
    "ConfigurationError",
    "ConnectTimeoutUnavailableError",
    "ConnectionUnavailableError",
    "CrossSlotError",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidMessage",
    "LayerClosedError",
    "MessageDecodeError",
    "MessageTooLarge",
    "ProtocolError",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "ResponseError",
    "TooManyRedirectionsError",
]


class ChannelLayerError(Exception):
    """Root of every exception raised by this library."""


class ConfigurationError(ChannelLayerError, ValueError):
    """The layer or connection configuration is invalid.

    The message names the offending option or ``hosts`` entry and says what is
    allowed instead.
    """


class LayerClosedError(ChannelLayerError):
    """The layer, pool or connection was used after it was closed."""


class ChannelClosedError(LayerClosedError):
    """The channel was closed (``close_channel()``, ``flush()``) while receiving from it."""


# -- Redis ------------------------------------------------------------------


class RedisError(ChannelLayerError):
    """Root of the errors that come from talking to Redis."""


class RedisConnectionError(RedisError):
    """The server could not be reached, or the connection broke mid-request.

    A command that fails with this error may or may not have been executed by
    the server. Non-idempotent commands are never retried automatically.
    """


class RedisTimeoutError(RedisConnectionError):
    """Connecting, or waiting for the server, took longer than allowed."""


class ConnectionUnavailableError(RedisConnectionError):
    """No connection to the server could be made, so the command was never sent.

    Unlike other connection errors, the command certainly did not run: a
    caller (or the cluster client) may send it again, even if it is not
    idempotent. ``__cause__`` is the error of the last connection attempt.
    """


class ConnectTimeoutUnavailableError(ConnectionUnavailableError, RedisTimeoutError):
    """:class:`ConnectionUnavailableError` whose last connection attempt timed out."""


class ProtocolError(RedisError):
    """The server sent bytes that are not valid RESP, or a reply we did not expect."""


class ResponseError(RedisError):
    """Redis answered a command with an error reply.

    ``code`` is the reply's first word (``"ERR"``, ``"WRONGTYPE"``,
    ``"NOSCRIPT"``, ``"READONLY"``, ``"MOVED"``, ...); ``message`` is the
    whole text the server sent.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or (message.split(" ", 1)[0] if message else "ERR")


class AuthenticationError(ResponseError):
    """The server refused the configured username / password."""


# -- Channel layer ------------------------------------------------------------


class ChannelFull(ChannelLayerError):
    """The channel is at capacity and refused the message."""


class InvalidChannelName(ChannelLayerError, TypeError):
    """A channel name breaks the naming rules (characters, length, ``!`` placement)."""


class InvalidGroupName(ChannelLayerError, TypeError):
    """A group name breaks the naming rules (characters, length)."""


class InvalidMessage(ChannelLayerError, TypeError):
    """A message is not a dict, uses a reserved key, or cannot be serialized."""


class MessageTooLarge(InvalidMessage, ValueError):
    """A serialized message is larger than the configured limit."""


class MessageDecodeError(ChannelLayerError, ValueError):
    """A message read from Redis could not be decrypted or deserialized."""


# -- Redis Cluster: the client's own decisions ---------------------------------


class ClusterClientError(ChannelLayerError):
    """The cluster client refused a command or gave up on it: its decision, not a server reply.

    The base of :class:`CrossSlotError`, :class:`TooManyRedirectionsError` and
    :class:`ClusterUnavailableError`. Not a :class:`RedisError` itself (a
    cross-slot script never reaches Redis); the two give-ups are also
    :class:`ResponseError` subclasses, see the module docstring.
    """


class CrossSlotError(ClusterClientError, ValueError):
    """The keys of one script or one pipeline do not all hash to the same slot.

    Redis Cluster only runs a multi-key command when all its keys live in one
    slot. Give the keys a common hash tag: only the part between the first
    ``{`` and the next ``}`` is hashed, so ``{room42}:members`` and
    ``{room42}:messages`` share a slot.
    """


class TooManyRedirectionsError(ClusterClientError, ResponseError):
    """A command was redirected (``MOVED``/``ASK``) more than ``max_redirections`` times.

    The cluster is reconfiguring faster than the client can follow, or its
    nodes disagree about who serves the slot. ``code`` is the last
    redirection's (``"MOVED"`` or ``"ASK"``).
    """


class ClusterUnavailableError(ClusterClientError, ResponseError):
    """The cluster kept answering ``CLUSTERDOWN``, ``TRYAGAIN`` or ``LOADING``.

    Raised after retrying for ``retry_timeout`` seconds; ``code`` is the last
    reply's. The command did not run.
    """
