"""The Starlette example under uvicorn (asyncio) and hypercorn's trio worker, two processes each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from examples_support import (
    HYPERCORN_TRIO,
    UVICORN,
    ServerProcess,
    chat_client,
    check_rooms_across_processes,
    http,
    running_servers,
    unique,
)

from anyio_layer.testing import RedisServer

SERVERS = {"uvicorn": [UVICORN, UVICORN], "hypercorn-trio": [HYPERCORN_TRIO, HYPERCORN_TRIO]}


@pytest.fixture(scope="module", params=list(SERVERS))
def servers(
    request: pytest.FixtureRequest,
    example_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[ServerProcess]]:
    log_dir = tmp_path_factory.mktemp(f"{request.param}-logs")
    with running_servers(SERVERS[request.param], example_redis.url, log_dir) as servers:
        yield servers


def test_broadcast_reaches_websockets_on_every_process(servers: list[ServerProcess]) -> None:
    a, b = servers
    room, other = unique("news"), unique("quiet")
    with (
        chat_client("on-a", a.ws_url(f"/ws/chat/{room}/")) as on_a,
        chat_client("on-b", b.ws_url(f"/ws/chat/{room}/")) as on_b,
        chat_client("elsewhere", b.ws_url(f"/ws/chat/{other}/")) as elsewhere,
    ):
        status, body = http(a.url(f"/broadcast/{room}"), {"text": "posted to A"})
        assert status == 202, body
        for client in (on_a, on_b):
            event = client.expect_message("posted to A")
            assert event["user"] == "broadcast"
            assert f":{a.port}" in event["server"]

        status, body = http(b.url(f"/broadcast/{room}"), {"text": "posted to B", "user": "ops"})
        assert status == 202, body
        assert on_a.expect_message("posted to B")["user"] == "ops"
        on_b.expect_message("posted to B")

        elsewhere.listen(0.3)
        assert elsewhere.texts() == []


def test_broadcast_rejects_bad_requests(servers: list[ServerProcess]) -> None:
    a, _ = servers
    assert http(a.url("/broadcast/lobby"), {"no": "text"})[0] == 400
    assert http(a.url("/broadcast/lobby"), {"text": "  "})[0] == 400
    assert http(a.url("/broadcast/not%20a%20room"), {"text": "hi"})[0] == 404
    assert http(a.url("/broadcast/lobby"), method="GET")[0] == 405


def test_chat_across_processes(servers: list[ServerProcess]) -> None:
    check_rooms_across_processes(*servers)


def test_page_is_served(servers: list[ServerProcess]) -> None:
    for path in ("/", "/room/kitchen/"):
        status, body = http(servers[0].url(path))
        assert status == 200
        assert 'id="message"' in body
