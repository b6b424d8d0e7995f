"""Faults and slot moves on a running test cluster: kill, failover, restart, migrate.

Owns :class:`ClusterOperations`, the part of :class:`~.cluster.RedisCluster`
that changes a running cluster: crashing and restarting nodes, waiting for or
forcing a failover, migrating a slot (``SETSLOT``, ``MIGRATE``) and
``FLUSHALL``. It creates no cluster (:mod:`.cluster` does) and parses no
reply (:mod:`.cluster_view` and :mod:`.cluster_nodes` do). Covered by
tests/test_cluster_client.py and the cluster tests of the layers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import anyio
import anyio.to_thread

from .cluster_view import ClusterView
from .errors import RedisReplyError
from .lifecycle import apoll, poll
from .server import RedisServer

__all__ = ["ClusterOperations"]


class ClusterOperations(ClusterView):
    """Faults, failovers and slot migration (see :class:`~.cluster.RedisCluster`)."""

    # -- faults ------------------------------------------------------------------

    def kill(self, node: RedisServer) -> None:
        """Crash ``node`` (SIGKILL). :meth:`restart_node` brings it back.

        Its id and the slots it served are remembered first, for
        :meth:`wait_for_failover`.
        """
        node_id = self.node_id(node)
        self._slots_before_kill[node_id] = self._slots_of(node_id)
        node.kill()

    def _slots_of(self, node_id: str) -> list[tuple[int, int]]:
        return [slots for slots, owner in self.slot_map().items() if owner == node_id]

    def wait_for_failover(self, old_primary: RedisServer, timeout: float = 15.0) -> RedisServer:
        """Wait until another node took over the slots of ``old_primary`` (killed); return it.

        Returns once every running node reports ``cluster_state:ok``, all
        agree on the slot map, and no slot is served by ``old_primary``.
        Returns the node that now serves the first of its former slots
        (normally its promoted replica).

        Raises:
            TimeoutError: no failover in time.
            ValueError: ``old_primary`` served no slots.
        """
        check = self._failover_check(old_primary)
        return poll(check, timeout, f"a failover away from {old_primary!r}")

    def _failover_check(self, old_primary: RedisServer) -> Callable[[], RedisServer | None]:
        old_id = self.node_id(old_primary)
        old_slots = self._slots_before_kill.get(old_id) or self._slots_of(old_id)
        if not old_slots:
            raise ValueError(f"{old_primary!r} served no slots")
        first_slot = old_slots[0][0]

        def check() -> RedisServer | None:
            view = self._stable_view(replicas_synced=False)
            if view is None or old_id in view.values():
                return None
            for (first, last), owner in view.items():
                if first <= first_slot <= last:
                    return self.node_by_id(owner)
            return None

        return check

    def manual_failover(self, replica: RedisServer, timeout: float = 15.0) -> None:
        """Promote ``replica`` with ``CLUSTER FAILOVER`` (its primary stays up and is demoted).

        A manual failover can time out on the server side and silently leave
        the roles as they were (Redis aborts it when the primary and replica
        do not agree within a few seconds, as happens right after an earlier
        failover); the command is then issued again, until ``replica`` is a
        primary or ``timeout`` passes.

        Raises:
            TimeoutError: ``replica`` was not promoted in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            replica.execute("CLUSTER", "FAILOVER")
            attempt_ends = min(time.monotonic() + 3.0, deadline)
            while time.monotonic() < attempt_ends:
                role = replica.execute("ROLE")
                if isinstance(role, list) and role and role[0] == b"master":
                    return
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{replica!r} was not promoted within {timeout:g} s")

    def restart_node(self, node: RedisServer, timeout: float = 15.0) -> None:
        """Start a killed or stopped node again and wait until the cluster is stable.

        A former primary rejoins as a replica of the node that replaced it
        (its ``nodes.conf`` survives in its directory); waits until it is in
        sync.
        """
        node.start()
        self.wait_until_stable(timeout, replicas_synced=True)

    # -- slot migration -------------------------------------------------------------

    def begin_migration(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its owner; return the owner.

        From now on the owner answers ``ASK`` for keys of the slot it does not
        have. Follow with :meth:`move_slot_keys` and :meth:`finish_migration`.
        """
        source = self.node_for_slot(slot)
        if source is target:
            raise ValueError(f"{target!r} already serves slot {slot}")
        target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def move_slot_keys(
        self,
        slot: int,
        source: RedisServer,
        target: RedisServer,
        *,
        batch: int = 100,
        pause: float = 0.0,
        timeout_ms: int = 5000,
    ) -> int:
        """Move every key of ``slot`` from ``source`` to ``target`` with ``MIGRATE ... KEYS``.

        Repeats until ``CLUSTER GETKEYSINSLOT`` returns nothing, so keys
        written meanwhile move too. ``pause`` sleeps between batches (to make
        a migration last, in tests). Returns the number of keys moved.
        """
        moved = 0
        host, port = target.address
        auth: list[str] = []
        if self.password is not None:
            auth = (
                ["AUTH2", self.username, self.password]
                if self.username is not None
                else ["AUTH", self.password]
            )
        while True:
            keys = source.execute("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not isinstance(keys, list) or not keys:
                return moved
            source.execute("MIGRATE", host, port, "", 0, timeout_ms, *auth, "KEYS", *keys)
            moved += len(keys)
            if pause:
                time.sleep(pause)

    def finish_migration(self, slot: int, target: RedisServer, source: RedisServer) -> None:
        """``CLUSTER SETSLOT slot NODE target`` on the target, the source, then everyone else.

        The order is the one the Redis documentation prescribes; the remaining
        nodes would learn it by gossip anyway, this only makes it immediate.
        """
        target_id = self.node_id(target)
        ordered = [target, source] + [
            node for node in self.running_nodes() if node is not target and node is not source
        ]
        for node in ordered:
            if not node.running:
                continue
            try:
                node.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            except RedisReplyError:
                # Replicas refuse SETSLOT; they follow their primary.
                if node is target or node is source:
                    raise

    def migrate_slot(
        self,
        slot: int,
        target: RedisServer,
        *,
        batch: int = 100,
        pause: float = 0.0,
        timeout: float = 15.0,
    ) -> int:
        """Move ``slot`` and its keys to the primary ``target``, as ``redis-cli --cluster reshard``.

        ``SETSLOT IMPORTING``/``MIGRATING``, ``MIGRATE`` of the keys in
        batches of ``batch`` with the ``KEYS`` option (repeated until none
        is left, so concurrent writers are fine), then ``SETSLOT NODE`` on
        the target, the source and every other node, and a wait until all
        nodes agree. Returns the number of keys moved.
        """
        source = self.begin_migration(slot, target)
        moved = self.move_slot_keys(slot, source, target, batch=batch, pause=pause)
        self.finish_migration(slot, target, source)
        self.wait_until_stable(timeout)
        return moved

    def flushall(self) -> None:
        """``FLUSHALL`` and ``SCRIPT FLUSH`` on every running primary."""
        for node in self.primaries():
            node.execute("FLUSHALL")
            node.execute("SCRIPT", "FLUSH")

    # -- async wrappers ----------------------------------------------------------------

    async def amigrate_slot(
        self, slot: int, target: RedisServer, *, batch: int = 100, pause: float = 0.0
    ) -> int:
        """:meth:`migrate_slot` in a worker thread."""
        return await anyio.to_thread.run_sync(
            functools.partial(self.migrate_slot, slot, target, batch=batch, pause=pause)
        )

    async def await_for_failover(self, old_primary: RedisServer) -> RedisServer:
        """Async :meth:`wait_for_failover`, without a time limit: use :func:`anyio.fail_after`."""
        check = await anyio.to_thread.run_sync(self._failover_check, old_primary)
        return await apoll(check)

    async def arestart_node(self, node: RedisServer) -> None:
        """Async :meth:`restart_node`, without a time limit: use :func:`anyio.fail_after`."""
        await anyio.to_thread.run_sync(node.start)
        await self.await_until_stable(replicas_synced=True)
