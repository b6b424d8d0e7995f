"""Reading a deployment's key space into a :class:`Snapshot`, with SCAN and pipelines.

This module owns the *reading*: which servers to ask, how keys are found,
and how each key is interpreted. The layout is the queue layer's
(:mod:`anyio_layer.common.sharding`, :mod:`anyio_layer.queue.keyspace`):

* ``prefix + name``: a channel's messages, a sorted set scored by send time
  (float epoch seconds) with an ``EXPIRE``; names ending in ``!`` are
  *process keys*, shared by every process-local channel
  (``specific.<client>!<suffix>``) of one layer instance;
* ``prefix + ":group:" + group``: a group's members, a sorted set scored by
  the time of their ``group_add``;
* on a Redis Cluster the name part is hash-tagged: ``prefix{name}`` and
  ``prefix:group:{group}``.

Keys are found with ``SCAN MATCH prefix*`` on every server (every primary of
a cluster, all at once), and each ``SCAN`` batch is read in one pipeline:
``ZCARD``, ``ZRANGE 0 0 WITHSCORES`` (the oldest message) and ``PTTL`` for a
channel, ``ZRANGE 0 -1 WITHSCORES`` and ``PTTL`` for a group. Keys under the
prefix that are not sorted sets, or whose names fit neither shape, are only
counted (:attr:`Snapshot.other_keys`). Nothing is written.

A process key exists only while messages wait in it: Redis deletes a sorted
set when its last member is popped, so an idle live process has no key. The
snapshot is not atomic: keys may come and go while it is read.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from ..common.options import require_prefix
from ..queue import check_cluster_prefix, scan_keys, scan_pattern
from ..redis.cluster import ClusterClient, open_cluster
from ..redis.hosts import ClusterConfig, Hosts, parse_hosts
from ..redis.pool import ConnectionPool, open_pool
from ..redis.protocol import Arg, ErrorReply

__all__ = ["ChannelInfo", "GroupInfo", "Progress", "Snapshot", "check_target", "read_snapshot"]

#: ``SCAN ... COUNT`` hint, and so the number of keys read per pipeline.
DEFAULT_SCAN_COUNT = 1000

#: Called as keys are read: ``progress(keys_scanned, keys_in_databases)``; the second
#: number is the sum of ``DBSIZE`` (every key of the databases, not only the prefix's).
Progress = Callable[[int, int], None]

_Execute = Callable[..., Awaitable[object]]
_Pipeline = Callable[[Sequence[Sequence[Arg]]], Awaitable[list[object]]]


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """One channel key: a normal channel, or a process key (``name`` ends in ``!``)."""

    name: str
    key: str
    server: str
    #: Messages waiting (``ZCARD``).
    backlog: int
    #: Send time (epoch seconds) of the oldest waiting message, None if none.
    oldest: float | None
    #: Seconds until the key expires; None if it has no expiry.
    ttl: float | None

    @property
    def process_local(self) -> bool:
        return self.name.endswith("!")


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One group key and its members, each with the time of its ``group_add``."""

    name: str
    key: str
    server: str
    #: ``(channel, joined_at)`` pairs, oldest membership first.
    members: tuple[tuple[str, float], ...]
    ttl: float | None


@dataclass(frozen=True, slots=True, repr=False)
class Snapshot:
    """What :func:`read_snapshot` found under one prefix."""

    prefix: str
    cluster: bool
    #: The servers read (every primary, on a cluster).
    servers: tuple[str, ...]
    channels: tuple[ChannelInfo, ...]
    groups: tuple[GroupInfo, ...]
    #: Keys under the prefix that are not a channel or group of the layer.
    other_keys: int
    #: Keys ``SCAN`` returned (after deduplication per server).
    keys_scanned: int
    #: Local time (epoch seconds) when reading started; ages are measured from it.
    taken_at: float
    #: Seconds the reading took.
    elapsed: float = field(default=0.0)

    def __repr__(self) -> str:
        # Short: asyncio's runner formats the main task's result when it exits, and the
        # full repr of 100,000 keys took a second.
        return (
            f"<Snapshot prefix={self.prefix!r} servers={len(self.servers)} "
            f"channels={len(self.channels)} groups={len(self.groups)}>"
        )


@dataclass(frozen=True, slots=True)
class _Layout:
    """Tells channel keys from group keys, for one prefix and one of the two layouts."""

    prefix: bytes
    cluster: bool

    def classify(self, key: bytes) -> tuple[str, str] | None:
        """``("group" | "channel", name)`` for a key of the layer, None otherwise."""
        rest = key[len(self.prefix) :]
        kind = "channel"
        if rest.startswith(b":group:"):
            kind, rest = "group", rest[len(b":group:") :]
        if self.cluster:
            if not (rest.startswith(b"{") and rest.endswith(b"}") and len(rest) > 2):
                return None
            rest = rest[1:-1]
        if not rest or (kind == "channel" and rest.startswith(b":")):
            return None
        return kind, _text(rest)


@dataclass(slots=True)
class _Collector:
    layout: _Layout
    progress: Progress | None
    estimated: int = 0
    scanned: int = 0
    other: int = 0
    channels: list[ChannelInfo] = field(default_factory=list)
    groups: list[GroupInfo] = field(default_factory=list)

    def commands_for(self, key: bytes) -> tuple[str, str, list[tuple[Arg, ...]]] | None:
        found = self.layout.classify(key)
        if found is None:
            return None
        kind, name = found
        if kind == "group":
            return kind, name, [("ZRANGE", key, 0, -1, "WITHSCORES"), ("PTTL", key)]
        return kind, name, [("ZCARD", key), ("ZRANGE", key, 0, 0, "WITHSCORES"), ("PTTL", key)]

    async def read_batch(self, server: str, keys: list[bytes], pipeline: _Pipeline) -> None:
        plans = []
        commands: list[tuple[Arg, ...]] = []
        for key in keys:
            plan = self.commands_for(key)
            if plan is None:
                self.other += 1
                continue
            plans.append((key, *plan))
            commands.extend(plan[2])
        replies = await pipeline(commands) if commands else []
        position = 0
        for key, kind, name, planned in plans:
            chunk = replies[position : position + len(planned)]
            position += len(planned)
            self._add(server, key, kind, name, chunk)
        self.scanned += len(keys)
        if self.progress is not None:
            self.progress(self.scanned, self.estimated)

    def _add(self, server: str, key: bytes, kind: str, name: str, replies: list[object]) -> None:
        if any(isinstance(reply, ErrorReply) for reply in replies):
            # WRONGTYPE (not a sorted set), or a slot that moved away mid-scan.
            self.other += 1
            return
        if kind == "group":
            members, ttl = replies
            scored = tuple(_scored(members))
            if scored:  # (else gone between SCAN and the read)
                self.groups.append(GroupInfo(name, _text(key), server, scored, _ttl(ttl)))
            return
        backlog, oldest, ttl = replies
        if not isinstance(backlog, int) or backlog == 0:
            return  # gone between SCAN and the read
        first = _scored(oldest)
        self.channels.append(
            ChannelInfo(
                name, _text(key), server, backlog, first[0][1] if first else None, _ttl(ttl)
            )
        )


async def read_snapshot(
    hosts: object = None,
    prefix: str = "asgi",
    *,
    progress: Progress | None = None,
    scan_count: int = DEFAULT_SCAN_COUNT,
) -> Snapshot:
    """Read every channel and group key under ``prefix`` from the servers ``hosts`` names.

    ``hosts`` takes what the layers' ``hosts`` option takes (see
    :func:`~anyio_layer.redis.hosts.parse_hosts`): one server or several
    shards (each is read), Sentinel, or the seeds of a Redis Cluster (every
    primary is read). Runs under asyncio and trio.

    Raises:
        ConfigurationError: ``hosts`` or ``prefix`` is invalid.
        RedisConnectionError: a server could not be reached.
        AuthenticationError: a server refused the credentials.
    """
    configs = check_target(hosts, prefix)
    started = time.monotonic()
    taken_at = time.time()
    cluster = isinstance(configs, ClusterConfig)
    collector = _Collector(_Layout(prefix.encode(), cluster), progress)
    pattern = scan_pattern(prefix)
    async with _servers(configs) as servers:
        sizes = [await execute("DBSIZE") for _, execute, _ in servers]
        collector.estimated = sum(size for size in sizes if isinstance(size, int))
        if progress is not None:
            progress(0, collector.estimated)
        failures: list[Exception] = []
        async with anyio.create_task_group() as task_group:
            for name, execute, pipeline in servers:
                task_group.start_soon(
                    _read_server,
                    collector,
                    (name, execute, pipeline),
                    pattern,
                    scan_count,
                    failures,
                    task_group.cancel_scope,
                )
        if failures:
            raise failures[0]  # as itself: callers catch RedisError, not exception groups
    collector.channels.sort(key=lambda channel: channel.name)
    collector.groups.sort(key=lambda group: group.name)
    return Snapshot(
        prefix=prefix,
        cluster=cluster,
        servers=tuple(name for name, _, _ in servers),
        channels=tuple(collector.channels),
        groups=tuple(collector.groups),
        other_keys=collector.other,
        keys_scanned=collector.scanned,
        taken_at=taken_at,
        elapsed=time.monotonic() - started,
    )


def check_target(hosts: object, prefix: object) -> Hosts:
    """Parse ``hosts`` and check ``prefix`` as the layers would, without connecting.

    Raises:
        ConfigurationError: either is invalid (a prefix with braces, on a cluster).
    """
    configs = parse_hosts(hosts)
    prefix = require_prefix(prefix)
    if isinstance(configs, ClusterConfig):
        check_cluster_prefix(prefix)
    return configs


@contextlib.asynccontextmanager
async def _servers(configs: Hosts) -> AsyncIterator[list[tuple[str, _Execute, _Pipeline]]]:
    """``(name, execute, pipeline)`` for each server to scan, connected for the block."""
    async with contextlib.AsyncExitStack() as stack:
        servers: list[tuple[str, _Execute, _Pipeline]] = []
        if isinstance(configs, ClusterConfig):
            client = await stack.enter_async_context(open_cluster(configs.seeds))
            for node in await client.primaries():
                servers.append(
                    (
                        str(node.address),
                        functools.partial(client.execute_on, node),
                        functools.partial(_cluster_pipeline, client),
                    )
                )
        else:
            for config in configs:
                pool: ConnectionPool = await stack.enter_async_context(open_pool(config))
                servers.append(
                    (
                        str(config),
                        pool.execute,
                        functools.partial(pool.pipeline, raise_on_error=False),
                    )
                )
        yield servers


async def _cluster_pipeline(
    client: ClusterClient, commands: Sequence[Sequence[Arg]]
) -> list[object]:
    # Every command's second word is its key; redirections are followed per key.
    return await client.pipeline_by_key(
        [(command[1], command) for command in commands], raise_on_error=False, idempotent=True
    )


async def _read_server(
    collector: _Collector,
    server: tuple[str, _Execute, _Pipeline],
    pattern: bytes,
    scan_count: int,
    failures: list[Exception],
    scope: anyio.CancelScope,
) -> None:
    """Read one server's keys; a failure is recorded and stops the other servers' reading."""
    name, execute, pipeline = server
    seen: set[bytes] = set()  # SCAN may return a key twice (during a rehash)
    try:
        async for keys in scan_keys(execute, pattern, scan_count):
            fresh = [key for key in keys if key not in seen]
            seen.update(fresh)
            if fresh:
                await collector.read_batch(name, fresh, pipeline)
    except Exception as exc:
        failures.append(exc)
        scope.cancel()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _scored(reply: object) -> list[tuple[str, float]]:
    """``ZRANGE ... WITHSCORES`` as ``(member, score)`` pairs (RESP2 flat or RESP3 pairs)."""
    if not isinstance(reply, list):
        return []
    if reply and isinstance(reply[0], list):
        return [(_text(member), float(score)) for member, score in reply]
    return [(_text(reply[i]), float(reply[i + 1])) for i in range(0, len(reply) - 1, 2)]


def _ttl(reply: object) -> float | None:
    """``PTTL`` in seconds; None for no expiry (-1) or a key that is gone (-2)."""
    if isinstance(reply, int) and reply >= 0:
        return reply / 1000
    return None
