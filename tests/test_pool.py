"""The connection layer against real servers: transports, handshake, pipelining, failures."""

from __future__ import annotations

import os
from collections.abc import Callable

import anyio
import pytest

from anyio_layer.exceptions import (
    AuthenticationError,
    LayerClosedError,
    ProtocolError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
)
from anyio_layer.redis.pool import ConnectionPool, open_pool
from anyio_layer.redis.protocol import ErrorReply
from anyio_layer.redis.scripts import Script
from anyio_layer.testing import RedisServer, find_redis_server, redis_server_supports_tls

pytestmark = pytest.mark.anyio

ServerFactory = Callable[..., RedisServer]


def client_count(server: RedisServer, name: str) -> int:
    listing = server.execute("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return sum(f" name={name} " in line for line in listing.decode().splitlines())


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def test_execute_and_pipeline(redis_url: str) -> None:
    async with open_pool(redis_url) as pool:
        assert await pool.execute("PING") == b"PONG"
        assert await pool.execute("SET", "key", "välue") == b"OK"
        assert await pool.execute("GET", "key") == "välue".encode()
        assert await pool.execute("GET", "missing") is None
        replies = await pool.pipeline(
            [
                ("INCR", "n"),
                ("INCRBYFLOAT", "f", 1.5),
                ("RPUSH", "l", b"\x00\r\n", 3),
                ("LRANGE", "l", 0, -1),
            ]
        )
        assert replies == [1, b"1.5", 2, [b"\x00\r\n", b"3"]]
        assert await pool.pipeline([]) == []


async def test_error_replies(redis_url: str) -> None:
    async with open_pool(redis_url) as pool:
        await pool.execute("SET", "s", "x")
        with pytest.raises(ResponseError) as info:
            await pool.execute("LPUSH", "s", "y")
        assert info.value.code == "WRONGTYPE"
        replies = await pool.pipeline(
            [("GET", "s"), ("LPUSH", "s", "y"), ("GET", "s")], raise_on_error=False
        )
        assert replies[0] == replies[2] == b"x"
        assert isinstance(replies[1], ErrorReply)
        assert replies[1].code == "WRONGTYPE"
        with pytest.raises(ResponseError):
            await pool.pipeline([("GET", "s"), ("LPUSH", "s", "y")])
        # The connection is still in sync afterwards.
        assert await pool.execute("GET", "s") == b"x"


async def test_concurrent_callers_share_one_connection(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_pool({"address": redis_url, "client_name": "shared"}) as pool:

        async def worker(i: int) -> None:
            for j in range(20):
                token = f"{i}:{j}"
                assert await pool.execute("ECHO", token) == token.encode()

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(worker, i)
        assert client_count(redis_server, "shared") == 1
        assert pool.statistics().connections_opened == 1


async def test_scripts_fall_back_to_eval(redis_url: str, redis_server: RedisServer) -> None:
    script = Script("return {KEYS[1], ARGV[1]}")
    async with open_pool(redis_url) as pool:
        redis_server.execute("SCRIPT", "FLUSH")
        assert await pool.evalsha(script, ["k"], ["v"]) == [b"k", b"v"]
        # EVAL loaded it: now EVALSHA finds it.
        assert redis_server.execute("SCRIPT", "EXISTS", script.sha) == [1]
        assert await pool.evalsha(script, ["k2"], [3]) == [b"k2", b"3"]
        with pytest.raises(ResponseError):
            await pool.evalsha(Script("return redis.call('NOPE')"), [], [])


async def test_blocking_commands_use_dedicated_connections(redis_url: str) -> None:
    async with open_pool(redis_url) as pool:
        results: list[object] = []

        async def pop() -> None:
            results.append(await pool.execute_blocking("BZPOPMIN", "z", 5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(pop)
            tg.start_soon(pop)
            await wait_until(lambda: pool.statistics().connections_in_use == 2)
            # The shared connection is not blocked by them.
            assert await pool.execute("ZADD", "z", 1, "a", 2, "b") == 2
        assert sorted(results, key=repr) == [[b"z", b"a", b"1"], [b"z", b"b", b"2"]]
        assert await pool.execute_blocking("BZPOPMIN", "z", 0.01) is None
        stats = pool.statistics()
        assert stats.connections_in_use == 0
        assert stats.idle_connections == 2


async def test_select_setname_and_unix_socket(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(unix_socket=True)
    assert server.unix_path is not None
    async with open_pool(
        {"address": f"unix://{server.unix_path}", "db": 3, "client_name": "uds"}
    ) as pool:
        await pool.execute("SET", "in-db-3", 1)
    assert server.execute("SELECT", 3) == b"OK"  # admin connection is separate
    assert client_count(server, "uds") == 0  # closed on exit
    info = server.info("keyspace")
    assert "db3" in info


async def test_password_auth(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(password="s3cret")
    async with open_pool(server.url) as pool:
        assert await pool.execute("PING") == b"PONG"
    assert server.address is not None
    host, port = server.address
    with pytest.raises(AuthenticationError) as info:
        async with open_pool({"host": host, "port": port, "password": "wrong"}) as pool:
            await pool.execute("PING")
    assert "wrong" not in str(info.value)
    with pytest.raises(ResponseError) as noauth:
        async with open_pool((host, port)) as pool:
            await pool.execute("PING")
    assert noauth.value.code == "NOAUTH"


async def test_acl_user(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(username="alice", password="pw")
    async with open_pool(server.url) as pool:
        assert await pool.execute("ACL", "WHOAMI") == b"alice"
    assert server.address is not None
    host, port = server.address
    with pytest.raises(AuthenticationError):
        async with open_pool(f"redis://alice:nope@{host}:{port}") as pool:
            await pool.execute("PING")


async def test_tls(redis_server_factory: ServerFactory) -> None:
    if not redis_server_supports_tls(find_redis_server()):
        pytest.skip(f"{find_redis_server()} was built without TLS support")
    server = redis_server_factory(tls=True)
    tls = server.tls
    assert tls is not None
    assert server.address is not None
    host, port = server.address
    address = f"rediss://{host}:{port}"
    async with open_pool({"address": address, "ssl_ca_certs": str(tls.ca_cert)}) as pool:
        assert await pool.execute("PING") == b"PONG"
    client_cert = {
        "address": address,
        "ssl_ca_certs": str(tls.ca_cert),
        "ssl_certfile": str(tls.client_cert),
        "ssl_keyfile": str(tls.client_key),
    }
    async with open_pool(client_cert) as pool:
        assert await pool.execute("PING") == b"PONG"
    # Unverified TLS, as channels_redis documents for self-signed servers.
    async with open_pool({"address": address, "ssl_cert_reqs": None}) as pool:
        assert await pool.execute("PING") == b"PONG"
    # Verification against the system store fails, clearly.
    with pytest.raises(RedisConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        async with open_pool(address) as pool:
            await pool.execute("PING")


async def test_connect_refused() -> None:
    with anyio.CancelScope():
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
    async with open_pool(("127.0.0.1", port)) as pool:
        with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}"):
            await pool.execute("PING")
        # Inside the back-off window, calls fail at once without a new attempt.
        with pytest.raises(RedisConnectionError, match="next attempt in"):
            await pool.execute("PING")
        assert pool.statistics().connect_failures == 1


async def test_connect_timeout_on_a_silent_server() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        accepted: list[anyio.abc.SocketStream] = []

        async def silent(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)  # never answer

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            async with open_pool(
                {"address": f"redis://127.0.0.1:{port}", "socket_connect_timeout": 0.2}
            ) as pool:
                with anyio.fail_after(5), pytest.raises(RedisTimeoutError, match=r"0\.2 seconds"):
                    await pool.execute("PING")
            tg.cancel_scope.cancel()
        for stream in accepted:
            await stream.aclose()


async def test_socket_timeout(redis_url: str) -> None:
    async with open_pool({"address": redis_url, "socket_timeout": 0.2}) as pool:
        with anyio.fail_after(5), pytest.raises(RedisTimeoutError):
            await pool.execute("DEBUG", "SLEEP", 0.5)
        await anyio.sleep(0.5)
        assert await pool.execute("PING") == b"PONG"


async def test_garbage_from_server_is_a_protocol_error() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def garbage(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.receive()
                await stream.send(b"?what is this\r\n")
                await anyio.sleep(1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, garbage)
            async with open_pool(f"redis://127.0.0.1:{port}") as pool:
                with anyio.fail_after(5), pytest.raises((ProtocolError, RedisConnectionError)):
                    await pool.execute("PING")
            tg.cancel_scope.cancel()


async def test_restart_fails_in_flight_calls_then_reconnects(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    async with open_pool({"address": server.url, "client_name": "restart"}) as pool:
        await pool.execute("SET", "k", "v")
        errors: list[BaseException] = []

        async def blocked() -> None:
            try:
                await pool.execute_blocking("BZPOPMIN", "never", 0)
            except RedisConnectionError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked)
            await wait_until(lambda: pool.statistics().connections_in_use == 1)
            await anyio.to_thread.run_sync(server.kill)
        assert len(errors) == 1
        assert str(server.address[1]) in str(errors[0]) if server.address else True
        with pytest.raises(RedisConnectionError):
            await pool.execute("PING")
        await anyio.to_thread.run_sync(server.start)

        async def ping_succeeds() -> bool:
            try:
                return await pool.execute("PING") == b"PONG"
            except RedisConnectionError:
                return False

        with anyio.fail_after(10):
            while not await ping_succeeds():
                await anyio.sleep(0.05)
        stats = pool.statistics()
        assert stats.reconnects >= 1
        assert stats.connections_in_use == 0
        # A fresh blocking call works too (stale idle connections were dropped).
        assert await pool.execute_blocking("BZPOPMIN", "nothing", 0.01) is None


async def test_client_kill(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    async with open_pool({"address": server.url, "client_name": "victim"}) as pool:
        await pool.execute("PING")
        assert server.execute("CLIENT", "KILL", "USER", "default") >= 1
        # The reader notices the close; the next call reconnects.
        with anyio.fail_after(5):
            while True:
                try:
                    assert await pool.execute("PING") == b"PONG"
                    break
                except RedisConnectionError:
                    await anyio.sleep(0.05)
        assert client_count(server, "victim") == 1


async def test_lifetime(redis_url: str, redis_server: RedisServer) -> None:
    async with open_pool({"address": redis_url, "client_name": "lifetime"}) as pool:
        await pool.execute("PING")
        async with pool.connection() as connection:
            await connection.execute("PING")
        assert client_count(redis_server, "lifetime") == 2
    assert client_count(redis_server, "lifetime") == 0
    with pytest.raises(LayerClosedError):
        await pool.execute("PING")
    with pytest.raises(LayerClosedError):
        async with pool.connection():
            pass


async def test_open_pool_accepts_parsed_config_and_reports_server(redis_url: str) -> None:
    from anyio_layer.redis.hosts import parse_host

    config = parse_host(redis_url)
    async with open_pool(config) as pool:
        assert isinstance(pool, ConnectionPool)
        assert pool.server == config
        assert repr(pool).startswith("<ConnectionPool redis://")


async def test_max_connections_limits_dedicated_connections(redis_url: str) -> None:
    async with open_pool({"address": redis_url, "max_connections": 2}) as pool:
        peak = 0

        async def borrow() -> None:
            nonlocal peak
            async with pool.connection():
                peak = max(peak, pool.statistics().connections_in_use)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(borrow)
        assert peak == 2
        assert pool.statistics().connections_opened <= 3


@pytest.mark.skipif(os.environ.get("CI_SKIP_SENTINEL") == "1", reason="sentinel disabled")
async def test_sentinel_discovery_and_failover(redis_server_factory: ServerFactory) -> None:
    from anyio_layer.testing import run_redis_server, run_sentinel

    async with (
        run_redis_server() as primary,
        run_redis_server(replica_of=primary) as replica,
        run_sentinel(primary, master_name="main") as sentinel,
    ):
        config = {
            "sentinels": [sentinel.address],
            "master_name": "main",
            "client_name": "via-sentinel",
        }
        async with open_pool(config) as pool:
            await pool.execute("SET", "before", 1)
            assert pool.server is not None
            assert pool.server.address.port == primary.port  # type: ignore[union-attr]
            await anyio.to_thread.run_sync(sentinel.failover)
            new_master = await anyio.to_thread.run_sync(
                lambda: sentinel.wait_for_master(address_not_equal_to=primary.address, timeout=20)
            )
            assert tuple(new_master) == replica.address
            # The demoted primary accepts writes until Sentinel reconfigures it.
            with anyio.fail_after(20):
                while primary.info("replication")["role"] != "slave":
                    await anyio.sleep(0.05)
            # Writes reach the new primary after rediscovery (the old one is
            # now a replica: READONLY or a dropped connection triggers it).
            with anyio.fail_after(20):
                while True:
                    try:
                        await pool.execute("SET", "after", 1)
                        break
                    except (RedisConnectionError, ResponseError):
                        await anyio.sleep(0.1)
            assert pool.server is not None
            assert pool.server.address.port == replica.port  # type: ignore[union-attr]
            assert replica.execute("GET", "after") == b"1"
