"""Serializers and encryption: behaviour, errors, and wire compatibility with channels_redis."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

import msgpack
import pytest
from channels_redis import serializers as theirs
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from hypothesis import given, settings
from hypothesis import strategies as st

from anyio_layer.exceptions import (
    ChannelLayerError,
    ConfigurationError,
    InvalidMessage,
    MessageDecodeError,
)
from anyio_layer.messages import (
    BaseMessageSerializer,
    JSONSerializer,
    MessageSerializer,
    MissingSerializer,
    MsgPackSerializer,
    SerializerDoesNotExist,
    SerializersRegistry,
    encryption,
    registry,
)

FORMATS = ["json", "msgpack"]
KEYS: list[str | bytes] = ["first-key", b"second-key \xff", "третий"]

MESSAGE: dict[str, Any] = {
    "type": "chat.message",
    "text": 'héllo \N{SNOWMAN} "quoted" \\ </script>',
    "n": [0, -1, 2**31, -(2**40), 1.5, -0.0, 1e300],
    "flags": [True, False, None],
    "nested": {"a": {"b": [{"c": "d"}, []]}, "empty": {}},
    "__asgi_channel__": ["specific.abc!def", "specific.abc!ghi"],
}


def ours(format: str, **kwargs: Any) -> Any:
    return registry.get_serializer(format, **kwargs)


def their(format: str, **kwargs: Any) -> Any:
    return theirs.registry.get_serializer(format, **kwargs)


def configs() -> list[dict[str, Any]]:
    result = []
    for keys in (None, KEYS):
        for prefix in (0, 12):
            result.append(
                {"symmetric_encryption_keys": keys, "random_prefix_length": prefix, "expiry": 60}
            )
    return result


def config_id(config: dict[str, Any]) -> str:
    keys = "encrypted" if config["symmetric_encryption_keys"] else "plain"
    return f"{keys}-prefix{config['random_prefix_length']}"


# -- wire compatibility -----------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("config", configs(), ids=config_id)
def test_channels_redis_reads_what_we_write_and_vice_versa(
    format: str, config: dict[str, Any]
) -> None:
    mine, other = ours(format, **config), their(format, **config)
    assert other.deserialize(mine.serialize(MESSAGE)) == MESSAGE
    assert mine.deserialize(other.serialize(MESSAGE)) == MESSAGE
    assert mine.deserialize(mine.serialize(MESSAGE)) == MESSAGE


@pytest.mark.parametrize("format", FORMATS)
def test_plain_encoding_is_byte_identical(format: str) -> None:
    assert ours(format).serialize(MESSAGE) == their(format).serialize(MESSAGE)
    expected = their(format).serialize(MESSAGE)
    if format == "json":
        assert expected == json.dumps(MESSAGE).encode("utf-8")
    else:
        assert expected == msgpack.packb(MESSAGE)
    prefixed = ours(format, random_prefix_length=12).serialize(MESSAGE)
    assert len(prefixed) == 12 + len(expected)
    assert prefixed[12:] == expected


@pytest.mark.parametrize("format", FORMATS)
def test_random_prefixes_differ(format: str) -> None:
    serializer = ours(format, random_prefix_length=12)
    assert len({serializer.serialize(MESSAGE)[:12] for _ in range(50)}) == 50
    assert serializer.random_prefix_length == 12


@pytest.mark.parametrize("format", FORMATS)
def test_encrypted_payload_is_identical_and_uses_first_key(format: str) -> None:
    mine = ours(format, symmetric_encryption_keys=KEYS, random_prefix_length=4)
    token = mine.serialize(MESSAGE)[4:]
    # The first key alone decrypts it; the key is derived as channels_redis derives it.
    key = KEYS[0].encode("utf-8") if isinstance(KEYS[0], str) else KEYS[0]
    fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(key).digest()))
    assert fernet.decrypt(token) == their(format).serialize(MESSAGE)
    assert encryption.derive_fernet_key(KEYS[0]) == base64.urlsafe_b64encode(
        hashlib.sha256(key).digest()
    )
    assert isinstance(mine.crypter, MultiFernet)
    assert isinstance(mine.make_fernet("x"), Fernet)


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_every_key_is_derived_like_channels_redis(key: str | bytes) -> None:
    their_fernet = their("json").make_fernet(key)
    assert their_fernet.decrypt(encryption.make_fernet(key).encrypt(b"x")) == b"x"
    only_this = ours("json", symmetric_encryption_keys=[key])
    assert only_this.deserialize(their("json", symmetric_encryption_keys=[key]).serialize(1)) == 1


def test_key_rotation_across_libraries() -> None:
    old_writer = their("msgpack", symmetric_encryption_keys=["old"])
    rotated = ours("msgpack", symmetric_encryption_keys=["new", "old"])
    new_only = their("msgpack", symmetric_encryption_keys=["new"])
    assert rotated.deserialize(old_writer.serialize(MESSAGE)) == MESSAGE
    assert new_only.deserialize(rotated.serialize(MESSAGE)) == MESSAGE
    with pytest.raises(MessageDecodeError):
        ours("msgpack", symmetric_encryption_keys=["old"]).deserialize(rotated.serialize(MESSAGE))


def test_channels_redis_serializer_class_registers_in_our_registry() -> None:
    local = SerializersRegistry()
    local.register_serializer("theirs", theirs.JSONSerializer)
    serializer = local.get_serializer("theirs", random_prefix_length=3, expiry=5)
    assert JSONSerializer(random_prefix_length=3).deserialize(serializer.serialize(MESSAGE)) == (
        MESSAGE
    )


def test_our_serializer_class_registers_in_channels_redis_registry() -> None:
    local = theirs.SerializersRegistry()
    local.register_serializer("ours", MsgPackSerializer)
    serializer = local.get_serializer("ours", random_prefix_length=3, expiry=5)
    assert their("msgpack", random_prefix_length=3).deserialize(serializer.serialize(MESSAGE)) == (
        MESSAGE
    )


# -- hypothesis round trips --------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
MSGPACK_SCALARS = (
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text() | st.binary()
)
MSGPACK_VALUES = st.recursive(
    MSGPACK_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
MSGPACK_MESSAGES = st.dictionaries(st.text(max_size=20), MSGPACK_VALUES, max_size=8)

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
JSON_MESSAGES = st.dictionaries(st.text(max_size=20), JSON_VALUES, max_size=8)


def lists_for_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [lists_for_tuples(item) for item in value]
    if isinstance(value, dict):
        return {key: lists_for_tuples(item) for key, item in value.items()}
    return value


PLAIN_MSGPACK = MsgPackSerializer(random_prefix_length=12)
PLAIN_JSON = JSONSerializer(random_prefix_length=12)
THEIR_MSGPACK = theirs.MsgPackSerializer(random_prefix_length=12)
THEIR_JSON = theirs.JSONSerializer(random_prefix_length=12)


@settings(max_examples=200)
@given(MSGPACK_MESSAGES)
def test_msgpack_round_trip(message: dict[str, Any]) -> None:
    expected = lists_for_tuples(message)
    data = PLAIN_MSGPACK.serialize(message)
    assert PLAIN_MSGPACK.deserialize(data) == expected
    assert THEIR_MSGPACK.deserialize(data) == expected
    assert PLAIN_MSGPACK.deserialize(THEIR_MSGPACK.serialize(message)) == expected
    assert data[12:] == THEIR_MSGPACK.serialize(message)[12:]


@given(JSON_MESSAGES)
def test_json_round_trip(message: dict[str, Any]) -> None:
    expected = lists_for_tuples(message)
    data = PLAIN_JSON.serialize(message)
    assert PLAIN_JSON.deserialize(data) == expected
    assert THEIR_JSON.deserialize(data) == expected
    assert data[12:] == THEIR_JSON.serialize(message)[12:]


@settings(max_examples=25)
@given(MSGPACK_MESSAGES)
def test_encrypted_msgpack_round_trip(message: dict[str, Any]) -> None:
    mine = MsgPackSerializer(symmetric_encryption_keys=KEYS, random_prefix_length=12, expiry=60)
    other = theirs.MsgPackSerializer(
        symmetric_encryption_keys=KEYS, random_prefix_length=12, expiry=60
    )
    expected = lists_for_tuples(message)
    assert other.deserialize(mine.serialize(message)) == expected
    assert mine.deserialize(other.serialize(message)) == expected


# -- decryption failures and TTL ------------------------------------------------------


def encrypted_at(serializer: Any, message: Any, when: float) -> bytes:
    token = serializer.crypter.encrypt_at_time(serializer.as_bytes(message), int(when))
    return bytes(b"\x00" * serializer.random_prefix_length + token)


@pytest.mark.parametrize("format", FORMATS)
def test_wrong_key_is_a_decode_error(format: str) -> None:
    data = ours(format, symmetric_encryption_keys=["right"]).serialize(MESSAGE)
    with pytest.raises(MessageDecodeError, match="wrong key"):
        ours(format, symmetric_encryption_keys=["wrong"]).deserialize(data)


@pytest.mark.parametrize("format", FORMATS)
def test_tampered_token_is_a_decode_error(format: str) -> None:
    serializer = ours(format, symmetric_encryption_keys=KEYS, random_prefix_length=12)
    data = bytearray(serializer.serialize(MESSAGE))
    middle = 12 + (len(data) - 12) // 2
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    with pytest.raises(MessageDecodeError, match="tampered"):
        serializer.deserialize(bytes(data))
    with pytest.raises(MessageDecodeError):
        serializer.deserialize(bytes(data[:-5]))


def test_plain_message_to_encrypted_serializer_is_a_decode_error() -> None:
    with pytest.raises(MessageDecodeError, match="not an encrypted message"):
        ours("msgpack", symmetric_encryption_keys=KEYS).deserialize(
            ours("msgpack").serialize(MESSAGE)
        )


@pytest.mark.parametrize("library", ["ours", "theirs"])
def test_ttl_is_expiry_plus_ten_seconds(library: str) -> None:
    writer = (ours if library == "ours" else their)("json", symmetric_encryption_keys=KEYS)
    reader = ours("json", symmetric_encryption_keys=KEYS, expiry=60)
    assert reader.ttl == 70
    now = time.time()
    assert reader.deserialize(encrypted_at(writer, MESSAGE, now - 65)) == MESSAGE
    old = encrypted_at(writer, MESSAGE, now - 75)
    with pytest.raises(MessageDecodeError, match="older than the ttl of 70 seconds"):
        reader.deserialize(old)
    # channels_redis agrees on both sides of the limit.
    their_reader = their("json", symmetric_encryption_keys=KEYS, expiry=60)
    assert their_reader.deserialize(encrypted_at(writer, MESSAGE, now - 65)) == MESSAGE
    with pytest.raises(InvalidToken):
        their_reader.deserialize(old)


def test_no_expiry_means_no_ttl() -> None:
    serializer = ours("msgpack", symmetric_encryption_keys=KEYS, expiry=None)
    assert serializer.ttl is None
    ancient = encrypted_at(serializer, MESSAGE, time.time() - 10 * 365 * 86400)
    assert serializer.deserialize(ancient) == MESSAGE


def test_token_from_the_future_is_a_decode_error() -> None:
    serializer = ours("msgpack", symmetric_encryption_keys=KEYS, expiry=60)
    future = encrypted_at(serializer, MESSAGE, time.time() + 3600)
    with pytest.raises(MessageDecodeError, match="in the future"):
        serializer.deserialize(future)


def test_fractional_expiry_ttl_rounds_up() -> None:
    assert ours("json", symmetric_encryption_keys=KEYS, expiry=0.5).ttl == 11


# -- encryption configuration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "detail"),
    [
        ("secret", "not a single str"),
        (b"secret", "not a single bytes"),
        ({"a", "b"}, "order matters"),
        ({"a": 1}, "order matters"),
        (42, "not int"),
        ([], "empty list"),
        ((), "empty list"),
        ([""], r"symmetric_encryption_keys\[0\]: an encryption key must not be empty"),
        (["ok", b""], r"symmetric_encryption_keys\[1\]"),
        (["ok", 7], r"symmetric_encryption_keys\[1\]: an encryption key must be a str or bytes"),
        ([None], "not NoneType"),
    ],
)
def test_bad_encryption_keys(keys: Any, detail: str) -> None:
    with pytest.raises(ConfigurationError, match=detail):
        encryption.make_crypter(keys)
    with pytest.raises(ConfigurationError, match=detail):
        MsgPackSerializer(symmetric_encryption_keys=keys)


def test_keys_may_be_any_ordered_iterable() -> None:
    all_keys: list[Iterable[str | bytes]] = [("a", "b"), iter(["a", "b"]), [b"a", "b"]]
    for keys in all_keys:
        crypter = encryption.make_crypter(keys)
        assert encryption.make_crypter(["a"]).decrypt(crypter.encrypt(b"x")) == b"x"


def test_missing_cryptography_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    with pytest.raises(
        ConfigurationError, match=r"pip install anyio-channel-layer\[cryptography\]"
    ):
        MsgPackSerializer(symmetric_encryption_keys=["k"])
    # Without encryption, cryptography is never needed.
    assert MsgPackSerializer().deserialize(MsgPackSerializer().serialize(MESSAGE)) == MESSAGE


def test_decrypt_helper_without_ttl() -> None:
    crypter = encryption.make_crypter(["k"])
    token = crypter.encrypt_at_time(b"payload", 0)
    assert encryption.decrypt(crypter, token, None) == b"payload"
    with pytest.raises(MessageDecodeError, match="older than the ttl of 5 seconds"):
        encryption.decrypt(crypter, token, 5)
    with pytest.raises(MessageDecodeError, match="wrong key"):
        encryption.decrypt(crypter, b"not a token", None)


# -- serializer configuration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"random_prefix_length": None}, "random_prefix_length must be an int"),
        ({"random_prefix_length": True}, "random_prefix_length"),
        ({"random_prefix_length": "12"}, "random_prefix_length"),
        ({"random_prefix_length": 1.5}, "random_prefix_length"),
        ({"expiry": -1}, "expiry must be None or a finite number"),
        ({"expiry": float("nan")}, "expiry"),
        ({"expiry": float("inf")}, "expiry"),
        ({"expiry": "60"}, "expiry"),
        ({"expiry": False}, "expiry"),
    ],
)
def test_bad_serializer_options(kwargs: dict[str, Any], detail: str) -> None:
    with pytest.raises(ConfigurationError, match=detail):
        JSONSerializer(**kwargs)


def test_defaults() -> None:
    serializer = MsgPackSerializer()
    assert serializer.random_prefix_length == 0
    assert serializer.expiry is None
    assert serializer.crypter is None
    assert serializer.ttl is None
    assert isinstance(serializer, MessageSerializer)


# -- serialization errors -----------------------------------------------------------------


class Custom:
    pass


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize(
    ("message", "detail"),
    [
        ({"a": {1, 2}}, "message['a'] is of type set"),
        ({"x": [1, {"when": datetime.date(2020, 1, 1)}]}, "message['x'][1]['when'] is of type "),
        ({"obj": Custom()}, "test_serializers.Custom"),
        ({"a": {(1, 2): "tuple key"}}, "message['a'] has a key (1, 2) of type tuple"),
    ],
)
def test_unserializable_values_name_their_place_and_type(
    format: str, message: dict[str, Any], detail: str
) -> None:
    with pytest.raises(InvalidMessage, match=f"cannot be serialized as {format}") as info:
        ours(format).serialize(message)
    assert detail in str(info.value)
    assert "allowed" in str(info.value) or "keys must be" in str(info.value)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ChannelLayerError)


@pytest.mark.parametrize("format", FORMATS)
def test_circular_message(format: str) -> None:
    message: dict[str, Any] = {"list": []}
    message["list"].append(message)
    with pytest.raises(InvalidMessage, match=r"message\['list'\]\[0\] contains itself"):
        ours(format).serialize(message)


def test_json_rejects_bytes() -> None:
    with pytest.raises(InvalidMessage, match="message\\['b'\\] is of type bytes"):
        ours("json").serialize({"b": b"raw"})


def test_msgpack_rejects_out_of_range_ints() -> None:
    with pytest.raises(InvalidMessage, match="outside the 64-bit range"):
        ours("msgpack").serialize({"n": [2**64]})
    assert ours("json").deserialize(ours("json").serialize({"n": 2**64})) == {"n": 2**64}


def test_msgpack_rejects_keys_no_decoder_accepts() -> None:
    # msgpack would encode these, but unpackb (channels_redis included) refuses them.
    with pytest.raises(Exception, match="not allowed for map key"):
        their("msgpack").deserialize(their("msgpack").serialize({"scores": {1: 10}}))
    with pytest.raises(InvalidMessage, match=r"message\['scores'\] has a key 1 of type int"):
        ours("msgpack").serialize({"scores": {1: 10}})
    with pytest.raises(InvalidMessage, match="keys must be str or bytes"):
        ours("msgpack").serialize({None: 1})
    # ... and if such a message arrives anyway, it is a decode error.
    with pytest.raises(MessageDecodeError, match="map key"):
        ours("msgpack").deserialize(msgpack.packb({1: 2}))
    # JSON turns such keys into strings, as json.dumps does.
    assert ours("json").deserialize(ours("json").serialize({"s": {1: 10}})) == {"s": {"1": 10}}


def test_msgpack_key_check_on_deep_messages() -> None:
    deep: Any = {"leaf": 1}
    for _ in range(1000):  # deeper than Python's recursion limit, within msgpack's
        deep = [deep]
    data = ours("msgpack").serialize({"deep": deep})
    assert data == msgpack.packb({"deep": deep})  # (== on the objects would recurse too deep)
    bad: Any = {1: 2}
    for _ in range(1000):
        bad = [bad]
    with pytest.raises(InvalidMessage, match="has a key 1 of type int"):
        ours("msgpack").serialize({"deep": bad})


@pytest.mark.parametrize(
    ("format", "detail"), [("msgpack", "recursion limit"), ("json", "RecursionError")]
)
def test_too_deeply_nested(format: str, detail: str) -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidMessage, match=detail):
        ours(format).serialize({"deep": deep})


# -- decoding errors ------------------------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("data", [b"", b"\xc1", b"{not json", b"\x92\x01", b"\xff\xfe\x00"])
def test_garbage_is_a_decode_error(format: str, data: bytes) -> None:
    with pytest.raises(MessageDecodeError, match=f"could not be decoded as {format}"):
        ours(format).deserialize(data)


def test_short_message_with_prefix() -> None:
    with pytest.raises(MessageDecodeError, match="shorter than the 12-byte random prefix"):
        ours("msgpack", random_prefix_length=12).deserialize(b"short")


def test_deserialize_accepts_bytes_like_and_rejects_str() -> None:
    serializer = ours("msgpack", random_prefix_length=2)
    data = serializer.serialize(MESSAGE)
    assert serializer.deserialize(bytearray(data)) == MESSAGE
    assert serializer.deserialize(memoryview(data)) == MESSAGE
    with pytest.raises(MessageDecodeError, match="must be bytes, not str"):
        serializer.deserialize("text")


# -- registry -----------------------------------------------------------------------------


def test_default_registry() -> None:
    assert registry.formats == ("json", "msgpack")
    assert "json" in registry
    assert "yaml" not in registry
    assert isinstance(registry.get_serializer("json"), JSONSerializer)
    assert isinstance(registry.get_serializer("msgpack"), MsgPackSerializer)


def test_unknown_format() -> None:
    with pytest.raises(SerializerDoesNotExist) as info:
        registry.get_serializer("yaml", random_prefix_length=12)
    error = info.value
    assert isinstance(error, KeyError)
    assert isinstance(error, ConfigurationError)
    assert error.args == ("yaml",)
    assert error.format == "yaml"
    assert "'yaml'" in str(error)
    assert "registered formats: 'json', 'msgpack'" in str(error)
    # Code written for channels_redis catches it as a KeyError.
    with pytest.raises(KeyError):
        registry.get_serializer("nope")
    assert "none" in str(SerializerDoesNotExist("x"))


class Rot13JSON(BaseMessageSerializer):
    """Subclass style: implement as_bytes / from_bytes."""

    format_name = "rot13-json"

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        return bytes((b + 13) % 256 for b in json.dumps(message).encode())

    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        return json.loads(bytes((b - 13) % 256 for b in message))


class DuckSerializer:
    """Duck style: any class taking keyword arguments with serialize / deserialize."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def serialize(self, message: Any) -> bytes:
        return repr(message).encode()

    def deserialize(self, message: bytes) -> Any:
        return message.decode()


def test_register_subclass_style() -> None:
    local = SerializersRegistry()
    local.register_serializer("rot13", Rot13JSON)
    serializer = local.get_serializer(
        "rot13", symmetric_encryption_keys=KEYS, random_prefix_length=5, expiry=30
    )
    data = serializer.serialize(MESSAGE)
    assert serializer.deserialize(data) == MESSAGE
    assert json.dumps(MESSAGE).encode() not in data
    with pytest.raises(InvalidMessage, match="cannot be serialized as rot13-json: TypeError"):
        serializer.serialize({"s": {1, 2}})
    with pytest.raises(MessageDecodeError, match="could not be decoded as rot13-json"):
        Rot13JSON().deserialize(b"\x00")


def test_register_duck_style() -> None:
    local = SerializersRegistry()
    local.register_serializer("duck", DuckSerializer)
    serializer = local.get_serializer("duck", random_prefix_length=12, expiry=60)
    assert isinstance(serializer, DuckSerializer)
    assert serializer.kwargs == {"random_prefix_length": 12, "expiry": 60}
    assert serializer.deserialize(serializer.serialize({"a": 1})) == "{'a': 1}"
    assert isinstance(serializer, MessageSerializer)


def test_register_replaces_and_global_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    registry.register_serializer("duck", DuckSerializer)
    registry.register_serializer("json", Rot13JSON)
    assert isinstance(registry.get_serializer("duck"), DuckSerializer)
    assert isinstance(registry.get_serializer("json"), Rot13JSON)


class NoDeserialize:
    def serialize(self, message: Any) -> bytes:
        return b""


class Abstract(BaseMessageSerializer):
    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        return b""


@pytest.mark.parametrize(
    ("serializer_class", "detail"),
    [
        (JSONSerializer(), "must be a class, not an instance of anyio_layer.messages.serializers"),
        ("json", "must be a class, not an instance of str"),
        (NoDeserialize, "lacks deserialize"),
        (object, "lacks serialize and deserialize"),
        (Abstract, "abstract: implement from_bytes"),
        (BaseMessageSerializer, "abstract: implement as_bytes, from_bytes"),
    ],
)
def test_register_rejects_unusable_classes(serializer_class: Any, detail: str) -> None:
    local = SerializersRegistry()
    with pytest.raises(ConfigurationError, match=detail):
        local.register_serializer("bad", serializer_class)
    assert "bad" not in local


def test_missing_serializer() -> None:
    class YamlSerializer(MissingSerializer):
        exception = ImportError("No module named 'yaml'")

    local = SerializersRegistry()
    local.register_serializer("yaml", YamlSerializer)
    with pytest.raises(ConfigurationError, match="No module named 'yaml'") as info:
        local.get_serializer("yaml", random_prefix_length=12)
    assert info.value.__cause__ is YamlSerializer.exception

    class Unknown(MissingSerializer):
        pass

    with pytest.raises(ConfigurationError, match="a dependency is missing"):
        Unknown()


def test_cryptography_is_imported_lazily() -> None:
    code = (
        "import sys, anyio_layer.messages as s; "
        "s.registry.get_serializer('msgpack', random_prefix_length=12, expiry=60); "
        "print('cryptography' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
