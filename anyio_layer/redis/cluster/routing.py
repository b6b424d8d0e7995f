"""Routing and redirections: sending each command to its slot's node until it has a reply.

Owns :class:`Router`, the loop every command of the cluster client goes
through. Every reply is checked:

* ``MOVED <slot> <host:port>``: the slot has a new owner. The map entry is
  updated at once, a background topology refresh is requested, and the
  command is sent again to the new owner.
* ``ASK <slot> <host:port>``: the slot is being migrated and this key is
  already on the target. ``ASKING`` and the command are sent to the target
  together, on one connection and in one round trip (``ASKING`` only covers
  the next command of its connection); the map is not changed.
* ``TRYAGAIN`` (a multi-key command during a migration), ``CLUSTERDOWN``
  (e.g. during a failover) and ``LOADING``: the command did not run; it is
  sent again after a short, growing pause, for at most ``retry_timeout``
  seconds, after which :class:`~anyio_layer.exceptions.ClusterUnavailableError`
  is raised.

Those replies mean the command was *not* executed, so following them is safe
for any command. A **connection error** is different: the command may or may
not have run. The topology is refreshed and the command is retried (within
``retry_timeout``) only if the caller passed ``idempotent=True``; otherwise
the :class:`~anyio_layer.exceptions.RedisConnectionError` is raised at once.
The exception is :class:`~anyio_layer.exceptions.ConnectionUnavailableError`
(no connection to the node could be made, so nothing was sent): such a
command is retried like the replies above, whatever it is.
A command is redirected at most ``max_redirections`` times before
:class:`~anyio_layer.exceptions.TooManyRedirectionsError` is raised.

**Pipelines** are not transactions: the redirection or retry of each command
is handled separately, and only the commands that were redirected are sent
again (the others already ran). During a migration, a redirected command may
therefore run after a later command of the same pipeline; commands on one key
are always redirected together, so their order is kept.

The router decides where a command goes and whether it goes again; the
round trip itself is :class:`~anyio_layer.redis.cluster.nodes.NodePools`'s,
the map :class:`~anyio_layer.redis.cluster.topology.SlotMap`'s, and learning
it :class:`~anyio_layer.redis.cluster.discovery.TopologyRefresher`'s.
Covered by the redirection, migration and failover tests of
``tests/test_cluster_client.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ...exceptions import (
    ClusterUnavailableError,
    ConnectionUnavailableError,
    RedisConnectionError,
    ResponseError,
    TooManyRedirectionsError,
)
from ..hosts import TCPAddress
from ..protocol import Arg, ErrorReply
from .discovery import TopologyRefresher
from .nodes import ASKING, Entry, NodePools
from .retry import RETRY_CODES, RetryBudget
from .slots import key_slot
from .topology import SlotMap, parse_redirection

__all__ = ["Router"]


class Router:
    """Sends commands to the node serving their slot, following redirections and retries."""

    def __init__(
        self,
        slot_map: SlotMap,
        nodes: NodePools,
        refresher: TopologyRefresher,
        *,
        max_redirections: int,
        retry_timeout: float,
    ) -> None:
        self._map = slot_map
        self._nodes = nodes
        self._refresher = refresher
        self._max_redirections = max_redirections
        self._retry_timeout = retry_timeout
        # Counters for the client's statistics().
        self.moved = 0
        self.asked = 0
        self.retries = 0
        self.connection_errors = 0
        #: Commands retried because no connection to their node could be made (never sent).
        self.connection_waits = 0

    async def run(self, entries: list[Entry], *, idempotent: bool) -> None:
        """Send ``entries`` (grouped per node), following redirections until all have a reply.

        Each entry's final reply (possibly an :class:`ErrorReply`) is stored
        in ``entry.reply``.
        """
        self._nodes.check_open()
        retry: RetryBudget | None = None
        pending = entries
        while pending:
            if self._refresher.generation == 0:
                await self._refresher.ensure()
            groups: dict[TCPAddress, list[Entry]] = {}
            for entry in pending:
                address = entry.ask or self._map.route(entry.slot)
                group = groups.get(address)
                if group is None:
                    groups[address] = [entry]
                else:
                    group.append(entry)
            failures = await self._nodes.send_groups(groups)
            again: list[Entry] = []
            retry_error: ErrorReply | None = None
            connection_error: RedisConnectionError | None = None
            maybe_sent = False
            for address, group in groups.items():
                failure = failures.get(address)
                if failure is not None:
                    if not isinstance(failure, RedisConnectionError):
                        raise failure
                    connection_error = failure
                    maybe_sent |= not isinstance(failure, ConnectionUnavailableError)
                    self._nodes.forget_scripts(address)  # a restarted node has an empty cache
                    for entry in group:
                        entry.ask = None  # the ASK target may be the node that died
                    again += group
                    continue
                for entry in group:
                    reply = entry.reply
                    if not isinstance(reply, ErrorReply):
                        continue
                    code = reply.code
                    if code == "MOVED" or code == "ASK":
                        entry.redirections += 1
                        entry.ask = self._follow(reply, address, entry.redirections)
                        again.append(entry)
                    elif code in RETRY_CODES:
                        entry.ask = None  # back to the owner, which knows best by now
                        retry_error = reply
                        again.append(entry)
                    elif code == "NOSCRIPT" and self._nodes.use_eval(entry, address):
                        again.append(entry)
            if connection_error is not None or retry_error is not None:
                retry = retry or RetryBudget(self._retry_timeout)
                if connection_error is not None:
                    await self._connection_failed(
                        connection_error, retry, idempotent or not maybe_sent
                    )
                elif retry_error is not None:
                    await self._pause_before_retry(retry, retry_error, connection_error=False)
            pending = again

    async def run_blocking(
        self,
        key: Arg,
        args: Sequence[Arg],
        on_cancelled_reply: Callable[[object], Awaitable[None]] | None,
        idempotent: bool,
    ) -> object:
        """Run a blocking command on a dedicated connection of the node serving ``key``.

        Redirections and retries are handled as in :meth:`run`; after ``ASK``
        the command runs as ``ASKING`` + command on one dedicated connection
        of the target.
        """
        self._nodes.check_open()
        slot = key_slot(key)
        ask: TCPAddress | None = None
        redirections = 0
        retry = RetryBudget(self._retry_timeout)
        while True:
            await self._refresher.ensure()
            address = ask or self._map.route(slot)
            try:
                pool = await self._nodes.pool(address)
                return await pool.execute_blocking(
                    *args,
                    on_cancelled_reply=on_cancelled_reply,
                    prelude=[] if ask is None else [ASKING],
                )
            except ResponseError as exc:
                error = ErrorReply(exc.message)
                if error.code in ("MOVED", "ASK"):
                    redirections += 1
                    ask = self._follow(error, address, redirections)
                elif error.code in RETRY_CODES:
                    ask = None
                    await self._pause_before_retry(retry, error, connection_error=False)
                else:
                    raise
            except RedisConnectionError as exc:
                unsent = isinstance(exc, ConnectionUnavailableError)
                await self._connection_failed(exc, retry, idempotent or unsent)
                ask = None

    def _follow(
        self, reply: ErrorReply, replied_by: TCPAddress, redirections: int
    ) -> TCPAddress | None:
        """Act on a ``MOVED``/``ASK`` reply; return the ``ASK`` target (None after ``MOVED``)."""
        slot, target = parse_redirection(reply.message, replied_by)
        if redirections > self._max_redirections:
            raise TooManyRedirectionsError(
                f"gave up after {redirections - 1} redirections; the last one was "
                f"{reply.message!r} from {replied_by}",
                reply.code,
            )
        if reply.code == "ASK":
            self.asked += 1
            return target
        self.moved += 1
        self._map.moved(slot, target)
        self._refresher.request()  # more slots probably moved with it
        return None

    async def _connection_failed(
        self, error: RedisConnectionError, retry: RetryBudget, idempotent: bool
    ) -> None:
        """A command failed with a connection error: re-learn the topology; retry if allowed."""
        self.connection_errors += 1
        if isinstance(error, ConnectionUnavailableError):
            self.connection_waits += 1
        if not idempotent:
            # The command may have run: never repeat it behind the caller's back.
            self._refresher.request()
            raise error
        await self._pause_before_retry(retry, error, connection_error=True)

    async def _pause_before_retry(
        self,
        retry: RetryBudget,
        error: ErrorReply | RedisConnectionError,
        *,
        connection_error: bool,
    ) -> None:
        """Wait before the next attempt, or raise if ``retry_timeout`` is used up."""
        delay = retry.next_delay()
        if delay is None:
            if isinstance(error, RedisConnectionError):
                raise error
            raise ClusterUnavailableError(
                f"{error.message} (still after retrying for {self._retry_timeout:g} s)", error.code
            )
        self.retries += 1
        await anyio.sleep(delay)
        if connection_error or (isinstance(error, ErrorReply) and error.code == "CLUSTERDOWN"):
            with contextlib.suppress(RedisConnectionError):
                await self._refresher.refresh(force=False)
