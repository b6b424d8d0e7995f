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
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import ConfigurationError

__all__ = [
    "DEFAULT_HOST",
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
_CLUSTER_SUFFIX = "+cluster"

_CERT_REQS = {
    None: ssl.CERT_NONE,
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    ssl.CERT_NONE: ssl.CERT_NONE,
    ssl.CERT_OPTIONAL: ssl.CERT_OPTIONAL,
    ssl.CERT_REQUIRED: ssl.CERT_REQUIRED,
}

# redis-py connection options that have no meaning here. They are accepted so
# that existing channels_redis configurations keep working, and ignored.
_IGNORED_OPTIONS = frozenset(
    {
        "encoding",
        "encoding_errors",
        "health_check_interval",
        "retry",
        "retry_on_error",
        "retry_on_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "socket_type",
        "connection_class",
        "single_connection_client",
        "lib_name",
        "lib_version",
    }
)


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
    #: Seconds a non-blocking command may wait for its reply. ``None`` waits forever.
    socket_timeout: float | None = None
    tls: TLSOptions | None = None
    #: Upper bound on dedicated connections (blocking commands, subscribers).
    max_connections: int | None = None


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
            return f"{scheme}{_CLUSTER_SUFFIX}://{self.address}"
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
            f"got {_describe(hosts)}. Write hosts=[{_describe(hosts)}]."
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
        return ServerConfig(TCPAddress(host, _port(port, entry)), _options({}, entry))
    if isinstance(entry, Mapping):
        return _from_dict(dict(entry))
    raise ConfigurationError(
        f"hosts entry {_describe(entry)} is not valid: use a URL string "
        f"(redis://, rediss://, unix://, valkey://, valkeys://), "
        f"a (host, port) tuple, or a dict"
    )


def _from_dict(entry: dict[str, Any]) -> HostConfig:
    shown = _redact(entry)
    if "cluster" in entry:
        cluster = _bool(entry.pop("cluster"), "cluster", shown)
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
        return ServerConfig(UnixAddress(path), _options(entry, shown))
    if "host" in entry or "port" in entry:
        host = entry.pop("host", "localhost")
        port = entry.pop("port", 6379)
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"hosts entry {shown}: host must be a non-empty string")
        return ServerConfig(TCPAddress(host, _port(port, shown)), _options(entry, shown))
    raise ConfigurationError(
        f"hosts entry {shown} has no address: give 'address' (a URL), "
        f"'host' and 'port', 'unix_socket_path', or 'sentinels' and 'master_name'"
    )


def _from_pair(
    pair: tuple[Any, ...] | list[Any], options: dict[str, Any], shown: object
) -> HostConfig:
    if len(pair) != 2 or not isinstance(pair[0], str):
        raise ConfigurationError(f"hosts entry {shown}: address must be a URL or (host, port)")
    return ServerConfig(TCPAddress(pair[0], _port(pair[1], shown)), _options(options, shown))


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
            addresses.append(TCPAddress(sentinel[0], _port(sentinel[1], shown)))
        else:
            raise ConfigurationError(
                f"Sentinel hosts entry {shown}: each sentinel must be a (host, port) "
                f"tuple, not {_describe(sentinel)}"
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
        options=_options(entry, shown),
        sentinel_options=_options(dict(sentinel_kwargs), shown),
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
        cluster = scheme.endswith(_CLUSTER_SUFFIX) and scheme != _CLUSTER_SUFFIX
        if cluster:
            scheme = scheme.removesuffix(_CLUSTER_SUFFIX)
        port_value = parts.port if scheme in _TCP_SCHEMES else None
    except ValueError as exc:
        raise ConfigurationError(
            f"hosts entry {_redact_url(url)!r} is not a valid URL: {exc}"
        ) from None
    options: dict[str, Any] = {}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        options[key] = value
    if "cluster" in options:
        flag = _bool(options.pop("cluster"), "cluster", shown)
        if cluster and not flag:
            raise ConfigurationError(
                f"hosts entry {shown} says cluster=false, but its scheme marks it as a "
                f"cluster seed; use redis:// (or rediss://) for a server that is not"
            )
        cluster = flag
    if scheme in _TCP_SCHEMES:
        if not parts.hostname:
            raise ConfigurationError(f"hosts entry {_redact_url(url)!r} has no host name")
        path = parts.path.strip("/")
        if path:
            options.setdefault("db", path)
        if _TCP_SCHEMES[scheme]:
            options.setdefault("ssl", True)
        address: Address = TCPAddress(parts.hostname, port_value or 6379)
    elif scheme in _UNIX_SCHEMES:
        if not parts.path:
            raise ConfigurationError(f"hosts entry {_redact_url(url)!r} has no socket path")
        address = UnixAddress(unquote(parts.path))
    elif not scheme:
        raise ConfigurationError(
            f"hosts entry {_redact_url(url)!r} is not a URL (no scheme); "
            f"write it as redis://host:port or unix:///path/to/socket"
        )
    else:
        allowed = ", ".join(f"{s}://" for s in [*_TCP_SCHEMES, "unix"])
        allowed += ", and " + ", ".join(f"{s}{_CLUSTER_SUFFIX}://" for s in _TCP_SCHEMES)
        raise ConfigurationError(
            f"hosts entry {_redact_url(url)!r} has an unknown scheme {parts.scheme!r}; "
            f"allowed schemes: {allowed}"
        )
    options.update(extra)  # explicit dict options win over the URL's
    config = ServerConfig(address, _options(options, shown))
    return as_cluster_seed(config, shown) if cluster else config


def _options(raw: dict[str, Any], shown: object) -> ConnectionOptions:
    raw = dict(raw)
    tls_raw = {key[4:]: raw.pop(key) for key in list(raw) if key.startswith("ssl_")}
    use_tls = _bool(raw.pop("ssl", False), "ssl", shown) or bool(tls_raw)
    for key in _IGNORED_OPTIONS & raw.keys():
        del raw[key]
    if raw.pop("decode_responses", False) not in (False, "false", "False", "0", 0):
        raise ConfigurationError(
            f"hosts entry {shown}: decode_responses must be false; messages are binary"
        )
    # Connections always speak RESP2 (pub/sub uses its own connections), so
    # redis-py's ``protocol`` option is validated for typos and otherwise ignored.
    protocol = raw.pop("protocol", None)
    if protocol not in (None, 2, 3, "2", "3"):
        raise ConfigurationError(f"hosts entry {shown}: protocol must be 2 or 3")
    options = ConnectionOptions(
        username=_opt_str(raw.pop("username", None), "username", shown),
        password=_opt_str(raw.pop("password", None), "password", shown),
        db=_int(raw.pop("db", 0), "db", shown, minimum=0),
        client_name=_opt_str(raw.pop("client_name", None), "client_name", shown),
        socket_connect_timeout=_timeout(
            raw.pop("socket_connect_timeout", 10.0), "socket_connect_timeout", shown
        ),
        socket_timeout=_timeout(raw.pop("socket_timeout", None), "socket_timeout", shown),
        max_connections=_opt_int(raw.pop("max_connections", None), "max_connections", shown),
        tls=_tls(tls_raw, shown) if use_tls else None,
    )
    if raw:
        unknown = ", ".join(sorted(map(str, raw)))
        raise ConfigurationError(
            f"hosts entry {shown} has unknown option(s): {unknown}. Known options: "
            f"username, password, db, client_name, socket_connect_timeout, "
            f"socket_timeout, max_connections, ssl, ssl_cert_reqs, ssl_ca_certs, "
            f"ssl_ca_path, ssl_ca_data, ssl_certfile, ssl_keyfile, ssl_password, "
            f"ssl_check_hostname"
        )
    return options


def _tls(raw: dict[str, Any], shown: object) -> TLSOptions:
    raw = dict(raw)
    reqs = raw.pop("cert_reqs", ssl.CERT_REQUIRED)
    if isinstance(reqs, str):
        reqs = reqs.lower()
    if reqs not in _CERT_REQS:
        raise ConfigurationError(
            f"hosts entry {shown}: ssl_cert_reqs must be None, 'none', 'optional' or "
            f"'required', not {reqs!r}"
        )
    check_hostname = raw.pop("check_hostname", None)
    tls = TLSOptions(
        cert_reqs=_CERT_REQS[reqs],
        ca_certs=_opt_str(raw.pop("ca_certs", None), "ssl_ca_certs", shown),
        ca_path=_opt_str(raw.pop("ca_path", None), "ssl_ca_path", shown),
        ca_data=_opt_str(raw.pop("ca_data", None), "ssl_ca_data", shown),
        certfile=_opt_str(raw.pop("certfile", None), "ssl_certfile", shown),
        keyfile=_opt_str(raw.pop("keyfile", None), "ssl_keyfile", shown),
        password=_opt_str(raw.pop("password", None), "ssl_password", shown),
        check_hostname=None
        if check_hostname is None
        else _bool(check_hostname, "ssl_check_hostname", shown),
        server_hostname=_opt_str(raw.pop("server_hostname", None), "ssl_server_hostname", shown),
    )
    if raw:
        unknown = ", ".join(f"ssl_{key}" for key in sorted(raw))
        raise ConfigurationError(f"hosts entry {shown} has unknown TLS option(s): {unknown}")
    return tls


def _port(value: object, shown: object) -> int:
    port = _int(value, "port", shown, minimum=1)
    if port > 65535:
        raise ConfigurationError(f"hosts entry {shown}: port {port} is out of range 1-65535")
    return port


def _int(value: object, name: str, shown: object, *, minimum: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(
            f"hosts entry {shown}: {name} must be an integer >= {minimum}, not {value!r}"
        )
    return value


def _opt_int(value: object, name: str, shown: object) -> int | None:
    return None if value is None else _int(value, name, shown, minimum=1)


def _timeout(value: object, name: str, shown: object) -> float | None:
    if value is None or value == "None":
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not seconds > 0:
        raise ConfigurationError(
            f"hosts entry {shown}: {name} must be a positive number of seconds or None, "
            f"not {value!r}"
        )
    return seconds


def _opt_str(value: object, name: str, shown: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise ConfigurationError(f"hosts entry {shown}: {name} must be a string, not {value!r}")


def _bool(value: object, name: str, shown: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
        return value.lower() in {"1", "true", "yes"}
    raise ConfigurationError(f"hosts entry {shown}: {name} must be true or false, not {value!r}")


def _describe(value: object) -> str:
    if isinstance(value, str):
        return repr(_redact_url(value))
    if isinstance(value, Mapping):
        return str(_redact(dict(value)))
    return repr(value)


def _redact(entry: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for key, value in entry.items():
        if "password" in str(key):
            shown[key] = "***"
        elif key == "address" and isinstance(value, str):
            shown[key] = _redact_url(value)
        elif key == "sentinel_kwargs" and isinstance(value, Mapping):
            shown[key] = _redact(dict(value))
        else:
            shown[key] = value
    return shown


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)
