"""``examples/demo.py``: starts Redis and two chat servers, prints their URLs, stops everything.

The demo is run as the README says (``python examples/demo.py``), without
``REDIS_URL``, so it starts its own redis-server. Its process tree is recorded
from ``/proc`` while it runs; once it has exited, none of those processes may
be left, and nothing it printed may contain a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from examples_support import (
    EXAMPLES_DIR,
    REPO_ROOT,
    ChatClient,
    chat_client,
    child_env,
    free_port,
    http,
    poll,
    unique,
)
from websockets.exceptions import ConnectionClosed

from anyio_layer.testing import RedisServer

DEMO = EXAMPLES_DIR / "demo.py"
PROC = Path("/proc")
URLS = re.compile(r"open (http://\S+/) and (http://\S+/) in two windows")

pytestmark = pytest.mark.skipif(not PROC.is_dir(), reason="needs /proc to follow the processes")


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` (to tell a reused pid apart), or None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may contain spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]  # field 22 of proc(5), 0-based after the name and state


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``, with its start time."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                started = process_start_time(pid)
                if started is not None:
                    found[pid] = started
                    frontier.append(pid)
    return found


@dataclass
class Demo:
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    stderr: str = ""
    started: dict[int, str] = field(default_factory=dict)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    def describe(self) -> str:
        return (
            f"demo pid {self.popen.pid}, exit status {self.popen.poll()}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def wait_for_urls(self, timeout: float = 60.0) -> tuple[str, str]:
        def found() -> bool:
            self.started.update(descendants(self.popen.pid))
            if self.popen.poll() is not None:
                raise AssertionError(f"the demo exited early:\n{self.describe()}")
            return URLS.search(self.stdout) is not None

        poll(found, timeout, "the demo to print the URLs")
        match = URLS.search(self.stdout)
        assert match is not None
        return match[1], match[2]

    def finish(self) -> None:
        """Read the output to its end (every writer has exited by then) and close the pipes."""
        for reader in self.readers:
            reader.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def leftovers(self) -> list[int]:
        return [pid for pid, started in self.started.items() if process_start_time(pid) == started]


@pytest.fixture
def run_demo() -> Iterator[object]:
    demos: list[Demo] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Demo:
        popen = subprocess.Popen(
            [sys.executable, str(DEMO), *args],
            cwd=REPO_ROOT,
            env=env or child_env(),  # by default no REDIS_URL: the demo starts its own Redis
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group of its own, like a terminal job
        )
        demo = Demo(popen)
        assert popen.stdout is not None
        assert popen.stderr is not None
        out, err = popen.stdout, popen.stderr

        def read_stdout() -> None:
            for line in out:
                demo.lines.append(line)

        def read_stderr() -> None:
            demo.stderr = err.read()

        for target in (read_stdout, read_stderr):
            demo.readers.append(threading.Thread(target=target, daemon=True))
            demo.readers[-1].start()
        demos.append(demo)
        return demo

    yield start
    for demo in demos:  # a failed test must not leave its demo running
        if demo.popen.poll() is None:
            os.killpg(demo.popen.pid, signal.SIGKILL)
            demo.popen.wait()
        for pid in demo.leftovers():
            os.kill(pid, signal.SIGKILL)
        demo.finish()


@contextlib.contextmanager
def connected_to_servers(url_a: str, url_b: str) -> Iterator[list[ChatClient]]:
    """Both pages are served and a line said on one server reaches the other."""
    for url in (url_a, url_b):
        status, body = http(url)
        assert status == 200
        assert 'id="message"' in body
    room = unique("demo")
    ws_a = url_a.replace("http://", "ws://") + f"ws/chat/{room}/"
    ws_b = url_b.replace("http://", "ws://") + f"ws/chat/{room}/"
    with (
        chat_client("a", ws_a, origin=url_a.rstrip("/")) as a,
        chat_client("b", ws_b, origin=url_b.rstrip("/")) as b,
    ):
        a.say("hi from the demo test")
        b.expect_message("hi from the demo test")
        yield [a, b]


def check_stopped(demo: Demo, timeout: float) -> None:
    try:
        demo.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the demo did not stop in {timeout:g} s:\n{demo.describe()}"
        ) from None
    demo.finish()
    assert demo.popen.returncode == 0, demo.describe()
    assert "Traceback" not in demo.stdout + demo.stderr, demo.describe()
    assert "stopped" in demo.stdout, demo.describe()
    # redis-server and the two servers, at least, were seen running...
    assert len(demo.started) >= 3, (demo.started, demo.describe())
    # ...and none of them is left.
    poll(lambda: not demo.leftovers(), 5, f"processes {demo.leftovers()} to exit")


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO), "--help"], capture_output=True, text=True, check=True
    )
    assert "--duration" in result.stdout
    assert "--ports" in result.stdout


@pytest.mark.parametrize("example", ["django", "trio", "starlette"])
def test_runs_for_duration(run_demo: object, example: str) -> None:
    ports = free_port(), free_port()
    demo = run_demo(  # type: ignore[operator]
        "--duration", "5", "--example", example, "--ports", *map(str, ports)
    )
    url_a, url_b = demo.wait_for_urls()
    assert (url_a, url_b) == tuple(f"http://127.0.0.1:{port}/" for port in ports)
    assert "redis-server" in demo.stdout
    with connected_to_servers(url_a, url_b):
        pass
    check_stopped(demo, 30)


@pytest.mark.parametrize("example", ["django", "trio"])
def test_runs_on_a_cluster(run_demo: object, example: str) -> None:
    demo = run_demo(  # type: ignore[operator]
        "--cluster", "--duration", "8", "--example", example,
        "--ports", str(free_port()), str(free_port()),
    )  # fmt: skip
    url_a, url_b = demo.wait_for_urls()
    assert "Redis Cluster" in demo.stdout
    assert "redis+cluster://" in demo.stdout
    with connected_to_servers(url_a, url_b):
        pass
    check_stopped(demo, 30)
    # Six cluster nodes and the two servers were seen running, and none is left.
    assert len(demo.started) >= 8, (demo.started, demo.describe())


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stops_on_signal(run_demo: object, how: str) -> None:
    demo = run_demo("--ports", str(free_port()), str(free_port()))  # type: ignore[operator]
    url_a, url_b = demo.wait_for_urls()
    with connected_to_servers(url_a, url_b) as clients:
        # Stop while browsers are connected: their sockets are closed by the servers.
        if how == "ctrl-c":
            # What a terminal does on Ctrl-C: SIGINT to the whole foreground process group
            # (the demo and its redis-server; the chat servers have sessions of their own).
            os.killpg(demo.popen.pid, signal.SIGINT)
        else:
            demo.popen.send_signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(ConnectionClosed):
                client.listen(20)
    check_stopped(demo, 30)
    # Redis outlived the servers (it ignores the terminal's SIGINT; the demo stops it last).
    assert "waiting for Redis" not in demo.stderr, demo.describe()
    assert "could not remove" not in demo.stderr, demo.describe()


@pytest.mark.parametrize("problem", ["nothing listening", "wrong password", "no answer"])
def test_unusable_redis_url_stops_the_demo_at_once(run_demo: object, problem: str) -> None:
    """``REDIS_URL`` is checked first: one line says which URL, why, and what to try."""
    with contextlib.ExitStack() as stack:
        if problem == "nothing listening":
            port = free_port()
            url, shown = f"redis://127.0.0.1:{port}", f"redis://127.0.0.1:{port}"
            why = "connection refused. Is a Redis server running there?"
        elif problem == "no answer":  # the kernel accepts the connection; nobody answers
            silent = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            port = silent.getsockname()[1]
            url, shown = f"redis://127.0.0.1:{port}", f"redis://127.0.0.1:{port}"
            why = "no answer within 5 s. Are the host and port right, and reachable?"
        else:
            server = RedisServer.launch(password="right-password")
            stack.callback(server.close)
            host, port = server.address
            url, shown = f"redis://:wrong-password@{host}:{port}", f"redis://:***@{host}:{port}"
            why = "refused the credentials: WRONGPASS"
        started = time.monotonic()
        demo = run_demo(  # type: ignore[operator]
            "--ports", str(free_port()), str(free_port()), env=child_env(REDIS_URL=url)
        )
        demo.popen.wait(30)
        elapsed = time.monotonic() - started
        demo.finish()
    assert demo.popen.returncode == 1, demo.describe()
    assert elapsed < 10, demo.describe()  # the check takes a few seconds at most
    assert demo.stdout == "", demo.describe()  # no URLs printed as if all were well
    lines = demo.stderr.splitlines()
    assert len(lines) == 1, demo.describe()
    assert lines[0].startswith(f"demo: cannot use Redis at {shown} ($REDIS_URL): "), lines
    assert why in lines[0]
    assert lines[0].endswith("Or unset REDIS_URL to use a private Redis."), lines
    assert "wrong-password" not in lines[0], lines
    assert not demo.started  # no server was started
