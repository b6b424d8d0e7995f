"""Where the queue layer's keys live: key names, and the server each key is on.

Owns naming every key of the queue layer and placing it; must not decide
anything about messages (that is the layer's). The queue layer never talks to
a connection pool or a cluster client directly. It asks a :class:`KeySpace`
for a channel's or a group's key and its :class:`KeyServer` (where that key
lives) and runs its commands there. There are two key spaces:

* :class:`ShardedKeySpace`, for ``hosts`` listing independent servers. The
  layout is channels_redis 4.x's, so both libraries can share the servers
  during a migration: a channel's messages live in the sorted set
  ``prefix + non_local_name(channel)`` (for a process-local channel,
  ``specific.<client>!<suffix>``, that is the key of its non-local part,
  shared by every local channel of the process); a group's members live in
  ``prefix + ":group:" + group``; and a key's server is the CRC32 ring
  position (:func:`~anyio_layer.common.sharding.consistent_hash`) of the name
  it was derived from. Unlike channels_redis, which hashes a process-local
  channel's *full* name on send but its *non-local* name on receive (so with
  several hosts a message can land on a shard nobody reads), every placement
  here hashes the non-local name.
* :class:`ClusterKeySpace`, for a Redis Cluster. The name part of every key
  is wrapped in a hash tag: a channel lives in ``prefix{name}`` and a group
  in ``prefix:group:{group}``, where ``name`` is the channel's non-local part
  (all process-local channels of a process share one key, as above). The tag
  encloses exactly what the ring hashes on independent servers, so a key's
  slot depends on the channel or group alone: channels spread evenly over
  the cluster, a prefix can never collapse them into one slot (prefixes with
  braces are refused), and every Lua script the layer runs touches keys of
  one slot, which Redis Cluster requires. These names differ from
  channels_redis's, which has no cluster support.

Commands marked ``idempotent`` may run twice without harm (adding a group
member again, removing one, reading members); on a cluster they are retried on
the slot's new owner after a connection error. Everything else (sends, pops,
putting a popped message back) fails with
:class:`~anyio_layer.exceptions.RedisConnectionError` instead, as on a
single server, because it may already have run.

Covered by ``tests/test_queue_layer.py`` (placement over several servers) and
``tests/test_queue_cluster.py``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import anyio

from ..common.sharding import consistent_hash
from ..exceptions import ConfigurationError, LayerClosedError, ProtocolError, RedisError
from ..messages import non_local_name
from ..redis.cluster import ClusterClient, key_slot
from ..redis.pool import ConnectionPool
from ..redis.protocol import Arg
from ..redis.scripts import Script

__all__ = [
    "ClusterKeySpace",
    "KeyServer",
    "KeySpace",
    "ShardedKeySpace",
    "check_cluster_prefix",
    "scan_keys",
    "scan_pattern",
]

#: Keys deleted per round trip by :meth:`KeySpace.delete_matching`.
_SCAN_COUNT = 1000

OnCancelledReply = Callable[[object], Awaitable[None]]


class KeyServer(Protocol):
    """Where one key lives (a server, or the node serving its slot): its commands run here."""

    async def execute(self, *args: Arg, idempotent: bool = False) -> object: ...

    async def pipeline(
        self, commands: Sequence[Sequence[Arg]], *, idempotent: bool = False
    ) -> list[object]: ...

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> object: ...

    async def execute_blocking(
        self, *args: Arg, on_cancelled_reply: OnCancelledReply | None = None
    ) -> object: ...


class KeySpace(Protocol):
    """Names the queue layer's keys and says where each one lives."""

    prefix: str

    def channel_key(self, channel: str) -> bytes: ...

    def group_key(self, group: str) -> bytes: ...

    def channel(self, channel: str) -> tuple[bytes, KeyServer]:
        """The key holding ``channel``'s messages, and where it lives."""
        ...

    def group(self, group: str) -> tuple[bytes, KeyServer]:
        """The key holding ``group``'s members, and where it lives."""
        ...

    def shard_of(self, name: str) -> int:
        """channels_redis's ``consistent_hash``: the index of the server ``name`` lives on."""
        ...

    async def eval_batched(
        self,
        script: Script,
        keys: Mapping[bytes, str],
        args_for: Callable[[list[bytes]], Sequence[Arg]],
    ) -> list[object]:
        """Run ``script`` over ``keys`` with one round trip per server involved.

        ``keys`` maps each key to a channel stored in it. The keys are split
        into batches that one script call may touch together (one per server,
        or per cluster slot); each batch runs as ``script(batch,
        args_for(batch))``, and the replies come back in no particular order.
        """
        ...

    async def run_for_groups(self, commands: Sequence[tuple[str, Sequence[Arg]]]) -> list[object]:
        """Run ``(group, command)`` pairs, each on its group key's server, in one round trip each.

        If a server fails, its error is raised (the first one, unwrapped) once
        the others have answered.

        One pipeline per server (or cluster node), all at once; replies come
        back in the order of ``commands``, error replies in place as
        :class:`~anyio_layer.redis.protocol.ErrorReply`. Commands of one
        server are written in the order given, in one write, so they run in
        that order relative to every other command of this process on it.
        """
        ...

    async def delete_matching(self) -> None:
        """Delete every key under the prefix, on every server, with ``SCAN`` and ``UNLINK``."""
        ...

    def add_connection_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on any server's (or node's) first connection, losses, reconnects."""
        ...

    def reconnects(self) -> int: ...

    def connection_waits(self) -> int: ...

    def describe(self) -> str: ...


# -- independent servers ---------------------------------------------------------------------


class _PoolKeyServer:
    """A :class:`KeyServer` on one server: its connection pool, minus the retry hints."""

    __slots__ = ("pool",)

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    async def execute(self, *args: Arg, idempotent: bool = False) -> object:
        return await self.pool.execute(*args)

    async def pipeline(
        self, commands: Sequence[Sequence[Arg]], *, idempotent: bool = False
    ) -> list[object]:
        return await self.pool.pipeline(commands)

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> object:
        return await self.pool.evalsha(script, keys, args)

    async def execute_blocking(
        self, *args: Arg, on_cancelled_reply: OnCancelledReply | None = None
    ) -> object:
        return await self.pool.execute_blocking(*args, on_cancelled_reply=on_cancelled_reply)


class ShardedKeySpace:
    """channels_redis's layout over independent servers, placed by its CRC32 ring."""

    def __init__(self, pools: Sequence[ConnectionPool], prefix: str) -> None:
        self.prefix = prefix
        self.pools = tuple(pools)
        self._servers = tuple(_PoolKeyServer(pool) for pool in pools)
        self._ring_size = len(self.pools)

    def channel_key(self, channel: str) -> bytes:
        return (self.prefix + non_local_name(channel)).encode()

    def group_key(self, group: str) -> bytes:
        return f"{self.prefix}:group:{group}".encode()

    def channel(self, channel: str) -> tuple[bytes, KeyServer]:
        return self.channel_key(channel), self._servers[self._channel_shard(channel)]

    def group(self, group: str) -> tuple[bytes, KeyServer]:
        return self.group_key(group), self._servers[consistent_hash(group, self._ring_size)]

    def shard_of(self, name: str) -> int:
        return self._channel_shard(name)

    def _channel_shard(self, channel: str) -> int:
        """The ring position of the channel's non-local name, for send and receive alike."""
        return consistent_hash(non_local_name(channel), self._ring_size)

    async def eval_batched(
        self,
        script: Script,
        keys: Mapping[bytes, str],
        args_for: Callable[[list[bytes]], Sequence[Arg]],
    ) -> list[object]:
        by_shard: dict[int, list[bytes]] = {}
        for key, channel in keys.items():
            by_shard.setdefault(self._channel_shard(channel), []).append(key)
        replies: list[object] = []

        async def run(shard: int, batch: list[bytes]) -> None:
            replies.append(await self.pools[shard].evalsha(script, batch, args_for(batch)))

        if len(by_shard) == 1:
            ((shard, batch),) = by_shard.items()
            await run(shard, batch)
        else:
            async with anyio.create_task_group() as task_group:
                for shard, batch in by_shard.items():
                    task_group.start_soon(run, shard, batch)
        return replies

    async def run_for_groups(self, commands: Sequence[tuple[str, Sequence[Arg]]]) -> list[object]:
        by_shard: dict[int, list[int]] = {}
        for index, (group, _) in enumerate(commands):
            by_shard.setdefault(consistent_hash(group, self._ring_size), []).append(index)
        replies: list[object] = [None] * len(commands)
        failures: list[Exception] = []

        async def run(shard: int, indexes: list[int]) -> None:
            batch = [commands[index][1] for index in indexes]
            try:
                shard_replies = await self.pools[shard].pipeline(batch, raise_on_error=False)
            except (RedisError, LayerClosedError) as exc:
                failures.append(exc)  # raised unwrapped below, not as an ExceptionGroup
                return
            for index, reply in zip(indexes, shard_replies, strict=True):
                replies[index] = reply

        if len(by_shard) == 1:
            ((shard, indexes),) = by_shard.items()
            await run(shard, indexes)
        elif by_shard:
            async with anyio.create_task_group() as task_group:
                for shard, indexes in by_shard.items():
                    task_group.start_soon(run, shard, indexes)
        if failures:
            raise failures[0]
        return replies

    async def delete_matching(self) -> None:
        pattern = scan_pattern(self.prefix)
        for pool in self.pools:
            async for keys in scan_keys(pool.execute, pattern):
                await pool.execute("UNLINK", *keys)

    def add_connection_listener(self, callback: Callable[[], None]) -> None:
        for pool in self.pools:
            pool.add_connection_listener(callback)

    def reconnects(self) -> int:
        return sum(pool.statistics().reconnects for pool in self.pools)

    def connection_waits(self) -> int:
        return sum(pool.statistics().connection_waits for pool in self.pools)

    def describe(self) -> str:
        return ", ".join(str(pool.config) for pool in self.pools)


# -- Redis Cluster ------------------------------------------------------------------------------


class _SlotKeyServer:
    """A :class:`KeyServer` for one key of a cluster: commands follow its slot wherever it goes."""

    __slots__ = ("_client", "_key")

    def __init__(self, client: ClusterClient, key: bytes) -> None:
        self._client = client
        self._key = key

    async def execute(self, *args: Arg, idempotent: bool = False) -> object:
        return await self._client.execute(*args, key=self._key, idempotent=idempotent)

    async def pipeline(
        self, commands: Sequence[Sequence[Arg]], *, idempotent: bool = False
    ) -> list[object]:
        return await self._client.pipeline(commands, key=self._key, idempotent=idempotent)

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> object:
        return await self._client.evalsha(script, keys, args)

    async def execute_blocking(
        self, *args: Arg, on_cancelled_reply: OnCancelledReply | None = None
    ) -> object:
        return await self._client.execute_blocking(
            *args, key=self._key, on_cancelled_reply=on_cancelled_reply
        )


def check_cluster_prefix(prefix: str) -> None:
    """Refuse a key prefix that would defeat the cluster layout's hash tags."""
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"prefix {prefix!r} contains a brace; on a Redis Cluster the layer wraps each "
            f"channel and group name in a hash tag ({{...}}), and a brace in the prefix "
            f"could put every key in one slot. Choose a prefix without '{{' and '}}'"
        )


class ClusterKeySpace:
    """Hash-tagged keys on a Redis Cluster (layout in the module docstring)."""

    def __init__(self, client: ClusterClient, prefix: str) -> None:
        check_cluster_prefix(prefix)
        self.prefix = prefix
        self._client = client

    def channel_key(self, channel: str) -> bytes:
        return f"{self.prefix}{{{non_local_name(channel)}}}".encode()

    def group_key(self, group: str) -> bytes:
        return f"{self.prefix}:group:{{{group}}}".encode()

    def channel(self, channel: str) -> tuple[bytes, KeyServer]:
        key = self.channel_key(channel)
        return key, _SlotKeyServer(self._client, key)

    def group(self, group: str) -> tuple[bytes, KeyServer]:
        key = self.group_key(group)
        return key, _SlotKeyServer(self._client, key)

    def shard_of(self, name: str) -> int:
        return 0  # one cluster is one logical server

    async def eval_batched(
        self,
        script: Script,
        keys: Mapping[bytes, str],
        args_for: Callable[[list[bytes]], Sequence[Arg]],
    ) -> list[object]:
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key), []).append(key)
        # One script call per slot, and every node gets its calls in one pipeline.
        return await self._client.pipeline_by_key(
            [
                (batch[0], self._client.script_command(script, batch, args_for(batch)))
                for batch in by_slot.values()
            ]
        )

    async def delete_matching(self) -> None:
        pattern = scan_pattern(self.prefix)
        for node in await self._client.primaries():
            execute = functools.partial(self._client.execute_on, node)
            async for keys in scan_keys(execute, pattern):
                # UNLINK of several keys needs them in one slot: one UNLINK per key,
                # each node's share in one pipeline.
                await self._client.pipeline_by_key(
                    [(key, ("UNLINK", key)) for key in keys], idempotent=True
                )

    async def run_for_groups(self, commands: Sequence[tuple[str, Sequence[Arg]]]) -> list[object]:
        # Retried after a connection error: the queue layer's renewals are idempotent
        # and it repairs a discard that a late retry could have undone (see .leases).
        return await self._client.pipeline_by_key(
            [(self.group_key(group), command) for group, command in commands],
            raise_on_error=False,
            idempotent=True,
        )

    def add_connection_listener(self, callback: Callable[[], None]) -> None:
        self._client.add_connection_listener(callback)

    def reconnects(self) -> int:
        return sum(node.reconnects for node in self._client.statistics().nodes.values())

    def connection_waits(self) -> int:
        return self._client.statistics().connection_waits

    def describe(self) -> str:
        return f"cluster {self._client!r}"


def scan_pattern(prefix: str) -> bytes:
    """A SCAN MATCH pattern for every key that starts with ``prefix`` (glob characters escaped)."""
    escaped = "".join("\\" + char if char in "*?[]\\" else char for char in prefix)
    return (escaped + "*").encode()


async def scan_keys(
    execute: Callable[..., Awaitable[object]], pattern: bytes, count: int = _SCAN_COUNT
) -> AsyncIterator[list[bytes]]:
    """The keys of one server that match ``pattern``, a ``SCAN ... COUNT count`` batch at a time."""
    cursor: object = b"0"
    while True:
        reply = await execute("SCAN", cursor, "MATCH", pattern, "COUNT", count)
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bytes)):
            raise ProtocolError(f"unexpected SCAN reply {reply!r:.100}")
        cursor, keys = reply
        if isinstance(keys, list) and keys:
            yield [key for key in keys if isinstance(key, bytes)]
        if cursor == b"0":
            return
