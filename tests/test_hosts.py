"""Parsing of the ``hosts`` setting (pure logic, no server)."""

from __future__ import annotations

import ssl

import pytest

from anyio_layer.exceptions import ConfigurationError
from anyio_layer.redis.hosts import (
    ClusterConfig,
    SentinelConfig,
    ServerConfig,
    TCPAddress,
    UnixAddress,
    parse_host,
    parse_hosts,
)


def server(entry: object) -> ServerConfig:
    config = parse_host(entry)
    assert isinstance(config, ServerConfig)
    return config


def test_default_is_localhost() -> None:
    for empty in (None, [], ()):
        (config,) = parse_hosts(empty)
        assert config == ServerConfig(TCPAddress("localhost", 6379))


@pytest.mark.parametrize(
    ("url", "address", "tls"),
    [
        ("redis://example.com", TCPAddress("example.com", 6379), False),
        ("redis://example.com:7000", TCPAddress("example.com", 7000), False),
        ("rediss://example.com:6380", TCPAddress("example.com", 6380), True),
        ("valkey://example.com:6379", TCPAddress("example.com", 6379), False),
        ("valkeys://example.com", TCPAddress("example.com", 6379), True),
        ("redis://[::1]:6379", TCPAddress("::1", 6379), False),
        ("unix:///tmp/redis.sock", UnixAddress("/tmp/redis.sock"), False),
    ],
)
def test_urls(url: str, address: object, tls: bool) -> None:
    config = server(url)
    assert config.address == address
    assert (config.options.tls is not None) is tls


def test_url_credentials_db_and_options() -> None:
    config = server("redis://alice:s%40cret@host:1234/3?socket_timeout=2.5&client_name=app")
    assert config.options.username == "alice"
    assert config.options.password == "s@cret"
    assert config.options.db == 3
    assert config.options.socket_timeout == 2.5
    assert config.options.client_name == "app"
    assert "s@cret" not in repr(config)


def test_password_only_url() -> None:
    config = server("redis://:pw@127.0.0.1:6379/0")
    assert config.options.username is None
    assert config.options.password == "pw"


def test_unix_url_with_db_and_password() -> None:
    config = server("unix://:pw@/var/run/redis.sock?db=2")
    assert config.address == UnixAddress("/var/run/redis.sock")
    assert config.options.db == 2
    assert config.options.password == "pw"


def test_tuple_and_list_entries() -> None:
    assert server(("localhost", 6379)).address == TCPAddress("localhost", 6379)
    assert server(["10.0.0.1", "6380"]).address == TCPAddress("10.0.0.1", 6380)


def test_dict_with_address_and_tls_options() -> None:
    config = server(
        {
            "address": "rediss://user@host:6380",
            "ssl_cert_reqs": None,
            "password": "pw",
            "db": 1,
            "socket_connect_timeout": 3,
            "retry_on_timeout": True,  # redis-py option: accepted and ignored
        }
    )
    assert config.address == TCPAddress("host", 6380)
    assert config.options.tls is not None
    assert config.options.tls.cert_reqs == ssl.CERT_NONE
    assert config.options.username == "user"
    assert config.options.password == "pw"
    assert config.options.db == 1
    assert config.options.socket_connect_timeout == 3.0
    context = config.options.tls.create_context()
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname


def test_dict_with_host_and_port() -> None:
    config = server({"host": "redis.local", "port": 6390, "username": "u", "password": "p"})
    assert config.address == TCPAddress("redis.local", 6390)
    assert config.options.username == "u"


def test_dict_with_unix_socket_path() -> None:
    assert server({"unix_socket_path": "/tmp/r.sock"}).address == UnixAddress("/tmp/r.sock")


def test_sentinel_dict() -> None:
    config = parse_host(
        {
            "sentinels": [("localhost", 26379), ("other", 26380)],
            "master_name": "mymaster",
            "sentinel_kwargs": {"password": "sentinel-pw"},
            "password": "primary-pw",
            "db": 2,
        }
    )
    assert isinstance(config, SentinelConfig)
    assert config.sentinels == (TCPAddress("localhost", 26379), TCPAddress("other", 26380))
    assert config.master_name == "mymaster"
    assert config.options.password == "primary-pw"
    assert config.options.db == 2
    assert config.sentinel_options.password == "sentinel-pw"


def test_mixed_hosts() -> None:
    configs = parse_hosts(["redis://a:1", ("b", 2), {"sentinels": [("c", 3)], "master_name": "m"}])
    assert [type(config).__name__ for config in configs] == [
        "ServerConfig",
        "ServerConfig",
        "SentinelConfig",
    ]


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ("redis://localhost:6379", "must be a list of Redis hosts"),
        ({"address": "redis://x"}, "must be a list of Redis hosts"),
        (42, "must be a list"),
        (["http://localhost:6379"], "unknown scheme 'http'"),
        (["redis://localhost:99999"], "not a valid URL"),
        (["redis://localhost:0"], "port must be an integer >= 1, not 0"),
        (["rediss+cluster://localhost:0"], "port must be an integer >= 1, not 0"),
        (["redis://localhost:-1"], "not a valid URL"),
        ([("localhost", 0)], "port must be an integer >= 1"),
        ([("localhost", 70000)], "out of range"),
        ([("localhost", "abc")], "port must be an integer"),
        ([("localhost", 1, 2)], "must be a (host, port) pair"),
        ([42], "is not valid"),
        ([{"db": 1}], "has no address"),
        ([{"address": "redis://x", "bogus": 1}], "unknown option(s): bogus"),
        ([{"address": "redis://x", "ssl_bogus": 1}], "unknown TLS option(s): ssl_bogus"),
        ([{"address": "rediss://x", "ssl_cert_reqs": "sometimes"}], "ssl_cert_reqs must be"),
        ([{"address": "redis://x", "db": -1}], "db must be an integer >= 0"),
        ([{"address": "redis://x", "socket_timeout": 0}], "socket_timeout must be a positive"),
        ([{"address": "redis://x", "decode_responses": True}], "decode_responses must be false"),
        ([{"sentinels": [("s", 1)]}], "needs 'master_name'"),
        ([{"master_name": "m"}], "needs 'sentinels'"),
        ([{"master_name": "m", "sentinels": ["x"]}], "is not a URL (no scheme)"),
        ([{"master_name": "m", "sentinels": [42]}], "each sentinel must be"),
        (["redis://"], "has no host name"),
        (["unix://"], "has no socket path"),
    ],
)
def test_bad_hosts_name_the_entry(hosts: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_hosts(hosts)
    assert message in str(info.value)


def test_errors_do_not_leak_passwords() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_hosts([{"address": "redis://u:topsecret@x", "password": "alsosecret", "bad": 1}])
    assert "topsecret" not in str(info.value)
    assert "alsosecret" not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        parse_hosts(["redis://u:topsecret@x:notaport"])
    assert "topsecret" not in str(info.value)


# -- Redis Cluster seeds ------------------------------------------------------------


def test_cluster_seeds_in_every_form() -> None:
    config = parse_hosts(
        [
            "redis+cluster://user:secret@10.0.0.1:7000",
            "redis://user:secret@10.0.0.2:7001?cluster=true",
            {"address": "redis://10.0.0.3:7002", "cluster": True, "username": "user",
             "password": "secret"},
            {"host": "10.0.0.4", "port": 7003, "cluster": "yes", "username": "user",
             "password": "secret"},
        ]
    )  # fmt: skip
    assert isinstance(config, ClusterConfig)
    assert [seed.address for seed in config.seeds] == [
        TCPAddress("10.0.0.1", 7000),
        TCPAddress("10.0.0.2", 7001),
        TCPAddress("10.0.0.3", 7002),
        TCPAddress("10.0.0.4", 7003),
    ]
    assert config.options.username == "user"
    assert config.options.password == "secret"
    assert "secret" not in str(config)
    assert "secret" not in repr(config)
    assert parse_hosts(config) is config  # already parsed: passed through


@pytest.mark.parametrize(
    ("scheme", "tls"),
    [("redis+cluster", False), ("rediss+cluster", True), ("valkey+cluster", False),
     ("valkeys+cluster", True)],
)  # fmt: skip
def test_cluster_schemes(scheme: str, tls: bool) -> None:
    config = parse_hosts([f"{scheme}://node:7000"])
    assert isinstance(config, ClusterConfig)
    (seed,) = config.seeds
    assert seed.cluster
    assert seed.address == TCPAddress("node", 7000)
    assert (seed.options.tls is not None) == tls


def test_cluster_false_is_a_plain_server() -> None:
    (config,) = parse_hosts([{"host": "a", "port": 1, "cluster": False}])
    assert config == ServerConfig(TCPAddress("a", 1))


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (["redis+cluster://a:7000", "redis://b:6379"], "mixes Redis Cluster seeds"),
        (["redis+cluster://a:7000/3"], "only has database 0"),
        ([{"unix_socket_path": "/tmp/r.sock", "cluster": True}], "reached over TCP"),
        (["unix:///tmp/r.sock?cluster=true"], "cluster nodes are reached over TCP"),
        ([{"sentinels": [("s", 26379)], "master_name": "m", "cluster": True}], "Sentinel"),
        (["redis+cluster://a:7000", "redis+cluster://:pw@b:7000"], "same connection options"),
        ([{"host": "a", "cluster": "maybe"}], "cluster must be true or false"),
        (["redis://a:7000?cluster=perhaps"], "cluster must be true or false"),
        (["redis+cluster://a:7000?cluster=false"], "says cluster=false"),
        (["foo+cluster://a:7000"], "redis\\+cluster://"),
    ],
)  # fmt: skip
def test_bad_cluster_hosts(hosts: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_hosts(hosts)
