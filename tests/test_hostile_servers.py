"""Servers that misbehave: every call fails within a bounded time with a clear error.

A fake server (an anyio TCP listener that parses commands with the real codec)
plays a broken or hostile Redis: it answers the handshake with garbage, sends
an absurd length, answers with the wrong reply types, or never answers. Each
layer call must then raise a :class:`ChannelLayerError` subclass well within
the connection's timeouts, and leaving the layer's ``async with`` block must
not hang.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import pytest

import anyio_layer
from anyio_layer.exceptions import (
    ChannelLayerError,
    ProtocolError,
    RedisConnectionError,
    RedisTimeoutError,
)
from anyio_layer.pubsub.placement import SUBSCRIBE_TIMEOUT
from anyio_layer.redis.protocol import NEED_DATA, Parser

pytestmark = pytest.mark.anyio

#: How the fake server answers one command: bytes to send, or None for silence.
Responder = Callable[[list[bytes]], bytes | None]

HANDSHAKE = {b"CLIENT", b"HELLO", b"AUTH", b"SELECT"}
#: Short timeouts, so each case takes about a second; the bounds scale with them.
TIMEOUTS = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
#: A call must have failed by then (the timeouts above plus generous slack).
BOUND = 5.0


def handshake_then(rest: Responder) -> Responder:
    """Answer the handshake as Redis would, then hand over to ``rest``."""

    def respond(command: list[bytes]) -> bytes | None:
        if command[:2] == [b"CLIENT", b"ID"]:
            return b":7\r\n"
        if command[0].upper() in HANDSHAKE:
            return b"+OK\r\n"
        return rest(command)

    return respond


def garbage(command: list[bytes]) -> bytes | None:
    return b"HTTP/1.1 400 Bad Request\r\n\r\n"


def huge_length(command: list[bytes]) -> bytes | None:
    return b"$999999999999\r\n"


def silent(command: list[bytes]) -> bytes | None:
    return None


def wrong_types(command: list[bytes]) -> bytes | None:
    """Plausible RESP, wrong shapes: arrays where integers belong and vice versa."""
    if command[0] in (b"EVALSHA", b"EVAL"):
        return b"*3\r\n$1\r\nx\r\n:1\r\n*0\r\n"
    if command[0] in (b"PUBLISH", b"SPUBLISH"):
        return b"*1\r\n$3\r\nfoo\r\n"
    if command[0] in (b"SUBSCRIBE", b"SSUBSCRIBE", b"PING"):
        return b":12\r\n"
    return b"%1\r\n:1\r\n:2\r\n"


SERVERS: dict[str, Responder] = {
    "garbage handshake": garbage,
    "huge length in handshake": huge_length,
    "silent": silent,
    "garbage after handshake": handshake_then(garbage),
    "huge length after handshake": handshake_then(huge_length),
    "silent after handshake": handshake_then(silent),
    "wrong reply types": handshake_then(wrong_types),
}


@contextlib.asynccontextmanager
async def run_fake_server(respond: Responder) -> AsyncIterator[str]:
    """Serve ``respond`` on a free loopback port; yields its URL."""

    async def serve(client: anyio.abc.SocketStream) -> None:
        parser = Parser(use_hiredis=False)  # commands are arrays of bulk strings
        async with client:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while True:
                    parser.feed(await client.receive())
                    while (command := parser.get_reply()) is not NEED_DATA:
                        if not isinstance(command, list):
                            return
                        reply = respond([bytes(part) for part in command])
                        if reply is not None:
                            await client.send(reply)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, serve)
        try:
            yield f"redis://127.0.0.1:{port}"
        finally:
            task_group.cancel_scope.cancel()


def hosts(url: str) -> list[dict[str, Any]]:
    return [{"address": url, **TIMEOUTS}]


async def fails_clearly(call: Callable[[], Any], bound: float = BOUND) -> ChannelLayerError:
    """Run ``call``: it must raise a ChannelLayerError within ``bound`` seconds."""
    with anyio.fail_after(bound):
        try:
            await call()
        except ChannelLayerError as exc:
            return exc
    pytest.fail(f"{call} succeeded against a broken server")


MESSAGE = {"type": "test.message", "text": "hi"}


BROKEN = {name: respond for name, respond in SERVERS.items() if name != "wrong reply types"}


@pytest.mark.parametrize("server", BROKEN)
async def test_queue_layer_calls_fail_within_bound(server: str) -> None:
    async with run_fake_server(SERVERS[server]) as url:
        with anyio.fail_after(3 * BOUND):  # every call and the exit, together
            async with anyio_layer.open_redis_layer(hosts=hosts(url)) as layer:
                errors = [
                    await fails_clearly(lambda: layer.send("worker", MESSAGE)),
                    await fails_clearly(lambda: layer.group_add("room", "worker")),
                    await fails_clearly(lambda: layer.group_send("room", MESSAGE)),
                    await fails_clearly(lambda: layer.group_discard("room", "worker")),
                ]
    check_errors(server, errors)


@pytest.mark.parametrize("server", BROKEN)
async def test_pubsub_layer_calls_fail_within_bound(server: str) -> None:
    async with run_fake_server(SERVERS[server]) as url:
        with anyio.fail_after(3 * BOUND + SUBSCRIBE_TIMEOUT):
            async with anyio_layer.open_pubsub_layer(hosts=hosts(url)) as layer:
                errors = [
                    await fails_clearly(lambda: layer.send("worker", MESSAGE)),
                    await fails_clearly(lambda: layer.group_send("room", MESSAGE)),
                    # A subscription waits out short outages, up to SUBSCRIBE_TIMEOUT.
                    subscribing := await fails_clearly(
                        layer.new_channel, SUBSCRIBE_TIMEOUT + BOUND
                    ),
                ]
    check_errors(server, errors)
    assert isinstance(subscribing, RedisTimeoutError)
    if "garbage" in server:  # the timeout says why the server never confirmed
        assert "last error" in str(subscribing), str(subscribing)


def check_errors(server: str, errors: list[ChannelLayerError]) -> None:
    for error in errors:
        assert isinstance(error, (RedisConnectionError, ProtocolError)), repr(error)
        assert "127.0.0.1" in str(error) or isinstance(error, ProtocolError), str(error)
    if "silent" in server:
        assert all(isinstance(error, RedisTimeoutError) for error in errors), errors


async def test_wrong_reply_types_are_protocol_errors() -> None:
    """Replies a call reads must have the right shape; replies it ignores may be anything."""
    async with run_fake_server(SERVERS["wrong reply types"]) as url:
        with anyio.fail_after(3 * BOUND):
            async with anyio_layer.open_redis_layer(hosts=hosts(url)) as layer:
                error = await fails_clearly(lambda: layer.send("worker", MESSAGE))
                assert isinstance(error, ProtocolError), repr(error)
                assert "EVALSHA" in str(error) or "reply" in str(error), str(error)
                for call in (
                    lambda: layer.group_add("room", "worker"),
                    lambda: layer.group_send("room", MESSAGE),
                    lambda: layer.group_discard("room", "worker"),
                ):
                    with contextlib.suppress(ChannelLayerError):
                        await call()  # anything but a ChannelLayerError fails the test
            async with anyio_layer.open_pubsub_layer(hosts=hosts(url)) as pubsub:
                for call in (
                    lambda: pubsub.send("worker", MESSAGE),
                    pubsub.new_channel,
                ):
                    with contextlib.suppress(ChannelLayerError):
                        await call()


async def test_default_deadline_bounds_a_silent_server() -> None:
    """With no options at all, a server that goes silent fails send() in socket_timeout."""
    from anyio_layer.redis.hosts import DEFAULT_SOCKET_TIMEOUT, parse_host

    assert parse_host("redis://localhost").options.socket_timeout == DEFAULT_SOCKET_TIMEOUT
    async with (
        run_fake_server(handshake_then(silent)) as url,
        anyio_layer.open_redis_layer(hosts=[url]) as layer,
    ):
        started = anyio.current_time()
        with (
            anyio.fail_after(DEFAULT_SOCKET_TIMEOUT + BOUND),
            pytest.raises(RedisTimeoutError, match="did not answer within"),
        ):
            await layer.send("worker", MESSAGE)
        assert anyio.current_time() - started >= DEFAULT_SOCKET_TIMEOUT * 0.9
