"""The frozen, validated descriptions of the servers a layer talks to.

Owns the value types: addresses (:class:`TCPAddress`, :class:`UnixAddress`),
:class:`ConnectionOptions` and :class:`TLSOptions`, and the three kinds of
entry, :class:`ServerConfig`, :class:`SentinelConfig` and
:class:`ClusterConfig` (plus the :data:`HostConfig` and :data:`Hosts`
aliases). They are plain frozen dataclasses: building them from the
``hosts`` setting, and validating it, is :mod:`anyio_layer.redis.hosts`'s job,
and nothing here does I/O. Passwords are kept out of every ``repr``.
Tested in ``tests/test_hosts.py``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "CLUSTER_SUFFIX",
    "DEFAULT_RECONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "Address",
    "ClusterConfig",
    "ConnectionOptions",
    "HostConfig",
    "Hosts",
    "SentinelConfig",
    "ServerConfig",
    "TCPAddress",
    "TLSOptions",
    "UnixAddress",
]

#: What a URL scheme ends with to mark a Redis Cluster seed (``redis+cluster://``).
CLUSTER_SUFFIX = "+cluster"
#: Default ``socket_timeout``: how long a non-blocking command waits for its reply.
#: Redis answers in well under a millisecond; ten seconds leaves room for a busy
#: server and a slow network while still noticing a silent one.
DEFAULT_SOCKET_TIMEOUT = 10.0
#: Default ``reconnect_timeout``: how long a command waits for a connection. A
#: restarting server or a Sentinel failover is usually back within a few seconds,
#: so short outages delay callers instead of failing them. It stays under daphne's
#: ``websocket_connect_timeout`` (5 s), so a consumer that joins its groups before
#: ``accept()`` (the Channels tutorial's pattern) still answers its handshake.
DEFAULT_RECONNECT_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class TCPAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


Address: TypeAlias = TCPAddress | UnixAddress


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """TLS settings, with redis-py's option names (minus the ``ssl_`` prefix)."""

    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    ca_certs: str | None = None
    ca_path: str | None = None
    ca_data: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    password: str | None = field(default=None, repr=False)
    check_hostname: bool | None = None
    server_hostname: str | None = None

    def create_context(self) -> ssl.SSLContext:
        """Build the client-side ``SSLContext`` these options describe."""
        context = ssl.create_default_context(
            cafile=self.ca_certs, capath=self.ca_path, cadata=self.ca_data
        )
        check_hostname = self.check_hostname
        if check_hostname is None:
            check_hostname = self.cert_reqs == ssl.CERT_REQUIRED
        context.check_hostname = check_hostname and self.cert_reqs != ssl.CERT_NONE
        context.verify_mode = self.cert_reqs
        if self.certfile is not None:
            context.load_cert_chain(self.certfile, self.keyfile, self.password)
        return context


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How to talk to one server once its address is known."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    client_name: str | None = None
    #: Seconds allowed for TCP/TLS connect plus the handshake. ``None`` waits forever.
    socket_connect_timeout: float | None = 10.0
    #: Seconds a non-blocking command may wait for its reply, after which the
    #: shared connection is closed and every command waiting on it fails with
    #: ``RedisTimeoutError``. ``None`` waits forever (a silent server then
    #: hangs every caller). Blocking commands and subscribers have their own
    #: liveness checks.
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT
    tls: TLSOptions | None = None
    #: Upper bound on dedicated connections (blocking commands, subscribers).
    max_connections: int | None = None
    #: Seconds a non-blocking command waits for a connection while the server
    #: refuses connections or is being reconnected to, before failing with
    #: ``ConnectionUnavailableError``; ``0`` fails at once. Only commands that
    #: were never written wait: one that may have reached the server is not sent again.
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """A single server reached at a fixed address."""

    address: Address
    options: ConnectionOptions = ConnectionOptions()
    #: Whether this entry was marked as a seed node of a Redis Cluster.
    cluster: bool = False

    def __str__(self) -> str:
        scheme = "rediss" if self.options.tls else "redis"
        if isinstance(self.address, UnixAddress):
            return f"unix://{self.address.path}?db={self.options.db}"
        if self.cluster:
            return f"{scheme}{CLUSTER_SUFFIX}://{self.address}"
        return f"{scheme}://{self.address}/{self.options.db}"


@dataclass(frozen=True, slots=True)
class SentinelConfig:
    """A primary found through Redis Sentinel."""

    sentinels: tuple[TCPAddress, ...]
    master_name: str
    options: ConnectionOptions = ConnectionOptions()
    sentinel_options: ConnectionOptions = ConnectionOptions()

    def __str__(self) -> str:
        sentinels = ",".join(str(address) for address in self.sentinels)
        return f"sentinel://{sentinels}/{self.master_name}"


HostConfig: TypeAlias = ServerConfig | SentinelConfig


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A Redis Cluster, reached through one or more of its nodes (the seeds).

    Every seed uses the same connection options (TLS, credentials, timeouts);
    they apply to every node of the cluster.
    """

    seeds: tuple[ServerConfig, ...]

    @property
    def options(self) -> ConnectionOptions:
        return self.seeds[0].options

    def __str__(self) -> str:
        return ", ".join(str(seed) for seed in self.seeds)


#: What ``hosts`` describes: independent servers (sharded by the client), or one cluster.
Hosts: TypeAlias = tuple[HostConfig, ...] | ClusterConfig
