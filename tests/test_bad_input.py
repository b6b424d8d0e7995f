"""Bad input, all in one place: every case raises a specific error that says what was wrong.

The matrix covers names, messages and configuration for both layers. After
each case the layer still works (a good message goes through), and the whole
module also runs under ``python -O`` (``test_matrix_holds_without_asserts``),
which strips ``assert`` statements: validation must not rely on them. The
package itself contains no ``assert`` at all (``test_package_has_no_asserts``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import anyio_layer
from anyio_layer import (
    ChannelLayerError,
    ConfigurationError,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
    MessageTooLarge,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
Layer = Any  # QueueLayer or PubSubLayer: the same calls are checked on both

# -- names ------------------------------------------------------------------------

BAD_CHANNEL_NAMES: list[tuple[object, str]] = [
    ("", "Channel name"),
    ("a" * 101, "100"),
    ("café", "ASCII"),
    ("a b", "Channel name"),
    ("!", "Channel name"),
    ("a!!", "Channel name"),
    (b"bytes", "str"),
    (None, "str"),
    (42, "str"),
]
BAD_GROUP_NAMES: list[tuple[object, str]] = [
    ("", "Group name"),
    ("g" * 101, "100"),
    ("grüppe", "ASCII"),
    ("a!b", "Group name"),
    (b"bytes", "str"),
    (None, "str"),
]
#: Names that are valid to send to but not to receive from (receive wants "...!" or no "!").
BAD_RECEIVE_NAMES: list[tuple[object, str]] = [
    ("specific.x!suffix", "was not created by this layer's new_channel()"),
]

# -- messages ---------------------------------------------------------------------


def self_referencing() -> dict[str, object]:
    message: dict[str, object] = {"type": "loop"}
    message["self"] = message
    return message


BAD_MESSAGES: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: "not a dict", InvalidMessage, "dict"),
    (lambda: ["type", "x"], InvalidMessage, "dict"),
    (lambda: {1: "x", "type": "t"}, InvalidMessage, "key"),
    (lambda: {"type": "t", "value": object()}, InvalidMessage, "object"),
    (lambda: {"type": "t", "value": {1, 2}}, InvalidMessage, "set"),
    (self_referencing, InvalidMessage, "message"),
    (lambda: {"type": "t", "blob": b"x" * 2000}, MessageTooLarge, "limit is 1000 bytes"),
]

# -- configuration ----------------------------------------------------------------

# (An empty ``hosts`` means the default server, as in channels_redis.)
BAD_CONFIGS: list[tuple[dict[str, object], str]] = [
    ({"hosts": "redis://localhost"}, "must be a list"),
    ({"hosts": ["http://localhost:6379"]}, "unknown scheme 'http'"),
    ({"hosts": ["redis://localhost:0"]}, "port must be an integer >= 1"),
    ({"hosts": ["redis://localhost:70000"]}, "not a valid URL"),
    ({"hosts": ["redis://localhost:-1"]}, "not a valid URL"),
    ({"hosts": [("localhost", 0)]}, "port must be an integer >= 1"),
    ({"hosts": [{"address": "redis://x", "bogus": 1}]}, "unknown option(s): bogus"),
    ({"capacity": -1}, "capacity must be a positive integer"),
    ({"capacity": 0}, "capacity must be a positive integer"),
    ({"max_message_size": -1}, "max_message_size"),
    ({"unknown_keyword": 1}, "unknown option(s)"),
    ({"symmetric_encryption_keys": "one-string"}, "symmetric_encryption_keys"),
    ({"symmetric_encryption_keys": [""]}, "symmetric_encryption_keys"),
    ({"symmetric_encryption_keys": [42]}, "symmetric_encryption_keys"),
    ({"serializer_format": "yaml"}, "yaml"),
    ({"prefix": b"bytes"}, "prefix must be a str"),
]
QUEUE_ONLY_CONFIGS: list[tuple[dict[str, object], str]] = [
    ({"expiry": -1}, "expiry must be a positive number"),
    ({"expiry": float("nan")}, "expiry must be a positive number"),
    ({"group_expiry": 0}, "group_expiry must be a positive number"),
    ({"channel_capacity": {"x": -1}}, "must be a positive integer"),
    ({"random_prefix_length": "12"}, "random_prefix_length"),
]

OPENERS = {
    "queue": anyio_layer.open_redis_layer,
    "pubsub": anyio_layer.open_pubsub_layer,
}


@pytest.fixture(params=sorted(OPENERS))
async def layer(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Layer]:
    async with OPENERS[request.param](hosts=[redis_url], max_message_size=1000) as opened:
        yield opened


async def still_works(layer: Layer) -> None:
    """A good message still goes through after a refused call."""
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "still.works"})
    with anyio.fail_after(5):
        assert await layer.receive(channel) == {"type": "still.works"}


def says(error: BaseException, what: str) -> None:
    assert isinstance(error, ChannelLayerError), repr(error)
    assert what.lower() in str(error).lower(), f"{what!r} not in {str(error)!r}"


@pytest.mark.parametrize(("name", "what"), BAD_CHANNEL_NAMES)
async def test_bad_channel_names(layer: Layer, name: object, what: str) -> None:
    for call in (
        lambda: layer.send(name, {"type": "x"}),
        lambda: layer.group_add("room", name),
        lambda: layer.group_discard("room", name),
        lambda: layer.receive(name),
    ):
        with anyio.fail_after(5), pytest.raises(InvalidChannelName) as info:
            await call()
        says(info.value, what)
    await still_works(layer)


@pytest.mark.parametrize(("name", "what"), BAD_RECEIVE_NAMES)
async def test_bad_receive_names(redis_url: str, name: object, what: str) -> None:
    """The queue layer's receive rule (pub/sub channels have no process-local part)."""
    async with anyio_layer.open_redis_layer(hosts=[redis_url]) as layer:
        with anyio.fail_after(5), pytest.raises(InvalidChannelName) as info:
            await layer.receive(name)
        says(info.value, what)
        await still_works(layer)


@pytest.mark.parametrize(("name", "what"), BAD_GROUP_NAMES)
async def test_bad_group_names(layer: Layer, name: object, what: str) -> None:
    channel = await layer.new_channel()
    for call in (
        lambda: layer.group_add(name, channel),
        lambda: layer.group_discard(name, channel),
        lambda: layer.group_send(name, {"type": "x"}),
    ):
        with anyio.fail_after(5), pytest.raises(InvalidGroupName) as info:
            await call()
        says(info.value, what)
    await still_works(layer)


@pytest.mark.parametrize(("make", "error", "what"), BAD_MESSAGES)
async def test_bad_messages(
    layer: Layer, make: Callable[[], object], error: type[Exception], what: str
) -> None:
    channel = await layer.new_channel()
    await layer.group_add("bad-input-room", channel)
    for call in (
        lambda: layer.send(channel, make()),
        lambda: layer.group_send("bad-input-room", make()),
    ):
        with anyio.fail_after(5), pytest.raises(error) as info:
            await call()
        says(info.value, what)
    await still_works(layer)
    with anyio.move_on_after(0.2):  # nothing half-sent reached the channel
        pytest.fail(f"a refused message arrived: {await layer.receive(channel)!r}")


@pytest.mark.parametrize("kind", sorted(OPENERS))
@pytest.mark.parametrize(("config", "what"), BAD_CONFIGS)
async def test_bad_configuration(kind: str, config: dict[str, object], what: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        async with OPENERS[kind](**config):
            pass
    says(info.value, what)


async def test_reserved_key_in_queue_messages(redis_url: str) -> None:
    """The queue layer stores a process-local channel's name in the message (pub/sub does not)."""
    async with anyio_layer.open_redis_layer(hosts=[redis_url]) as layer:
        with anyio.fail_after(5), pytest.raises(InvalidMessage) as info:
            await layer.send("worker", {"type": "t", "__asgi_channel__": "x"})
        says(info.value, "__asgi_channel__")
        await still_works(layer)


@pytest.mark.parametrize(("config", "what"), QUEUE_ONLY_CONFIGS)
async def test_bad_queue_configuration(config: dict[str, object], what: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        async with anyio_layer.open_redis_layer(**config):  # type: ignore[arg-type]
            pass
    says(info.value, what)


# -- no assert anywhere -------------------------------------------------------------


def test_package_has_no_asserts() -> None:
    found = []
    for package in ("anyio_layer", "channels_compat"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Assert):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"assert statements vanish under python -O: {found}"


@pytest.mark.skipif(not __debug__, reason="already running under python -O")
def test_matrix_holds_without_asserts() -> None:
    """The whole matrix again, in a ``python -O`` interpreter (pytest's own asserts
    are rewritten, so the checks still run; the package's validation must too)."""
    result = subprocess.run(
        [
            sys.executable,
            "-O",
            "-m",
            "pytest",
            "-q",
            # pytest warns that asserts outside test modules are stripped: that is the point.
            "-W",
            "ignore::pytest.PytestConfigWarning",
            __file__,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
