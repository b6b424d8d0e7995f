"""One ``redis-server`` process started by the toolkit: its lifetime and how to reach it.

Owns :class:`RedisProcess` (start and wait until it answers, stop, kill,
restart, close, the log, the URL, the admin-client methods and their async
wrappers), the free-port pick, and the safety net that kills a process whose
handle is lost. It writes no configuration of its own: subclasses in this
package (:mod:`.server`, :mod:`.sentinel`, the cluster nodes) supply it through
the hooks named in the class docstring. Covered by tests/test_testing.py.
"""

from __future__ import annotations

import functools
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread

from .binaries import REDIS_SERVER_ENV, redis_server_version
from .client import Arg, run_command
from .config import LOOPBACK
from .errors import (
    AddressInUseError,
    RedisReplyError,
    RedisServerError,
    RESPProtocolError,
    TLSNotSupportedError,
)
from .tls import TLSFiles

__all__ = ["RedisProcess", "free_port"]

_PORT_ATTEMPTS = 5
_Self = TypeVar("_Self", bound="RedisProcess")


class _ProcessState:
    """What the safety-net finalizer needs; holds no reference to the handle."""

    __slots__ = ("directory", "popen")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.popen: subprocess.Popen[bytes] | None = None


def _reap(state: _ProcessState) -> None:
    """Kill the process if it still runs, wait for it, delete its directory."""
    popen = state.popen
    if popen is not None and popen.poll() is None:
        popen.kill()
        popen.wait()
    shutil.rmtree(state.directory, ignore_errors=True)


def free_port() -> int:
    """A TCP port on the loopback that is free now (someone may take it before we bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class RedisProcess:
    """A handle on one ``redis-server`` process (a server or a Sentinel) started by this module.

    Do not instantiate it yourself: use :meth:`RedisServer.launch`,
    :func:`run_redis_server`, :meth:`SentinelServer.launch` or
    :func:`run_sentinel`.

    Attributes:
        host: ``"127.0.0.1"``, or None for a unix-socket server.
        port: the TCP port (the TLS port for a TLS server), or None.
        unix_path: the unix socket, or None.
        tls: the certificates of a TLS server, or None.
        username: the ACL user clients authenticate as, or None.
        password: the password clients authenticate with, or None.
        binary: the ``redis-server`` executable.
        version: its version, e.g. ``(7, 0, 15)``.
        directory: the private temporary directory (config, log, data).
        config_path: the configuration file.
        log_path: the log file (server log and the process's stdout/stderr).
        startup_timeout: seconds :meth:`start` waits for the server to answer.

    Subclasses in this package configure the process through these hooks (their
    internal interface): ``_config_lines()`` (required), ``_command()``,
    ``_is_ready()``, ``_kind``, and ``_start_on_free_port()``, which calls
    ``_write_config()`` and :meth:`start`.
    """

    _kind = "redis-server"

    def __init__(
        self,
        *,
        binary: str,
        directory: Path,
        startup_timeout: float,
        extra_args: Sequence[str] = (),
    ) -> None:
        if startup_timeout <= 0:
            raise ValueError("startup_timeout must be positive")
        self.binary = binary
        self.version = redis_server_version(binary)
        self.directory = directory
        self.config_path = directory / "redis.conf"
        self.log_path = directory / "redis.log"
        self.startup_timeout = startup_timeout
        self.host: str | None = None
        self.port: int | None = None
        self.unix_path: Path | None = None
        self.tls: TLSFiles | None = None
        self.username: str | None = None
        self.password: str | None = None
        self._extra_args = list(extra_args)
        self._closed = False
        self._log_offset = 0
        self._state = _ProcessState(directory)
        self._finalizer = weakref.finalize(self, _reap, self._state)

    # -- description --------------------------------------------------------

    @property
    def pid(self) -> int:
        """Process id of the most recently started process (it may have exited since).

        Raises:
            RedisServerError: the server was never started.
        """
        popen = self._state.popen
        if popen is None:
            raise RedisServerError(f"{self._kind} was never started")
        return popen.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may still be starting up)."""
        popen = self._state.popen
        return popen is not None and popen.poll() is None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of a TCP server.

        Raises:
            ValueError: the server listens on a unix socket only.
        """
        if self.host is None or self.port is None:
            raise ValueError(f"this server listens on the unix socket {self.unix_path} only")
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """A URL for clients, in the form redis-py accepts.

        ``redis://[[user]:password@]127.0.0.1:<port>``, ``rediss://...`` for TLS
        (clients must trust ``tls.ca_cert``), or
        ``unix://[[user]:password@]/path/to/redis.sock``. Credentials are
        percent-encoded.
        """
        credentials = ""
        if self.password is not None:
            credentials = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        if self.unix_path is not None:
            return f"unix://{credentials}{quote(str(self.unix_path))}"
        host, port = self.address
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{credentials}{host}:{port}"

    def __repr__(self) -> str:
        where = str(self.unix_path) if self.unix_path is not None else f"{self.host}:{self.port}"
        popen = self._state.popen
        state = "closed" if self._closed else "running" if self.running else "stopped"
        pid = f" pid={popen.pid}" if popen is not None else ""
        return f"<{type(self).__name__} {where}{pid} {state} v{'.'.join(map(str, self.version))}>"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log file ("" if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path), *self._extra_args]

    def _config_lines(self) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        self.config_path.write_text("\n".join(self._config_lines()) + "\n")

    def _is_ready(self, timeout: float) -> bool:
        return self.execute("PING", timeout=timeout) == b"PONG"

    def start(self) -> None:
        """Start the process and wait until it answers (blocking); a no-op if it runs.

        Raises:
            RedisServerError: the process exited during startup or did not
                answer within ``startup_timeout`` (the message has the log
                tail); :class:`TLSNotSupportedError` if the binary lacks TLS.
        """
        if self._closed:
            raise RedisServerError(f"{self!r} was closed; launch a new server instead")
        if self.running:
            return
        try:
            self._log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0
        with open(self.log_path, "ab") as log:
            popen = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                # Same process group as ours (no new session), so that Ctrl-C or a CI
                # runner killing the group also stops the servers.
            )
        self._state.popen = popen
        try:
            self._wait_until_ready(popen)
        except BaseException:
            popen.kill()
            popen.wait()
            raise

    def _startup_log(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _startup_error(self, problem: str) -> RedisServerError:
        log = self._startup_log()
        tail = "\n".join(log.splitlines()[-30:]) or "(empty)"
        message = (
            f"{self._kind} {self.binary} (Redis {'.'.join(map(str, self.version))}) {problem}.\n"
            f"Command: {' '.join(self._command())}\nLog tail ({self.log_path}):\n{tail}"
        )
        # Redis refuses the tls- directives; Valkey (TLS as a connection type) says so.
        if ("Bad directive" in log and "tls-" in log) or "Failed finding TLS support" in log:
            return TLSNotSupportedError(
                f"{self.binary} (Redis {'.'.join(map(str, self.version))}) was built without "
                "TLS support. Use a redis-server built with TLS (most system packages are), "
                f"e.g. via ${REDIS_SERVER_ENV}.\n{message}"
            )
        if "Address already in use" in log:
            return AddressInUseError(message)
        return RedisServerError(message)

    def _wait_until_ready(self, popen: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.002
        # Short at first: if someone else's listener got our port, our process
        # exits at once and we should notice, not wait for the stranger to reply.
        attempt_timeout = 0.1
        last_error: Exception | None = None
        while True:
            status = popen.poll()
            if status is not None:
                raise self._startup_error(f"exited with status {status} during startup")
            try:
                if self._is_ready(attempt_timeout):
                    return
            except TimeoutError as exc:
                last_error = exc
                attempt_timeout = min(attempt_timeout * 2, 2.0)
            except (OSError, RedisReplyError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error})" if last_error is not None else ""
                raise self._startup_error(
                    f"did not answer within {self.startup_timeout:g} s{detail}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (blocking): SIGTERM, then SIGKILL after ``timeout`` seconds.

        Idempotent; the directory is kept, so :meth:`start` can start it again.
        """
        popen = self._state.popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def kill(self) -> None:
        """Kill the process with SIGKILL at once (simulates a crash); no-op if it is not running."""
        popen = self._state.popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()

    def restart(self) -> None:
        """Stop the process and start it again on the same port or socket path (blocking).

        The data set is lost (nothing is persisted); configuration changes
        written with ``CONFIG REWRITE`` (Sentinel does that) are kept.
        """
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the process and delete its directory. Final: the handle cannot start again."""
        self._closed = True
        try:
            self.stop()
        finally:
            self._finalizer()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def execute(self, *args: Arg, decode: bool = False, timeout: float = 10.0) -> object:
        """Run one command on a fresh connection and return the reply (blocking).

        A tiny admin client for tests (``FLUSHALL``, ``CONFIG SET``,
        ``REPLICAOF``, ``CLIENT LIST``...). It connects over TCP, the unix
        socket or TLS (presenting the client certificate) and authenticates
        first if the server has credentials.

        Replies, as redis-py returns them by default: simple and bulk strings
        are ``bytes`` (``str`` with ``decode=True``), integers ``int``, nulls
        ``None``, arrays ``list``.

        Raises:
            RedisReplyError: the server answered with an error.
            OSError: the server could not be reached (e.g. ConnectionRefusedError).
        """
        if not args:
            raise ValueError("execute() needs at least a command name")
        return run_command(self, args, decode=decode, timeout=timeout)

    def info(self, section: str | None = None) -> dict[str, str]:
        """``INFO [section]``, parsed into a ``{field: value}`` dict of strings."""
        args = ("INFO", section) if section is not None else ("INFO",)
        reply = self.execute(*args, decode=True)
        if not isinstance(reply, str):
            raise RESPProtocolError(f"INFO returned {reply!r}")
        fields: dict[str, str] = {}
        for line in reply.splitlines():
            if line and not line.startswith("#"):
                key, sep, value = line.partition(":")
                if sep:
                    fields[key] = value
        return fields

    # -- async wrappers -----------------------------------------------------

    async def aexecute(self, *args: Arg, decode: bool = False) -> object:
        """:meth:`execute` in a worker thread, so the event loop keeps running."""
        return await anyio.to_thread.run_sync(functools.partial(self.execute, *args, decode=decode))

    async def ainfo(self, section: str | None = None) -> dict[str, str]:
        """:meth:`info` in a worker thread."""
        return await anyio.to_thread.run_sync(self.info, section)

    async def astart(self) -> None:
        """:meth:`start` in a worker thread."""
        await anyio.to_thread.run_sync(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread."""
        await anyio.to_thread.run_sync(self.stop)

    async def arestart(self) -> None:
        """:meth:`restart` in a worker thread."""
        await anyio.to_thread.run_sync(self.restart)

    # -- helpers for launch() ----------------------------------------------

    def _start_on_free_port(self) -> None:
        """Pick a free port, write the config and start; retry if the port gets taken."""
        for attempt in range(_PORT_ATTEMPTS):
            if self.unix_path is None:
                self.port = free_port()
            self._write_config()
            try:
                self.start()
            except AddressInUseError:
                if self.unix_path is not None or attempt == _PORT_ATTEMPTS - 1:
                    raise
            else:
                return
