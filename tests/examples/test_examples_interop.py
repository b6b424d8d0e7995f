"""All the chat servers at once: they share rooms, and they refuse to start without Redis."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from examples_support import (
    DJANGO,
    HYPERCORN_TRIO,
    STARTUP_TIMEOUT,
    TRIO,
    UVICORN,
    chat_client,
    child_env,
    free_port,
    origin_of,
    running_servers,
    spawn,
    unique,
)

from anyio_layer.testing import RedisServer

ALL_SERVERS = [DJANGO, TRIO, UVICORN, HYPERCORN_TRIO]


def test_django_trio_and_starlette_share_a_room(
    example_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    room = unique("mixed")
    log_dir = tmp_path_factory.mktemp("interop-logs")
    with (
        running_servers(ALL_SERVERS, example_redis.url, log_dir) as servers,
        contextlib.ExitStack() as stack,
    ):
        clients = [
            stack.enter_context(
                chat_client(
                    server.spec.name, server.ws_url(f"/ws/chat/{room}/"), origin=origin_of(server)
                )
            )
            for server in servers
        ]
        for client in clients:
            client.say(f"{client.name} says hi")
        expected = [f"{client.name} says hi" for client in clients]
        for client in clients:
            for text in expected:
                client.expect_message(text)
            assert sorted(client.texts()) == sorted(expected)


def test_unusable_redis_stops_each_server_at_start_up(tmp_path: Path) -> None:
    """A wrong REDIS_URL: the server does not listen; it says in one line which URL and why."""
    port = free_port()  # nothing listens there
    nowhere = f"redis://:not-for-the-log@127.0.0.1:{port}"
    env = child_env(REDIS_URL=nowhere)
    servers = [spawn(spec, free_port(), env, tmp_path) for spec in ALL_SERVERS]
    try:
        for server in servers:
            server.popen.wait(STARTUP_TIMEOUT)
    finally:
        for server in servers:
            server.terminate()
            server.wait_stopped()
    for server in servers:
        output = server.output()
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1, server.describe()
        assert (
            f"cannot use Redis at redis://:***@127.0.0.1:{port} ($REDIS_URL): connection refused. "
            "Is a Redis server running there? Or run examples/demo.py"
        ) in lines[0], server.describe()
        assert "not-for-the-log" not in output
        # hypercorn's main process exits with 0 whatever its worker's status was.
        ok = (0, 1) if server.spec is HYPERCORN_TRIO else (1,)
        assert server.popen.returncode in ok, server.describe()
