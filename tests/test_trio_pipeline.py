"""The trio fast path of the shared connection (``anyio_layer.redis.trio_pipeline``).

Under trio the pool's shared connection on a plain TCP or Unix socket is a
:class:`TrioPipeline`; these tests exercise that path specifically (the pool
and cancellation suites run it too). Everything here runs on trio only.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from anyio_layer.exceptions import (
    LayerClosedError,
    RedisConnectionError,
    RedisTimeoutError,
)
from anyio_layer.redis.pipeline import StreamPipeline
from anyio_layer.redis.pool import ConnectionPool, open_pool
from anyio_layer.redis.protocol import Arg
from anyio_layer.redis.trio_pipeline import TrioPipeline
from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio

ServerFactory = Callable[..., RedisServer]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The fast path exists on trio only."""
    return "trio"


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def fast_pipeline(pool: ConnectionPool) -> TrioPipeline:
    pipeline = pool._pipeline
    assert isinstance(pipeline, TrioPipeline)
    return pipeline


async def reconnects_eventually(pool: ConnectionPool, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            try:
                assert await pool.execute("PING") == b"PONG"
                return
            except RedisConnectionError:
                await anyio.sleep(0.05)


class CountingSocket:
    """Stands in for the pipeline's socket and records every ``send``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[int] = []

    def send(self, data: bytes | memoryview) -> int:
        sent = self.sock.send(data)
        self.sends.append(sent)
        return sent

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


async def test_fast_path_for_tcp_and_unix_not_for_tls(
    redis_url: str, redis_server_factory: ServerFactory
) -> None:
    async with open_pool(redis_url) as pool:
        assert await pool.execute("PING") == b"PONG"
        fast_pipeline(pool)
        # Dedicated connections keep anyio's streams.
        async with pool.connection() as connection:
            assert await connection.execute("PING") == b"PONG"
    server = redis_server_factory(unix_socket=True)
    async with open_pool(f"unix://{server.unix_path}") as pool:
        assert await pool.pipeline([("ECHO", str(i)) for i in range(1000)]) == [
            str(i).encode() for i in range(1000)
        ]
        fast_pipeline(pool)
    server = redis_server_factory(tls=True)
    assert server.tls is not None
    host, port = server.address
    config = {"address": f"rediss://{host}:{port}", "ssl_ca_certs": str(server.tls.ca_cert)}
    async with open_pool(config) as pool:
        assert await pool.execute("PING") == b"PONG"
        assert isinstance(pool._pipeline, StreamPipeline)


async def test_random_cancellations_never_misattribute_replies(redis_url: str) -> None:
    rng = random.Random(20240611)
    outcomes = {"completed": 0, "cancelled": 0}
    async with open_pool(redis_url) as pool:
        await pool.execute("PING")
        pipeline = fast_pipeline(pool)

        async def caller(i: int) -> None:
            for j in range(80):
                # Some tokens are large, so replies arrive split across reads.
                token = f"{i}:{j}:{rng.random()}" + "x" * rng.choice([0, 0, 0, 70_000])
                with anyio.move_on_after(rng.choice([0, 1e-5, 1e-4, 5e-4, 2e-3, 10])) as scope:
                    if j % 4 == 0:
                        tokens = [f"{token}/{k}" for k in range(rng.randint(1, 5))]
                        replies = await pool.pipeline([("ECHO", t) for t in tokens])
                        assert replies == [t.encode() for t in tokens]
                    else:
                        assert await pool.execute("ECHO", token) == token.encode()
                outcomes["cancelled" if scope.cancelled_caught else "completed"] += 1
                if rng.random() < 0.1:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(caller, i)
        await wait_until(lambda: pool.statistics().pipeline_pending == 0)
        stats = pool.statistics()
        assert pool._pipeline is pipeline
        assert (stats.connections_opened, stats.connections_closed) == (1, 0)
        assert await pool.execute("ECHO", "in sync") == b"in sync"
    assert outcomes["completed"] + outcomes["cancelled"] == 60 * 80
    assert outcomes["completed"] > 300, outcomes
    assert outcomes["cancelled"] > 300, outcomes


async def test_commands_of_one_scheduling_batch_are_written_together(redis_url: str) -> None:
    async with open_pool(redis_url) as pool:
        await pool.execute("PING")
        pipeline = fast_pipeline(pool)
        counting = CountingSocket(pipeline._sock)
        pipeline._sock = counting  # type: ignore[assignment]
        results: dict[int, object] = {}

        async def echo(i: int) -> None:
            results[i] = await pool.execute("ECHO", str(i))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(echo, i)
        assert results == {i: str(i).encode() for i in range(50)}
        # The first command finds the connection idle and goes at once; the
        # other 49, issued in the same scheduling batch, share one write.
        assert len(counting.sends) == 2, counting.sends


async def test_large_values_and_cancelled_large_writes_keep_the_connection_in_sync(
    redis_url: str,
) -> None:
    values = {n: bytes([65 + n]) * (8 * 1024 * 1024) for n in range(3)}
    async with open_pool(redis_url) as pool:
        await pool.execute("PING")
        small: list[bool] = []

        async def big(n: int) -> None:
            assert await pool.execute("SET", f"big{n}", values[n]) == b"OK"
            value = await pool.execute("GET", f"big{n}")
            assert isinstance(value, bytes)
            assert hashlib.sha256(value).digest() == hashlib.sha256(values[n]).digest()

        async def chatter(i: int) -> None:
            for j in range(100):
                token = f"{i}-{j}"
                small.append(await pool.execute("ECHO", token) == token.encode())

        async with anyio.create_task_group() as tg:
            for n in values:
                tg.start_soon(big, n)
            for i in range(10):
                tg.start_soon(chatter, i)
        assert small == [True] * 1000
        for delay in (0, 0.0001, 0.001, 0.005, 0.02):
            with anyio.move_on_after(delay):
                await pool.execute("SET", "big", values[0])
            assert await pool.execute("ECHO", "in sync") == b"in sync"
        assert await pool.execute("STRLEN", "big") == len(values[0])
        assert pool.statistics().connections_opened == 1


async def test_client_kill_fails_pending_requests_then_reconnects(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    async with open_pool(server.url) as pool:
        await pool.execute("PING")
        pipeline = fast_pipeline(pool)
        errors: list[BaseException] = []

        async def stuck(*command: str) -> None:
            try:
                await pool.execute(*command)
            except RedisConnectionError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck, "BLPOP", "never", "0")
            # (trio runs the tasks of one batch in any order: BLPOP must go first.)
            await wait_until(lambda: pool.statistics().pipeline_pending == 1)
            for i in range(10):
                tg.start_soon(stuck, "ECHO", str(i))
            await wait_until(lambda: pool.statistics().pipeline_pending == 11)
            server.execute("CLIENT", "KILL", "ID", str(pipeline.connection.client_id))
        assert len(errors) == 11
        assert all(type(error) is RedisConnectionError for error in errors)
        assert f"127.0.0.1:{server.address[1]}" in str(errors[0])
        assert pipeline.closed
        assert pool.statistics().pipeline_pending == 0
        await reconnects_eventually(pool)
        assert fast_pipeline(pool) is not pipeline
        assert pool.statistics().reconnects == 1


async def test_socket_timeout_closes_the_connection(redis_url: str) -> None:
    async with open_pool({"address": redis_url, "socket_timeout": 0.3}) as pool:
        for i in range(200):
            assert await pool.execute("ECHO", str(i)) == str(i).encode()
        pipeline = fast_pipeline(pool)
        await anyio.sleep(0.5)
        assert pool._pipeline is pipeline
        # A caller that went away takes its deadline along: the late reply is dropped.
        with anyio.move_on_after(0.05):
            await pool.execute("DEBUG", "SLEEP", 0.4)
        await anyio.sleep(0.5)
        assert await pool.execute("ECHO", "later") == b"later"
        assert pool._pipeline is pipeline
        errors: list[BaseException] = []

        async def call(*command: Arg) -> None:
            try:
                await pool.execute(*command)
            except RedisTimeoutError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "DEBUG", "SLEEP", 0.8)
                await wait_until(lambda: pool.statistics().pipeline_pending == 1)
                tg.start_soon(call, "ECHO", "behind")
        assert len(errors) == 2
        assert "did not answer within 0.3 seconds" in str(errors[0])
        assert pipeline.closed
        await anyio.sleep(0.6)
        assert await pool.execute("PING") == b"PONG"
        assert pool.statistics().connections_opened == 2


async def test_closing_the_pool_fails_pending_calls(redis_url: str) -> None:
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        async with open_pool(redis_url) as pool:
            await pool.execute("PING")
            pipeline = fast_pipeline(pool)

            async def stuck(*command: str) -> None:
                try:
                    await pool.execute(*command)
                except LayerClosedError as exc:
                    errors.append(exc)

            tg.start_soon(stuck, "BLPOP", "never", "0")
            await wait_until(lambda: pool.statistics().pipeline_pending == 1)
            for i in range(5):
                tg.start_soon(stuck, "ECHO", str(i))
            await wait_until(lambda: pool.statistics().pipeline_pending == 6)
        assert pipeline.closed
        assert pipeline._sock.fileno() == -1
    assert len(errors) == 6
    stats = pool.statistics()
    assert stats.connections_opened == stats.connections_closed == 1
    with pytest.raises(LayerClosedError):
        await pool.execute("PING")


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_caller_cancelled_as_the_connection_fails_sees_its_cancellation(
    redis_url: str, cancel_first: bool
) -> None:
    async with open_pool(redis_url) as pool:
        await pool.execute("PING")
        pipeline = fast_pipeline(pool)
        scopes: list[anyio.CancelScope] = []
        outcome: list[object] = []

        async def call() -> None:
            try:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await pool.execute("BLPOP", "never", "0")
                outcome.append("cancelled" if scope.cancelled_caught else "returned")
            except RedisConnectionError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_until(lambda: pool.statistics().pipeline_pending == 1)
            if cancel_first:
                scopes[0].cancel()
                pipeline._close(RedisConnectionError("test failure"))
            else:
                pipeline._close(RedisConnectionError("test failure"))
                scopes[0].cancel()
        assert outcome == ["cancelled"]
        assert await pool.execute("PING") == b"PONG"


async def test_a_reply_nobody_asked_for_is_a_protocol_error() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.receive()
                await stream.send(b":7\r\n")  # the handshake's CLIENT ID
                await stream.receive()
                await stream.send(b"+OK\r\n+EXTRA\r\n")
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            async with open_pool(f"redis://127.0.0.1:{port}") as pool:
                with anyio.fail_after(5):
                    assert await pool.execute("PING") == b"OK"
                # Closed in the same read as the reply: the pool has let it go.
                await wait_until(lambda: not pool.statistics().pipeline_connected)
                stats = pool.statistics()
                assert stats.connections_opened == stats.connections_closed == 1
            tg.cancel_scope.cancel()
