"""Hostile and broken replies: the parsers only ever return replies, NEED_DATA or raise
ProtocolError, in linear time, whatever bytes arrive (no server)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_resp import HELLO3, encode_reply, new_parser, resp2_trees, resp3_trees

from anyio_layer.exceptions import ProtocolError
from anyio_layer.redis.protocol import (
    HIREDIS_AVAILABLE,
    MAX_AGGREGATE_LENGTH,
    MAX_BULK_LENGTH,
    MAX_DEPTH,
    NEED_DATA,
    Parser,
)

IMPLEMENTATIONS = [
    pytest.param(False, id="python"),
    pytest.param(
        True,
        id="hiredis",
        marks=pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed"),
    ),
]
use_hiredis = pytest.mark.parametrize("use_hiredis", IMPLEMENTATIONS)
resp3 = pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])

PROFILE = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def parse_all(parser: Parser, chunks: list[bytes]) -> list[object]:
    """Feed ``chunks`` and drain; only ProtocolError may escape."""
    replies = []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.get_reply()) is not NEED_DATA:
            replies.append(reply)
    return replies


def only_protocol_errors(parser: Parser, chunks: list[bytes]) -> None:
    try:
        parse_all(parser, chunks)
    except ProtocolError:
        with pytest.raises(ProtocolError):  # and it stays broken
            parser.get_reply()


# -- random and damaged input ------------------------------------------------------


@use_hiredis
@resp3
@PROFILE
@given(data=st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_only_raise_protocol_error(
    use_hiredis: bool, resp3: bool, data: list[bytes]
) -> None:
    only_protocol_errors(new_parser(use_hiredis, resp3=resp3), data)


@use_hiredis
@resp3
@PROFILE
@given(
    tree=st.one_of(resp2_trees, resp3_trees),
    position=st.integers(min_value=0),
    byte=st.integers(0, 255),
)
def test_damaged_replies_only_raise_protocol_error(
    use_hiredis: bool, resp3: bool, tree: object, position: int, byte: int
) -> None:
    encoded = bytearray(encode_reply(tree))  # type: ignore[arg-type]
    encoded[position % len(encoded)] = byte
    only_protocol_errors(new_parser(use_hiredis, resp3=resp3), [bytes(encoded)])


@use_hiredis
@PROFILE
@given(tree=resp3_trees, data=st.data())
def test_truncated_replies_need_data_then_complete(
    use_hiredis: bool, tree: object, data: st.DataObject
) -> None:
    encoded = encode_reply(tree)  # type: ignore[arg-type]
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    parser = new_parser(use_hiredis, resp3=True)
    assert parse_all(parser, [encoded[:cut]]) == []
    assert len(parse_all(parser, [encoded[cut:]])) == 1


# -- nesting ----------------------------------------------------------------------


@use_hiredis
def test_nesting_up_to_the_limit_parses(use_hiredis: bool) -> None:
    parser = new_parser(use_hiredis)
    (reply,) = parse_all(parser, [b"*1\r\n" * MAX_DEPTH + b":1\r\n"])
    for _ in range(MAX_DEPTH):
        assert isinstance(reply, list)
        (reply,) = reply
    assert reply == 1


NESTED = {
    "arrays": lambda depth: b"*1\r\n" * depth + b":1\r\n",
    # A map whose key is a deeply nested array: once a RecursionError.
    "array map key": lambda depth: b"%1\r\n" + b"*1\r\n" * depth + b":1\r\n:2\r\n",
    # Maps keyed by maps keyed by maps...: once quadratic.
    "map keys": lambda depth: b"%1\r\n" * depth + b":1\r\n" + b":2\r\n" * depth,
    "sets": lambda depth: b"~1\r\n" * depth + b":1\r\n",
    "pushes in maps": lambda depth: b"%1\r\n>1\r\n" * depth + b":1\r\n",
}


@use_hiredis
@pytest.mark.parametrize("shape", NESTED)
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000, 200_000])
def test_deeper_nesting_is_refused_fast(use_hiredis: bool, shape: str, depth: int) -> None:
    encoded = NESTED[shape](depth)
    for first in (True, False):  # as a connection's first reply, and after HELLO 3
        parser = Parser(use_hiredis=use_hiredis)
        # Refused at the first level too many, so the cost stays linear.
        with pytest.raises(ProtocolError, match=r"nested|depth"):
            parse_all(parser, [encoded] if first else [HELLO3, encoded])


def test_deep_map_keys_within_the_limit_are_linear() -> None:
    """Keys nested to the limit are converted without recursion and without rework."""
    depth = MAX_DEPTH - 1
    encoded = b"%1\r\n" + b"*1\r\n" * depth + b":1\r\n:2\r\n"
    (reply,) = parse_all(Parser(use_hiredis=False), [encoded])
    assert isinstance(reply, dict)
    (key,) = reply
    for _ in range(depth):
        assert isinstance(key, tuple)
        (key,) = key
    assert key == 1


# -- declared lengths ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"$%d\r\n" % (MAX_BULK_LENGTH + 1), "string length"),
        (b"$999999999999999999\r\n", "string length"),
        (b"*%d\r\n" % (MAX_AGGREGATE_LENGTH + 1), "aggregate length"),
        (b"%%%d\r\n" % (MAX_AGGREGATE_LENGTH + 1), "aggregate length"),
        (b"~999999999999999999\r\n", "aggregate length"),
        (b"!%d\r\n" % (MAX_BULK_LENGTH + 1), "string length"),
        (b"=%d\r\n" % (MAX_BULK_LENGTH + 1), "string length"),
        (b"$9999999999999999999999\r\n", "invalid length"),
    ],
)
def test_absurd_lengths_are_refused_at_once(header: bytes, message: str) -> None:
    parser = Parser(use_hiredis=False)
    with pytest.raises(ProtocolError, match=message):
        parse_all(parser, [HELLO3, header])


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
def test_hiredis_refuses_absurd_aggregates_and_waits_for_strings() -> None:
    parser = Parser(use_hiredis=True)
    with pytest.raises(ProtocolError):
        parse_all(parser, [b"+OK\r\n*%d\r\n" % (MAX_AGGREGATE_LENGTH + 1)])
    parser = Parser(use_hiredis=True)
    # Nothing of the declared size is allocated: the reply just is not complete.
    assert parse_all(parser, [b"+OK\r\n$999999999999\r\nabc"]) == [b"OK"]


def test_lengths_at_the_limit_wait_for_data() -> None:
    parser = Parser(use_hiredis=False)
    assert parse_all(parser, [b"$%d\r\nabc" % MAX_BULK_LENGTH]) == []
    parser = Parser(use_hiredis=False)
    assert parse_all(parser, [b"*%d\r\n:1\r\n" % MAX_AGGREGATE_LENGTH]) == []
