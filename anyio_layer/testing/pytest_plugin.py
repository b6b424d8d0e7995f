"""pytest fixtures that run throwaway Redis servers (see :mod:`anyio_layer.testing`).

Opt in from your ``conftest.py`` (this plugin is deliberately not registered
as an entry point, so installing the package changes no one's test suite)::

    pytest_plugins = ["anyio_layer.testing.pytest_plugin"]

Then::

    def test_something(redis_url):
        ...  # redis_url: an empty database on a server shared by the session

    def test_reconnects(redis_server_factory):
        server = redis_server_factory(password="secret")
        ...
        server.kill()
        server.start()  # same port

    def test_on_a_cluster(redis_cluster_hosts):
        ...  # hosts=redis_cluster_hosts: an empty, healthy 3-primary cluster

The fixtures are synchronous, so they work with any async framework (both
anyio backends included). The ``redis-server`` binary is found with
:func:`anyio_layer.testing.find_redis_server`; set ``$REDIS_SERVER`` to
choose one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from .cluster import RedisCluster
from .errors import RedisReplyError
from .lifecycle import close_all
from .process import RedisProcess
from .sentinel import SentinelServer
from .server import RedisServer

__all__ = [
    "RedisServerFactory",
    "redis_cluster",
    "redis_cluster_hosts",
    "redis_server",
    "redis_server_factory",
    "redis_url",
]


class RedisServerFactory:
    """Starts private servers (and Sentinels) for one test; :meth:`close` stops them all.

    Calling the factory takes the options of :meth:`RedisServer.launch` and
    returns the started server.
    """

    def __init__(self) -> None:
        self._processes: list[RedisProcess] = []

    def __call__(
        self,
        *,
        unix_socket: bool = False,
        tls: bool = False,
        password: str | None = None,
        username: str | None = None,
        replica_of: RedisServer | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> RedisServer:
        """Start a server with :meth:`RedisServer.launch`; it is closed at teardown."""
        server = RedisServer.launch(
            unix_socket=unix_socket,
            tls=tls,
            password=password,
            username=username,
            replica_of=replica_of,
            extra_args=extra_args,
            binary=binary,
            startup_timeout=startup_timeout,
        )
        self._processes.append(server)
        return server

    def sentinel(
        self,
        primary: RedisServer,
        *,
        master_name: str = "mymaster",
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> SentinelServer:
        """Start a Sentinel with :meth:`SentinelServer.launch`; it is closed at teardown."""
        sentinel = SentinelServer.launch(
            primary,
            master_name=master_name,
            quorum=quorum,
            down_after_ms=down_after_ms,
            failover_timeout_ms=failover_timeout_ms,
            binary=binary,
            startup_timeout=startup_timeout,
        )
        self._processes.append(sentinel)
        return sentinel

    def close(self) -> None:
        """Close every process started so far, newest first (Sentinels before their servers)."""
        processes, self._processes = self._processes, []
        close_all(processes)


def _flush(server: RedisServer) -> None:
    server.execute("FLUSHALL")
    server.execute("SCRIPT", "FLUSH")


def _clean(server: RedisServer) -> str:
    """Bring the shared server back to a known state and return its URL."""
    if not server.running:  # a test killed or stopped it
        server.start()
    try:
        _flush(server)
    except (OSError, RedisReplyError):
        # A test broke it (CONFIG SET requirepass, a client pause...): a restart
        # reloads the original configuration file.
        server.restart()
        _flush(server)
    return server.url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One plain TCP ``redis-server`` for the whole test session.

    Started synchronously (no event loop involved), closed at the end of the
    session. Prefer :func:`redis_url`, which also empties it before each test;
    tests that reconfigure, stop or kill a server should use
    :func:`redis_server_factory` instead of this shared one.
    """
    server = RedisServer.launch()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL (``redis://127.0.0.1:<port>``) of the session's server, emptied for this test.

    Before the test it runs ``FLUSHALL`` and ``SCRIPT FLUSH``. If an earlier
    test stopped the server, it is started again; if it broke it (changed the
    password with ``CONFIG SET``, say), it is restarted, which also undoes
    configuration changes not written with ``CONFIG REWRITE``.
    """
    return _clean(redis_server)


@pytest.fixture
def redis_server_factory() -> Iterator[RedisServerFactory]:
    """A :class:`RedisServerFactory` for private servers that live until the test ends.

    ``redis_server_factory(**options)`` takes the options of
    :meth:`~anyio_layer.testing.RedisServer.launch` (``unix_socket``, ``tls``,
    ``password``, ``username``, ``replica_of``, ...) and returns a started
    :class:`~anyio_layer.testing.RedisServer`;
    ``redis_server_factory.sentinel(primary, ...)`` starts a Sentinel. Use it
    for tests that restart, kill or reconfigure servers. Everything is
    stopped and deleted at teardown.
    """
    factory = RedisServerFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One Redis Cluster (3 primaries, 1 replica each) for the whole test session.

    Started on first use (about two seconds), closed at the end of the
    session. Prefer :func:`redis_cluster_hosts`, which also heals and empties
    it before each test. Tests may kill nodes or migrate slots: the next
    test gets the dead nodes restarted (as replicas of whoever replaced them).
    """
    cluster = RedisCluster.launch(primaries=3, replicas=1)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_hosts(redis_cluster: RedisCluster) -> list[str]:
    """``hosts`` for a layer on the session's cluster, healthy and emptied for this test.

    Nodes an earlier test killed are started again, then it waits until every
    node agrees on the slot map and runs ``FLUSHALL`` and ``SCRIPT FLUSH`` on
    every primary. The seeds are ``redis+cluster://`` URLs.
    """
    for node in redis_cluster.nodes:
        if not node.running:
            node.start()
    redis_cluster.wait_until_stable(replicas_synced=True)
    redis_cluster.flushall()
    return redis_cluster.hosts
