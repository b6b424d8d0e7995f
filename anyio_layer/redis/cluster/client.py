"""A Redis Cluster client built on the per-server :class:`~anyio_layer.redis.pool.ConnectionPool`.

Redis Cluster splits the key space into 16384 *hash slots*; each slot is
served by one primary (and copied to its replicas). :func:`key_slot` computes
a key's slot exactly as Redis does, and :class:`ClusterClient` sends every
command to the primary that serves the slot of the key the caller names::

    async with open_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]) as cluster:
        await cluster.execute("SET", "user:1", b"...", key="user:1")
        await cluster.execute("GET", "user:1", key="user:1", idempotent=True)
        await cluster.evalsha(script, keys=["{room}:a", "{room}:b"], args=[...])

**Topology.** The slot map is learned from ``CLUSTER SHARDS`` (Redis 7+),
falling back to ``CLUSTER SLOTS`` (Redis 6.2), asked of the known nodes and
then the seeds until one answers. It is learned lazily, on first use, and
refreshed whenever the cluster tells us it changed: after a ``MOVED`` reply
(in the background), and before retrying after a connection error or
``CLUSTERDOWN`` (inline). Refreshes are coalesced and rate-limited
(``refresh_interval``). There is one :class:`~anyio_layer.redis.pool.ConnectionPool`
per node (a pipelined shared connection plus dedicated ones for blocking
commands), opened lazily inside the client's own task group and closed when
the ``async with`` block of :func:`open_cluster` ends. The connection options
(TLS, username/password, timeouts) of the first seed, or the ``options``
argument, apply to every node.

**Redirections and retries.** Every reply is checked:

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
  seconds, after which :class:`ClusterUnavailableError` is raised.

Those replies mean the command was *not* executed, so following them is safe
for any command. A **connection error** is different: the command may or may
not have run. The topology is refreshed and the command is retried (within
``retry_timeout``) only if the caller passed ``idempotent=True``; otherwise
the :class:`~anyio_layer.exceptions.RedisConnectionError` is raised at once.
A command is redirected at most ``max_redirections`` times before
:class:`TooManyRedirectionsError` is raised.

**Pipelines** are not transactions: in :meth:`ClusterClient.pipeline`, the
redirection or retry of each command is handled separately, and only the
commands that were redirected are sent again (the others already ran). During
a migration, a redirected command may therefore run after a later command of
the same pipeline; commands on one key are always redirected together, so
their order is kept.

**Scripts**: all keys of a script must hash to one slot (Redis refuses
anything else with ``CROSSSLOT``): use a common ``{hash tag}``.
:meth:`ClusterClient.evalsha` checks that before sending and raises
:class:`CrossSlotError`. Every node has its own script cache: the first time
a script is sent to a node, ``SCRIPT LOAD`` goes ahead of it in the same round
trip, so pipelines keep their order. If a node's cache was flushed behind the
client's back, ``EVALSHA`` answered with ``NOSCRIPT`` is re-sent as ``EVAL``
(in a pipeline, that one command then runs after the others).
"""

from __future__ import annotations

import contextlib
from binascii import crc_hqx
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import anyio
import anyio.abc

from ...common.tasks import open_service_task_group
from ...exceptions import (
    AuthenticationError,
    ClusterUnavailableError,
    ConfigurationError,
    CrossSlotError,
    LayerClosedError,
    ProtocolError,
    RedisConnectionError,
    RedisError,
    ResponseError,
    TooManyRedirectionsError,
)
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
from ..protocol import Arg, ErrorReply
from ..scripts import Script

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterClient",
    "ClusterStatistics",
    "ClusterUnavailableError",
    "CrossSlotError",
    "TooManyRedirectionsError",
    "key_slot",
    "open_cluster",
    "slot_for_keys",
]

#: Number of hash slots in a Redis Cluster.
CLUSTER_SLOTS: Final = 16384

_ASKING: Final[tuple[Arg, ...]] = ("ASKING",)
#: Error codes meaning "the command did not run; try again in a moment".
_RETRY_CODES: Final = frozenset({"TRYAGAIN", "CLUSTERDOWN", "LOADING"})
_NO_FAILURES: Final[dict[TCPAddress, Exception]] = {}  # never mutated
_MIN_BACKOFF: Final = 0.02
_MAX_BACKOFF: Final = 0.5

_K = TypeVar("_K", bound=Arg)


# -- errors ------------------------------------------------------------------------


# -- hash slots --------------------------------------------------------------------


def _key_bytes(key: Arg) -> bytes:
    """The bytes Redis sees for ``key`` (the same conversion as the RESP encoder)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, bool):
        raise TypeError("a bool is not a valid Redis key; pass a string or bytes")
    if isinstance(key, int):
        return b"%d" % key
    if isinstance(key, float):
        if key != key:
            raise ValueError("NaN is not a valid Redis key")
        return repr(key).encode()
    raise TypeError(f"a Redis key must be str, bytes or a number, not {type(key).__name__}")


def key_slot(key: Arg) -> int:
    """The hash slot (0-16383) of ``key``, exactly as Redis Cluster computes it.

    The slot is ``CRC16(key) mod 16384`` (CRC-16/XMODEM). If the key contains
    a ``{``, and a ``}`` follows it with at least one character in between,
    only the characters between the *first* ``{`` and the first ``}`` after it
    are hashed (the *hash tag*): ``{user1000}.following`` and
    ``{user1000}.followers`` share a slot. ``foo{}{bar}`` hashes whole
    (the first tag is empty), ``foo{{bar}}`` hashes ``{bar``.

    ``str`` keys are encoded as UTF-8 and numbers as their decimal form, as
    they are when sent.
    """
    data = _key_bytes(key)
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # binascii.crc_hqx is CRC-CCITT (polynomial 0x1021); with 0 as the initial
    # value it is the XMODEM variant Redis uses.
    return crc_hqx(data, 0) & (CLUSTER_SLOTS - 1)


def slot_for_keys(keys: Iterable[Arg]) -> int | None:
    """The one slot all ``keys`` hash to (None if there are no keys).

    Raises:
        CrossSlotError: the keys hash to different slots.
    """
    slot: int | None = None
    first: Arg | None = None
    for key in keys:
        this = key_slot(key)
        if slot is None:
            slot, first = this, key
        elif this != slot:
            raise CrossSlotError(
                f"keys {first!r} (slot {slot}) and {key!r} (slot {this}) hash to different "
                f"slots, but Redis Cluster needs all keys of one script or pipeline in one "
                f"slot: give them a common {{hash tag}}, e.g. '{{room}}:a' and '{{room}}:b'"
            )
    return slot


# -- topology --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ShardInfo:
    """One primary, its replicas and the slot ranges it serves, from a topology reply."""

    ranges: tuple[tuple[int, int], ...]
    primary: TCPAddress
    replicas: tuple[TCPAddress, ...]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


def _as_dict(value: object) -> dict[str, object]:
    """A RESP3 map, or a RESP2 flat ``[key, value, ...]`` list, as a dict with str keys."""
    if isinstance(value, dict):
        return {_text(key): item for key, item in value.items()}
    if isinstance(value, list):
        return {_text(key): item for key, item in zip(value[::2], value[1::2], strict=False)}
    raise ProtocolError(f"expected a map in the cluster topology reply, got {value!r:.100}")


def _host(value: object, asked: TCPAddress) -> str | None:
    """A node's host from a topology reply: "" means "the node you asked", "?" unknown."""
    host = _text(value)
    if not host:
        return asked.host
    if host == "?":
        return None
    return host


def _parse_shards(reply: object, asked: TCPAddress, tls: bool) -> list[_ShardInfo] | None:
    """Parse ``CLUSTER SHARDS`` (Redis 7+); None if a shard names two healthy primaries."""
    if not isinstance(reply, list):
        raise ProtocolError(f"CLUSTER SHARDS returned {reply!r:.100}")
    shards = []
    for item in reply:
        shard = _as_dict(item)
        bounds = shard.get("slots")
        if not isinstance(bounds, list) or not bounds:
            continue
        numbers = [int(_text(bound)) for bound in bounds]
        ranges = tuple(zip(numbers[::2], numbers[1::2], strict=True))
        primary: TCPAddress | None = None
        primary_healthy = False
        replicas: list[TCPAddress] = []
        nodes = shard.get("nodes")
        for entry in nodes if isinstance(nodes, list) else []:
            node = _as_dict(entry)
            endpoint = _text(node.get("endpoint"))
            host = _host(node.get("ip") if endpoint in ("", "?") else endpoint, asked)
            port = node.get("tls-port") if tls and "tls-port" in node else node.get("port")
            if port is None:
                port = node.get("tls-port")
            if host is None or not isinstance(port, int) or not port:
                continue
            address = TCPAddress(host, port)
            if _text(node.get("role")) == "master":
                healthy = _text(node.get("health")) != "failed"
                if healthy and primary_healthy:
                    return None  # Valkey 8.0 after CLUSTER FAILOVER; CLUSTER SLOTS is right
                if healthy or primary is None:
                    primary, primary_healthy = address, healthy
            elif _text(node.get("health")) != "failed":
                replicas.append(address)
        if primary is not None:
            shards.append(_ShardInfo(ranges, primary, tuple(replicas)))
    return shards


def _parse_slots(reply: object, asked: TCPAddress) -> list[_ShardInfo]:
    """Parse ``CLUSTER SLOTS`` (Redis 3+): ``[[first, last, [host, port, id], replicas...]]``."""
    if not isinstance(reply, list):
        raise ProtocolError(f"CLUSTER SLOTS returned {reply!r:.100}")
    shards = []
    for item in reply:
        if not isinstance(item, list) or len(item) < 3:
            raise ProtocolError(f"unexpected CLUSTER SLOTS entry {item!r:.100}")
        first, last, *nodes = item
        addresses = []
        for node in nodes:
            if not isinstance(node, list) or len(node) < 2:
                continue
            host = _host(node[0], asked)
            if host is not None and isinstance(node[1], int) and node[1]:
                addresses.append(TCPAddress(host, node[1]))
        if addresses and isinstance(first, int) and isinstance(last, int):
            shards.append(_ShardInfo(((first, last),), addresses[0], tuple(addresses[1:])))
    return shards


def _parse_redirection(message: str, replied_by: TCPAddress) -> tuple[int, TCPAddress]:
    """``MOVED 3999 127.0.0.1:6381`` -> ``(3999, TCPAddress("127.0.0.1", 6381))``."""
    try:
        _, slot, target = message.split(" ", 2)
        host, _, port = target.strip().rpartition(":")
        host = host.strip("[]")
        return int(slot), TCPAddress(host or replied_by.host, int(port))
    except ValueError:
        raise ProtocolError(f"malformed redirection from {replied_by}: {message!r}") from None


# -- the client ---------------------------------------------------------------------------


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


class _Entry:
    """One command on its way through redirections and retries."""

    __slots__ = ("ask", "command", "redirections", "reply", "slot")

    def __init__(self, slot: int | None, command: Sequence[Arg]) -> None:
        self.slot = slot
        self.command = command
        self.ask: TCPAddress | None = None
        self.redirections = 0
        self.reply: object = None


class ClusterClient:
    """Routes commands to the node serving each key's slot; create it with :func:`open_cluster`.

    See the module docstring for topology discovery, redirections and the
    retry rules. Every method that runs a command takes ``idempotent``:
    pass ``True`` only for commands that may safely run twice (reads,
    ``SET`` of a fixed value, ...); they are then retried after a connection
    error, on the new owner of the slot if the topology changed.
    """

    def __init__(
        self,
        seeds: Sequence[TCPAddress],
        options: ConnectionOptions,
        task_group: anyio.abc.TaskGroup,
        *,
        max_redirections: int,
        retry_timeout: float,
        refresh_interval: float,
        discovery_timeout: float,
    ) -> None:
        self._seeds = tuple(seeds)
        self.options = options
        self._task_group = task_group
        self._max_redirections = max_redirections
        self._retry_timeout = retry_timeout
        self._refresh_interval = refresh_interval
        self._discovery_timeout = discovery_timeout
        self._slots: list[TCPAddress | None] = [None] * CLUSTER_SLOTS
        self._shards: tuple[_ShardInfo, ...] = ()
        self._pools: dict[TCPAddress, ConnectionPool] = {}
        self._refresh_lock = anyio.Lock()
        self._refresh_wanted = anyio.Event()
        self._generation = 0  # bumped by every successful discovery
        self._last_refresh = -float("inf")
        self._use_shards: bool | None = None  # None: not known yet whether CLUSTER SHARDS works
        self._scripts: dict[str, Script] = {}
        #: Per node, the SHA-1s of scripts it is known to have cached.
        self._loaded: dict[TCPAddress, set[str]] = {}
        self._closed = False
        # Counters for statistics().
        self._moved = 0
        self._asked = 0
        self._retries = 0
        self._connection_errors = 0
        self._refreshes = 0
        self._refresh_failures = 0

    # -- commands ------------------------------------------------------------------

    async def execute(self, *args: Arg, key: Arg | None = None, idempotent: bool = False) -> object:
        """Run one command on the primary serving ``key`` and return its reply.

        ``key`` is the key the command works on (any of them, for a
        multi-key command: they must share a slot anyway). Without ``key`` the
        command goes to an arbitrary primary; a keyed command then costs one
        ``MOVED`` redirection. Error replies raise
        :class:`~anyio_layer.exceptions.ResponseError`.
        """
        entry = _Entry(None if key is None else key_slot(key), args)
        await self._run([entry], idempotent=idempotent)
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
            [_Entry(slot, command) for command in commands], raise_on_error, idempotent
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
        entries = [_Entry(key_slot(key), command) for key, command in items]
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
        self._scripts[script.sha] = script
        entry = _Entry(slot, ("EVALSHA", script.sha, len(keys), *keys, *args))
        await self._run([entry], idempotent=idempotent)
        return raise_for_reply(entry.reply)

    def script_command(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> list[Arg]:
        """The ``EVALSHA`` command for ``script``, for use in a pipeline.

        The client remembers the script, so it can load it on nodes that lack
        it (see the module docstring). Does not check the keys' slots: the
        pipeline's ``key`` decides the node.
        """
        self._scripts[script.sha] = script
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
        self._check_open()
        slot = key_slot(key)
        ask: TCPAddress | None = None
        redirections = 0
        retry = _RetryBudget(self._retry_timeout)
        while True:
            await self._ensure_topology()
            address = ask or self._route(slot)
            try:
                pool = await self._pool(address)
                return await pool.execute_blocking(
                    *args,
                    on_cancelled_reply=on_cancelled_reply,
                    prelude=[] if ask is None else [_ASKING],
                )
            except ResponseError as exc:
                error = ErrorReply(exc.message)
                if error.code in ("MOVED", "ASK"):
                    redirections += 1
                    ask = self._follow(error, address, redirections)
                elif error.code in _RETRY_CODES:
                    ask = None
                    await self._pause_before_retry(retry, error, connection_error=False)
                else:
                    raise
            except RedisConnectionError as exc:
                await self._connection_failed(exc, retry, idempotent)
                ask = None

    # -- nodes ---------------------------------------------------------------------

    async def nodes_for_keys(self, keys: Iterable[_K]) -> dict[ServerConfig, list[_K]]:
        """Group ``keys`` by the node that serves their slot (per the current map).

        For batching: send each node's share in one pipeline (see also
        :meth:`pipeline_by_key`). Keys keep their order within a group. Keys
        of slots no node is known to serve are grouped under an arbitrary
        node (which will redirect). ``keys`` may be any :data:`~anyio_layer.redis.protocol.Arg`.
        """
        await self._ensure_topology()
        groups: dict[ServerConfig, list[_K]] = {}
        configs: dict[TCPAddress, ServerConfig] = {}
        for key in keys:
            address = self._route(key_slot(key))
            config = configs.get(address)
            if config is None:
                config = configs[address] = ServerConfig(address, self.options)
            groups.setdefault(config, []).append(key)
        return groups

    async def primaries(self) -> list[ServerConfig]:
        """The primaries that serve slots, per the current topology (discovered if needed)."""
        await self._ensure_topology()
        # Once each: CLUSTER SLOTS gives a primary serving several slot ranges once per range.
        primaries = dict.fromkeys(
            ServerConfig(shard.primary, self.options) for shard in self._shards
        )
        return list(primaries)

    @property
    def seeds(self) -> tuple[TCPAddress, ...]:
        """The seed nodes the client was opened with."""
        return self._seeds

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
        return await self._pool(address)

    async def execute_on(self, node: ServerConfig | TCPAddress, *args: Arg) -> object:
        """Run a command on one given node, without any redirection handling.

        For node-level commands: ``FLUSHDB`` on every primary, ``CLUSTER INFO``,
        ``SCRIPT LOAD``... Error replies raise
        :class:`~anyio_layer.exceptions.ResponseError`.
        """
        address = node.address if isinstance(node, ServerConfig) else node
        if not isinstance(address, TCPAddress):
            raise ConfigurationError(f"cluster nodes are reached over TCP, not {address}")
        pool = await self._pool(address)
        return await pool.execute(*args)

    def node_for_slot(self, slot: int) -> ServerConfig | None:
        """The node the current map says serves ``slot`` (None if unknown)."""
        address = self._slots[slot]
        return None if address is None else ServerConfig(address, self.options)

    async def refresh_topology(self) -> None:
        """Learn the slot map now (coalesced with a refresh already in progress).

        Raises:
            RedisConnectionError: no node could be asked.
        """
        self._check_open()
        await self._refresh(force=True)

    def statistics(self) -> ClusterStatistics:
        """Counters of redirections, retries, refreshes, and every node's pool statistics."""
        return ClusterStatistics(
            redirections=self._moved + self._asked,
            moved=self._moved,
            asked=self._asked,
            retries=self._retries,
            connection_errors=self._connection_errors,
            topology_refreshes=self._refreshes,
            topology_refresh_failures=self._refresh_failures,
            slots_covered=sum(1 for address in self._slots if address is not None),
            nodes={str(address): pool.statistics() for address, pool in self._pools.items()},
        )

    def __repr__(self) -> str:
        seeds = ",".join(map(str, self._seeds))
        return f"<ClusterClient seeds={seeds} primaries={len(self._shards)}>"

    # -- the redirection loop ------------------------------------------------------------

    async def _run_many(
        self, entries: list[_Entry], raise_on_error: bool, idempotent: bool
    ) -> list[object]:
        if not entries:
            return []
        await self._run(entries, idempotent=idempotent)
        replies = [entry.reply for entry in entries]
        if raise_on_error:
            for reply in replies:
                raise_for_reply(reply)
        return replies

    async def _run(self, entries: list[_Entry], *, idempotent: bool) -> None:
        """Send ``entries`` (grouped per node), following redirections until all have a reply.

        Each entry's final reply (possibly an :class:`ErrorReply`) is stored
        in ``entry.reply``.
        """
        self._check_open()
        retry: _RetryBudget | None = None
        pending = entries
        while pending:
            if self._generation == 0:
                await self._ensure_topology()
            groups: dict[TCPAddress, list[_Entry]] = {}
            for entry in pending:
                address = entry.ask or self._route(entry.slot)
                group = groups.get(address)
                if group is None:
                    groups[address] = [entry]
                else:
                    group.append(entry)
            failures = await self._send_groups(groups)
            again: list[_Entry] = []
            retry_error: ErrorReply | None = None
            connection_error: RedisConnectionError | None = None
            for address, group in groups.items():
                failure = failures.get(address)
                if failure is not None:
                    if not isinstance(failure, RedisConnectionError):
                        raise failure
                    connection_error = failure
                    self._loaded.pop(address, None)  # a restarted node has an empty cache
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
                    elif code in _RETRY_CODES:
                        entry.ask = None  # back to the owner, which knows best by now
                        retry_error = reply
                        again.append(entry)
                    elif code == "NOSCRIPT" and self._use_eval(entry, address):
                        again.append(entry)
            if connection_error is not None or retry_error is not None:
                retry = retry or _RetryBudget(self._retry_timeout)
                if connection_error is not None:
                    await self._connection_failed(connection_error, retry, idempotent)
                elif retry_error is not None:
                    await self._pause_before_retry(retry, retry_error, connection_error=False)
            pending = again

    async def _send_groups(
        self, groups: dict[TCPAddress, list[_Entry]]
    ) -> dict[TCPAddress, Exception]:
        """Send each node its group in one pipeline, all nodes concurrently; return failures."""
        if len(groups) == 1:  # the common case, without a task group
            ((address, group),) = groups.items()
            try:
                await self._send_group(address, group)
            except (RedisError, LayerClosedError) as exc:
                return {address: exc}
            return _NO_FAILURES

        failures: dict[TCPAddress, Exception] = {}

        async def send(address: TCPAddress, group: list[_Entry]) -> None:
            try:
                await self._send_group(address, group)
            except (RedisError, LayerClosedError) as exc:
                failures[address] = exc

        async with anyio.create_task_group() as task_group:
            for address, group in groups.items():
                task_group.start_soon(send, address, group)
        return failures

    async def _send_group(self, address: TCPAddress, group: list[_Entry]) -> None:
        """Send one node its commands in one pipeline and store each entry's reply.

        Scripts that ``EVALSHA`` commands of the group need, and that this
        node is not known to have cached, are loaded first in the same round
        trip (``SCRIPT LOAD``), so that the pipeline runs in order; without
        it, the ``EVAL`` sent after a ``NOSCRIPT`` would run after the
        commands that followed it.
        """
        pool = self._pools.get(address) or await self._pool(address)
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
                commands.append(_ASKING)
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

    def _script_of(self, entry: _Entry) -> Script | None:
        """The known script an ``EVALSHA`` entry runs, else None."""
        command = entry.command
        if len(command) < 2 or not self._scripts:
            return None
        name = command[0]
        if name != "EVALSHA" and _arg_text(name).upper() != "EVALSHA":
            return None
        return self._scripts.get(_arg_text(command[1]))

    def _use_eval(self, entry: _Entry, address: TCPAddress) -> bool:
        """Turn an ``EVALSHA`` answered with ``NOSCRIPT`` into ``EVAL``, if the script is known."""
        script = self._script_of(entry)
        if script is None:
            return False
        self._loaded.get(address, set()).discard(script.sha)  # its cache was flushed
        entry.command = ("EVAL", script.source, *entry.command[2:])
        return True

    def _follow(
        self, reply: ErrorReply, replied_by: TCPAddress, redirections: int
    ) -> TCPAddress | None:
        """Act on a ``MOVED``/``ASK`` reply; return the ``ASK`` target (None after ``MOVED``)."""
        slot, target = _parse_redirection(reply.message, replied_by)
        if redirections > self._max_redirections:
            raise TooManyRedirectionsError(
                f"gave up after {redirections - 1} redirections; the last one was "
                f"{reply.message!r} from {replied_by}",
                reply.code,
            )
        if reply.code == "ASK":
            self._asked += 1
            return target
        self._moved += 1
        if 0 <= slot < CLUSTER_SLOTS:
            self._slots[slot] = target
        self._refresh_wanted.set()  # more slots probably moved with it
        return None

    async def _connection_failed(
        self, error: RedisConnectionError, retry: _RetryBudget, idempotent: bool
    ) -> None:
        """A command failed with a connection error: re-learn the topology; retry if allowed."""
        self._connection_errors += 1
        if not idempotent:
            # The command may have run: never repeat it behind the caller's back.
            self._refresh_wanted.set()
            raise error
        await self._pause_before_retry(retry, error, connection_error=True)

    async def _pause_before_retry(
        self,
        retry: _RetryBudget,
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
        self._retries += 1
        await anyio.sleep(delay)
        if connection_error or (isinstance(error, ErrorReply) and error.code == "CLUSTERDOWN"):
            with contextlib.suppress(RedisConnectionError):
                await self._refresh(force=False)

    # -- topology -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LayerClosedError("the cluster client is closed")

    def _route(self, slot: int | None) -> TCPAddress:
        """The node to send a command for ``slot`` to (any known node if unknown)."""
        if slot is not None:
            address = self._slots[slot]
            if address is not None:
                return address
        if self._shards:
            return self._shards[0].primary
        return self._seeds[0]

    async def _ensure_topology(self) -> None:
        """Discover the slot map on first use (rate-limited, like every refresh)."""
        if self._generation == 0:
            await self._refresh(force=False)

    async def _refresh(self, *, force: bool) -> None:
        """Re-learn the topology; concurrent refreshes coalesce, rate-limited unless forced."""
        generation = self._generation
        async with self._refresh_lock:
            if self._generation != generation:
                return  # another task refreshed while we waited for the lock
            now = anyio.current_time()
            if not force and now - self._last_refresh < self._refresh_interval:
                return
            self._last_refresh = now
            try:
                shards = await self._discover()
            except RedisConnectionError:
                self._refresh_failures += 1
                raise
            slots: list[TCPAddress | None] = [None] * CLUSTER_SLOTS
            for shard in shards:
                for first, last in shard.ranges:
                    slots[first : last + 1] = [shard.primary] * (last - first + 1)
            self._slots = slots
            self._shards = tuple(sorted(shards, key=lambda shard: shard.ranges[0]))
            self._generation += 1
            self._refreshes += 1

    def _discovery_candidates(self) -> list[TCPAddress]:
        candidates: dict[TCPAddress, None] = {}
        for shard in self._shards:
            candidates[shard.primary] = None
        for shard in self._shards:
            candidates.update(dict.fromkeys(shard.replicas))
        candidates.update(dict.fromkeys(self._seeds))
        return list(candidates)

    async def _discover(self) -> list[_ShardInfo]:
        """Ask the known nodes, then the seeds, for the slot map; the first full answer wins.

        Raises:
            AuthenticationError: no node could be asked, and some refused our credentials.
            RedisConnectionError: no node could be asked.
        """
        problems: list[str] = []
        partial: list[_ShardInfo] | None = None
        refused: AuthenticationError | None = None
        for address in self._discovery_candidates():
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
            covered = sum(last - first + 1 for shard in shards for first, last in shard.ranges)
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

    async def _ask_topology(self, address: TCPAddress) -> list[_ShardInfo]:
        pool = await self._pool(address)
        if self._use_shards is not False:
            (reply,) = await pool.pipeline([("CLUSTER", "SHARDS")], raise_on_error=False)
            if not isinstance(reply, ErrorReply):
                self._use_shards = True
                shards = _parse_shards(reply, address, self.options.tls is not None)
                if shards is not None:
                    return shards
            elif "unknown subcommand" not in reply.message.lower():
                raise ResponseError(reply.message)
            else:
                self._use_shards = False  # Redis < 7
        return _parse_slots(await pool.execute("CLUSTER", "SLOTS"), address)

    # -- pools ------------------------------------------------------------------------------

    async def _pool(self, address: TCPAddress) -> ConnectionPool:
        """The pool for ``address``, created on first use; :func:`open_cluster` closes it.

        The pool belongs to the client, not to a task: its background tasks
        run in the client's task group, and it is closed when the ``async
        with`` block of :func:`open_cluster` ends. (Were it served by a task of
        its own, an event loop shutting down, which cancels every task at
        once, could close it while the client's owner still needs it to clean up.)
        """
        pool = self._pools.get(address)
        if pool is None:
            self._check_open()
            pool = ConnectionPool(ServerConfig(address, self.options), self._task_group)
            self._pools[address] = pool
        return pool

    async def _close_pools(self) -> None:
        self._closed = True
        with anyio.CancelScope(shield=True):
            for pool in self._pools.values():
                await pool.aclose()

    async def _background_refresher(self) -> None:
        """Refresh the topology when asked (after ``MOVED``), at most every ``refresh_interval``."""
        while True:
            await self._refresh_wanted.wait()
            self._refresh_wanted = anyio.Event()
            wait = self._last_refresh + self._refresh_interval - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
            # Forced: the rate limit was honoured above (and asyncio may wake a
            # sleeper a hair early, which the limit check would count as too soon).
            with contextlib.suppress(RedisError, LayerClosedError):
                await self._refresh(force=True)


class _RetryBudget:
    """Growing pauses between retries, within ``timeout`` seconds of the first failure."""

    __slots__ = ("_deadline", "_delay", "_timeout")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadline: float | None = None
        self._delay = _MIN_BACKOFF

    def next_delay(self) -> float | None:
        """The pause before the next attempt, or None when the time is up."""
        now = anyio.current_time()
        if self._deadline is None:
            self._deadline = now + self._timeout
        remaining = self._deadline - now
        if remaining <= 0:
            return None
        delay = min(self._delay, remaining)
        self._delay = min(self._delay * 2, _MAX_BACKOFF)
        return delay


def _arg_text(value: Arg) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


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
        client = ClusterClient(
            addresses,
            options,
            task_group,
            max_redirections=max_redirections,
            retry_timeout=retry_timeout,
            refresh_interval=refresh_interval,
            discovery_timeout=discovery_timeout,
        )
        task_group.start_soon(client._background_refresher, name="cluster topology refresher")
        try:
            yield client
        finally:
            await client._close_pools()
