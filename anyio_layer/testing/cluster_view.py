"""The handle on a running test cluster: its state, what its nodes report, when it is stable.

Owns :class:`ClusterView`, the base of :class:`~.cluster.RedisCluster`: the
nodes and credentials, the cluster's own TLS directory, closing it all, and the
queries (node ids, slot map, primaries and replicas, ``CLUSTER INFO``) and the
wait until every node agrees. It starts no node and changes no cluster state:
creating is :mod:`.cluster`'s, failover and migration :mod:`.cluster_operations`'s.
Covered by tests/test_cluster_client.py and the cluster tests of the layers.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote

from .binaries import redis_server_version
from .cluster_nodes import CLUSTER_SLOTS, ClusterNodeInfo, parse_cluster_nodes
from .errors import RedisServerError
from .lifecycle import apoll, close_all, poll
from .server import RedisServer
from .tls import TLSFiles, generate_tls_files

__all__ = ["ClusterView"]

_Self = TypeVar("_Self", bound="ClusterView")


class ClusterView:
    """State, queries, health and closing of a test cluster (see :class:`~.cluster.RedisCluster`).

    Its subclasses in this package use, as their internal interface,
    ``_make_certificates()``, ``_stable_view()`` and the ``_slots_before_kill``
    memo (``{node id: slot ranges}`` of the primaries killed with ``kill()``).
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
        self._tls_cleanup: weakref.finalize[..., ClusterView] | None = None
        self._closed = False

    def _make_certificates(self) -> None:
        """Make the cluster's CA and certificates, in a directory deleted by :meth:`close`."""
        directory = Path(tempfile.mkdtemp(prefix="anyio-layer-cluster-tls-"))
        # The safety net, as for the nodes: deleted if the handle is lost, or at exit.
        self._tls_cleanup = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        self.tls = generate_tls_files(directory)

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
        return parse_cluster_nodes(reply)

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

    async def await_until_stable(self, *, replicas_synced: bool = False) -> None:
        """Async :meth:`wait_until_stable`, without a time limit: use :func:`anyio.fail_after`."""
        self._check_open()
        await apoll(functools.partial(self._stable_view, replicas_synced))

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Stop every node and delete its directory (and the certificates). Idempotent."""
        self._closed = True
        try:
            close_all(self.nodes)
        finally:
            if self._tls_cleanup is not None:
                self._tls_cleanup()

    def __enter__(self: _Self) -> _Self:
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
