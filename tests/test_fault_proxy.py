"""The fault-injecting proxy (``anyio_layer.testing.proxy``), against a real redis-server.

Each fault is checked with raw sockets speaking RESP, so what is tested is the
proxy alone; the layers are tested through it in ``tests/test_network_faults.py``.
"""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from anyio_layer.testing import FaultProxy, RedisServer, run_fault_proxy

pytestmark = pytest.mark.anyio

PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"


async def connect(proxy: FaultProxy) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp(*proxy.address)


async def receive_exactly(stream: anyio.abc.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return data


async def read_until_closed(stream: anyio.abc.SocketStream, request: bytes = PING) -> bytes:
    """Send ``request`` and return what arrives before the connection ends (within 5 s)."""
    received = b""
    with anyio.fail_after(5):
        try:
            await stream.send(request)
            while True:
                received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return received


async def ping(stream: anyio.abc.SocketStream) -> bytes:
    await stream.send(PING)
    return await receive_exactly(stream, len(PONG))


async def test_forwards_and_counts(redis_server: RedisServer) -> None:
    async with run_fault_proxy(redis_server.address) as proxy:
        assert proxy.url == f"redis://{proxy.address[0]}:{proxy.address[1]}"
        async with await connect(proxy) as stream:
            for _ in range(3):
                assert await ping(stream) == PONG
        with anyio.fail_after(5):
            while proxy.statistics().connections_open:
                await anyio.sleep(0.01)
        stats = proxy.statistics()
        assert stats.connections_accepted == 1
        assert stats.bytes_upstream == 3 * len(PING)
        assert stats.bytes_downstream == 3 * len(PONG)


async def test_latency_delays_each_direction(redis_server: RedisServer) -> None:
    async with run_fault_proxy(redis_server.address) as proxy, await connect(proxy) as stream:
        proxy.set_latency(0.1)
        started = anyio.current_time()
        assert await ping(stream) == PONG
        assert anyio.current_time() - started >= 0.2  # 0.1 s up, 0.1 s down
        proxy.heal()
        assert await ping(stream) == PONG


async def test_latency_keeps_throughput(redis_server: RedisServer) -> None:
    """Delayed chunks are pipelined, not forwarded one latency at a time."""
    async with run_fault_proxy(redis_server.address) as proxy, await connect(proxy) as stream:
        proxy.set_latency(0.2)
        for _ in range(20):
            await stream.send(PING)
            await anyio.sleep(0.005)
        with anyio.fail_after(1.5):  # one by one, 20 round trips would take 8 s
            assert await receive_exactly(stream, 20 * len(PONG)) == 20 * PONG


async def test_blackhole_holds_data_until_healed(redis_server: RedisServer) -> None:
    async with run_fault_proxy(redis_server.address) as proxy, await connect(proxy) as stream:
        assert await ping(stream) == PONG
        proxy.blackhole()
        await stream.send(PING)  # the write succeeds: the socket is open
        with anyio.move_on_after(0.5) as silent:
            await stream.receive()
        assert silent.cancelled_caught
        proxy.heal()
        with anyio.fail_after(5):
            assert await receive_exactly(stream, len(PONG)) == PONG


async def test_blackhole_applies_to_new_connections(redis_server: RedisServer) -> None:
    async with run_fault_proxy(redis_server.address) as proxy:
        proxy.blackhole()
        async with await connect(proxy) as stream:  # accepted, then silent
            await stream.send(PING)
            with anyio.move_on_after(0.3) as silent:
                await stream.receive()
            assert silent.cancelled_caught


async def test_cut_replies_mid_reply(redis_server: RedisServer) -> None:
    value = b"x" * 10_000
    await redis_server.aexecute("SET", "proxy:big", value)
    request = b"*2\r\n$3\r\nGET\r\n$9\r\nproxy:big\r\n"
    async with run_fault_proxy(redis_server.address) as proxy, await connect(proxy) as stream:
        assert await ping(stream) == PONG  # the proxy has taken the connection
        proxy.cut_replies(after=5)
        # the first 5 bytes of "$10000\r\n...":
        assert await read_until_closed(stream, request) == b"$1000"
        assert proxy.statistics().connections_reset == 1
        async with await connect(proxy) as fresh:  # new connections are whole again
            await fresh.send(request)
            with anyio.fail_after(5):
                reply = await receive_exactly(fresh, len(b"$10000\r\n") + len(value) + 2)
            assert reply == b"$10000\r\n" + value + b"\r\n"


async def test_reset_aborts_open_connections(redis_server: RedisServer) -> None:
    async with run_fault_proxy(redis_server.address) as proxy, await connect(proxy) as stream:
        assert await ping(stream) == PONG
        proxy.reset()
        assert await read_until_closed(stream) == b""
        async with await connect(proxy) as fresh:
            assert await ping(fresh) == PONG


async def test_refuse_resets_new_connections_only(redis_server: RedisServer) -> None:
    async with run_fault_proxy(redis_server.address) as proxy, await connect(proxy) as kept:
        assert await ping(kept) == PONG
        proxy.refuse()
        async with await connect(proxy) as refused:
            assert await read_until_closed(refused) == b""
        assert await ping(kept) == PONG
        assert proxy.statistics().connections_refused == 1
        proxy.refuse(False)
        async with await connect(proxy) as accepted:
            assert await ping(accepted) == PONG


async def test_bandwidth_limit(redis_server: RedisServer) -> None:
    value = b"y" * 50_000
    await redis_server.aexecute("SET", "proxy:wide", value)
    request = b"*2\r\n$3\r\nGET\r\n$10\r\nproxy:wide\r\n"
    expected = b"$50000\r\n" + value + b"\r\n"
    async with run_fault_proxy(redis_server.address) as proxy, await connect(proxy) as stream:
        proxy.set_bandwidth(100_000)
        started = anyio.current_time()
        await stream.send(request)
        with anyio.fail_after(10):
            assert await receive_exactly(stream, len(expected)) == expected
        assert anyio.current_time() - started >= 0.4  # 50 kB at 100 kB/s


async def test_upstream_down_resets_clients() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    async with run_fault_proxy(("127.0.0.1", port)) as proxy, await connect(proxy) as stream:
        assert await read_until_closed(stream) == b""


async def test_leaving_the_block_resets_everything(redis_server: RedisServer) -> None:
    async with run_fault_proxy(redis_server.address) as proxy:
        stream = await connect(proxy)
        assert await ping(stream) == PONG
    async with stream:
        assert await read_until_closed(stream) == b""


@pytest.mark.parametrize(
    ("method", "value"),
    [("set_latency", -1.0), ("set_latency", float("nan")), ("set_bandwidth", 0.0)],
)
async def test_bad_fault_settings_are_refused(
    redis_server: RedisServer, method: str, value: float
) -> None:
    async with run_fault_proxy(redis_server.address) as proxy:
        with pytest.raises(ValueError, match="must be"):
            getattr(proxy, method)(value)
        with pytest.raises(ValueError, match="after must be"):
            proxy.cut_replies(after=-1)
