"""The sans-IO RESP codec: command encoding and both reply parsers (no server)."""

from __future__ import annotations

import enum
import itertools
import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyio_layer.exceptions import ProtocolError
from anyio_layer.redis import protocol as _resp
from anyio_layer.redis.protocol import (
    HIREDIS_AVAILABLE,
    NEED_DATA,
    Arg,
    ErrorReply,
    Parser,
    Push,
    encode_command,
    encode_commands,
)

# Every parser test runs against both implementations.
IMPLEMENTATIONS = [
    pytest.param(False, id="python"),
    pytest.param(
        True,
        id="hiredis",
        marks=pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed"),
    ),
]
use_hiredis = pytest.mark.parametrize("use_hiredis", IMPLEMENTATIONS)

# What a server answers to a successful HELLO 3: the first RESP3 reply of a
# connection. RESP3 inputs are parsed after it, as on a real connection; it is
# what makes the hiredis-backed parser hand over to the pure-Python one.
HELLO3 = b"%1\r\n$5\r\nproto\r\n:3\r\n"

PROFILE = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- Helpers ---------------------------------------------------------------------


def assert_identical(actual: object, expected: object) -> None:
    """Equality that also checks types all the way down (and treats NaN as equal)."""
    assert type(actual) is type(expected), f"{actual!r} is not {expected!r}"
    if isinstance(expected, float):
        assert isinstance(actual, float)
        assert actual == expected or (math.isnan(actual) and math.isnan(expected))
    elif isinstance(expected, list):
        assert isinstance(actual, list)
        assert len(actual) == len(expected), f"{actual!r} != {expected!r}"
        for item, expected_item in zip(actual, expected, strict=True):
            assert_identical(item, expected_item)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected), f"{actual!r} != {expected!r}"
        for key, expected_value in expected.items():
            assert_identical(actual[key], expected_value)
    else:
        assert actual == expected


def new_parser(use_hiredis: bool, *, resp3: bool = False) -> Parser:
    """A parser; for RESP3 input, one that has already read the HELLO 3 reply."""
    parser = Parser(use_hiredis=use_hiredis)
    if resp3:
        parser.feed(HELLO3)
        assert_identical(parser.get_reply(), {b"proto": 3})
        assert parser.get_reply() is NEED_DATA
        assert parser.implementation == "python"
    return parser


def drain(parser: Parser) -> list[object]:
    replies = []
    while (reply := parser.get_reply()) is not NEED_DATA:
        replies.append(reply)
    return replies


def parse_chunks(
    use_hiredis: bool, chunks: Iterable[bytes], *, resp3: bool = False
) -> list[object]:
    """Feed the chunks one by one, draining after each; return every reply."""
    parser = new_parser(use_hiredis, resp3=resp3)
    replies = []
    for chunk in chunks:
        parser.feed(chunk)
        replies.extend(drain(parser))
    return replies


def split_at(data: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[start:stop] for start, stop in itertools.pairwise(bounds)]


# -- Corpus ----------------------------------------------------------------------

# (encoded reply, expected value) pairs that Redis speaking RESP2 can send.
RESP2_CORPUS: list[tuple[bytes, object]] = [
    (b"+OK\r\n", b"OK"),
    (b"+\r\n", b""),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$6\r\na\r\nb\r\n\r\n", b"a\r\nb\r\n"),
    (b"$4\r\n\x00\xff\r\x0a\r\n", b"\x00\xff\r\n"),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b":0\r\n", 0),
    (b":42\r\n", 42),
    (b":-1\r\n", -1),
    (b":1700000000123\r\n", 1700000000123),
    (b":9223372036854775807\r\n", 2**63 - 1),
    (b":-9223372036854775808\r\n", -(2**63)),
    (b"*0\r\n", []),
    (b"*2\r\n$1\r\na\r\n:1\r\n", [b"a", 1]),
    (b"*3\r\n*0\r\n*1\r\n*1\r\n$0\r\n\r\n$-1\r\n", [[], [[b""]], None]),
    (b"*2\r\n*-1\r\n+QUEUED\r\n", [None, b"QUEUED"]),
    (b"-ERR unknown command\r\n", ErrorReply("ERR unknown command")),
    (b"-WRONGTYPE Operation against a key\r\n", ErrorReply("WRONGTYPE Operation against a key")),
    (b"-\r\n", ErrorReply("")),
    (b"-ERR \xff\r\n", ErrorReply("ERR \ufffd")),
    (b"*3\r\n+OK\r\n-ERR boom\r\n:7\r\n", [b"OK", ErrorReply("ERR boom"), 7]),
    (b"$2000\r\n" + b"x" * 2000 + b"\r\n", b"x" * 2000),
]

# RESP3-only replies (parsed after a HELLO 3 reply).
RESP3_CORPUS: list[tuple[bytes, object]] = [
    (b"_\r\n", None),
    (b",1.5\r\n", 1.5),
    (b",-2\r\n", -2.0),
    (b",1e+100\r\n", 1e100),
    (b",inf\r\n", math.inf),
    (b",-inf\r\n", -math.inf),
    (b",nan\r\n", math.nan),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (
        b"(3492890328409238509324850943850943825024385\r\n",
        3492890328409238509324850943850943825024385,
    ),
    (b"(-12\r\n", -12),
    (b"=15\r\ntxt:Some string\r\n", b"Some string"),
    (b"=4\r\nmkd:\r\n", b""),
    (b"!22\r\nSYNTAX invalid\r\nsyntax\r\n", ErrorReply("SYNTAX invalid\r\nsyntax")),
    (b"%0\r\n", {}),
    (b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#f\r\n", {b"first": 1, b"second": False}),
    (b"%1\r\n*2\r\n:1\r\n*1\r\n:2\r\n_\r\n", {(1, (2,)): None}),
    (b"%1\r\n%1\r\n:1\r\n*1\r\n:2\r\n:3\r\n", {((1, (2,)),): 3}),
    (b"%1\r\n$1\r\nm\r\n%1\r\n$1\r\nn\r\n~1\r\n:1\r\n", {b"m": {b"n": [1]}}),
    (b"~0\r\n", []),
    (b"~3\r\n+a\r\n:1\r\n,0.5\r\n", [b"a", 1, 0.5]),
    (b">0\r\n", Push()),
    (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\ndata\r\n", Push([b"message", b"ch", b"data"])),
    (b"*2\r\n>1\r\n:1\r\n:2\r\n", [Push([1]), 2]),
    (b"|1\r\n+ttl\r\n:3600\r\n$5\r\nvalue\r\n", b"value"),
    (b"|0\r\n:1\r\n", 1),
    (b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n|1\r\n+c\r\n*1\r\n:9\r\n:2\r\n", [1, 2]),
    (b"%1\r\n|1\r\n+a\r\n+b\r\n+key\r\n+value\r\n", {b"key": b"value"}),
    (b"*3\r\n(1\r\n#t\r\n,0\r\n", [1, True, 0.0]),
]

RESP2_STREAM = b"".join(encoded for encoded, _ in RESP2_CORPUS)
RESP2_VALUES = [value for _, value in RESP2_CORPUS]
RESP3_STREAM = b"".join(encoded for encoded, _ in RESP3_CORPUS + RESP2_CORPUS)
RESP3_VALUES = [value for _, value in RESP3_CORPUS + RESP2_CORPUS]


# -- Reply types -----------------------------------------------------------------


@use_hiredis
@pytest.mark.parametrize(("encoded", "expected"), RESP2_CORPUS)
def test_resp2_reply(use_hiredis: bool, encoded: bytes, expected: object) -> None:
    parser = new_parser(use_hiredis)
    parser.feed(encoded)
    assert_identical(parser.get_reply(), expected)
    assert parser.get_reply() is NEED_DATA
    assert parser.implementation == ("hiredis" if use_hiredis else "python")


@use_hiredis
@pytest.mark.parametrize(("encoded", "expected"), RESP3_CORPUS)
def test_resp3_reply(use_hiredis: bool, encoded: bytes, expected: object) -> None:
    parser = new_parser(use_hiredis, resp3=True)
    parser.feed(encoded)
    assert_identical(parser.get_reply(), expected)
    assert parser.get_reply() is NEED_DATA


@use_hiredis
@pytest.mark.parametrize(
    ("encoded", "expected"),
    [(encoded, expected) for encoded, expected in RESP3_CORPUS if encoded[0] not in b"+-:$*"],
)
def test_resp3_reply_on_a_fresh_parser(use_hiredis: bool, encoded: bytes, expected: object) -> None:
    """A reply that starts with a RESP3 type byte is parsed exactly even without HELLO."""
    parser = new_parser(use_hiredis)
    parser.feed(encoded)
    assert_identical(parser.get_reply(), expected)
    assert parser.implementation == "python"


@use_hiredis
def test_error_reply_fields(use_hiredis: bool) -> None:
    parser = new_parser(use_hiredis)
    parser.feed(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n-\r\n")
    error, empty = drain(parser)
    assert isinstance(error, ErrorReply)
    assert error.code == "WRONGTYPE"
    assert error.message == "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert isinstance(empty, ErrorReply)
    assert (empty.code, empty.message) == ("ERR", "")


@use_hiredis
def test_push_and_map_types_after_hello(use_hiredis: bool) -> None:
    parser = new_parser(use_hiredis, resp3=True)
    parser.feed(
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    )
    push, array_reply = drain(parser)
    assert type(push) is Push
    assert type(array_reply) is list
    assert push == array_reply  # list equality ignores the subclass


@use_hiredis
@pytest.mark.parametrize("size", [3 * 2**20, 5 * 2**20 + 7])
def test_big_bulk_string(use_hiredis: bool, size: int) -> None:
    pattern = b"\r\n\x00binary-\xff"
    payload = (pattern * (size // len(pattern) + 1))[:size]
    encoded = b"$%d\r\n%s\r\n" % (size, payload)
    assert parse_chunks(use_hiredis, [encoded + b":1\r\n"]) == [payload, 1]
    chunks = split_at(encoded, range(65536, len(encoded), 65536))
    assert parse_chunks(use_hiredis, [*chunks, b":1\r\n"]) == [payload, 1]


@use_hiredis
def test_big_bulk_string_in_small_chunks_is_linear(use_hiredis: bool) -> None:
    """16 MiB in 4 KiB chunks: re-copying the buffer on each feed would take minutes."""
    size = 16 * 2**20
    encoded = b"$%d\r\n" % size + bytes(size) + b"\r\n"
    parser = new_parser(use_hiredis)
    view = memoryview(encoded)
    replies = []
    for start in range(0, len(encoded), 4096):
        parser.feed(view[start : start + 4096])
        replies.extend(drain(parser))
    assert len(replies) == 1
    assert replies[0] == bytes(size)


@use_hiredis
def test_huge_array_in_small_chunks_is_linear(use_hiredis: bool) -> None:
    """A 100k-element array in 512-byte chunks: re-parsing from scratch would be quadratic."""
    count = 100_000
    encoded = b"*%d\r\n" % count + b"".join(b"$4\r\n%04d\r\n" % (i % 10000) for i in range(count))
    (reply,) = parse_chunks(use_hiredis, split_at(encoded, range(512, len(encoded), 512)))
    assert isinstance(reply, list)
    assert len(reply) == count
    assert reply[:3] == [b"0000", b"0001", b"0002"]
    assert reply[-1] == b"9999"


@use_hiredis
def test_deeply_nested_arrays(use_hiredis: bool) -> None:
    depth = 50
    encoded = b"*1\r\n" * depth + b":1\r\n"
    expected: object = 1
    for _ in range(depth):
        expected = [expected]
    assert_identical(parse_chunks(use_hiredis, [encoded]), [expected])


# -- Incremental parsing ---------------------------------------------------------


@use_hiredis
@pytest.mark.parametrize(("encoded", "expected"), RESP2_CORPUS)
def test_resp2_reply_split_everywhere(use_hiredis: bool, encoded: bytes, expected: object) -> None:
    for point in range(len(encoded) + 1):
        replies = parse_chunks(use_hiredis, split_at(encoded, [point]))
        assert len(replies) == 1, point
        assert_identical(replies[0], expected)


@use_hiredis
@pytest.mark.parametrize(("encoded", "expected"), RESP3_CORPUS)
def test_resp3_reply_split_everywhere(use_hiredis: bool, encoded: bytes, expected: object) -> None:
    for point in range(len(encoded) + 1):
        replies = parse_chunks(use_hiredis, split_at(encoded, [point]), resp3=True)
        assert len(replies) == 1, point
        assert_identical(replies[0], expected)


@use_hiredis
@pytest.mark.parametrize(
    ("stream", "values", "resp3"),
    [
        pytest.param(RESP2_STREAM, RESP2_VALUES, False, id="resp2"),
        pytest.param(RESP3_STREAM, RESP3_VALUES, True, id="resp3"),
    ],
)
def test_stream_split_everywhere(
    use_hiredis: bool, stream: bytes, values: list[object], resp3: bool
) -> None:
    assert_identical(parse_chunks(use_hiredis, [stream], resp3=resp3), values)
    for point in range(len(stream) + 1):
        assert_identical(parse_chunks(use_hiredis, split_at(stream, [point]), resp3=resp3), values)
    one_byte_at_a_time = [stream[i : i + 1] for i in range(len(stream))]
    assert_identical(parse_chunks(use_hiredis, one_byte_at_a_time, resp3=resp3), values)


@use_hiredis
def test_resp2_stream_stays_on_hiredis(use_hiredis: bool) -> None:
    parser = new_parser(use_hiredis)
    for i in range(len(RESP2_STREAM)):
        parser.feed(RESP2_STREAM[i : i + 1])
        drain(parser)
    assert parser.implementation == ("hiredis" if use_hiredis else "python")


@use_hiredis
def test_draining_many_replies_from_one_feed(use_hiredis: bool) -> None:
    parser = new_parser(use_hiredis)
    parser.feed(b"+OK\r\n" * 1000 + b":5\r\n$3\r\nabc\r\n$3\r\nab")
    assert drain(parser) == [b"OK"] * 1000 + [5, b"abc"]
    assert parser.get_reply() is NEED_DATA  # asking again is harmless
    parser.feed(b"c\r\n")
    assert parser.get_reply() == b"abc"
    assert parser.get_reply() is NEED_DATA


@use_hiredis
def test_accepts_every_bytes_like_type_and_copies_it(use_hiredis: bool) -> None:
    parser = new_parser(use_hiredis)
    parser.feed(b"")
    assert parser.get_reply() is NEED_DATA
    data = bytearray(b"$5\r\nhel")
    parser.feed(data)
    data[:] = b"XXXXXXX"  # the parser must have copied it
    parser.feed(memoryview(b"__lo\r\n")[2:])
    assert parser.get_reply() == b"hello"


def test_need_data_sentinel() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert NEED_DATA is _resp.NEED_DATA
    assert Parser(use_hiredis=False).get_reply() is NEED_DATA


# -- Choosing the implementation -------------------------------------------------


def test_default_implementation() -> None:
    expected = "hiredis" if HIREDIS_AVAILABLE else "python"
    assert Parser().implementation == expected
    assert Parser(use_hiredis=None).implementation == expected
    assert Parser(use_hiredis=False).implementation == "python"
    assert isinstance(Parser(), Parser)


def test_use_hiredis_without_hiredis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_resp, "HIREDIS_AVAILABLE", False)
    with pytest.raises(ImportError, match="needs the hiredis package"):
        Parser(use_hiredis=True)
    assert Parser().implementation == "python"


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
def test_hiredis_hands_over_to_python_on_resp3() -> None:
    parser = Parser(use_hiredis=True)
    parser.feed(b"+OK\r\n:1\r\n")
    assert drain(parser) == [b"OK", 1]
    assert parser.implementation == "hiredis"
    parser.feed(HELLO3[:3])  # "%1\r": the switch happens at the first byte
    assert parser.implementation == "python"
    assert parser.get_reply() is NEED_DATA
    parser.feed(HELLO3[3:] + b"*1\r\n(99999999999999999999\r\n")
    assert_identical(drain(parser), [{b"proto": 3}, [99999999999999999999]])


# -- Malformed input -------------------------------------------------------------

# Each is preceded by a valid reply in the same chunk, so that the hiredis-backed
# parser has to detect the problem itself.
MALFORMED = [
    b"?\r\n",
    b"?",  # caught before the line is complete
    b"x+OK\r\n",
    b"$abc\r\n",
    b"$\r\n",
    b"$-2\r\n",
    b"$ 3\r\nabc\r\n",
    b"$+3\r\nabc\r\n",
    b"$03\r\nabc\r\n",
    b"*-2\r\n",
    b"*\r\n",
    b"*x\r\n",
    b"*1\r\n?\r\n",
    b":\r\n",
    b":abc\r\n",
    b":1 \r\n",
    b":+3\r\n",
    b":007\r\n",
    b":-0\r\n",
    b":1.5\r\n",
    b":99999999999999999999999\r\n",
    b"+O\rK\r\n",
    b"+O\nK\r\n",
    b"-E\nRR\r\n",
]

MALFORMED_RESP3 = [
    b"_x\r\n",
    b",\r\n",
    b",abc\r\n",
    b",1_0\r\n",
    b",+1\r\n",
    b"#x\r\n",
    b"#\r\n",
    b"(\r\n",
    b"(abc\r\n",
    b"(+12\r\n",
    b"=3\r\nabc\r\n",
    b"=5\r\ntxtxx\r\n",
    b"%x\r\n",
    b"%-2\r\n",
    b"~abc\r\n",
    b">-5\r\n",
    b"|\r\n",
    b"|-1\r\n",
    b"!abc\r\n",
    b"!3\r\nabcXY",
    b"=5\r\ntxt:xXY",
]


@use_hiredis
@pytest.mark.parametrize("garbage", MALFORMED)
def test_malformed_input_raises_protocol_error(use_hiredis: bool, garbage: bytes) -> None:
    parser = new_parser(use_hiredis)
    parser.feed(b"+OK\r\n" + garbage)
    assert parser.get_reply() == b"OK"
    with pytest.raises(ProtocolError):
        parser.get_reply()
    # The parser stays broken, whatever is fed next.
    parser.feed(b"+OK\r\n")
    with pytest.raises(ProtocolError):
        parser.get_reply()


@use_hiredis
@pytest.mark.parametrize("garbage", MALFORMED_RESP3)
def test_malformed_resp3_input_raises_protocol_error(use_hiredis: bool, garbage: bytes) -> None:
    parser = new_parser(use_hiredis, resp3=True)
    parser.feed(garbage)
    with pytest.raises(ProtocolError):
        parser.get_reply()
    parser.feed(b"+OK\r\n")
    with pytest.raises(ProtocolError):
        parser.get_reply()


@use_hiredis
def test_malformed_first_reply(use_hiredis: bool) -> None:
    parser = new_parser(use_hiredis)
    parser.feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(ProtocolError):
        parser.get_reply()


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (b"?\r\n", r"invalid reply type byte b'\?'"),
        (b"HTTP/1.1", r"invalid reply type byte b'H'"),
        (b"$abc\r\n", r"invalid length b'abc'"),
        (b"*-2\r\n", r"invalid length b'-2'"),
        (b":12x\r\n", r"invalid integer b'12x'"),
        (b"$3\r\nabcXY", r"bulk string of 3 bytes not followed by CRLF \(got b'XY'\)"),
        (b"+a\nb\r\n", r"bare CR or LF"),
        (b",x\r\n", r"invalid double b'x'"),
        (b"#1\r\n", r"invalid boolean b'1'"),
        (b"=3\r\nabc\r\n", r"verbatim string without a format prefix"),
    ],
)
def test_protocol_error_messages(garbage: bytes, message: str) -> None:
    parser = Parser(use_hiredis=False)
    parser.feed(garbage)
    with pytest.raises(ProtocolError, match=message):
        parser.get_reply()
    with pytest.raises(ProtocolError, match="unusable after an earlier error"):
        parser.get_reply()


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
def test_hiredis_unhashable_map_key_is_a_protocol_error() -> None:
    """hiredis cannot build a map keyed by an array (if RESP3 went unnoticed)."""
    parser = Parser(use_hiredis=True)
    parser.feed(b"+OK\r\n%1\r\n*1\r\n:1\r\n:2\r\n")
    assert parser.get_reply() == b"OK"
    with pytest.raises(ProtocolError, match="hiredis could not build a reply"):
        parser.get_reply()
    with pytest.raises(ProtocolError, match="unusable"):
        parser.get_reply()


# -- Values ----------------------------------------------------------------------


def test_error_reply_value() -> None:
    error = ErrorReply("NOSCRIPT No matching script")
    assert (error.code, error.message) == ("NOSCRIPT", "NOSCRIPT No matching script")
    assert repr(error) == "ErrorReply('NOSCRIPT No matching script')"
    assert error == ErrorReply("NOSCRIPT No matching script")
    assert error != ErrorReply("NOSCRIPT other")
    assert error != "NOSCRIPT No matching script"
    assert hash(error) == hash(ErrorReply("NOSCRIPT No matching script"))
    assert not isinstance(error, BaseException)
    assert ErrorReply("").code == "ERR"


def test_push_value() -> None:
    push = Push([b"message", b"ch", b"x"])
    assert isinstance(push, list)
    assert repr(push) == "Push([b'message', b'ch', b'x'])"
    assert push == [b"message", b"ch", b"x"]


# -- encode_command --------------------------------------------------------------


def test_encode_command_argument_types() -> None:
    class Color(enum.IntEnum):
        RED = 7

    class Name(str):
        pass

    assert encode_command(
        [
            "SET",
            b"k\r\ney",
            bytearray(b"ba"),
            memoryview(b"mv"),
            "h\xe9",
            42,
            -7,
            0.1,
            -1.5,
            1e100,
            math.inf,
            -math.inf,
            Color.RED,
            Name("sub"),
        ]
    ) == (
        b"*14\r\n$3\r\nSET\r\n$5\r\nk\r\ney\r\n$2\r\nba\r\n$2\r\nmv\r\n$3\r\nh\xc3\xa9\r\n"
        b"$2\r\n42\r\n$2\r\n-7\r\n$3\r\n0.1\r\n$4\r\n-1.5\r\n$6\r\n1e+100\r\n"
        b"$3\r\ninf\r\n$4\r\n-inf\r\n$1\r\n7\r\n$3\r\nsub\r\n"
    )


def test_encode_command_memoryviews() -> None:
    assert encode_command([memoryview(b"abcdef")[::2]]) == b"*1\r\n$3\r\nace\r\n"
    ints = array("i", [1, 2])
    assert encode_command([memoryview(ints)]) == b"*1\r\n$%d\r\n%s\r\n" % (
        ints.itemsize * 2,
        ints.tobytes(),
    )


def test_encode_command_sizes() -> None:
    for size in (0, 1, 1023, 1024, 100_000):
        payload = b"\r" * size
        assert encode_command(("X", payload)) == b"*2\r\n$1\r\nX\r\n$%d\r\n%s\r\n" % (size, payload)


@pytest.mark.parametrize("flag", [True, False])
def test_encode_command_rejects_bool(flag: bool) -> None:
    with pytest.raises(TypeError, match=rf"argument {flag} at position 2: bool is not allowed"):
        encode_command(["SET", "key", flag])


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (None, "NoneType"),
        (object(), "object"),
        ([b"x"], "list"),
        ({"a": 1}, "dict"),
        (1j, "complex"),
    ],
)
def test_encode_command_rejects_other_types(value: object, type_name: str) -> None:
    with pytest.raises(
        TypeError,
        match=rf"position 1: {type_name} is not allowed "
        r"\(expected bytes, bytearray, memoryview, str, int or float\)",
    ):
        encode_command(["GET", value])  # type: ignore[list-item]


def test_encode_command_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        encode_command(["ZADD", "k", math.nan, "m"])


def test_encode_command_rejects_a_bare_string_or_nothing() -> None:
    with pytest.raises(TypeError, match=r"not a single str \(write \['PING'\]"):
        encode_command("PING")
    with pytest.raises(TypeError, match="not a single bytes"):
        encode_command(b"PING")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one argument"):
        encode_command([])


def test_encode_commands() -> None:
    commands: list[Sequence[Arg]] = [("MULTI",), ["SET", b"k", 1], ("EXEC",)]
    expected = b"".join(encode_command(command) for command in commands)
    assert encode_commands(commands) == expected
    assert encode_commands(iter(commands)) == expected
    assert encode_commands([]) == b""
    with pytest.raises(TypeError, match="position 1"):
        encode_commands([("PING",), ("GET", None)])  # type: ignore[list-item]


# -- Property tests --------------------------------------------------------------
#
# Random reply trees are described as ("type", payload) nodes, encoded with the
# small RESP *reply* encoder below, and compared with the value they should
# parse to.

Node = tuple[str, Any]

simple_bytes = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)
error_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=20
)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

resp2_leaves: st.SearchStrategy[Node] = st.one_of(
    st.tuples(st.just("bulk"), st.binary(max_size=40)),
    st.tuples(st.just("simple"), simple_bytes),
    st.tuples(st.just("int"), int64),
    st.tuples(st.just("error"), error_text),
    st.tuples(st.just("null_bulk"), st.none()),
    st.tuples(st.just("null_array"), st.none()),
)
resp3_leaves: st.SearchStrategy[Node] = st.one_of(
    resp2_leaves,
    st.tuples(st.just("null"), st.none()),
    st.tuples(st.just("double"), st.floats()),
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(st.just("big"), st.integers(min_value=-(10**40), max_value=10**40)),
    st.tuples(st.just("verbatim"), st.binary(max_size=20)),
    st.tuples(st.just("blob_error"), st.text(alphabet=st.characters(exclude_categories=["Cs"]))),
)
# Map keys are kept to types with unsurprising equality (no NaN, no True == 1).
map_keys: st.SearchStrategy[Node] = st.recursive(
    st.one_of(
        st.tuples(st.just("bulk"), st.binary(max_size=10)),
        st.tuples(st.just("int"), int64),
    ),
    lambda inner: st.tuples(st.just("array"), st.lists(inner, max_size=3)),
    max_leaves=4,
)


def _resp2_children(inner: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.tuples(st.just("array"), st.lists(inner, max_size=5))


def _resp3_children(inner: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    pairs = st.lists(st.tuples(map_keys, inner), max_size=4)
    return st.one_of(
        st.tuples(st.just("array"), st.lists(inner, max_size=5)),
        st.tuples(st.just("set"), st.lists(inner, max_size=5)),
        st.tuples(st.just("push"), st.lists(inner, max_size=5)),
        st.tuples(st.just("map"), pairs),
        st.tuples(st.just("attribute"), st.tuples(pairs, inner)),
    )


resp2_trees = st.recursive(resp2_leaves, _resp2_children, max_leaves=12)
resp3_trees = st.recursive(resp3_leaves, _resp3_children, max_leaves=12)


def encode_reply(node: Node) -> bytes:
    """Encode a reply tree the way a server would."""
    kind, payload = node
    if kind == "bulk":
        return b"$%d\r\n%s\r\n" % (len(payload), payload)
    if kind == "simple":
        return b"+%s\r\n" % payload
    if kind == "int":
        return b":%d\r\n" % payload
    if kind == "error":
        return b"-%s\r\n" % payload.encode()
    if kind == "null_bulk":
        return b"$-1\r\n"
    if kind == "null_array":
        return b"*-1\r\n"
    if kind == "null":
        return b"_\r\n"
    if kind == "double":
        return b",%s\r\n" % repr(payload).encode()
    if kind == "bool":
        return b"#t\r\n" if payload else b"#f\r\n"
    if kind == "big":
        return b"(%d\r\n" % payload
    if kind == "verbatim":
        return b"=%d\r\ntxt:%s\r\n" % (len(payload) + 4, payload)
    if kind == "blob_error":
        message = payload.encode()
        return b"!%d\r\n%s\r\n" % (len(message), message)
    if kind in ("array", "set", "push"):
        prefix = {"array": b"*", "set": b"~", "push": b">"}[kind]
        return b"%s%d\r\n%s" % (prefix, len(payload), b"".join(map(encode_reply, payload)))
    if kind == "map":
        return b"%%%d\r\n%s" % (len(payload), encode_pairs(payload))
    if kind == "attribute":
        pairs, annotated = payload
        return b"|%d\r\n%s%s" % (len(pairs), encode_pairs(pairs), encode_reply(annotated))
    raise AssertionError(kind)


def encode_pairs(pairs: list[tuple[Node, Node]]) -> bytes:
    return b"".join(encode_reply(key) + encode_reply(value) for key, value in pairs)


def freeze(value: object) -> object:
    return tuple(freeze(item) for item in value) if isinstance(value, list) else value


def expected_value(node: Node) -> object:
    """The value the parser must return for a reply tree."""
    kind, payload = node
    if kind in ("bulk", "simple", "int", "double", "bool", "big", "verbatim"):
        return payload
    if kind in ("error", "blob_error"):
        return ErrorReply(payload)
    if kind in ("null_bulk", "null_array", "null"):
        return None
    if kind in ("array", "set"):
        return [expected_value(item) for item in payload]
    if kind == "push":
        return Push(expected_value(item) for item in payload)
    if kind == "map":
        return {freeze(expected_value(key)): expected_value(value) for key, value in payload}
    if kind == "attribute":
        return expected_value(payload[1])
    raise AssertionError(kind)


def chunked(data: st.DataObject, encoded: bytes) -> list[bytes]:
    points = data.draw(st.lists(st.integers(0, len(encoded)), max_size=8), label="split points")
    return split_at(encoded, points)


@use_hiredis
@PROFILE
@given(trees=st.lists(resp2_trees, min_size=1, max_size=4), data=st.data())
def test_random_resp2_replies(use_hiredis: bool, trees: list[Node], data: st.DataObject) -> None:
    encoded = b"".join(map(encode_reply, trees))
    replies = parse_chunks(use_hiredis, chunked(data, encoded))
    assert_identical(replies, [expected_value(tree) for tree in trees])


@use_hiredis
@PROFILE
@given(trees=st.lists(resp3_trees, min_size=1, max_size=4), data=st.data())
def test_random_resp3_replies(use_hiredis: bool, trees: list[Node], data: st.DataObject) -> None:
    encoded = b"".join(map(encode_reply, trees))
    replies = parse_chunks(use_hiredis, chunked(data, encoded), resp3=True)
    assert_identical(replies, [expected_value(tree) for tree in trees])


command_args: st.SearchStrategy[Arg] = st.one_of(
    st.binary(max_size=30),
    st.binary(max_size=30).map(bytearray),
    st.binary(max_size=30).map(memoryview),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False),
)


def arg_bytes(arg: Arg) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return str(arg).encode()
    if isinstance(arg, float):
        return repr(arg).encode()
    return bytes(arg)


@use_hiredis
@PROFILE
@given(
    commands=st.lists(st.lists(command_args, min_size=1, max_size=6), max_size=3), data=st.data()
)
def test_encode_command_round_trip(
    use_hiredis: bool, commands: list[list[Arg]], data: st.DataObject
) -> None:
    """A server parses a command exactly as a reply parser parses an array of bulk strings."""
    encoded = encode_commands(commands)
    assert encoded == b"".join(encode_command(command) for command in commands)
    replies = parse_chunks(use_hiredis, chunked(data, encoded))
    assert_identical(replies, [[arg_bytes(arg) for arg in command] for command in commands])
