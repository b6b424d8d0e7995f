"""The connection layer's cancellation contract, under asyncio and trio.

* A cancelled command never leaves its reply to be read by someone else.
* A connection whose request was interrupted is never reused in an unknown state.
* No pool slot is lost: statistics return to baseline.
* No blocked client stays on the server.
"""

from __future__ import annotations

import random
from collections import Counter

import anyio
import pytest

from anyio_layer.redis.pool import ConnectionPool, open_pool
from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio


def blocked_clients(server: RedisServer) -> int:
    return int(server.info("clients")["blocked_clients"])


def named_clients(server: RedisServer, name: str) -> int:
    listing = server.execute("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return sum(f" name={name} " in line for line in listing.decode().splitlines())


async def settle(pool: ConnectionPool, server: RedisServer) -> None:
    """Wait until the pool is idle and the server has no blocked clients."""
    with anyio.fail_after(5):
        while (
            pool.statistics().connections_in_use
            or pool.statistics().pipeline_pending
            or blocked_clients(server)
        ):
            await anyio.sleep(0.01)


async def test_cancelled_commands_never_receive_wrong_replies(
    redis_url: str, redis_server: RedisServer
) -> None:
    rng = random.Random(1234)
    completed = 0
    cancelled = 0
    async with open_pool(redis_url) as pool:

        async def caller(i: int) -> None:
            nonlocal completed, cancelled
            for j in range(60):
                token = f"{i}-{j}-{rng.random()}"
                with anyio.move_on_after(rng.choice([0, 0.0001, 0.0005, 0.001, 1])) as scope:
                    if j % 3 == 0:
                        replies = await pool.pipeline([("ECHO", token), ("ECHO", token + "b")])
                        assert replies == [token.encode(), (token + "b").encode()]
                    else:
                        assert await pool.execute("ECHO", token) == token.encode()
                if scope.cancelled_caught:
                    cancelled += 1
                else:
                    completed += 1

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(caller, i)
        await settle(pool, redis_server)
        stats = pool.statistics()
        # Cancellation never cost the shared connection.
        assert stats.connections_opened == 1
        assert stats.pipeline_connected
    assert completed + cancelled == 3000
    assert completed > 100
    assert cancelled > 100


async def test_cancelled_blocking_commands_free_their_slot_and_server_client(
    redis_url: str, redis_server: RedisServer
) -> None:
    rng = random.Random(99)
    async with open_pool({"address": redis_url, "client_name": "blocker"}) as pool:
        baseline = pool.statistics()

        async def waiter() -> None:
            for _ in range(20):
                with anyio.move_on_after(rng.uniform(0, 0.01)):
                    await pool.execute_blocking("BZPOPMIN", "empty", 0)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(waiter)
        await settle(pool, redis_server)
        stats = pool.statistics()
        assert stats.connections_in_use == baseline.connections_in_use == 0
        # Interrupted connections were closed, not returned to the pool.
        assert stats.idle_connections == 0
        assert stats.connections_opened == stats.connections_closed + int(stats.pipeline_connected)
        assert blocked_clients(redis_server) == 0
        with anyio.fail_after(5):
            while named_clients(redis_server, "blocker") > int(stats.pipeline_connected):
                await anyio.sleep(0.01)


async def test_cancelled_pops_lose_and_duplicate_nothing(
    redis_url: str, redis_server: RedisServer
) -> None:
    """With a recovery callback, an element popped for a cancelled caller is handed back."""
    rng = random.Random(7)
    total = 2000
    received: Counter[bytes] = Counter()
    recovered: list[bytes] = []

    async def recover(reply: object) -> None:
        assert isinstance(reply, list)
        recovered.append(reply[1])

    async with open_pool(redis_url) as pool:

        async def producer() -> None:
            for start in range(0, total, 50):
                await pool.execute(
                    "ZADD", "q", *[part for n in range(start, start + 50) for part in (n, f"m{n}")]
                )
                await anyio.sleep(rng.uniform(0, 0.002))

        async def consumer() -> None:
            while sum(received.values()) + len(recovered) < total:
                with anyio.move_on_after(rng.choice([0.0002, 0.001, 0.003, 0.05])):
                    reply = await pool.execute_blocking(
                        "BZPOPMIN", "q", 0.05, on_cancelled_reply=recover
                    )
                    if reply is not None:
                        assert isinstance(reply, list)
                        received[reply[1]] += 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(producer)
                for _ in range(8):
                    tg.start_soon(consumer)
        await settle(pool, redis_server)
        stats = pool.statistics()
        assert stats.connections_in_use == 0
    everything = received + Counter(recovered)
    assert set(everything) == {f"m{n}".encode() for n in range(total)}
    assert max(everything.values()) == 1, "an element was delivered twice"
    assert blocked_clients(redis_server) == 0


async def test_cancelling_a_large_write_does_not_corrupt_the_connection(redis_url: str) -> None:
    payload = b"x" * (8 * 1024 * 1024)
    async with open_pool(redis_url) as pool:
        for delay in (0, 0.0001, 0.001, 0.005):
            with anyio.move_on_after(delay):
                await pool.execute("SET", "big", payload)
        assert await pool.execute("ECHO", "still in sync") == b"still in sync"
        assert pool.statistics().connections_opened == 1
