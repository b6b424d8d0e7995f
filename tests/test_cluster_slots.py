"""Hash slots, topology parsing and configuration of the cluster client (no server needed).

The slot values below were checked against ``CLUSTER KEYSLOT`` of a real
node; ``tests/test_cluster_client.py`` re-checks many more keys against a
running cluster.
"""

from __future__ import annotations

import pytest

from anyio_layer.exceptions import ConfigurationError, ProtocolError, RedisConnectionError
from anyio_layer.redis.cluster import (
    CLUSTER_SLOTS,
    CrossSlotError,
    key_slot,
    open_cluster,
    slot_for_keys,
)
from anyio_layer.redis.cluster.topology import ShardInfo as _ShardInfo
from anyio_layer.redis.cluster.topology import parse_redirection as _parse_redirection
from anyio_layer.redis.cluster.topology import parse_shards as _parse_shards
from anyio_layer.redis.cluster.topology import parse_slots as _parse_slots
from anyio_layer.redis.hosts import ConnectionOptions, TCPAddress

ASKED = TCPAddress("10.0.0.9", 7000)


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        ("foo", 12182),
        ("bar", 5061),
        ("hello", 866),
        ("123456789", 12739),  # the CRC-16/XMODEM check value 0x31C3
        ("", 0),
        ("user1000", 3443),
        ("{user1000}.following", 3443),
        ("foo{}{bar}", 8363),  # empty first tag: the whole key is hashed
        ("foo{{bar}}zap", 4015),  # the tag is "{bar"
        ("foo{bar}{zap}", 5061),  # only the first tag counts: "bar"
        ("{}", 15257),
        ("{", 4092),
        ("}", 12090),
        ("a{b", 13340),  # no closing brace
        ("a}b{c}", 7365),  # a "}" before the "{" does not matter: the tag is "c"
        ("{{}}", 4092),  # the tag is "{"
        ("é", 10180),  # UTF-8
        (b"\xff\xfe", 3374),
        ("channel:abc!xyz", 971),
    ],
)
def test_key_slot_known_values(key: str | bytes, slot: int) -> None:
    assert key_slot(key) == slot


def test_hash_tags_share_a_slot() -> None:
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert key_slot("x{tag}y") == key_slot("tag") == key_slot(b"{tag}")
    assert key_slot("foo{}{bar}") != key_slot("bar")


def test_key_types_hash_like_their_wire_form() -> None:
    assert key_slot("foo") == key_slot(b"foo") == key_slot(bytearray(b"foo"))
    assert key_slot(memoryview(b"foo")) == key_slot("foo")
    assert key_slot(123) == key_slot("123")
    assert key_slot(1.5) == key_slot("1.5")
    with pytest.raises(TypeError):
        key_slot(True)
    with pytest.raises(TypeError):
        key_slot(None)  # type: ignore[arg-type]


def test_slots_are_in_range() -> None:
    slots = {key_slot(f"key:{index}") for index in range(5000)}
    assert min(slots) >= 0
    assert max(slots) < CLUSTER_SLOTS
    assert len(slots) > 3000  # spread out


def test_slot_for_keys() -> None:
    assert slot_for_keys([]) is None
    assert slot_for_keys(["{room}:a", "{room}:b", b"{room}"]) == key_slot("room")
    with pytest.raises(CrossSlotError, match="hash tag") as info:
        slot_for_keys(["{room}:a", "other"])
    assert isinstance(info.value, ValueError)
    assert "'other'" in str(info.value)


def test_parse_redirection() -> None:
    assert _parse_redirection("MOVED 3999 127.0.0.1:6381", ASKED) == (
        3999,
        TCPAddress("127.0.0.1", 6381),
    )
    assert _parse_redirection("ASK 1 :6390", ASKED) == (1, TCPAddress("10.0.0.9", 6390))
    assert _parse_redirection("MOVED 7 ::1:6379", ASKED) == (7, TCPAddress("::1", 6379))
    assert _parse_redirection("MOVED 7 redis-3.example:6379", ASKED) == (
        7,
        TCPAddress("redis-3.example", 6379),
    )
    with pytest.raises(ProtocolError):
        _parse_redirection("MOVED nonsense", ASKED)


def test_parse_cluster_slots() -> None:
    reply = [
        [0, 5460, [b"127.0.0.1", 7000, b"id1", []], [b"127.0.0.1", 7003, b"id4", []]],
        [5461, 10922, [b"", 7001, b"id2"]],  # "": the node we asked
        [10923, 16383, [b"?", 7002, b"id3"]],  # unknown endpoint: skipped
    ]
    assert _parse_slots(reply, ASKED) == [
        _ShardInfo(((0, 5460),), TCPAddress("127.0.0.1", 7000), (TCPAddress("127.0.0.1", 7003),)),
        _ShardInfo(((5461, 10922),), TCPAddress("10.0.0.9", 7001), ()),
    ]
    with pytest.raises(ProtocolError):
        _parse_slots(b"nonsense", ASKED)


def _node(port: int, role: bytes, health: object = b"online", **extra: object) -> list[object]:
    fields: dict[str, object] = {
        "id": b"x" * 40,
        "port": port,
        "ip": b"127.0.0.1",
        "endpoint": b"127.0.0.1",
        "role": role,
        "replication-offset": 0,
        "health": health,
        **extra,
    }
    return [item for key, value in fields.items() for item in (key.encode(), value)]


def test_parse_cluster_shards() -> None:
    reply = [
        [
            b"slots",
            [0, 100, 200, 16383],
            b"nodes",
            [_node(7000, b"master"), _node(7003, b"replica"), _node(7006, b"replica", b"failed")],
        ],
        [b"slots", [101, 199], b"nodes", [_node(7001, b"master", endpoint=b"")]],
        [b"slots", [], b"nodes", [_node(7009, b"master", b"failed")]],  # an old, failed primary
    ]
    local = TCPAddress("127.0.0.1", 7000)
    assert _parse_shards(reply, ASKED, tls=False) == [
        _ShardInfo(((0, 100), (200, 16383)), local, (TCPAddress("127.0.0.1", 7003),)),
        _ShardInfo(((101, 199),), TCPAddress("127.0.0.1", 7001), ()),
    ]
    # With TLS the tls-port is the one to use.
    tls_reply = [[b"slots", [0, 16383], b"nodes", [_node(0, b"master", **{"tls-port": 7100})]]]
    assert _parse_shards(tls_reply, ASKED, tls=True) == [
        _ShardInfo(((0, 16383),), TCPAddress("127.0.0.1", 7100), ())
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([], "non-empty list"),
        ({"sentinels": [("localhost", 26379)], "master_name": "m"}, "Sentinel"),
        (["unix:///tmp/redis.sock"], "unix socket"),
        (["redis://localhost:7000/2"], "only has database 0"),
        ("ftp://localhost", "unknown scheme"),
    ],
)
async def test_open_cluster_rejects_bad_configuration(seeds: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        async with open_cluster(seeds):
            pass


@pytest.mark.anyio
async def test_options_override_the_first_seed() -> None:
    options = ConnectionOptions(password="secret", socket_connect_timeout=1.0)
    async with open_cluster(["redis://user:pw@127.0.0.1:1", ("127.0.0.1", 2)], options) as client:
        assert client.options is options
    async with open_cluster("redis://user:pw@127.0.0.1:1") as client:
        assert client.options.password == "pw"
        assert client.options.username == "user"


@pytest.mark.anyio
async def test_unreachable_seeds_fail_clearly() -> None:
    async with open_cluster(["redis://127.0.0.1:1", "redis://127.0.0.1:2"]) as client:
        with pytest.raises(RedisConnectionError, match="could not learn the cluster topology"):
            await client.execute("GET", "foo", key="foo")
        assert client.statistics().topology_refresh_failures == 1
