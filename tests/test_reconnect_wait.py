"""Commands wait out short outages (``reconnect_timeout``) and are never sent twice.

The pool, both layers' sends and the queue layer's group commands, against
real servers stopped and started (or a fault proxy that refuses connections
or cuts a reply in the middle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from anyio_layer import open_pubsub_layer, open_redis_layer
from anyio_layer.exceptions import ConnectionUnavailableError, RedisConnectionError
from anyio_layer.redis.hosts import parse_host
from anyio_layer.redis.pool import ConnectionPool, open_pool
from anyio_layer.testing import RedisServer, run_fault_proxy

pytestmark = pytest.mark.anyio


async def outage(server: RedisServer, seconds: float) -> None:
    """Stop ``server`` now and start it again ``seconds`` later (its data is lost)."""
    await anyio.to_thread.run_sync(server.kill)
    await anyio.sleep(seconds)
    await anyio.to_thread.run_sync(server.start)


async def until_disconnected(pool: ConnectionPool) -> None:
    """Wait until ``pool`` has seen its shared connection close (a killed server's EOF)."""
    with anyio.fail_after(10):
        while pool.statistics().pipeline_connected:
            await anyio.sleep(0.01)


def test_reconnect_timeout_option() -> None:
    assert parse_host("redis://localhost").options.reconnect_timeout == 3.0
    assert parse_host("redis://localhost?reconnect_timeout=0.5").options.reconnect_timeout == 0.5
    config = parse_host({"address": "redis://localhost", "reconnect_timeout": 0})
    assert config.options.reconnect_timeout == 0
    with pytest.raises(ValueError, match="reconnect_timeout"):
        parse_host({"address": "redis://localhost", "reconnect_timeout": -1})


async def test_pool_command_waits_for_the_server_to_come_back(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    async with open_pool(server.url) as pool:
        await pool.execute("PING")
        async with anyio.create_task_group() as tg:
            tg.start_soon(outage, server, 0.5)
            await anyio.sleep(0.1)  # the server is down now
            with anyio.fail_after(10):
                assert await pool.execute("INCR", "counter") == 1
        assert pool.statistics().connection_waits >= 1
        assert await pool.execute("GET", "counter") == b"1"


async def test_pool_gives_up_after_reconnect_timeout(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    async with open_pool({"address": server.url, "reconnect_timeout": 0.3}) as pool:
        await pool.execute("PING")
        await anyio.to_thread.run_sync(server.kill)
        await until_disconnected(pool)
        with anyio.fail_after(10), pytest.raises(ConnectionUnavailableError, match="gave up"):
            await pool.execute("INCR", "counter")
        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(10):
            assert await pool.execute("INCR", "counter") == 1  # the first one was never sent


async def test_cancelled_wait_sends_nothing(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    async with open_pool(server.url) as pool:
        await pool.execute("PING")
        await anyio.to_thread.run_sync(server.kill)
        await until_disconnected(pool)
        with anyio.move_on_after(0.3) as scope:
            await pool.execute("INCR", "counter")
        assert scope.cancelled_caught
        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(10):
            assert await pool.execute("INCR", "counter") == 1


async def test_a_command_that_may_have_run_is_not_sent_again(redis_server: RedisServer) -> None:
    redis_server.execute("DEL", "counter")
    async with run_fault_proxy(redis_server.address) as proxy, open_pool(proxy.url) as pool:
        await pool.execute("PING")
        proxy.cut_replies(after=1)
        with anyio.fail_after(10), pytest.raises(RedisConnectionError) as caught:
            await pool.execute("INCR", "counter")
        assert not isinstance(caught.value, ConnectionUnavailableError)
        proxy.heal()
        with anyio.fail_after(10):
            assert await pool.execute("GET", "counter") == b"1"


async def test_refused_connections_are_waited_out(redis_server: RedisServer) -> None:
    redis_server.execute("DEL", "counter")
    async with run_fault_proxy(redis_server.address) as proxy, open_pool(proxy.url) as pool:
        await pool.execute("PING")
        proxy.refuse()
        proxy.reset()
        await until_disconnected(pool)
        async with anyio.create_task_group() as tg:

            async def heal_later() -> None:
                await anyio.sleep(0.5)
                proxy.heal()

            tg.start_soon(heal_later)
            with anyio.fail_after(10):
                assert await pool.execute("INCR", "counter") == 1


async def test_queue_layer_calls_outlast_a_short_outage(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """send, group_send, group_add and group_discard during a 0.5 s outage all go through once."""
    server = redis_server_factory()
    async with (
        open_redis_layer(hosts=[server.url]) as sender,
        open_redis_layer(hosts=[server.url]) as receiver,
    ):
        member = await receiver.new_channel()
        leaver = await receiver.new_channel()
        await receiver.group_add("room", leaver)
        received: list[dict[str, Any]] = []

        async def receive_forever(channel: str) -> None:
            while True:
                received.append(await receiver.receive(channel))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive_forever, member)
            await anyio.sleep(0.1)
            tg.start_soon(outage, server, 0.5)
            await anyio.sleep(0.1)  # down now
            with anyio.fail_after(10):
                async with anyio.create_task_group() as calls:
                    calls.start_soon(sender.send, member, {"type": "direct"})
                    calls.start_soon(receiver.group_add, "room", member)
                    calls.start_soon(receiver.group_discard, "room", leaver)
            with anyio.fail_after(10):
                await sender.group_send("room", {"type": "grouped"})
                while len(received) < 2:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # nothing more arrives
            tg.cancel_scope.cancel()
        assert sorted(message["type"] for message in received) == ["direct", "grouped"]
        members = server.execute("ZRANGE", "asgi:group:room", 0, -1)
        assert members == [member.encode()]
        assert sender.statistics().connection_waits >= 1


async def test_queue_layer_send_fails_once_the_bound_is_exceeded(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    host = {"address": server.url, "reconnect_timeout": 0.3}
    async with open_redis_layer(hosts=[host]) as layer:
        await layer.send("jobs", {"type": "first"})
        await anyio.to_thread.run_sync(server.kill)
        with anyio.fail_after(10), pytest.raises(RedisConnectionError):
            await layer.group_send("room", {"type": "lost"})
        with anyio.fail_after(10), pytest.raises(RedisConnectionError):
            await layer.send("jobs", {"type": "lost"})


async def test_pubsub_sends_outlast_a_short_outage(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    async with open_pubsub_layer(hosts=[server.url]) as layer:
        await layer.send("nobody", {"type": "warm up"})
        async with anyio.create_task_group() as tg:
            tg.start_soon(outage, server, 0.5)
            await anyio.sleep(0.1)
            with anyio.fail_after(10):
                await layer.send("nobody", {"type": "during"})
                await layer.group_send("room", {"type": "during"})


async def test_a_hanging_connection_attempt_is_cut_off_at_the_bound(
    redis_server: RedisServer,
) -> None:
    """Behind a partition the handshake never answers: reconnect_timeout, not the connect one."""
    async with run_fault_proxy(redis_server.address) as proxy:
        host = {"address": proxy.url, "reconnect_timeout": 0.5, "socket_connect_timeout": 60}
        async with open_pool(host) as pool:
            await pool.execute("PING")
            proxy.blackhole()
            proxy.reset()
            await until_disconnected(pool)
            with anyio.fail_after(30), pytest.raises(ConnectionUnavailableError):
                await pool.execute("PING")
            proxy.heal()
            with anyio.fail_after(30):
                assert await pool.execute("PING") == b"PONG"
