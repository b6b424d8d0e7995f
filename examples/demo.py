"""The chat demo: two chat server processes sharing one Redis, for two browser windows.

    python examples/demo.py                      # the Django Channels chat, served by daphne
    python examples/demo.py --example trio       # the trio chat (anyio_layer directly)
    python examples/demo.py --example starlette  # Starlette: uvicorn (asyncio), hypercorn (trio)
    python examples/demo.py --cluster            # the same, on a private Redis Cluster

It starts a private ``redis-server`` (through ``anyio_layer.testing``; with
``--cluster``, a Redis Cluster of 3 primaries and 3 replicas) unless
``REDIS_URL`` is set (then it first checks that it can use that server, and
stops with one line saying why if not), then two server processes of a chat
example on ports 8001 and 8002, and prints the two addresses to open. A line
typed in one window appears in the other: each server process sends it to the
room's group in Redis, and every member of the room, on either process,
receives it.

Ctrl-C (SIGINT) or SIGTERM stops everything the demo started: the servers
first, then Redis. ``--duration SECONDS`` stops after that long (for tests).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

EXAMPLES_DIR = Path(__file__).resolve().parent
REPO_ROOT = EXAMPLES_DIR.parent


@dataclass(frozen=True)
class Example:
    title: str
    #: Modules it needs installed, and the extra that has them.
    modules: tuple[str, ...]
    extra: str
    #: Where the server processes run, and how: the first server's command, then the
    #: second's (after ``python``; {host} and {port} filled in), with a label for each.
    cwd: Path
    commands: tuple[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...]]]


DAPHNE = (
    "-m", "daphne", "--verbosity", "0", "-b", "{host}", "-p", "{port}",
    "chat_project.asgi:application",
)  # fmt: skip
TRIO_SERVER = ("server.py", "--quiet", "--host", "{host}", "--port", "{port}")
EXAMPLES = {
    "django": Example(
        title="Django Channels chat (daphne, channels_compat.core.RedisChannelLayer)",
        modules=("django", "channels", "daphne"),
        extra="demo",
        cwd=EXAMPLES_DIR / "django_chat",
        commands=(("daphne", DAPHNE), ("daphne", DAPHNE)),
    ),
    "trio": Example(
        title="trio chat (hypercorn's trio server, anyio_layer.open_redis_layer)",
        modules=("trio", "hypercorn"),
        extra="demo",
        cwd=EXAMPLES_DIR / "trio_chat",
        commands=(("trio", TRIO_SERVER), ("trio", TRIO_SERVER)),
    ),
    "starlette": Example(
        title="Starlette chat (one under uvicorn on asyncio, one under hypercorn on trio)",
        modules=("starlette", "uvicorn", "hypercorn", "trio"),
        extra="examples",
        cwd=EXAMPLES_DIR / "starlette_broadcast",
        commands=(
            (
                "uvicorn, asyncio",
                ("-m", "uvicorn", "--log-level", "warning", "--host", "{host}",
                 "--port", "{port}", "app:app"),
            ),
            (
                "hypercorn, trio",
                ("-m", "hypercorn", "--log-level", "WARNING", "--worker-class", "trio",
                 "--bind", "{host}:{port}", "app:app"),
            ),
        ),
    ),
}  # fmt: skip

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class DemoError(Exception):
    """Something the user can fix; printed without a traceback."""


class StopRequested:
    """Set by SIGINT / SIGTERM; the main loop polls it (no exception in arbitrary places)."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 0.1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Run two chat server processes sharing one Redis (a private redis-server "
            "unless $REDIS_URL is set) and print the addresses to open in two browser "
            "windows. Ctrl-C stops everything."
        ),
    )
    parser.add_argument(
        "--example",
        choices=sorted(EXAMPLES),
        default="django",
        help="which chat example to serve (default: %(default)s)",
    )
    parser.add_argument(
        "--ports",
        type=int,
        nargs=2,
        default=[8001, 8002],
        metavar="PORT",
        help="the two servers' ports (default: 8001 8002)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help=(
            "start a private Redis Cluster (3 primaries, 3 replicas) instead of one "
            "redis-server; the servers get one of its nodes as a redis+cluster:// seed"
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this many seconds (default: run until Ctrl-C)",
    )
    args = parser.parse_args(argv)
    if args.ports[0] == args.ports[1]:
        parser.error("--ports: the two ports must differ")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def check_installed(example: str) -> None:
    spec = EXAMPLES[example]
    missing = [name for name in spec.modules if not importlib.util.find_spec(name)]
    if missing:
        raise DemoError(
            f"the {example} example needs {', '.join(missing)}; install the {spec.extra} extra:\n"
            f"    .venv/bin/pip install -e '.[{spec.extra}]'"
        )


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DemoError(
                f"cannot listen on {host}:{port} ({exc.strerror}); use --ports"
            ) from None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: have the kernel SIGTERM the server if the demo itself is killed (SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_server(
    example: str, index: int, host: str, port: int, redis_url: str
) -> subprocess.Popen[bytes]:
    spec = EXAMPLES[example]
    _, arguments = spec.commands[index]
    command = [sys.executable, *(part.format(host=host, port=port) for part in arguments)]
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    # channels_compat / anyio_layer come from the install; from a bare checkout, from here.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        command,
        cwd=spec.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        # Its own session: a Ctrl-C in the terminal reaches the demo, which stops
        # the servers in order, rather than every process at once.
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def stop_servers(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all, then SIGKILL (the whole session) to those that do not exit in time."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            print(f"server pid {process.pid} did not stop in time: killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_listening(
    process: subprocess.Popen[bytes], host: str, port: int, stop: StopRequested
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not stop:
        if process.poll() is not None:
            raise DemoError(f"the server for port {port} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise DemoError(f"the server for port {port} did not start in {STARTUP_TIMEOUT:g} s")
        stop.sleep(0.1)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT while starting redis-server, which inherits the blocked signal.

    A Ctrl-C in the terminal is sent to every process of the foreground group,
    and redis-server shares ours. Were it to stop at once, the chat servers
    would lose Redis while they are still closing their websockets. With SIGINT
    blocked it ignores the Ctrl-C, and the demo stops it (SIGTERM) after the
    servers. A Ctrl-C that arrives meanwhile is delivered to the demo afterwards.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def redis(cluster: bool) -> Iterator[str]:
    """``$REDIS_URL``, or a private redis-server (or cluster) for the duration of the block."""
    url = os.environ.get("REDIS_URL")
    if url:
        import anyio
        from redis_check import RedisUnavailable, check_redis, redacted

        try:
            anyio.run(lambda: check_redis(url, source="$REDIS_URL"))
        except RedisUnavailable as exc:
            raise DemoError(f"{exc} Or unset REDIS_URL to use a private Redis.") from None
        print(f"using Redis at {redacted(url)} ($REDIS_URL)")
        yield url
        return
    from anyio_layer.testing import RedisServer, RedisServerError
    from anyio_layer.testing.cluster import RedisCluster

    try:
        with sigint_blocked():
            deployment = RedisCluster.launch() if cluster else RedisServer.launch()
    except (FileNotFoundError, RedisServerError, TimeoutError) as exc:
        raise DemoError(str(exc)) from None
    try:
        version = ".".join(map(str, deployment.version))
        if isinstance(deployment, RedisCluster):
            url = deployment.hosts[0]
            print(
                f"started a private Redis Cluster (redis-server {version}, 3 primaries, "
                f"3 replicas); the servers use the seed {url}"
            )
        else:
            url = deployment.url
            print(f"started a private redis-server {version} at {url} (pid {deployment.pid})")
        yield url
    finally:
        deployment.close()


def run(args: argparse.Namespace, stop: StopRequested) -> None:
    example = args.example
    check_installed(example)
    for port in args.ports:
        check_port_free(args.host, port)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis(args.cluster))
        if stop:
            return
        print(f"starting two servers of the {EXAMPLES[example].title}")
        processes: list[subprocess.Popen[bytes]] = []
        stack.callback(stop_servers, processes)  # before Redis is stopped
        servers = []
        for index, port in enumerate(args.ports):
            process = start_server(example, index, args.host, port, redis_url)
            processes.append(process)
            servers.append((process, port))
        for process, port in servers:
            wait_until_listening(process, args.host, port, stop)
        if stop:
            return
        urls = [f"http://{args.host}:{port}/" for port in args.ports]
        labels = [label for label, _ in EXAMPLES[example].commands]
        for (process, _), url, label in zip(servers, urls, labels, strict=True):
            print(f"  {url}  ({label}, pid {process.pid})")
        print(
            f"\nopen {urls[0]} and {urls[1]} in two windows: a line typed in one appears in\n"
            f"the other (rooms: {urls[0]}room/<name>/). Press Ctrl-C to stop.",
            flush=True,
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop:
            for process, port in servers:
                if process.poll() is not None:
                    raise DemoError(
                        f"the server on port {port} exited with status {process.returncode}"
                    )
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.sleep(0.2)
        print("\nstopping...", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopRequested()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.handler)
    try:
        run(args, stop)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
    print("stopped" + (f" ({stop.signal})" if stop else ""), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed: nothing to stop
        sys.exit(130)
