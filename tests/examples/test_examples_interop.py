"""All the chat servers at once: they share rooms, need Redis to start, and ride out losing it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from examples_support import (
    DJANGO,
    HYPERCORN_TRIO,
    STARTUP_TIMEOUT,
    TRIO,
    UVICORN,
    ChatClient,
    ServerProcess,
    chat_client,
    child_env,
    connect_websocket,
    free_port,
    origin_of,
    running_servers,
    spawn,
    unique,
)
from websockets.exceptions import ConnectionClosed

from anyio_layer.testing import RedisServer

ALL_SERVERS = [DJANGO, TRIO, UVICORN, HYPERCORN_TRIO]
#: What the servers tell the page when Redis cannot be reached (details go to their logs).
NO_REDIS = "the chat server cannot reach Redis"


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


def test_redis_lost_and_back(tmp_path: Path) -> None:
    """Redis stops: every socket is told in plain words and closed with 4500, joining
    fails the same way; once Redis is back, the rooms work again on every server."""
    redis = RedisServer.launch()
    try:
        with running_servers(ALL_SERVERS, redis.url, tmp_path) as servers:
            room = unique("lost")
            with contextlib.ExitStack() as stack:
                clients = [stack.enter_context(join(server, room)) for server in servers]
                clients[0].say("before the stop")
                for client in clients:
                    client.expect_message("before the stop")
                redis.stop()
                clients[0].say("lost line")  # the server cannot send it: it says so
                for client in clients:
                    event = client.expect(lambda e: e.get("type") == "error", "an error event")
                    assert event["text"] in (
                        f"disconnected: {NO_REDIS}",
                        f"not sent: {NO_REDIS}",
                    ), client.name
                    with pytest.raises(ConnectionClosed) as closed:
                        client.listen(10)
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == 4500, client.name
            for server in servers:  # joining while Redis is down
                with connect_websocket(
                    server.ws_url(f"/ws/chat/{room}/"), origin=origin_of(server)
                ) as ws:
                    event = json.loads(ws.recv(timeout=10))
                    assert event == {"type": "error", "text": f"cannot join the room: {NO_REDIS}"}
                    with pytest.raises(ConnectionClosed) as closed:
                        ws.recv(timeout=10)
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == 4500, server.name
            redis.start()  # same port, empty data set
            with contextlib.ExitStack() as stack:
                # Each server's connection to Redis comes back within its retry delay
                # (up to 2 s); until then joining fails as above, and the page retries.
                clients = [stack.enter_context(join_when_back(server, room)) for server in servers]
                for client in clients:
                    client.say(f"{client.name} is back")
                for client in clients:
                    for other in clients:
                        client.expect_message(f"{other.name} is back")
        for server in servers:  # the details are in the servers' logs
            assert "127.0.0.1" in server.output(), server.describe()
    finally:
        redis.close()


def join(server: ServerProcess, room: str) -> contextlib.AbstractContextManager[ChatClient]:
    url = server.ws_url(f"/ws/chat/{room}/")
    return chat_client(server.spec.name, url, origin=origin_of(server))


@contextlib.contextmanager
def join_when_back(server: ServerProcess, room: str, timeout: float = 10) -> Iterator[ChatClient]:
    """Join, retrying every 0.5 s while the server says it cannot reach Redis."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with join(server, room):
                break
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        assert code == 4500, server.name
        assert time.monotonic() < deadline, f"{server.name} did not get Redis back"
        time.sleep(0.5)
    with join(server, room) as client:
        yield client
