"""The cluster client: the commands callers run, and the factory that opens it.

Owns :class:`ClusterClient`, the object callers hold: it turns each call
(``execute``, ``pipeline``, ``evalsha``, ``execute_blocking``...) into
commands for a slot and hands them to the router, and answers questions about
the topology and the nodes. :func:`open_cluster` validates the options, wires
the parts together inside one task group (which also runs the background
topology refresher) and closes the client when its block ends
(:meth:`ClusterClient.aclose`).

All keys of a script must hash to one slot (Redis refuses anything else with
``CROSSSLOT``): :meth:`ClusterClient.evalsha` checks that before sending.

It must not follow redirections, parse topology replies or manage pools
itself: that is :mod:`.routing`, :mod:`.topology`/:mod:`.discovery` and
:mod:`.nodes` (the package docstring has the overview). Covered by
``tests/test_cluster_client.py`` (against real clusters) and the
configuration tests of ``tests/test_cluster_slots.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ...common.tasks import open_service_task_group
from ...exceptions import ConfigurationError
from ..connection import raise_for_reply
from ..hosts import (
    ConnectionOptions,
    SentinelConfig,
    ServerConfig,
    TCPAddress,
    as_cluster_seed,
    parse_host,
)
from ..pool import ConnectionPool, PoolStatistics
from ..protocol import Arg
from ..scripts import Script
from .discovery import TopologyRefresher
from .nodes import Entry, NodePools
from .routing import Router
from .slots import key_slot, slot_for_keys
from .topology import SlotMap

__all__ = ["ClusterClient", "ClusterStatistics", "open_cluster"]

_K = TypeVar("_K", bound=Arg)


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """A snapshot of a :class:`ClusterClient`'s counters."""

    #: Redirections followed: ``MOVED`` plus ``ASK``.
    redirections: int
    moved: int
    asked: int
    #: Pauses-and-retries after ``TRYAGAIN``/``CLUSTERDOWN``/``LOADING`` or,
    #: for idempotent commands, a connection error (one per round, however
    #: many commands of a pipeline were retried in it).
    retries: int
    #: Connection errors seen while running commands (retried or raised).
    connection_errors: int
    #: Successful and failed topology discoveries.
    topology_refreshes: int
    topology_refresh_failures: int
    #: How many of the 16384 slots the current map assigns to a node.
    slots_covered: int
    #: Pool statistics per node (``"host:port"``), for every node a pool was opened for.
    nodes: Mapping[str, PoolStatistics]


class ClusterClient:
    """Routes commands to the node serving each key's slot; create it with :func:`open_cluster`.

    See :mod:`~anyio_layer.redis.cluster.routing` for redirections and the
    retry rules. Every method that runs a command takes ``idempotent``:
    pass ``True`` only for commands that may safely run twice (reads,
    ``SET`` of a fixed value, ...); they are then retried after a connection
    error, on the new owner of the slot if the topology changed.
    """

    def __init__(
        self,
        options: ConnectionOptions,
        slot_map: SlotMap,
        nodes: NodePools,
        refresher: TopologyRefresher,
        router: Router,
    ) -> None:
        self.options = options
        self._map = slot_map
        self._nodes = nodes
        self._refresher = refresher
        self._router = router

    # -- commands ------------------------------------------------------------------

    async def execute(self, *args: Arg, key: Arg | None = None, idempotent: bool = False) -> object:
        """Run one command on the primary serving ``key`` and return its reply.

        ``key`` is the key the command works on (any of them, for a
        multi-key command: they must share a slot anyway). Without ``key`` the
        command goes to an arbitrary primary; a keyed command then costs one
        ``MOVED`` redirection. Error replies raise
        :class:`~anyio_layer.exceptions.ResponseError`.
        """
        entry = Entry(None if key is None else key_slot(key), args)
        await self._router.run([entry], idempotent=idempotent)
        return raise_for_reply(entry.reply)

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg]],
        *,
        key: Arg,
        raise_on_error: bool = True,
        idempotent: bool = False,
    ) -> list[object]:
        """Run several commands on the node serving ``key`` in one round trip.

        All commands must work on keys of ``key``'s slot. Replies come back
        in order; with ``raise_on_error`` the first error reply raises
        :class:`~anyio_layer.exceptions.ResponseError` once all are read,
        otherwise error replies are returned in place as
        :class:`~anyio_layer.redis.protocol.ErrorReply`. Not a transaction: see the
        module docstring for how redirections inside a pipeline are handled.
        """
        slot = key_slot(key)
        return await self._run_many(
            [Entry(slot, command) for command in commands], raise_on_error, idempotent
        )

    async def pipeline_by_key(
        self,
        items: Sequence[tuple[Arg, Sequence[Arg]]],
        *,
        raise_on_error: bool = True,
        idempotent: bool = False,
    ) -> list[object]:
        """Run ``(key, command)`` pairs of any slots: one pipeline per node, all nodes at once.

        The building block for fan-out such as group sends: commands are
        grouped by the node serving each key's slot and every node gets its
        commands in one round trip, concurrently. Replies come back in the
        order of ``items``; ``raise_on_error`` as in :meth:`pipeline`.
        """
        entries = [Entry(key_slot(key), command) for key, command in items]
        return await self._run_many(entries, raise_on_error, idempotent)

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        idempotent: bool = False,
    ) -> object:
        """Run a Lua script on the node serving its keys (``EVALSHA``, ``EVAL`` on ``NOSCRIPT``).

        Raises:
            CrossSlotError: the keys hash to more than one slot (nothing is sent).
        """
        slot = slot_for_keys(keys)
        self._nodes.scripts[script.sha] = script
        entry = Entry(slot, ("EVALSHA", script.sha, len(keys), *keys, *args))
        await self._router.run([entry], idempotent=idempotent)
        return raise_for_reply(entry.reply)

    def script_command(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> list[Arg]:
        """The ``EVALSHA`` command for ``script``, for use in a pipeline.

        The client remembers the script, so it can load it on nodes that lack
        it (see the module docstring). Does not check the keys' slots: the
        pipeline's ``key`` decides the node.
        """
        self._nodes.scripts[script.sha] = script
        return ["EVALSHA", script.sha, len(keys), *keys, *args]

    async def execute_blocking(
        self,
        *args: Arg,
        key: Arg,
        on_cancelled_reply: Callable[[object], Awaitable[None]] | None = None,
        idempotent: bool = False,
    ) -> object:
        """Run a blocking command (``BZPOPMIN``, ``BLPOP``...) on the primary serving ``key``.

        It runs on a dedicated connection of that node's pool, with the
        cancellation guarantees of
        :meth:`~anyio_layer.redis.pool.ConnectionPool.execute_blocking`
        (``on_cancelled_reply`` receives an element popped at the moment of
        cancellation). Redirections are followed as for :meth:`execute`;
        after ``ASK`` the command runs as ``ASKING`` + command on one
        dedicated connection of the target.
        """
        return await self._router.run_blocking(key, args, on_cancelled_reply, idempotent)

    # -- nodes ---------------------------------------------------------------------

    async def nodes_for_keys(self, keys: Iterable[_K]) -> dict[ServerConfig, list[_K]]:
        """Group ``keys`` by the node that serves their slot (per the current map).

        For batching: send each node's share in one pipeline (see also
        :meth:`pipeline_by_key`). Keys keep their order within a group. Keys
        of slots no node is known to serve are grouped under an arbitrary
        node (which will redirect). ``keys`` may be any :data:`~anyio_layer.redis.protocol.Arg`.
        """
        await self._refresher.ensure()
        groups: dict[ServerConfig, list[_K]] = {}
        configs: dict[TCPAddress, ServerConfig] = {}
        for key in keys:
            address = self._map.route(key_slot(key))
            config = configs.get(address)
            if config is None:
                config = configs[address] = ServerConfig(address, self.options)
            groups.setdefault(config, []).append(key)
        return groups

    async def primaries(self) -> list[ServerConfig]:
        """The primaries that serve slots, per the current topology (discovered if needed)."""
        await self._refresher.ensure()
        # Once each: CLUSTER SLOTS gives a primary serving several slot ranges once per range.
        primaries = dict.fromkeys(
            ServerConfig(shard.primary, self.options) for shard in self._map.shards
        )
        return list(primaries)

    @property
    def seeds(self) -> tuple[TCPAddress, ...]:
        """The seed nodes the client was opened with."""
        return self._map.seeds

    async def node_pool(self, node: ServerConfig | TCPAddress) -> ConnectionPool:
        """The connection pool of one node (opened on first use, closed with the client).

        For what the client does not route itself, such as a subscriber
        connection borrowed with :meth:`ConnectionPool.connection
        <anyio_layer.redis.pool.ConnectionPool.connection>`: it lives as long as the
        block that borrows it, and nothing follows redirections on it.

        Raises:
            ConfigurationError: ``node`` is not a TCP address.
            LayerClosedError: the client is closed.
        """
        address = node.address if isinstance(node, ServerConfig) else node
        if not isinstance(address, TCPAddress):
            raise ConfigurationError(f"cluster nodes are reached over TCP, not {address}")
        return await self._nodes.pool(address)

    async def execute_on(self, node: ServerConfig | TCPAddress, *args: Arg) -> object:
        """Run a command on one given node, without any redirection handling.

        For node-level commands: ``FLUSHDB`` on every primary, ``CLUSTER INFO``,
        ``SCRIPT LOAD``... Error replies raise
        :class:`~anyio_layer.exceptions.ResponseError`.
        """
        address = node.address if isinstance(node, ServerConfig) else node
        if not isinstance(address, TCPAddress):
            raise ConfigurationError(f"cluster nodes are reached over TCP, not {address}")
        pool = await self._nodes.pool(address)
        return await pool.execute(*args)

    def node_for_slot(self, slot: int) -> ServerConfig | None:
        """The node the current map says serves ``slot`` (None if unknown)."""
        address = self._map.slots[slot]
        return None if address is None else ServerConfig(address, self.options)

    async def refresh_topology(self) -> None:
        """Learn the slot map now (coalesced with a refresh already in progress).

        Raises:
            RedisConnectionError: no node could be asked.
        """
        self._nodes.check_open()
        await self._refresher.refresh(force=True)

    async def aclose(self) -> None:
        """Close every node's pool; commands run afterwards raise ``LayerClosedError``.

        Shielded from cancellation. :func:`open_cluster` calls it when its block ends.
        """
        await self._nodes.aclose()

    def statistics(self) -> ClusterStatistics:
        """Counters of redirections, retries, refreshes, and every node's pool statistics."""
        router = self._router
        return ClusterStatistics(
            redirections=router.moved + router.asked,
            moved=router.moved,
            asked=router.asked,
            retries=router.retries,
            connection_errors=router.connection_errors,
            topology_refreshes=self._refresher.refreshes,
            topology_refresh_failures=self._refresher.refresh_failures,
            slots_covered=self._map.covered(),
            nodes=self._nodes.statistics(),
        )

    def __repr__(self) -> str:
        seeds = ",".join(map(str, self._map.seeds))
        return f"<ClusterClient seeds={seeds} primaries={len(self._map.shards)}>"

    # -- helpers --------------------------------------------------------------------

    async def _run_many(
        self, entries: list[Entry], raise_on_error: bool, idempotent: bool
    ) -> list[object]:
        if not entries:
            return []
        await self._router.run(entries, idempotent=idempotent)
        replies = [entry.reply for entry in entries]
        if raise_on_error:
            for reply in replies:
                raise_for_reply(reply)
        return replies

    # The live slot table and discovery state, read (and patched) by tests.

    @property
    def _slots(self) -> list[TCPAddress | None]:
        return self._map.slots

    @property
    def _use_shards(self) -> bool | None:
        return self._refresher.use_shards


def _seed_configs(seeds: object) -> list[ServerConfig]:
    if isinstance(seeds, (str, ServerConfig, SentinelConfig, Mapping)):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ConfigurationError(
            f"cluster seeds must be a non-empty list of URLs, (host, port) tuples, dicts "
            f"or ServerConfig, not {seeds!r}"
        )
    return [as_cluster_seed(parse_host(seed)) for seed in seeds]


@contextlib.asynccontextmanager
async def open_cluster(
    seeds: object,
    options: ConnectionOptions | None = None,
    *,
    max_redirections: int = 5,
    retry_timeout: float = 5.0,
    refresh_interval: float = 0.25,
    discovery_timeout: float = 2.0,
) -> AsyncIterator[ClusterClient]:
    """Open a :class:`ClusterClient` for the cluster that ``seeds`` belong to.

    Args:
        seeds: one node, or a list of nodes, in any form
            :func:`~anyio_layer.redis.hosts.parse_host` accepts (URL, ``(host,
            port)``, dict, :class:`~anyio_layer.redis.hosts.ServerConfig`). Any
            node of the cluster will do; several help if some are down.
        options: connection options (TLS, credentials, timeouts,
            ``max_connections``...) for every node; default: the first seed's.
            Cluster nodes only have database 0.
        max_redirections: ``MOVED``/``ASK`` redirections followed per command
            before :class:`TooManyRedirectionsError`.
        retry_timeout: how long to keep retrying after ``TRYAGAIN``,
            ``CLUSTERDOWN`` or ``LOADING`` (any command), or a connection error
            (idempotent commands only).
        refresh_interval: the shortest time between two topology refreshes
            (unless forced with :meth:`ClusterClient.refresh_topology`).
        discovery_timeout: how long one node may take to describe the topology.

    Nothing is connected until the first command (or
    :meth:`~ClusterClient.refresh_topology`). Leaving the block closes every
    node's pool.

    Raises:
        ConfigurationError: invalid seeds or options (Sentinel or unix-socket
            seeds, a database other than 0, invalid tuning values).
    """
    configs = _seed_configs(seeds)
    options = options if options is not None else configs[0].options
    if options.db != 0:
        raise ConfigurationError(
            f"Redis Cluster only has database 0, but db={options.db} was configured"
        )
    if max_redirections < 1 or retry_timeout < 0 or refresh_interval < 0 or discovery_timeout <= 0:
        raise ConfigurationError(
            "max_redirections must be >= 1, retry_timeout and refresh_interval >= 0, "
            "and discovery_timeout > 0"
        )
    addresses = [config.address for config in configs if isinstance(config.address, TCPAddress)]
    async with open_service_task_group() as task_group:
        slot_map = SlotMap(addresses)
        nodes = NodePools(options, task_group)
        refresher = TopologyRefresher(
            slot_map,
            nodes,
            tls=options.tls is not None,
            refresh_interval=refresh_interval,
            discovery_timeout=discovery_timeout,
        )
        router = Router(
            slot_map,
            nodes,
            refresher,
            max_redirections=max_redirections,
            retry_timeout=retry_timeout,
        )
        client = ClusterClient(options, slot_map, nodes, refresher, router)
        task_group.start_soon(refresher.run, name="cluster topology refresher")
        try:
            yield client
        finally:
            await client.aclose()
