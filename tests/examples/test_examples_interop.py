"""All the chat servers at once: they share rooms, and they survive an unreachable Redis."""

from __future__ import annotations

import contextlib
import json

import pytest
from examples_support import (
    DJANGO,
    HYPERCORN_TRIO,
    TRIO,
    UVICORN,
    chat_client,
    connect_websocket,
    free_port,
    http,
    origin_of,
    running_servers,
    unique,
)
from websockets.exceptions import ConnectionClosed

from anyio_layer.testing import RedisServer


def test_django_trio_and_starlette_share_a_room(
    example_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    room = unique("mixed")
    specs = [DJANGO, TRIO, UVICORN, HYPERCORN_TRIO]
    log_dir = tmp_path_factory.mktemp("interop-logs")
    with (
        running_servers(specs, example_redis.url, log_dir) as servers,
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


def test_unreachable_redis_is_reported_to_the_browser(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Joining a room needs Redis; without it the page is told why and the socket closes."""
    nowhere = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    specs = [DJANGO, TRIO, UVICORN, HYPERCORN_TRIO]
    log_dir = tmp_path_factory.mktemp("no-redis-logs")
    with running_servers(specs, nowhere, log_dir) as servers:
        for server in servers:
            assert http(server.url("/"))[0] == 200  # the page needs no Redis
            url = server.ws_url("/ws/chat/lobby/")
            with connect_websocket(url, origin=origin_of(server)) as ws:
                event = json.loads(ws.recv(timeout=10))
                assert event["type"] == "error", (server.name, event)
                assert "cannot join the room" in event["text"]
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 4500, server.name
    # running_servers has checked that no server printed a traceback.
