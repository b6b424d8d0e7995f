"""The Django and trio chat examples, two server processes each, driven by websocket clients."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from examples_support import (
    DJANGO,
    TRIO,
    ServerProcess,
    chat_client,
    check_rooms_across_processes,
    http,
    origin_of,
    poll,
    running_servers,
    unique,
)
from websockets.exceptions import InvalidStatus

from anyio_layer.testing import RedisServer

EXAMPLES = {"django": DJANGO, "trio": TRIO}


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def servers(
    request: pytest.FixtureRequest,
    example_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[ServerProcess]]:
    """Two server processes of one example, sharing the module's Redis."""
    spec = EXAMPLES[request.param]
    log_dir: Path = tmp_path_factory.mktemp(f"{spec.name}-logs")
    with running_servers([spec, spec], example_redis.url, log_dir) as servers:
        yield servers


def test_page_is_served(servers: list[ServerProcess]) -> None:
    for server in servers:
        for path in ("/", "/room/kitchen/"):
            status, body = http(server.url(path))
            assert status == 200, (path, body)
            assert 'id="message"' in body
            assert 'id="log"' in body
        assert http(server.url("/no/such/page/"))[0] == 404


def test_rooms_across_processes(servers: list[ServerProcess]) -> None:
    check_rooms_across_processes(*servers)
    check_rooms_across_processes(*reversed(servers))


def test_bad_input_is_ignored(servers: list[ServerProcess]) -> None:
    a, b = servers
    room = unique("bad-input")
    with (
        chat_client("eve", a.ws_url(f"/ws/chat/{room}/"), origin=origin_of(a)) as eve,
        chat_client("bob", b.ws_url(f"/ws/chat/{room}/"), origin=origin_of(b)) as bob,
    ):
        for junk in ("not json", "[1, 2]", '{"text": 42}', '{"text": "   "}', '{"no": "text"}'):
            eve.ws.send(junk)
        eve.say("x" * 5000)
        assert bob.expect(lambda e: e.get("type") == "message", "a message")["text"] == "x" * 1000
        eve.say("still connected")
        bob.expect_message("still connected")
        assert bob.texts() == ["x" * 1000, "still connected"]


def test_group_membership_ends_with_the_socket(
    servers: list[ServerProcess], example_redis: RedisServer
) -> None:
    a, _ = servers
    room = unique("leave")
    members = f"asgi:group:chat.{room}"
    with chat_client("ann", a.ws_url(f"/ws/chat/{room}/"), origin=origin_of(a)):
        assert example_redis.execute("ZCARD", members) == 1
    poll(lambda: example_redis.execute("ZCARD", members) == 0, 10, "the socket to leave")


def test_origin_check(servers: list[ServerProcess]) -> None:
    """Django checks the Origin against ALLOWED_HOSTS; the trio example has nothing to protect."""
    a, _ = servers
    url = a.ws_url("/ws/chat/lobby/")
    if a.spec is DJANGO:
        with (
            pytest.raises(InvalidStatus) as refused,
            chat_client("mallory", url, origin="http://evil.example"),
        ):
            pass
        assert refused.value.response.status_code == 403
    else:
        with chat_client("mallory", url, origin="http://evil.example") as client:
            assert client.joined["room"] == "lobby"


def test_log_times_follow_the_system_clock(servers: list[ServerProcess]) -> None:
    """Django sets the process's zone to TIME_ZONE; the example's is the system's."""
    for server in servers:
        stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", server.output(), re.MULTILINE)
        if server.spec is DJANGO:
            assert stamps, server.describe()  # daphne logs its start-up
        for stamp in stamps:
            logged = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))  # as local time
            assert abs(logged - time.time()) < 600, (stamp, time.strftime("%Y-%m-%d %H:%M:%S"))
