"""Parsing the connection options of one ``hosts`` entry into :class:`ConnectionOptions`.

Owns :func:`parse_options` (``username``, ``password``, ``db``, the timeouts
(``reconnect_timeout`` too),
``ssl`` and the ``ssl_*`` TLS options, redis-py's options that have no meaning
here) and the checks of single values the entry parser shares
(:func:`parse_port`, :func:`parse_bool`). Which entry the options belong to,
and how it is shown in messages (``shown``, already redacted), is the caller's
business: see :mod:`anyio_layer.redis.hosts`. No I/O. Tested in
``tests/test_hosts.py``.
"""

from __future__ import annotations

import ssl
from typing import Any

from ..exceptions import ConfigurationError
from .config import (
    DEFAULT_RECONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    ConnectionOptions,
    TLSOptions,
)

__all__ = ["parse_bool", "parse_options", "parse_port"]

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


def parse_options(raw: dict[str, Any], shown: object) -> ConnectionOptions:
    """Validate the options ``raw`` of the entry ``shown``; unknown options are an error."""
    raw = dict(raw)
    tls_raw = {key[4:]: raw.pop(key) for key in list(raw) if key.startswith("ssl_")}
    use_tls = parse_bool(raw.pop("ssl", False), "ssl", shown) or bool(tls_raw)
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
        socket_timeout=_timeout(
            raw.pop("socket_timeout", DEFAULT_SOCKET_TIMEOUT), "socket_timeout", shown
        ),
        max_connections=_opt_int(raw.pop("max_connections", None), "max_connections", shown),
        reconnect_timeout=_seconds(
            raw.pop("reconnect_timeout", DEFAULT_RECONNECT_TIMEOUT), "reconnect_timeout", shown
        ),
        tls=_tls(tls_raw, shown) if use_tls else None,
    )
    if raw:
        unknown = ", ".join(sorted(map(str, raw)))
        raise ConfigurationError(
            f"hosts entry {shown} has unknown option(s): {unknown}. Known options: "
            f"username, password, db, client_name, socket_connect_timeout, "
            f"socket_timeout, max_connections, reconnect_timeout, ssl, ssl_cert_reqs, "
            f"ssl_ca_certs, ssl_ca_path, ssl_ca_data, ssl_certfile, ssl_keyfile, ssl_password, "
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
        else parse_bool(check_hostname, "ssl_check_hostname", shown),
        server_hostname=_opt_str(raw.pop("server_hostname", None), "ssl_server_hostname", shown),
    )
    if raw:
        unknown = ", ".join(f"ssl_{key}" for key in sorted(raw))
        raise ConfigurationError(f"hosts entry {shown} has unknown TLS option(s): {unknown}")
    return tls


def parse_port(value: object, shown: object) -> int:
    """A TCP port (an int, or a string of digits) of the entry ``shown``."""
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


def _seconds(value: object, name: str, shown: object) -> float:
    """A number of seconds >= 0 (a string is accepted, from a URL query)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not seconds >= 0 or seconds == float("inf"):
        raise ConfigurationError(
            f"hosts entry {shown}: {name} must be a number of seconds >= 0, not {value!r}"
        )
    return seconds


def _opt_str(value: object, name: str, shown: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise ConfigurationError(f"hosts entry {shown}: {name} must be a string, not {value!r}")


def parse_bool(value: object, name: str, shown: object) -> bool:
    """A flag given as a bool or as one of the strings a URL query may hold."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
        return value.lower() in {"1", "true", "yes"}
    raise ConfigurationError(f"hosts entry {shown}: {name} must be true or false, not {value!r}")
