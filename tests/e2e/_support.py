"""Helpers for the end-to-end tests: real daphne / runworker processes and websocket clients.

Not a test module (pytest collects ``test_*.py`` only); the test modules import it
as a top-level module because pytest puts ``tests/e2e`` on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from anyio_layer.testing import RedisServer

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]

QUEUE_BACKEND = "channels_compat.core.RedisChannelLayer"
PUBSUB_BACKEND = "channels_compat.pubsub.RedisPubSubChannelLayer"
BACKENDS = {"queue": QUEUE_BACKEND, "pubsub": PUBSUB_BACKEND}

WORKER_CHANNEL = "e2e-worker"
#: How long a child process gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def poll(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Call ``check`` until it returns true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """A child process whose stdout and stderr go to files in ``log_dir``."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, exit status {self.popen.poll()})\n"
            f"--- stderr ({self.stderr_path}) ---\n{self.stderr()[-6000:]}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def assert_no_traceback(self) -> None:
        text = self.stderr()
        assert "Traceback" not in text, f"{self.name} logged a traceback:\n{self.describe()}"


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> ManagedProcess:
    stdout_path = log_dir / f"{name}.stdout.log"
    stderr_path = log_dir / f"{name}.stderr.log"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        popen = subprocess.Popen(
            args, cwd=E2E_DIR, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
    return ManagedProcess(name, popen, stdout_path, stderr_path)


def wait_for_port(process: ManagedProcess, port: int, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until ``port`` accepts connections; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited during startup:\n{process.describe()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{process.name} did not listen on {port}:\n{process.describe()}")
        time.sleep(0.05)


def numsub(redis: RedisServer, channel: str) -> int:
    reply = redis.execute("PUBSUB", "NUMSUB", channel)
    assert isinstance(reply, list)
    count = reply[1]
    assert isinstance(count, int)
    return count


@dataclass
class Stack:
    """A private Redis, two daphne servers and (optionally) a runworker, one backend."""

    backend: str
    redis: RedisServer
    log_dir: Path
    servers: list[tuple[ManagedProcess, int]] = field(default_factory=list)
    worker: ManagedProcess | None = None

    @property
    def pubsub(self) -> bool:
        return self.backend == PUBSUB_BACKEND

    def url(self, server: int, path: str) -> str:
        return f"ws://127.0.0.1:{self.servers[server][1]}/{path.lstrip('/')}"

    @property
    def processes(self) -> list[ManagedProcess]:
        processes = [process for process, _ in self.servers]
        if self.worker is not None:
            processes.append(self.worker)
        return processes

    def assert_all_running(self) -> None:
        for process in self.processes:
            assert process.popen.poll() is None, f"{process.name} died:\n{process.describe()}"

    def assert_no_tracebacks(self) -> None:
        for process in self.processes:
            process.assert_no_traceback()

    def group_members(self, group: str) -> int:
        """Members of ``group`` as Redis sees them.

        Queue layer: entries of the group's sorted set. Pub/sub layer: processes
        subscribed to the group's Redis channel (membership itself is per process).
        """
        if self.pubsub:
            return numsub(self.redis, f"asgi__group__{group}")
        count = self.redis.execute("ZCARD", f"asgi:group:{group}")
        assert isinstance(count, int)
        return count

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def child_env(backend: str, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    pythonpath = [str(E2E_DIR), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(pythonpath),
        DJANGO_SETTINGS_MODULE="project.settings",
        E2E_BACKEND=backend,
        E2E_REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="default",
    )
    return env


@contextlib.contextmanager
def running_stack(
    backend: str, redis: RedisServer, log_dir: Path, *, servers: int = 2, worker: bool = True
) -> Iterator[Stack]:
    """Start the processes in parallel, wait until they are ready, stop them at the end.

    At exit every process is stopped (SIGTERM, then SIGKILL after a timeout), and
    then their stderr is checked for tracebacks, shutdown included.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(backend, redis.url)
    stack = Stack(backend=backend, redis=redis, log_dir=log_dir)
    try:
        for index in range(servers):
            port = free_port()
            args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
            args.append("project.asgi:application")
            stack.servers.append((spawn(f"daphne-{index}", args, env, log_dir), port))
        if worker:
            args = [sys.executable, "-m", "django", "runworker", WORKER_CHANNEL]
            stack.worker = spawn("runworker", args, env, log_dir)
        for process, port in stack.servers:
            wait_for_port(process, port)
        if stack.worker is not None:
            wait_for_worker(stack)
        yield stack
    finally:
        stack.stop()
    stack.assert_no_tracebacks()


def wait_for_worker(stack: Stack) -> None:
    """The pub/sub worker must be subscribed before anything is sent to it."""
    worker = stack.worker
    assert worker is not None

    def ready() -> bool:
        if worker.popen.poll() is not None:
            raise AssertionError(f"runworker exited:\n{worker.describe()}")
        if stack.pubsub:
            return numsub(stack.redis, WORKER_CHANNEL) >= 1
        # Queue layer: messages wait in Redis, but make sure the worker is blocked on its
        # channel, so a broken worker fails here rather than as a missing answer.
        clients = stack.redis.execute("CLIENT", "LIST", decode=True)
        assert isinstance(clients, str)
        return any("cmd=bzpopmin" in line for line in clients.splitlines())

    poll(ready, STARTUP_TIMEOUT, "runworker to listen on its channel")


# -- websocket clients --------------------------------------------------------------


class Client:
    """A websocket client that records every JSON event it receives."""

    def __init__(self, name: str, ws: ClientConnection) -> None:
        self.name = name
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.joined: dict[str, Any] = {}
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, name: str, url: str, *, timeout: float = 10.0) -> Client:
        ws = await connect(url, proxy=None, open_timeout=timeout, ping_interval=None)
        client = cls(name, ws)
        try:
            client.joined = await client.wait_for_event("joined", timeout=timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def _read(self) -> None:
        with contextlib.suppress(Exception):  # the connection closed: close() reports it
            async for raw in self.ws:
                self.events.append(json.loads(raw))
                self._changed.set()
        self._changed.set()

    @property
    def channel(self) -> str:
        channel: str = self.joined["channel"]
        return channel

    async def send(self, content: Any) -> None:
        await self.ws.send(json.dumps(content))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [item for item in self.events if item.get("event") == event]

    def payloads(self) -> list[Any]:
        return [item["payload"] for item in self.of("message")]

    async def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            if self._reader.done():
                raise AssertionError(f"{self.name}: connection closed; events: {self.events}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: timed out after {timeout:g} s waiting for {what}; "
                    f"events: {self.events}"
                )
            self._changed.clear()  # no await since check(): no event can be missed
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError on 3.11+
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for_event(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        await self.wait_until(lambda: bool(self.of(event)), timeout, f"a {event!r} event")
        return self.of(event)[0]

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
