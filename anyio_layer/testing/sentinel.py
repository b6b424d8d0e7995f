"""A Redis Sentinel monitoring one test primary (and, through it, its replicas).

Owns :class:`SentinelServer` (its ``sentinel.conf``, what it reports about the
master and the replicas, forcing and waiting for a failover),
:func:`start_sentinel` and :func:`run_sentinel`. The replicas themselves are
:class:`~.server.RedisServer` instances (``replica_of``); process lifetime is
:mod:`.process`'s. Covered by the Sentinel tests of tests/test_testing.py and
tests/test_pool.py.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from .binaries import redis_server_version, resolve_binary
from .config import LOOPBACK, common_config, private_directory, quote_value, tls_config
from .errors import RedisReplyError
from .lifecycle import apoll, managed, poll
from .process import RedisProcess
from .server import RedisServer

__all__ = ["SentinelServer", "run_sentinel", "start_sentinel"]


class SentinelServer(RedisProcess):
    """A Redis Sentinel (``redis-server <conf> --sentinel``) monitoring one primary.

    It listens on plain TCP on the loopback (``url`` is
    ``redis://127.0.0.1:<port>``) without authentication; it authenticates to
    the primary and its replicas with the primary's credentials, over TLS if
    the primary uses TLS.

    Attributes:
        master_name: the name the primary is monitored under.
        primary: the server it was started for (after a failover, no longer
            the master).
    """

    _kind = "redis-sentinel"
    master_name: str
    primary: RedisServer
    _static_config: list[str]

    @classmethod
    def launch(
        cls,
        primary: RedisServer,
        *,
        master_name: str = "mymaster",
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> SentinelServer:
        """Start a Sentinel monitoring ``primary`` and wait until it knows it (blocking).

        The caller must :meth:`close` it (or use it as a context manager).

        Args:
            primary: a TCP server to monitor.
            master_name: the name clients ask Sentinel about.
            quorum: Sentinels needed to agree the primary is down.
            down_after_ms: ``sentinel down-after-milliseconds``.
            failover_timeout_ms: ``sentinel failover-timeout``.
            binary: the ``redis-server`` to run; default the primary's.
            startup_timeout: seconds to wait until Sentinel answers and is
                connected to the primary.
        """
        if primary.host is None or primary.port is None:
            raise ValueError("Sentinel can only monitor a server that listens on TCP")
        if not master_name or any(c.isspace() for c in master_name):
            raise ValueError(f"invalid master name {master_name!r}")
        if quorum < 1 or down_after_ms < 1 or failover_timeout_ms < 1:
            raise ValueError("quorum, down_after_ms and failover_timeout_ms must be positive")
        binary = resolve_binary(binary if binary is not None else primary.binary)
        redis_server_version(binary)
        directory = private_directory("sentinel")
        try:
            sentinel = cls(binary=binary, directory=directory, startup_timeout=startup_timeout)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            sentinel.config_path = directory / "sentinel.conf"
            sentinel.host = LOOPBACK
            sentinel.master_name = master_name
            sentinel.primary = primary
            host, port = primary.address
            lines = [
                f"sentinel monitor {master_name} {host} {port} {quorum}",
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            ]
            if primary.password is not None:
                lines.append(f"sentinel auth-pass {master_name} {quote_value(primary.password)}")
            if primary.username is not None:
                lines.append(f"sentinel auth-user {master_name} {quote_value(primary.username)}")
            if primary.tls is not None:
                files = primary.tls.copy_to(directory / "tls")
                lines += [*tls_config(files), "tls-replication yes"]
            sentinel._static_config = lines
            sentinel._start_on_free_port()
        except BaseException:
            sentinel.close()
            raise
        return sentinel

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path), "--sentinel"]

    def _config_lines(self) -> list[str]:
        return [
            *common_config(self.directory, self.log_path),
            f"port {self.port}",
            *self._static_config,
        ]

    def _is_ready(self, timeout: float) -> bool:
        address = self.execute(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name, timeout=timeout
        )
        if address is None:
            return False
        master = self.execute("SENTINEL", "MASTER", self.master_name, decode=True, timeout=timeout)
        return "disconnected" not in _pairs(master).get("flags", "disconnected")

    def master_address(self) -> tuple[str, int] | None:
        """The current master's address per ``SENTINEL GET-MASTER-ADDR-BY-NAME``, or None."""
        reply = self.execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name, decode=True)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        host, port = reply
        return (str(host), int(str(port)))

    def replicas(self) -> list[dict[str, str]]:
        """``SENTINEL REPLICAS <name>``: one ``{field: value}`` dict per known replica."""
        reply = self.execute("SENTINEL", "REPLICAS", self.master_name, decode=True)
        return [_pairs(item) for item in reply] if isinstance(reply, list) else []

    def failover(self, timeout: float = 10.0) -> None:
        """Force a failover (``SENTINEL FAILOVER <name>``); do not wait for it to finish.

        A Sentinel that has just started may not know a replica it can promote
        yet and answers ``NOGOODSLAVE``: the command is retried until
        ``timeout`` seconds have passed. Follow with :meth:`wait_for_master`.

        Raises:
            RedisReplyError: any other error (e.g. ``INPROG``: a failover is
                already running), or ``NOGOODSLAVE`` still after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SENTINEL", "FAILOVER", self.master_name)
            except RedisReplyError as exc:
                if exc.code != "NOGOODSLAVE" or time.monotonic() >= deadline:
                    raise
            else:
                return
            time.sleep(0.05)

    def wait_for_replicas(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, str]]:
        """Wait until Sentinel knows ``count`` healthy replicas it could promote.

        Healthy: connected, not down, master link ok, and an ``INFO`` reply
        received recently (Sentinel will not promote a replica before that).
        Returns their ``SENTINEL REPLICAS`` entries.

        Raises:
            TimeoutError: fewer healthy replicas when the time is up.
        """
        return poll(
            functools.partial(self._healthy_replicas, count),
            timeout,
            f"Sentinel to see {count} healthy replica(s)",
        )

    def _healthy_replicas(self, count: int) -> list[dict[str, str]] | None:
        healthy = [entry for entry in self.replicas() if _promotable(entry)]
        return healthy if len(healthy) >= count else None

    def wait_for_master(
        self,
        address_not_equal_to: tuple[str, int] | None = None,
        timeout: float = 10.0,
    ) -> tuple[str, int]:
        """Wait until Sentinel reports a master (other than ``address_not_equal_to``).

        Returns:
            The master's ``(host, port)``.

        Raises:
            TimeoutError: no such master when the time is up.
        """
        return poll(
            functools.partial(self._new_master, address_not_equal_to),
            timeout,
            "Sentinel to report a new master",
        )

    def _new_master(self, address_not_equal_to: tuple[str, int] | None) -> tuple[str, int] | None:
        address = self.master_address()
        return None if address is None or address == address_not_equal_to else address

    async def afailover(self) -> None:
        """Async :meth:`failover`, retrying ``NOGOODSLAVE`` without time limit.

        Bound it with :func:`anyio.fail_after`.
        """
        while True:
            try:
                await self.aexecute("SENTINEL", "FAILOVER", self.master_name)
            except RedisReplyError as exc:
                if exc.code != "NOGOODSLAVE":
                    raise
            else:
                return
            await anyio.sleep(0.05)

    async def await_for_replicas(self, count: int = 1) -> list[dict[str, str]]:
        """Async :meth:`wait_for_replicas`, without a time limit: use :func:`anyio.fail_after`."""
        return await apoll(functools.partial(self._healthy_replicas, count))

    async def await_for_master(
        self, address_not_equal_to: tuple[str, int] | None = None
    ) -> tuple[str, int]:
        """Async :meth:`wait_for_master`, without a time limit: use :func:`anyio.fail_after`."""
        return await apoll(functools.partial(self._new_master, address_not_equal_to))


def _pairs(reply: object) -> dict[str, str]:
    """Turn a flat ``[key, value, key, value...]`` reply into a dict."""
    if not isinstance(reply, list):
        return {}
    return {str(key): str(value) for key, value in zip(reply[::2], reply[1::2], strict=False)}


def _promotable(entry: dict[str, str]) -> bool:
    flags = set(entry.get("flags", "").split(","))
    if flags & {"s_down", "o_down", "disconnected"}:
        return False
    if entry.get("master-link-status") != "ok":
        return False
    try:
        return int(entry.get("info-refresh", "999999")) < 5000
    except ValueError:
        return False


def start_sentinel(
    primary: RedisServer,
    *,
    master_name: str = "mymaster",
    quorum: int = 1,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    binary: str | None = None,
    startup_timeout: float = 10.0,
) -> SentinelServer:
    """Same as :meth:`SentinelServer.launch`: start Sentinel synchronously; the caller stops it."""
    return SentinelServer.launch(
        primary,
        master_name=master_name,
        quorum=quorum,
        down_after_ms=down_after_ms,
        failover_timeout_ms=failover_timeout_ms,
        binary=binary,
        startup_timeout=startup_timeout,
    )


@asynccontextmanager
async def run_sentinel(
    primary: RedisServer,
    *,
    master_name: str = "mymaster",
    quorum: int = 1,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    binary: str | None = None,
    startup_timeout: float = 10.0,
) -> AsyncIterator[SentinelServer]:
    """Run a Sentinel monitoring ``primary`` for the duration of an ``async with`` block.

    Takes the options of :meth:`SentinelServer.launch`. On exit, including on
    error or cancellation, the Sentinel is stopped and its directory deleted.
    """
    launch = functools.partial(
        SentinelServer.launch,
        primary,
        master_name=master_name,
        quorum=quorum,
        down_after_ms=down_after_ms,
        failover_timeout_ms=failover_timeout_ms,
        binary=binary,
        startup_timeout=startup_timeout,
    )
    async with managed(launch) as sentinel:
        yield sentinel
