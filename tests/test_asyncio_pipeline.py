"""The asyncio fast path of the shared connection (``anyio_layer.redis.asyncio_pipeline``).

Under asyncio the pool's shared connection is an ``asyncio.Protocol``; these
tests exercise that path specifically (the pool suites run it too, on both
backends). Apart from the first test, everything here runs on asyncio only.
"""

from __future__ import annotations

import gc
import hashlib
import random
from collections.abc import Callable, Iterator

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from anyio_layer.exceptions import (
    AuthenticationError,
    LayerClosedError,
    ProtocolError,
    RedisConnectionError,
    RedisTimeoutError,
)
from anyio_layer.redis import asyncio_stream
from anyio_layer.redis.asyncio_pipeline import AsyncioPipeline, _HandshakeStream, running_on_asyncio
from anyio_layer.redis.pool import ConnectionPool, open_pool
from anyio_layer.redis.protocol import Arg
from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio

ServerFactory = Callable[..., RedisServer]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The fast path exists on asyncio only."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """An unclosed transport warns when collected: make that happen inside the test."""
    yield
    gc.collect()


def named_clients(server: RedisServer, name: str) -> int:
    listing = server.execute("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return sum(f" name={name} " in line for line in listing.decode().splitlines())


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def fast_pipeline(pool: ConnectionPool) -> AsyncioPipeline:
    pipeline = pool._pipeline
    assert isinstance(pipeline, AsyncioPipeline)
    return pipeline


async def reconnects_eventually(pool: ConnectionPool, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            try:
                assert await pool.execute("PING") == b"PONG"
                return
            except RedisConnectionError:
                await anyio.sleep(0.05)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_fast_path_only_on_asyncio_and_only_for_the_shared_connection(
    anyio_backend: str, redis_url: str
) -> None:
    async with open_pool(redis_url) as pool:
        assert await pool.execute("PING") == b"PONG"
        assert running_on_asyncio() == (anyio_backend == "asyncio")
        assert isinstance(pool._pipeline, AsyncioPipeline) == (anyio_backend == "asyncio")
        # Dedicated connections keep anyio's streams on either backend.
        async with pool.connection() as connection:
            assert not isinstance(connection._stream, _HandshakeStream)
            assert await connection.execute("PING") == b"PONG"


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_dedicated_connections_keep_reading_on_asyncio(
    anyio_backend: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asyncio_stream, "HIGH_WATER", 64 * 1024)
    value = bytes(range(256)) * 4096  # 1 MiB: far above the (lowered) high-water mark
    async with open_pool(redis_url) as pool:
        await pool.execute("SET", "big", value)
        async with pool.connection() as connection:
            on_asyncio = anyio_backend == "asyncio"
            assert isinstance(connection._stream, asyncio_stream.ProtocolStream) == on_asyncio
            # Replies far above the high-water mark: reading pauses and resumes.
            for _ in range(3):
                assert await connection.execute("GET", "big") == value
            assert await connection.execute("PING") == b"PONG"
        # A reader blocked on a dedicated connection fails when it is closed.
        async with pool.connection() as connection:
            errors: list[Exception] = []

            async def blocked() -> None:
                try:
                    await connection.execute("BLPOP", "never", "0")
                except RedisConnectionError as exc:
                    errors.append(exc)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(blocked)
                    await anyio.sleep(0.1)
                    await connection.aclose()
            assert len(errors) == 1


def test_not_on_asyncio_outside_an_event_loop() -> None:
    assert not running_on_asyncio()


async def test_handshake_auth_select_setname_and_client_id(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory(username="alice", password="pw")
    host, port = server.address
    config = {
        "address": f"redis://alice:pw@{host}:{port}/2",
        "client_name": "fast",
    }
    async with open_pool(config) as pool:
        assert await pool.execute("ACL", "WHOAMI") == b"alice"
        pipeline = fast_pipeline(pool)
        assert await pool.execute("CLIENT", "ID") == pipeline.connection.client_id > 0
        assert await pool.execute("CLIENT", "GETNAME") == b"fast"
        await pool.execute("SET", "in-db-2", 1)
    assert "db2" in server.info("keyspace")
    with pytest.raises(AuthenticationError):
        async with open_pool(f"redis://alice:nope@{host}:{port}") as pool:
            await pool.execute("PING")
    assert pool.statistics().connections_opened == 0


async def test_random_cancellations_never_misattribute_replies(
    redis_url: str, redis_server: RedisServer
) -> None:
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
        # Cancellations never cost the shared connection, and it is still in sync.
        assert pool._pipeline is pipeline
        assert stats.connections_opened == 1
        assert stats.connections_closed == 0
        assert stats.pipeline_connected
        assert await pool.execute("ECHO", "in sync") == b"in sync"
    assert outcomes["completed"] + outcomes["cancelled"] == 60 * 80
    assert outcomes["completed"] > 300, outcomes
    assert outcomes["cancelled"] > 300, outcomes


async def test_commands_of_one_loop_iteration_are_written_together(redis_url: str) -> None:
    async with open_pool(redis_url) as pool:
        await pool.execute("PING")
        pipeline = fast_pipeline(pool)
        transport = pipeline._transport
        assert transport is not None
        writes: list[bytes] = []
        write = transport.write

        def counting_write(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = counting_write  # type: ignore[method-assign]
        try:
            results: dict[int, object] = {}

            async def echo(i: int) -> None:
                results[i] = await pool.execute("ECHO", str(i))

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(echo, i)
        finally:
            del transport.write
        assert results == {i: str(i).encode() for i in range(50)}
        # The first command finds the connection idle and goes at once; the
        # other 49, issued in the same loop iteration, share one write.
        assert len(writes) == 2, [len(data) for data in writes]


async def test_flow_control_with_large_values(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"pause": 0, "resume": 0}
    pause, resume = AsyncioPipeline.pause_writing, AsyncioPipeline.resume_writing

    def counting_pause(self: AsyncioPipeline) -> None:
        calls["pause"] += 1
        pause(self)

    def counting_resume(self: AsyncioPipeline) -> None:
        calls["resume"] += 1
        resume(self)

    monkeypatch.setattr(AsyncioPipeline, "pause_writing", counting_pause)
    monkeypatch.setattr(AsyncioPipeline, "resume_writing", counting_resume)
    size = 8 * 1024 * 1024
    values = {n: bytes([65 + n]) * size for n in range(4)}
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

        pipeline = fast_pipeline(pool)
        held_back = 0  # loop iterations that saw commands held back by flow control

        async def watch() -> None:
            nonlocal held_back
            while True:
                held_back += pipeline._paused and bool(pipeline._outbox)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async with anyio.create_task_group() as workers:
                for n in values:
                    workers.start_soon(big, n)
                for i in range(10):
                    workers.start_soon(chatter, i)
            tg.cancel_scope.cancel()
        assert small == [True] * 1000
        assert held_back > 0
        assert calls["pause"] >= 1
        assert calls["resume"] == calls["pause"]
        assert not fast_pipeline(pool)._paused
        assert pool.statistics().connections_opened == 1


async def test_commands_held_back_by_flow_control_are_written_on_resume(redis_url: str) -> None:
    async with open_pool(redis_url) as pool:
        await pool.execute("PING")
        pipeline = fast_pipeline(pool)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.execute, "SET", "big", b"x" * (16 * 1024 * 1024))
            while not pipeline.pending:
                await anyio.lowlevel.checkpoint()
            # The transport took the big value and asked us to pause: this ECHO
            # waits in the outbox, and nothing but resume_writing() sends it.
            assert pipeline._paused
            with anyio.fail_after(5):
                assert await pool.execute("ECHO", "after") == b"after"
        assert not pipeline._paused
        assert await pool.execute("STRLEN", "big") == 16 * 1024 * 1024


async def test_cancelling_large_writes_keeps_the_connection_in_sync(redis_url: str) -> None:
    payload = b"y" * (8 * 1024 * 1024)
    async with open_pool(redis_url) as pool:
        await pool.execute("PING")
        for delay in (0, 0.0001, 0.001, 0.005, 0.02):
            with anyio.move_on_after(delay):
                await pool.execute("SET", "big", payload)
            assert await pool.execute("ECHO", "in sync") == b"in sync"
        assert await pool.execute("STRLEN", "big") == len(payload)
        assert pool.statistics().connections_opened == 1


async def test_client_kill_fails_pending_requests_then_reconnects(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    async with open_pool({"address": server.url, "client_name": "victim"}) as pool:
        await pool.execute("PING")
        pipeline = fast_pipeline(pool)
        errors: list[BaseException] = []

        async def stuck(*command: str) -> None:
            try:
                await pool.execute(*command)
            except RedisConnectionError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            # BLPOP blocks the shared connection; the ECHOs wait behind it.
            tg.start_soon(stuck, "BLPOP", "never", "0")
            for i in range(10):
                tg.start_soon(stuck, "ECHO", str(i))
            await wait_until(lambda: pool.statistics().pipeline_pending == 11)
            killed = server.execute("CLIENT", "KILL", "ID", str(pipeline.connection.client_id))
            assert killed == 1
        assert len(errors) == 11
        assert all(type(error) is RedisConnectionError for error in errors)
        assert f"127.0.0.1:{server.address[1]}" in str(errors[0])
        assert pipeline.closed
        stats = pool.statistics()
        assert (stats.pipeline_connected, stats.pipeline_pending) == (False, 0)
        assert stats.connections_closed == 1
        # The next call reconnects at once.
        assert await pool.execute("PING") == b"PONG"
        assert isinstance(pool._pipeline, AsyncioPipeline)
        assert pool._pipeline is not pipeline
        stats = pool.statistics()
        assert (stats.connections_opened, stats.reconnects, stats.pipeline_connected) == (
            2,
            1,
            True,
        )
        assert named_clients(server, "victim") == 1


async def test_server_restart_fails_pending_requests_then_reconnects(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    async with open_pool(server.url) as pool:
        await pool.execute("PING")
        errors: list[BaseException] = []

        async def stuck(*command: str) -> None:
            try:
                await pool.execute(*command)
            except RedisConnectionError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck, "BLPOP", "never", "0")
            for i in range(5):
                tg.start_soon(stuck, "ECHO", str(i))
            await wait_until(lambda: pool.statistics().pipeline_pending == 6)
            await anyio.to_thread.run_sync(server.kill)
        assert len(errors) == 6
        with pytest.raises(RedisConnectionError):
            await pool.execute("PING")
        await anyio.to_thread.run_sync(server.start)
        await reconnects_eventually(pool)
        stats = pool.statistics()
        assert stats.reconnects >= 1
        assert stats.connect_failures >= 1
        assert stats.connections_opened == stats.connections_closed + 1
        assert isinstance(pool._pipeline, AsyncioPipeline)


async def test_socket_timeout_closes_the_connection(redis_url: str) -> None:
    async with open_pool({"address": redis_url, "socket_timeout": 0.3}) as pool:
        # Prompt replies do not trip the timer, even long after they arrived.
        for i in range(200):
            assert await pool.execute("ECHO", str(i)) == str(i).encode()
        pipeline = fast_pipeline(pool)
        await anyio.sleep(0.5)
        assert pool._pipeline is pipeline
        assert pool.statistics().pipeline_connected
        # A caller that went away takes its timer along: the late reply is dropped.
        with anyio.move_on_after(0.05):
            await pool.execute("DEBUG", "SLEEP", 0.4)
        await anyio.sleep(0.5)
        assert await pool.execute("ECHO", "later") == b"later"
        assert pool._pipeline is pipeline
        assert pool.statistics().pipeline_connected
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
        # Both fail with the timeout (the second was waiting behind the first).
        assert len(errors) == 2
        assert "did not answer within 0.3 seconds" in str(errors[0])
        assert pipeline.closed
        await anyio.sleep(0.6)  # until DEBUG SLEEP is over
        assert await pool.execute("PING") == b"PONG"
        assert pool.statistics().connections_opened == 2


async def test_closing_the_pool_fails_pending_calls_and_closes_the_socket(
    redis_url: str, redis_server: RedisServer
) -> None:
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        async with open_pool({"address": redis_url, "client_name": "closing"}) as pool:
            await pool.execute("PING")
            pipeline = fast_pipeline(pool)

            async def stuck(*command: str) -> None:
                try:
                    await pool.execute(*command)
                except LayerClosedError as exc:
                    errors.append(exc)

            tg.start_soon(stuck, "BLPOP", "never", "0")
            for i in range(5):
                tg.start_soon(stuck, "ECHO", str(i))
            await wait_until(lambda: pool.statistics().pipeline_pending == 6)
        # The pool is closed: the socket is closed already, the callers fail.
        assert pipeline._lost
        assert named_clients(redis_server, "closing") == 0
    assert len(errors) == 6
    stats = pool.statistics()
    assert stats.connections_opened == stats.connections_closed == 1
    assert (stats.pipeline_connected, stats.pipeline_pending) == (False, 0)
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
            # Both happen in the same loop iteration, in either order.
            if cancel_first:
                scopes[0].cancel()
                pipeline._close(RedisConnectionError("test failure"))
            else:
                pipeline._close(RedisConnectionError("test failure"))
                scopes[0].cancel()
        assert outcome == ["cancelled"]
        assert await pool.execute("PING") == b"PONG"


async def test_tls(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(tls=True)
    assert server.tls is not None
    host, port = server.address
    config = {
        "address": f"rediss://{host}:{port}",
        "ssl_ca_certs": str(server.tls.ca_cert),
        "client_name": "tls",
    }
    async with open_pool(config) as pool:
        assert await pool.execute("PING") == b"PONG"
        pipeline = fast_pipeline(pool)
        value = b"z" * (4 * 1024 * 1024)
        results: list[bool] = []

        async def echo(i: int) -> None:
            for j in range(50):
                token = f"{i}-{j}"
                results.append(await pool.execute("ECHO", token) == token.encode())

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(echo, i)
            tg.start_soon(pool.execute, "SET", "big", value)
        assert results == [True] * 1000
        assert await pool.execute("GET", "big") == value
        server.execute("CLIENT", "KILL", "ID", str(pipeline.connection.client_id))
        await reconnects_eventually(pool)
        assert pool._pipeline is not pipeline
        assert isinstance(pool._pipeline, AsyncioPipeline)
        assert named_clients(server, "tls") == 1
    assert named_clients(server, "tls") == 0
    with pytest.raises(RedisConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        async with open_pool(f"rediss://{host}:{port}") as pool:
            await pool.execute("PING")


async def test_unix_socket(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(unix_socket=True)
    assert server.unix_path is not None
    config = {"address": f"unix://{server.unix_path}", "db": 3, "client_name": "uds"}
    async with open_pool(config) as pool:
        await pool.execute("SET", "in-db-3", 1)
        pipeline = fast_pipeline(pool)
        assert await pool.pipeline([("ECHO", str(i)) for i in range(1000)]) == [
            str(i).encode() for i in range(1000)
        ]
        server.execute("CLIENT", "KILL", "ID", str(pipeline.connection.client_id))
        await reconnects_eventually(pool)
        assert pool._pipeline is not pipeline
        assert named_clients(server, "uds") == 1
    assert named_clients(server, "uds") == 0
    assert "db3" in server.info("keyspace")


async def serve_fake(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    task_group: anyio.abc.TaskGroup,
    respond: Callable[[int, bytes], bytes],
) -> None:
    """Serve connections: answer the n-th chunk read with ``respond(n, chunk)``."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            n = 0
            try:
                while True:
                    answer = respond(n, await stream.receive())
                    n += 1
                    if answer:
                        await stream.send(answer)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    task_group.start_soon(listener.serve, handle)


def handshake_then(answer: bytes) -> Callable[[int, bytes], bytes]:
    """A fake server's answers: the handshake's CLIENT ID, then ``answer`` to every command."""
    return lambda n, chunk: b":7\r\n" if n == 0 else answer


async def test_garbage_after_the_handshake_is_a_protocol_error() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            await serve_fake(listener, tg, handshake_then(b"?garbage\r\n"))
            async with open_pool(f"redis://127.0.0.1:{port}") as pool:
                with anyio.fail_after(5), pytest.raises(ProtocolError) as info:
                    await pool.execute("PING")
                assert f"127.0.0.1:{port}" in str(info.value)
                stats = pool.statistics()
                assert not stats.pipeline_connected
                assert stats.connections_opened == stats.connections_closed == 1
            tg.cancel_scope.cancel()


async def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            await serve_fake(listener, tg, handshake_then(b"+OK\r\n+EXTRA\r\n"))
            async with open_pool(f"redis://127.0.0.1:{port}") as pool:
                with anyio.fail_after(5):
                    assert await pool.execute("PING") == b"OK"
                # Closed in the same read as the reply: the pool has let it go.
                await wait_until(lambda: not pool.statistics().pipeline_connected)
                stats = pool.statistics()
                assert not stats.pipeline_connected
                assert stats.connections_opened == stats.connections_closed == 1
                # The next call reconnects.
                with anyio.fail_after(5):
                    assert await pool.execute("PING") == b"OK"
                assert pool.statistics().reconnects == 1
            tg.cancel_scope.cancel()


async def test_connect_timeout_on_a_silent_server() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            await serve_fake(listener, tg, lambda n, chunk: b"")
            async with open_pool(
                {
                    "address": f"redis://127.0.0.1:{port}",
                    "socket_connect_timeout": 0.2,
                    "reconnect_timeout": 0,  # one attempt
                }
            ) as pool:
                with anyio.fail_after(5), pytest.raises(RedisTimeoutError, match=r"0\.2 seconds"):
                    await pool.execute("PING")
                assert pool.statistics().connect_failures == 1
                assert pool._pipeline is None
            tg.cancel_scope.cancel()
