"""The cluster's nodes: one connection pool per node, its script cache, one round trip to it.

Owns :class:`NodePools`: a :class:`~anyio_layer.redis.pool.ConnectionPool`
per node (a pipelined shared connection plus dedicated ones for blocking
commands), opened lazily inside the client's task group and closed by
:meth:`NodePools.aclose`; the scripts each node is known to have cached; and
sending a node its batch of commands (:class:`Entry`) in one pipeline. It
routes nothing and follows no redirection: which node gets which command,
and what to do with ``MOVED``/``ASK``/``TRYAGAIN`` replies, is
:mod:`~anyio_layer.redis.cluster.routing`'s job.

**Scripts.** Every node has its own script cache: the first time a script is
sent to a node, ``SCRIPT LOAD`` goes ahead of it in the same round trip, so
pipelines keep their order. If a node's cache was flushed behind the client's
back, ``EVALSHA`` answered with ``NOSCRIPT`` is turned into ``EVAL``
(:meth:`NodePools.use_eval`) for the router to send again (in a pipeline,
that one command then runs after the others). Covered by the script tests of
``tests/test_cluster_client.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import anyio
import anyio.abc

from ...exceptions import LayerClosedError, RedisError
from ..hosts import ConnectionOptions, ServerConfig, TCPAddress
from ..pool import ConnectionPool, PoolStatistics
from ..protocol import Arg, ErrorReply
from ..scripts import Script

__all__ = ["ASKING", "Entry", "NodePools"]

#: Sent ahead of a command redirected by ``ASK``, on the same connection.
ASKING: Final[tuple[Arg, ...]] = ("ASKING",)
_NO_FAILURES: Final[dict[TCPAddress, Exception]] = {}  # never mutated


class Entry:
    """One command on its way through redirections and retries."""

    __slots__ = ("ask", "command", "redirections", "reply", "slot")

    def __init__(self, slot: int | None, command: Sequence[Arg]) -> None:
        self.slot = slot
        self.command = command
        #: The ``ASK`` target to send the command to next (None: the slot's owner).
        self.ask: TCPAddress | None = None
        self.redirections = 0
        #: The last reply (an :class:`ErrorReply` for an error).
        self.reply: object = None


class NodePools:
    """The connection pool of every node used so far, and the scripts each has cached."""

    __slots__ = (
        "_connection_listeners",
        "_loaded",
        "_options",
        "_task_group",
        "closed",
        "pools",
        "scripts",
    )

    def __init__(self, options: ConnectionOptions, task_group: anyio.abc.TaskGroup) -> None:
        self._options = options
        self._task_group = task_group
        self.pools: dict[TCPAddress, ConnectionPool] = {}
        #: Every script the client was asked to run, by SHA-1 (the client adds to it).
        self.scripts: dict[str, Script] = {}
        #: Per node, the SHA-1s of scripts it is known to have cached.
        self._loaded: dict[TCPAddress, set[str]] = {}
        self._connection_listeners: list[Callable[[], None]] = []
        self.closed = False

    def add_connection_listener(self, callback: Callable[[], None]) -> None:
        """Register ``callback`` with every node's pool, present and future.

        See :meth:`ConnectionPool.add_connection_listener
        <anyio_layer.redis.pool.ConnectionPool.add_connection_listener>`: it runs after
        a node's first connection (a promoted replica's, say) and after every reconnect.
        """
        self._connection_listeners.append(callback)
        for pool in self.pools.values():
            pool.add_connection_listener(callback)

    def check_open(self) -> None:
        """Raise :class:`~anyio_layer.exceptions.LayerClosedError` once closed."""
        if self.closed:
            raise LayerClosedError("the cluster client is closed")

    async def pool(self, address: TCPAddress) -> ConnectionPool:
        """The pool for ``address``, created on first use; :meth:`aclose` closes it.

        The pool belongs to the client, not to a task: its background tasks
        run in the client's task group, and it is closed when the ``async
        with`` block of :func:`~anyio_layer.redis.cluster.open_cluster` ends.
        (Were it served by a task of its own, an event loop shutting down,
        which cancels every task at once, could close it while the client's
        owner still needs it to clean up.)
        """
        pool = self.pools.get(address)
        if pool is None:
            self.check_open()
            # The pool does not wait for a connection: the router retries a command
            # that was never sent, within its own budget, on the slot's current owner.
            pool = ConnectionPool(
                ServerConfig(address, self._options), self._task_group, reconnect_timeout=0
            )
            for listener in self._connection_listeners:
                pool.add_connection_listener(listener)
            self.pools[address] = pool
        return pool

    async def aclose(self) -> None:
        """Refuse new pools and close every pool (shielded from cancellation)."""
        self.closed = True
        with anyio.CancelScope(shield=True):
            for pool in self.pools.values():
                await pool.aclose()

    def statistics(self) -> dict[str, PoolStatistics]:
        """Pool statistics per node (``"host:port"``)."""
        return {str(address): pool.statistics() for address, pool in self.pools.items()}

    # -- scripts ----------------------------------------------------------------------

    def forget_scripts(self, address: TCPAddress) -> None:
        """Assume ``address`` has no script cached (it may have restarted)."""
        self._loaded.pop(address, None)

    def _script_of(self, entry: Entry) -> Script | None:
        """The known script an ``EVALSHA`` entry runs, else None."""
        command = entry.command
        if len(command) < 2 or not self.scripts:
            return None
        name = command[0]
        if name != "EVALSHA" and _arg_text(name).upper() != "EVALSHA":
            return None
        return self.scripts.get(_arg_text(command[1]))

    def use_eval(self, entry: Entry, address: TCPAddress) -> bool:
        """Turn an ``EVALSHA`` answered with ``NOSCRIPT`` into ``EVAL``, if the script is known."""
        script = self._script_of(entry)
        if script is None:
            return False
        self._loaded.get(address, set()).discard(script.sha)  # its cache was flushed
        entry.command = ("EVAL", script.source, *entry.command[2:])
        return True

    # -- sending ----------------------------------------------------------------------

    async def send_groups(
        self, groups: dict[TCPAddress, list[Entry]]
    ) -> dict[TCPAddress, Exception]:
        """Send each node its group in one pipeline, all nodes concurrently; return failures."""
        if len(groups) == 1:  # the common case, without a task group
            ((address, group),) = groups.items()
            try:
                await self.send(address, group)
            except (RedisError, LayerClosedError) as exc:
                return {address: exc}
            return _NO_FAILURES

        failures: dict[TCPAddress, Exception] = {}

        async def send(address: TCPAddress, group: list[Entry]) -> None:
            try:
                await self.send(address, group)
            except (RedisError, LayerClosedError) as exc:
                failures[address] = exc

        async with anyio.create_task_group() as task_group:
            for address, group in groups.items():
                task_group.start_soon(send, address, group)
        return failures

    async def send(self, address: TCPAddress, group: list[Entry]) -> None:
        """Send one node its commands in one pipeline and store each entry's reply.

        Scripts that ``EVALSHA`` commands of the group need, and that this
        node is not known to have cached, are loaded first in the same round
        trip (``SCRIPT LOAD``), so that the pipeline runs in order; without
        it, the ``EVAL`` sent after a ``NOSCRIPT`` would run after the
        commands that followed it.
        """
        pool = self.pools.get(address) or await self.pool(address)
        loaded = self._loaded.setdefault(address, set())
        if len(group) == 1 and group[0].ask is None:
            # The fast path: one command, and no script to load first.
            entry = group[0]
            script = self._script_of(entry)
            if script is None or script.sha in loaded:
                (entry.reply,) = await pool.pipeline((entry.command,), raise_on_error=False)
                return
        preload: dict[str, Script] = {}
        commands: list[Sequence[Arg]] = []
        for entry in group:
            script = self._script_of(entry)
            if script is not None and script.sha not in loaded:
                preload[script.sha] = script
            if entry.ask is not None:
                commands.append(ASKING)
            commands.append(entry.command)
        if preload:
            loads: list[Sequence[Arg]] = [
                ("SCRIPT", "LOAD", script.source) for script in preload.values()
            ]
            commands = loads + commands
        replies = iter(await pool.pipeline(commands, raise_on_error=False))
        for sha in preload:
            if not isinstance(next(replies), ErrorReply):
                loaded.add(sha)
        for entry in group:
            if entry.ask is not None:
                next(replies)  # ASKING's +OK
            entry.reply = next(replies)


def _arg_text(value: Arg) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
