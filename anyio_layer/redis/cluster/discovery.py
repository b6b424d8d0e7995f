"""Keeping the slot map current: asking nodes for the topology, and deciding when.

Owns :class:`TopologyRefresher`. The slot map is learned from ``CLUSTER
SHARDS`` (Redis 7+), falling back to ``CLUSTER SLOTS`` (Redis 6.2), asked of
the known nodes and then the seeds until one answers for every slot. It is
learned lazily, on first use (:meth:`TopologyRefresher.ensure`), and
refreshed whenever the cluster tells us it changed: after a ``MOVED`` reply
in the background (:meth:`TopologyRefresher.request`, served by
:meth:`TopologyRefresher.run`, a task in the client's task group started by
:func:`~anyio_layer.redis.cluster.open_cluster`), and inline before retrying
after a connection error or ``CLUSTERDOWN``. Refreshes are coalesced and
rate-limited (``refresh_interval``).

Parsing the replies and the map itself are pure and live in
:mod:`~anyio_layer.redis.cluster.topology`; this module routes no command.
Covered by the topology tests of ``tests/test_cluster_client.py``.
"""

from __future__ import annotations

import contextlib

import anyio

from ...exceptions import (
    AuthenticationError,
    LayerClosedError,
    RedisConnectionError,
    RedisError,
    ResponseError,
)
from ..hosts import TCPAddress
from ..protocol import ErrorReply
from .nodes import NodePools
from .slots import CLUSTER_SLOTS
from .topology import ShardInfo, SlotMap, parse_shards, parse_slots, slots_served

__all__ = ["TopologyRefresher"]


class TopologyRefresher:
    """Learns the topology into a :class:`~anyio_layer.redis.cluster.topology.SlotMap`."""

    def __init__(
        self,
        slot_map: SlotMap,
        nodes: NodePools,
        *,
        tls: bool,
        refresh_interval: float,
        discovery_timeout: float,
    ) -> None:
        self._map = slot_map
        self._nodes = nodes
        self._tls = tls
        self._refresh_interval = refresh_interval
        self._discovery_timeout = discovery_timeout
        self._refresh_lock = anyio.Lock()
        self._refresh_wanted = anyio.Event()
        #: Bumped by every successful discovery (0: the map was never learned).
        self.generation = 0
        self._last_refresh = -float("inf")
        #: Whether the cluster answers ``CLUSTER SHARDS`` (None: not known yet).
        self.use_shards: bool | None = None
        # Counters for the client's statistics().
        self.refreshes = 0
        self.refresh_failures = 0

    def request(self) -> None:
        """Ask the background refresher for a refresh (more slots probably moved)."""
        self._refresh_wanted.set()

    async def ensure(self) -> None:
        """Discover the slot map on first use (rate-limited, like every refresh)."""
        if self.generation == 0:
            await self.refresh(force=False)

    async def refresh(self, *, force: bool) -> None:
        """Re-learn the topology; concurrent refreshes coalesce, rate-limited unless forced.

        Raises:
            AuthenticationError: no node could be asked, and some refused our credentials.
            RedisConnectionError: no node could be asked.
        """
        generation = self.generation
        async with self._refresh_lock:
            if self.generation != generation:
                return  # another task refreshed while we waited for the lock
            now = anyio.current_time()
            if not force and now - self._last_refresh < self._refresh_interval:
                return
            self._last_refresh = now
            try:
                shards = await self._discover()
            except RedisConnectionError:
                self.refresh_failures += 1
                raise
            self._map.install(shards)
            self.generation += 1
            self.refreshes += 1

    async def run(self) -> None:
        """Refresh the topology when asked (after ``MOVED``), at most every ``refresh_interval``.

        Runs until cancelled, as a task of the client's task group.
        """
        while True:
            await self._refresh_wanted.wait()
            self._refresh_wanted = anyio.Event()
            wait = self._last_refresh + self._refresh_interval - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
            # Forced: the rate limit was honoured above (and asyncio may wake a
            # sleeper a hair early, which the limit check would count as too soon).
            with contextlib.suppress(RedisError, LayerClosedError):
                await self.refresh(force=True)

    async def _discover(self) -> list[ShardInfo]:
        """Ask the known nodes, then the seeds, for the slot map; the first full answer wins.

        Raises:
            AuthenticationError: no node could be asked, and some refused our credentials.
            RedisConnectionError: no node could be asked.
        """
        problems: list[str] = []
        partial: list[ShardInfo] | None = None
        refused: AuthenticationError | None = None
        for address in self._map.discovery_candidates():
            try:
                with anyio.fail_after(self._discovery_timeout):
                    shards = await self._ask_topology(address)
            except TimeoutError:
                problems.append(f"{address}: no answer within {self._discovery_timeout:g} s")
                continue
            except AuthenticationError as exc:
                refused = refused or exc
                problems.append(f"{address}: {exc}")
                continue
            except (RedisError, LayerClosedError) as exc:
                problems.append(f"{address}: {exc}")
                continue
            covered = slots_served(shards)
            if covered == CLUSTER_SLOTS:
                return shards
            problems.append(f"{address}: serves only {covered} of {CLUSTER_SLOTS} slots")
            if partial is None and shards:
                partial = shards
        if partial is not None:
            return partial  # a cluster with uncovered slots; commands get CLUSTERDOWN
        if refused is not None:
            raise refused  # a configuration problem, not an outage: say so
        raise RedisConnectionError(
            "could not learn the cluster topology from any node: " + "; ".join(problems)
        )

    async def _ask_topology(self, address: TCPAddress) -> list[ShardInfo]:
        pool = await self._nodes.pool(address)
        if self.use_shards is not False:
            (reply,) = await pool.pipeline([("CLUSTER", "SHARDS")], raise_on_error=False)
            if not isinstance(reply, ErrorReply):
                self.use_shards = True
                shards = parse_shards(reply, address, self._tls)
                if shards is not None:
                    return shards
            elif "unknown subcommand" not in reply.message.lower():
                raise ResponseError(reply.message)
            else:
                self.use_shards = False  # Redis < 7
        return parse_slots(await pool.execute("CLUSTER", "SLOTS"), address)
