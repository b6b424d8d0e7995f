"""A throwaway ``redis-server``, plain or as a replica, and the ways to run one.

Owns :class:`RedisServer` (its ``redis.conf``: listener, TLS, credentials,
replication; waiting for the replication link), :func:`start_redis_server`,
:func:`run_redis_server` and :func:`redis_server_supports_tls`. Process
lifetime is :mod:`.process`'s, certificates :mod:`.tls`'s; nothing here knows
Sentinel or clusters. Covered by tests/test_testing.py.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from .binaries import redis_server_version, resolve_binary
from .config import LOOPBACK, common_config, private_directory, quote_value, tls_config
from .errors import TLSNotSupportedError
from .lifecycle import apoll, managed, poll
from .process import RedisProcess
from .tls import TLSFiles, generate_tls_files

__all__ = ["RedisServer", "redis_server_supports_tls", "run_redis_server", "start_redis_server"]


def _check_credentials(username: str | None, password: str | None) -> None:
    if username is not None and password is None:
        raise ValueError("username needs a password too (an ACL user always has one here)")
    if password is not None and not password:
        raise ValueError("password must not be empty")
    if username is not None and (not username or any(c.isspace() for c in username)):
        raise ValueError(f"invalid ACL username {username!r}: it must be non-empty, without spaces")


class RedisServer(RedisProcess):
    """A throwaway ``redis-server`` started by :meth:`launch` or :func:`run_redis_server`.

    Configuration: loopback only, no persistence (``save ""``, ``appendonly
    no``), ``hz 100`` (so SIGTERM and replication are handled within
    milliseconds), disk-based replication (with diskless sync, Redis 7 holds
    back the replication stream until the replica's first ACK, up to a
    second), and for Redis 7+ the ``DEBUG`` command enabled and no shutdown
    wait for replicas. See :class:`RedisProcess` for the attributes and
    methods.

    Attributes:
        replica_of: the server it was launched as a replica of, or None.
    """

    replica_of: RedisServer | None = None
    _static_config: list[str]

    @classmethod
    def launch(
        cls,
        *,
        unix_socket: bool = False,
        tls: bool = False,
        password: str | None = None,
        username: str | None = None,
        replica_of: RedisServer | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
        tls_files: TLSFiles | None = None,
    ) -> RedisServer:
        """Start a server and wait until it answers (blocking); the caller must stop it.

        Call :meth:`close` (or :meth:`stop`, leaving the directory to the
        safety net) when done, or use the handle as a context manager.

        Args:
            unix_socket: listen on ``<directory>/redis.sock`` instead of TCP.
            tls: listen with TLS (``tls-port``; the plain port is off), using
                certificates from :func:`generate_tls_files`. Clients may
                present the client certificate or none (``tls-auth-clients
                optional``).
            password: alone, sets ``requirepass``; with ``username``, the
                ACL user's password.
            username: create this ACL user with all permissions (``~* &*
                +@all``) and disable the ``default`` user, so the named user
                is the only way in (``username="default"`` just gives the
                default user the password).
            replica_of: replicate this server (``replicaof``), authenticating
                with its credentials and over TLS if it uses TLS; waits until
                the link is up. Without ``username``/``password`` the replica
                gets the primary's credentials (Sentinel needs that); with a
                TLS primary it uses copies of the primary's certificates.
            extra_args: command-line arguments appended after the config
                file, e.g. ``["--maxmemory", "10mb"]``.
            binary: the ``redis-server`` to run; default :func:`find_redis_server`.
            startup_timeout: seconds to wait for the server (and replication).
            tls_files: with ``tls``, use copies of these certificates instead
                of new ones, e.g. to have several servers trust one CA (a
                cluster's nodes do); ``tls`` then describes the copies.

        Raises:
            FileNotFoundError: no ``redis-server`` binary.
            ValueError: inconsistent options.
            TLSNotSupportedError: ``tls`` with a binary built without TLS.
            RedisServerError: the server did not start (with its log tail).
            TimeoutError: a replica did not sync in time.
        """
        if unix_socket and tls:
            raise ValueError(
                "tls cannot be combined with unix_socket: Redis serves TLS on TCP only"
            )
        if tls_files is not None and not tls:
            raise ValueError("tls_files needs tls=True")
        binary = resolve_binary(binary)
        version = redis_server_version(binary)
        if replica_of is not None:
            if replica_of.host is None or replica_of.port is None:
                raise ValueError(
                    "replica_of must be a server that listens on TCP, not a unix socket"
                )
            if username is None and password is None:
                username, password = replica_of.username, replica_of.password
        _check_credentials(username, password)
        if username is not None and version < (6, 0, 0):
            raise ValueError(f"ACL users need Redis 6.0 or later; {binary} is {version}")
        directory = private_directory("redis", unix_socket)
        try:
            server = cls(
                binary=binary,
                directory=directory,
                startup_timeout=startup_timeout,
                extra_args=extra_args,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            server._configure(unix_socket, tls, username, password, replica_of, tls_files)
            server._start_on_free_port()
            if replica_of is not None:
                server.wait_for_master_link(timeout=startup_timeout)
        except BaseException:
            server.close()
            raise
        return server

    def _configure(
        self,
        unix_socket: bool,
        tls: bool,
        username: str | None,
        password: str | None,
        replica_of: RedisServer | None,
        given_tls: TLSFiles | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.replica_of = replica_of
        if unix_socket:
            self.unix_path = self.directory / "redis.sock"
        else:
            self.host = LOOPBACK
        lines = ['save ""', "appendonly no", "hz 100", "repl-diskless-sync no"]
        if self.version >= (7, 0, 0):
            lines += ["enable-debug-command yes", "shutdown-timeout 0"]

        replication_tls = replica_of.tls if replica_of is not None else None
        tls_files: TLSFiles | None = None
        if given_tls is not None:
            tls_files = given_tls.copy_to(self.directory / "tls")
        elif replication_tls is not None:
            tls_files = replication_tls.copy_to(self.directory / "tls")
        elif tls:
            tls_files = generate_tls_files(self.directory / "tls")
        if tls_files is not None:
            lines += tls_config(tls_files)
        if tls:
            self.tls = tls_files

        all_channels = " &*" if self.version >= (6, 2, 0) else ""
        if username is not None and password is not None:
            if username == "default":
                lines.append(
                    f"user default reset on {quote_value('>' + password)} ~*{all_channels} +@all"
                )
            else:
                lines.append("user default reset")
                lines.append(
                    f"user {quote_value(username)} reset on {quote_value('>' + password)} "
                    f"~*{all_channels} +@all"
                )
        elif password is not None:
            lines.append(f"requirepass {quote_value(password)}")

        if replica_of is not None:
            host, port = replica_of.address
            lines.append(f"replicaof {host} {port}")
            if replica_of.password is not None:
                lines.append(f"masterauth {quote_value(replica_of.password)}")
            if replica_of.username is not None:
                lines.append(f"masteruser {quote_value(replica_of.username)}")
            if replication_tls is not None:
                lines.append("tls-replication yes")
        self._static_config = lines

    def _config_lines(self) -> list[str]:
        lines = common_config(self.directory, self.log_path)
        if self.unix_path is not None:
            lines += ["port 0", f"unixsocket {quote_value(self.unix_path)}", "unixsocketperm 700"]
        elif self.tls is not None:
            lines += ["port 0", f"tls-port {self.port}"]
        else:
            lines.append(f"port {self.port}")
        return lines + self._static_config

    def wait_for_master_link(self, timeout: float = 10.0) -> None:
        """Wait until this replica reports ``master_link_status:up`` (blocking).

        Raises:
            TimeoutError: the link did not come up in time.
        """

        def check() -> bool | None:
            return True if self.info("replication").get("master_link_status") == "up" else None

        poll(check, timeout, f"{self!r} to sync with its primary")

    async def await_for_master_link(self) -> None:
        """Async :meth:`wait_for_master_link`, without time limit: use :func:`anyio.fail_after`."""

        def check() -> bool | None:
            return True if self.info("replication").get("master_link_status") == "up" else None

        await apoll(check)


@functools.cache
def redis_server_supports_tls(binary: str) -> bool:
    """Whether ``binary`` can serve TLS; found by really starting a TLS server once.

    The answer is cached per binary for the life of the process.

    Raises:
        RuntimeError: no way to make certificates (see :func:`generate_tls_files`).
        RedisServerError: the server failed for another reason.
    """
    try:
        server = RedisServer.launch(tls=True, binary=binary)
    except TLSNotSupportedError:
        return False
    server.close()
    return True


def start_redis_server(
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
    """Same as :meth:`RedisServer.launch`: start a server synchronously; the caller stops it."""
    return RedisServer.launch(
        unix_socket=unix_socket,
        tls=tls,
        password=password,
        username=username,
        replica_of=replica_of,
        extra_args=extra_args,
        binary=binary,
        startup_timeout=startup_timeout,
    )


@asynccontextmanager
async def run_redis_server(
    *,
    unix_socket: bool = False,
    tls: bool = False,
    password: str | None = None,
    username: str | None = None,
    replica_of: RedisServer | None = None,
    extra_args: Sequence[str] = (),
    binary: str | None = None,
    startup_timeout: float = 10.0,
) -> AsyncIterator[RedisServer]:
    """Run a throwaway server for the duration of an ``async with`` block.

    Takes the options of :meth:`RedisServer.launch` (which does the work, in
    a worker thread). On exit, including on error or cancellation, the server
    is stopped and its directory deleted.
    """
    launch = functools.partial(
        RedisServer.launch,
        unix_socket=unix_socket,
        tls=tls,
        password=password,
        username=username,
        replica_of=replica_of,
        extra_args=extra_args,
        binary=binary,
        startup_timeout=startup_timeout,
    )
    async with managed(launch) as server:
        yield server
