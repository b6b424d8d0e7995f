"""Parse the ``hosts`` setting into frozen, validated server descriptions.

Accepted forms are exactly the ones ``channels_redis`` documents, so a Django
``CHANNEL_LAYERS`` entry can be reused unchanged:

* a URL: ``redis://``, ``rediss://`` (TLS), ``unix://``, and the Valkey
  spellings ``valkey://`` / ``valkeys://``; credentials, database and options
  may be given in the URL (``redis://user:pass@host:6379/2?socket_timeout=5``);
* a ``(host, port)`` tuple or list;
* a dict with ``address`` (a URL) or ``host``/``port`` (or ``unix_socket_path``)
  plus connection options (``username``, ``password``, ``db``,
  ``socket_connect_timeout``, ``ssl_cert_reqs``, ``ssl_ca_certs``, ...);
* a Sentinel dict: ``sentinels`` (a list of ``(host, port)``),
  ``master_name``, optional ``sentinel_kwargs`` (options for talking to the
  sentinels), plus connection options for the primary.

A **Redis Cluster** (or Valkey Cluster) is given by its seed nodes, each
marked as such: a URL with ``+cluster`` in its scheme
(``redis+cluster://``, ``rediss+cluster://``, ``valkey+cluster://``,
``valkeys+cluster://``), or any TCP entry above with ``"cluster": True`` (as a
dict key, or ``?cluster=true`` in a URL). Every entry of ``hosts`` then names a
node of the same cluster (one is enough; several help when some are down),
and :func:`parse_hosts` returns one :class:`ClusterConfig`. Mixing cluster
and non-cluster entries is an error, and so is a database other than 0.

Anything else raises :class:`~anyio_layer.exceptions.ConfigurationError`
naming the entry and saying what is allowed. Passwords never appear in error
messages or reprs.

This module owns the parsing of entries (URLs, pairs, dicts, Sentinel dicts,
cluster seeds); the options of an entry are parsed by
:mod:`anyio_layer.redis.host_options`, secrets are hidden from messages by
:mod:`anyio_layer.redis.redaction`, and the types it builds are defined in
:mod:`anyio_layer.redis.config` (and re-exported here, since callers of
:func:`parse_hosts` use them). It does no I/O: whether a server answers is
the connection's business. Tested in ``tests/test_hosts.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import ConfigurationError
from .config import (
    CLUSTER_SUFFIX,
    DEFAULT_SOCKET_TIMEOUT,
    Address,
    ClusterConfig,
    ConnectionOptions,
    HostConfig,
    Hosts,
    SentinelConfig,
    ServerConfig,
    TCPAddress,
    TLSOptions,
    UnixAddress,
)
from .host_options import parse_bool, parse_options, parse_port
from .redaction import describe, redact, redact_url

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_SOCKET_TIMEOUT",
    "ClusterConfig",
    "ConnectionOptions",
    "HostConfig",
    "Hosts",
    "SentinelConfig",
    "ServerConfig",
    "TCPAddress",
    "TLSOptions",
    "UnixAddress",
    "as_cluster_seed",
    "parse_host",
    "parse_hosts",
]

DEFAULT_HOST = "redis://localhost:6379"

_TCP_SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}
_UNIX_SCHEMES = {"unix", "redis+unix", "valkey+unix"}


def parse_hosts(hosts: object) -> Hosts:
    """Parse the ``hosts`` setting (``None`` or empty means ``redis://localhost:6379``).

    Returns one config per server (the layers shard over them), or a single
    :class:`ClusterConfig` when the entries are seeds of a Redis Cluster.
    """
    if isinstance(hosts, ClusterConfig):
        return hosts
    if hosts is None or (isinstance(hosts, (list, tuple)) and not hosts):
        return (parse_host(DEFAULT_HOST),)
    if isinstance(hosts, (str, bytes, Mapping)):
        raise ConfigurationError(
            f"hosts must be a list of Redis hosts, even if there is only one; "
            f"got {describe(hosts)}. Write hosts=[{describe(hosts)}]."
        )
    if not isinstance(hosts, (list, tuple)):
        raise ConfigurationError(
            f"hosts must be a list of URLs, (host, port) tuples or dicts, "
            f"not {type(hosts).__name__}"
        )
    configs = tuple(parse_host(entry) for entry in hosts)
    seeds = [config for config in configs if isinstance(config, ServerConfig) and config.cluster]
    if not seeds:
        return configs
    if len(seeds) != len(configs):
        others = ", ".join(str(config) for config in configs if config not in seeds)
        raise ConfigurationError(
            f"hosts mixes Redis Cluster seeds ({', '.join(map(str, seeds))}) with other "
            f"servers ({others}); a layer uses either one cluster or independent servers. "
            f"Mark every entry as a seed of the cluster, or none"
        )
    first = seeds[0]
    for seed in seeds[1:]:
        if seed.options != first.options:
            differing = ", ".join(
                name
                for name in ConnectionOptions.__dataclass_fields__
                if getattr(seed.options, name) != getattr(first.options, name)
            )
            raise ConfigurationError(
                f"the seeds of a Redis Cluster must all use the same connection options, "
                f"since they apply to every node of the cluster; {seed} differs from "
                f"{first} in: {differing}"
            )
    return ClusterConfig(tuple(seeds))


def parse_host(entry: object) -> HostConfig:
    """Parse one entry of ``hosts`` (an already parsed config is returned as it is)."""
    if isinstance(entry, (ServerConfig, SentinelConfig)):
        return entry
    if isinstance(entry, str):
        return _from_url(entry, {}, entry)
    if isinstance(entry, (tuple, list)):
        if len(entry) != 2:
            raise ConfigurationError(
                f"hosts entry {entry!r} must be a (host, port) pair, "
                f"not a sequence of {len(entry)} items"
            )
        host, port = entry
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"hosts entry {entry!r}: host must be a non-empty string")
        return ServerConfig(TCPAddress(host, parse_port(port, entry)), parse_options({}, entry))
    if isinstance(entry, Mapping):
        return _from_dict(dict(entry))
    raise ConfigurationError(
        f"hosts entry {describe(entry)} is not valid: use a URL string "
        f"(redis://, rediss://, unix://, valkey://, valkeys://), "
        f"a (host, port) tuple, or a dict"
    )


def _from_dict(entry: dict[str, Any]) -> HostConfig:
    shown = redact(entry)
    if "cluster" in entry:
        cluster = parse_bool(entry.pop("cluster"), "cluster", shown)
        config = _from_dict(entry)
        return as_cluster_seed(config, shown) if cluster else config
    if "sentinels" in entry or "master_name" in entry:
        return _sentinel(entry, shown)
    if "address" in entry:
        address = entry.pop("address")
        if isinstance(address, (tuple, list)):
            return _from_pair(address, entry, shown)
        if not isinstance(address, str):
            raise ConfigurationError(f"hosts entry {shown}: address must be a URL string")
        return _from_url(address, entry, shown)
    if "unix_socket_path" in entry:
        path = entry.pop("unix_socket_path")
        if not isinstance(path, str) or not path:
            raise ConfigurationError(f"hosts entry {shown}: unix_socket_path must be a string")
        return ServerConfig(UnixAddress(path), parse_options(entry, shown))
    if "host" in entry or "port" in entry:
        host = entry.pop("host", "localhost")
        port = entry.pop("port", 6379)
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"hosts entry {shown}: host must be a non-empty string")
        return ServerConfig(TCPAddress(host, parse_port(port, shown)), parse_options(entry, shown))
    raise ConfigurationError(
        f"hosts entry {shown} has no address: give 'address' (a URL), "
        f"'host' and 'port', 'unix_socket_path', or 'sentinels' and 'master_name'"
    )


def _from_pair(
    pair: tuple[Any, ...] | list[Any], options: dict[str, Any], shown: object
) -> HostConfig:
    if len(pair) != 2 or not isinstance(pair[0], str):
        raise ConfigurationError(f"hosts entry {shown}: address must be a URL or (host, port)")
    return ServerConfig(
        TCPAddress(pair[0], parse_port(pair[1], shown)), parse_options(options, shown)
    )


def _sentinel(entry: dict[str, Any], shown: object) -> SentinelConfig:
    sentinels = entry.pop("sentinels", None)
    master_name = entry.pop("master_name", None)
    if not isinstance(master_name, str) or not master_name:
        raise ConfigurationError(
            f"Sentinel hosts entry {shown} needs 'master_name', the name of the "
            f"monitored primary (a non-empty string)"
        )
    if not isinstance(sentinels, (list, tuple)) or not sentinels:
        raise ConfigurationError(
            f"Sentinel hosts entry {shown} needs 'sentinels', a non-empty list of "
            f"(host, port) tuples"
        )
    addresses = []
    for sentinel in sentinels:
        if isinstance(sentinel, str):
            parsed = _from_url(sentinel, {}, shown)
            if not isinstance(parsed, ServerConfig) or not isinstance(parsed.address, TCPAddress):
                raise ConfigurationError(f"Sentinel hosts entry {shown}: {sentinel!r} is not TCP")
            addresses.append(parsed.address)
        elif isinstance(sentinel, (list, tuple)) and len(sentinel) == 2:
            if not isinstance(sentinel[0], str) or not sentinel[0]:
                raise ConfigurationError(f"Sentinel hosts entry {shown}: bad sentinel {sentinel!r}")
            addresses.append(TCPAddress(sentinel[0], parse_port(sentinel[1], shown)))
        else:
            raise ConfigurationError(
                f"Sentinel hosts entry {shown}: each sentinel must be a (host, port) "
                f"tuple, not {describe(sentinel)}"
            )
    sentinel_kwargs = entry.pop("sentinel_kwargs", None) or {}
    if not isinstance(sentinel_kwargs, Mapping):
        raise ConfigurationError(f"Sentinel hosts entry {shown}: sentinel_kwargs must be a dict")
    if "address" in entry:
        raise ConfigurationError(
            f"Sentinel hosts entry {shown} must not also have 'address': the "
            f"primary's address comes from the sentinels"
        )
    return SentinelConfig(
        sentinels=tuple(addresses),
        master_name=master_name,
        options=parse_options(entry, shown),
        sentinel_options=parse_options(dict(sentinel_kwargs), shown),
    )


def as_cluster_seed(config: HostConfig, shown: object = None) -> ServerConfig:
    """``config`` marked as a Redis Cluster seed, if it can be one.

    Raises:
        ConfigurationError: ``config`` is a Sentinel entry, a unix socket, or
            selects a database other than 0 (``shown`` names it in the message).
    """
    shown = config if shown is None else shown
    if isinstance(config, SentinelConfig):
        raise ConfigurationError(
            f"hosts entry {shown} is a Sentinel entry marked as a cluster seed; "
            f"Redis Cluster does not use Sentinel"
        )
    if not isinstance(config.address, TCPAddress):
        raise ConfigurationError(
            f"hosts entry {shown} is a unix socket marked as a cluster seed; "
            f"cluster nodes are reached over TCP"
        )
    if config.options.db != 0:
        raise ConfigurationError(
            f"hosts entry {shown} selects database {config.options.db}, but a Redis Cluster "
            f"only has database 0"
        )
    return ServerConfig(config.address, config.options, cluster=True)


def _from_url(url: str, extra: dict[str, Any], shown: object) -> ServerConfig:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        cluster = scheme.endswith(CLUSTER_SUFFIX) and scheme != CLUSTER_SUFFIX
        if cluster:
            scheme = scheme.removesuffix(CLUSTER_SUFFIX)
        port_value = parts.port if scheme in _TCP_SCHEMES else None
    except ValueError as exc:
        raise ConfigurationError(
            f"hosts entry {redact_url(url)!r} is not a valid URL: {exc}"
        ) from None
    options: dict[str, Any] = {}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        options[key] = value
    if "cluster" in options:
        flag = parse_bool(options.pop("cluster"), "cluster", shown)
        if cluster and not flag:
            raise ConfigurationError(
                f"hosts entry {shown} says cluster=false, but its scheme marks it as a "
                f"cluster seed; use redis:// (or rediss://) for a server that is not"
            )
        cluster = flag
    if scheme in _TCP_SCHEMES:
        if not parts.hostname:
            raise ConfigurationError(f"hosts entry {redact_url(url)!r} has no host name")
        path = parts.path.strip("/")
        if path:
            options.setdefault("db", path)
        if _TCP_SCHEMES[scheme]:
            options.setdefault("ssl", True)
        port = 6379 if port_value is None else parse_port(port_value, shown)
        address: Address = TCPAddress(parts.hostname, port)
    elif scheme in _UNIX_SCHEMES:
        if not parts.path:
            raise ConfigurationError(f"hosts entry {redact_url(url)!r} has no socket path")
        address = UnixAddress(unquote(parts.path))
    elif not scheme:
        raise ConfigurationError(
            f"hosts entry {redact_url(url)!r} is not a URL (no scheme); "
            f"write it as redis://host:port or unix:///path/to/socket"
        )
    else:
        allowed = ", ".join(f"{s}://" for s in [*_TCP_SCHEMES, "unix"])
        allowed += ", and " + ", ".join(f"{s}{CLUSTER_SUFFIX}://" for s in _TCP_SCHEMES)
        raise ConfigurationError(
            f"hosts entry {redact_url(url)!r} has an unknown scheme {parts.scheme!r}; "
            f"allowed schemes: {allowed}"
        )
    options.update(extra)  # explicit dict options win over the URL's
    config = ServerConfig(address, parse_options(options, shown))
    return as_cluster_seed(config, shown) if cluster else config
