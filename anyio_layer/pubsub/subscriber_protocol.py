"""A subscriber connection's protocol, sans-IO: what is wanted, and which reply answers what.

:class:`SubscriberProtocol` keeps one connection's subscription state
(wanted, in flight, what the server says, confirmed), encodes (un)subscribe
commands each closed by a ``PING`` token, and matches the replies fed to it:
published messages go straight to ``deliver`` (the hot path), the rest
closes commands and is reported through :class:`ReplyEvents`.

It must NOT do I/O or import anyio (it is fed replies and returns bytes to
write), and it does not decide what happens to a refused or dropped name:
that is the subscriber's owner (:mod:`anyio_layer.pubsub.placement`).
Covered through the layer by ``tests/test_pubsub_layer.py``,
``tests/test_cancellation_pubsub.py`` and ``tests/test_pubsub_cluster.py``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from ..exceptions import ProtocolError
from ..redis.protocol import Arg, ErrorReply, encode_commands

__all__ = ["PLAIN", "SHARDED", "Dialect", "PendingCommand", "ReplyEvents", "SubscriberProtocol"]


@dataclass(frozen=True, slots=True)
class Dialect:
    """The commands and reply kinds of plain or sharded pub/sub."""

    subscribe: str
    unsubscribe: str
    message: bytes
    subscribed: bytes
    unsubscribed: bytes


PLAIN: Final = Dialect("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
SHARDED: Final = Dialect("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


class PendingCommand:
    """A (un)subscribe command (or a health check) whose closing PING has not come back."""

    __slots__ = ("error", "names", "token")

    def __init__(self, token: bytes, names: Sequence[str]) -> None:
        self.token = token
        self.names = names
        self.error: ErrorReply | None = None


class ReplyEvents(Protocol):
    """What :class:`SubscriberProtocol` reports while replies are fed to it."""

    def server_unsubscribed(self, name: str) -> None:
        """The server dropped the confirmed subscription of ``name`` on its own."""

    def refused(self, names: list[str], error: ErrorReply | None) -> None:
        """The subscribe command for wanted ``names`` did not subscribe them."""

    def settled(self, confirmed: list[str]) -> None:
        """A command closed; ``confirmed`` are now subscribed (possibly none)."""


class SubscriberProtocol:
    """The subscription state of one connection in subscribe mode, and its reply matching.

    ``wanted`` is the desired state. A name is *confirmed* when the server
    acknowledged its last subscribe command and no command for it is in
    flight.

    Each command is followed by a ``PING`` with a token, in the same write:
    the ``pong`` (or, outside subscribe mode, the bare token) closes the
    command, so an error reply is attributed to the right command even though
    it names no channel, and an ``unsubscribe`` the server pushes on its own
    (on a cluster, when a slot moves away) cannot be mistaken for the reply to
    one of ours. When a command closes, what the server said about each of its
    names (``*subscribe`` / ``*unsubscribe`` replies, in order) is compared
    with what is wanted: names subscribed but no longer wanted are
    unsubscribed again (a deferred command), names wanted but refused are
    reported.
    """

    def __init__(
        self, dialect: Dialect, deliver: Callable[[str, bytes], None], events: ReplyEvents
    ) -> None:
        self.dialect = dialect
        self.wanted: set[str] = set()
        self.confirmed: set[str] = set()
        #: Names with (un)subscribe commands not closed yet, and how many.
        self.in_flight: dict[str, int] = {}
        #: What the server says this connection is subscribed to.
        self.on_server: set[str] = set()
        self.pending: deque[PendingCommand] = deque()
        #: Commands decided while reading, to write once the replies at hand are
        #: handled (cleared, never replaced: the reader holds on to it).
        self.deferred: list[tuple[str, list[str]]] = []
        self._tokens = itertools.count(1)
        self._message_kind = dialect.message
        self._deliver = deliver
        self._events = events

    def is_confirmed(self, name: str) -> bool:
        return name in self.confirmed and name not in self.in_flight

    @property
    def idle(self) -> bool:
        """Nothing wanted and no command in flight."""
        return not self.wanted and not self.in_flight

    def forget(self, names: Iterable[str]) -> None:
        """Stop wanting ``names`` (and no longer count them as confirmed)."""
        for name in names:
            self.wanted.discard(name)
            self.confirmed.discard(name)

    def defer(self, verb: str, names: list[str]) -> None:
        """Have a command written once the replies at hand are handled."""
        self.deferred.append((verb, names))

    def reset(self) -> None:
        """The connection is gone: nothing is on the server, in flight or to be written."""
        self.confirmed.clear()
        self.in_flight.clear()
        self.on_server.clear()
        self.pending.clear()
        self.deferred.clear()

    # -- writing ------------------------------------------------------------------------

    def still_wanted(self, verb: str, names: Collection[str]) -> list[str]:
        """The ``names`` a ``verb`` command should carry by what is wanted right now.

        A name (un)wanted again since the command was decided is left out:
        whatever changed it has its own command written.
        """
        wanted = self.wanted
        subscribing = verb == self.dialect.subscribe
        return [name for name in names if (name in wanted) is subscribing]

    def encode(self, verb: str | None, batches: list[list[str]]) -> bytes:
        """Encode ``verb`` once per batch of names (None: a health check), each closed by a PING.

        The commands count as in flight from here on: call it only for bytes
        certain to be written (the connection is reset otherwise).
        """
        commands: list[Sequence[Arg]] = []
        in_flight = self.in_flight
        for batch in batches:
            token = b"%d" % next(self._tokens)
            if verb is not None:
                commands.append((verb, *batch))
            commands.append(("PING", token))
            self.pending.append(PendingCommand(token, batch))
            for name in batch:
                in_flight[name] = in_flight.get(name, 0) + 1
        return encode_commands(commands)

    # -- reading ------------------------------------------------------------------------

    def handle(self, reply: object) -> None:
        """Handle one reply read from the connection."""
        # The hot path: a published message.
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == self._message_kind:
            channel, data = reply[1], reply[2]
            if isinstance(channel, bytes) and isinstance(data, bytes):
                self._deliver(channel.decode(), data)
                return
        self._handle_control(reply)

    def _handle_control(self, reply: object) -> None:
        if isinstance(reply, ErrorReply):
            if not self.pending:
                raise ProtocolError(f"unexpected error on a subscriber connection: {reply.message}")
            command = self.pending[0]
            if command.error is None:
                command.error = reply
            return
        if isinstance(reply, bytes):  # PING's reply outside subscribe mode: the bare token
            self._close_command(reply)
            return
        if not (isinstance(reply, list) and len(reply) >= 2 and isinstance(reply[0], bytes)):
            raise ProtocolError(f"unexpected reply on a subscriber connection: {reply!r:.100}")
        kind, subject = reply[0], reply[1]
        if kind == b"pong":
            if not isinstance(subject, bytes):
                raise ProtocolError(f"unexpected PING reply: {reply!r:.100}")
            self._close_command(subject)
            return
        if not isinstance(subject, bytes):
            return  # e.g. an unsubscribe from nothing at all
        name = subject.decode()
        if kind == self.dialect.subscribed:
            self.on_server.add(name)
        elif kind == self.dialect.unsubscribed:
            self.on_server.discard(name)
            # Our own unsubscribe commands are for names already unconfirmed:
            # a confirmed name was dropped by the server (its slot moved).
            if name in self.confirmed:
                self.confirmed.discard(name)
                self._events.server_unsubscribed(name)
        # Anything else (a message of the other dialect): nothing to do.

    def _close_command(self, token: bytes) -> None:
        pending = self.pending
        if not pending or pending[0].token != token:
            raise ProtocolError(f"unexpected PING reply {token!r:.60} on a subscriber connection")
        command = pending.popleft()
        if not command.names:
            return  # a health check
        in_flight = self.in_flight
        confirmed: list[str] = []
        refused: list[str] = []
        stray: list[str] = []
        for name in command.names:
            remaining = in_flight[name] - 1
            if remaining:
                in_flight[name] = remaining
                continue
            del in_flight[name]
            if name in self.wanted:
                if name in self.on_server:
                    self.confirmed.add(name)
                    confirmed.append(name)
                else:
                    refused.append(name)
            else:
                self.confirmed.discard(name)
                if name in self.on_server:
                    stray.append(name)  # unwanted while its subscription was on its way
        if stray:
            self.defer(self.dialect.unsubscribe, stray)
        if refused:
            self._events.refused(refused, command.error)
        self._events.settled(confirmed)
