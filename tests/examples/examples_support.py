"""Helpers for the example tests: example servers as subprocesses, and websocket chat clients.

Not a test module; the test modules import it as a top-level module (pytest puts
``tests/examples`` on ``sys.path``, there being no ``__init__.py``).

Every server runs in its own session (process group) with its output in files.
Stopping is SIGTERM to the server, then SIGKILL to its whole group if it has
not exited in time; a server that needed the SIGKILL, exited with an
unexpected status or printed a traceback fails the test that used it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
TIMEOUT = 10.0
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    """A room name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# -- server processes -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server process of an example on a given port."""

    name: str
    cwd: Path
    #: The command; ``{port}`` and ``{host}`` are substituted.
    command: Sequence[str]
    #: Exit statuses that count as a clean stop after SIGTERM.
    ok_statuses: tuple[int, ...] = (0,)

    def args(self, port: int) -> list[str]:
        return [sys.executable, *(part.format(port=port, host=HOST) for part in self.command)]


DJANGO = ServerSpec(
    "django",
    EXAMPLES_DIR / "django_chat",
    ["-m", "daphne", "-b", "{host}", "-p", "{port}", "chat_project.asgi:application"],
)
TRIO = ServerSpec(
    "trio", EXAMPLES_DIR / "trio_chat", ["server.py", "--host", "{host}", "--port", "{port}"]
)
UVICORN = ServerSpec(
    "uvicorn",
    EXAMPLES_DIR / "starlette_broadcast",
    ["-m", "uvicorn", "--host", "{host}", "--port", "{port}", "app:app"],
    # uvicorn re-raises the signal it stopped on, once it has shut down cleanly.
    ok_statuses=(0, -signal.SIGTERM),
)
HYPERCORN_TRIO = ServerSpec(
    "hypercorn-trio",
    EXAMPLES_DIR / "starlette_broadcast",
    ["-m", "hypercorn", "--worker-class", "trio", "--bind", "{host}:{port}", "app:app"],
)


@dataclass
class ServerProcess:
    spec: ServerSpec
    port: int
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    killed: bool = False

    @property
    def name(self) -> str:
        return f"{self.spec.name}:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def output(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, exit status {self.popen.poll()}, "
            f"killed: {self.killed})\n--- output ---\n{self.output()[-6000:]}"
        )

    def wait_until_listening(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the port accepts connections; fail at once if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited during startup:\n{self.describe()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.name} did not listen in {timeout:g} s:\n{self.describe()}"
                )
            time.sleep(0.05)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for the exit; SIGKILL the whole process group if it takes too long."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.kill_group()
            self.popen.wait()
        self.kill_group()  # stragglers: a server's own worker processes, if any

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def assert_clean_exit(self) -> None:
        assert not self.killed, f"{self.name} did not stop on SIGTERM:\n{self.describe()}"
        status = self.popen.returncode
        assert status in self.spec.ok_statuses, f"{self.name} exit status:\n{self.describe()}"
        assert "Traceback" not in self.output(), (
            f"{self.name} printed a traceback:\n{self.describe()}"
        )


def spawn(spec: ServerSpec, port: int, env: dict[str, str], log_dir: Path) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path = log_dir / f"{spec.name}-{port}.stdout.log"
    stderr_path = log_dir / f"{spec.name}-{port}.stderr.log"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        popen = subprocess.Popen(
            spec.args(port),
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    return ServerProcess(spec, port, popen, stdout_path, stderr_path)


@contextlib.contextmanager
def running_servers(
    specs: Sequence[ServerSpec], redis_url: str, log_dir: Path
) -> Iterator[list[ServerProcess]]:
    """Start the servers in parallel, wait until they listen; stop them and check their exits.

    The exit checks run only when the block itself succeeded, so they never hide
    the block's own failure.
    """
    env = child_env(REDIS_URL=redis_url)
    servers: list[ServerProcess] = []
    try:
        for spec in specs:
            servers.append(spawn(spec, free_port(), env, log_dir))
        for server in servers:
            server.wait_until_listening()
        yield servers
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait_stopped()
    for server in servers:
        server.assert_clean_exit()


# -- HTTP -------------------------------------------------------------------------------

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, data: Any = None, method: str | None = None) -> tuple[int, str]:
    """``(status, body)`` of a request; JSON ``data`` is POSTed."""
    body = None if data is None else json.dumps(data).encode()
    headers = {} if data is None else {"content-type": "application/json"}
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with _opener.open(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


# -- websocket chat clients ---------------------------------------------------------------


@dataclass
class ChatClient:
    """One browser tab, as far as the server can tell: a websocket in one room."""

    name: str
    ws: ClientConnection
    events: list[dict[str, Any]] = field(default_factory=list)
    joined: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.ws.send(json.dumps({"user": self.name, "text": text}))

    def texts(self) -> list[str]:
        return [event["text"] for event in self.events if event.get("type") == "message"]

    def expect(
        self, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first event (already received or arriving within ``timeout``) that passes."""
        for event in self.events:
            if check(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name} got no {what} in {timeout:g} s: {self.events}")
            try:
                raw = self.ws.recv(timeout=remaining)
            except TimeoutError:
                continue
            event = json.loads(raw)
            self.events.append(event)
            if check(event):
                return event

    def expect_message(self, text: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.expect(
            lambda event: event.get("type") == "message" and event.get("text") == text,
            f"message {text!r}",
            timeout,
        )

    def listen(self, seconds: float) -> None:
        """Record whatever arrives during ``seconds``."""
        with contextlib.suppress(AssertionError):
            self.expect(lambda event: False, "", seconds)


# websockets 15+ would use $HTTP_PROXY / $ALL_PROXY (and older versions have no proxy option).
_NO_PROXY: dict[str, Any] = (
    {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}
)


def connect_websocket(url: str, *, origin: str | None = None) -> ClientConnection:
    """A websocket connection (use it as a context manager)."""
    return connect(url, origin=origin, open_timeout=TIMEOUT, close_timeout=5, **_NO_PROXY)


@contextlib.contextmanager
def chat_client(name: str, url: str, *, origin: str | None = None) -> Iterator[ChatClient]:
    """A client connected to a chat websocket, returned once the server says it joined."""
    with connect_websocket(url, origin=origin) as ws:
        client = ChatClient(name, ws)
        client.joined = client.expect(lambda event: event.get("type") == "joined", "'joined'")
        yield client


def origin_of(server: ServerProcess) -> str:
    return f"http://{HOST}:{server.port}"


def check_rooms_across_processes(a: ServerProcess, b: ServerProcess) -> None:
    """People on two processes chat in one room; another room hears nothing of it."""
    room, other = unique("room"), unique("other")
    with contextlib.ExitStack() as stack:

        def join(name: str, server: ServerProcess, room: str) -> ChatClient:
            url = server.ws_url(f"/ws/chat/{room}/")
            return stack.enter_context(chat_client(name, url, origin=origin_of(server)))

        alice, bob = join("alice", a, room), join("bob", b, room)
        carol, dave = join("carol", b, other), join("dave", a, other)
        assert alice.joined["room"] == room
        assert f":{a.port}" in alice.joined["server"]
        assert f":{b.port}" in bob.joined["server"]

        alice.say("hello from A")
        seen = bob.expect_message("hello from A")
        assert seen["user"] == "alice"
        assert seen["room"] == room
        assert f":{a.port}" in seen["server"], seen  # said on A, delivered on B
        alice.expect_message("hello from A")  # the author's own echo

        bob.say("hello from B")
        assert f":{b.port}" in alice.expect_message("hello from B")["server"]

        carol.say("in the other room")
        dave.expect_message("in the other room")

        for client in (alice, bob, carol, dave):
            client.listen(0.3)  # anything misrouted has arrived by now
        assert alice.texts() == bob.texts() == ["hello from A", "hello from B"]
        assert carol.texts() == dave.texts() == ["in the other room"]


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
