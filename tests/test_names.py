"""Channel / group name rules: parity with Django Channels' BaseChannelLayer."""

from __future__ import annotations

import re

import pytest
from channels.layers import BaseChannelLayer
from hypothesis import given
from hypothesis import strategies as st

from anyio_layer.exceptions import InvalidChannelName, InvalidGroupName
from anyio_layer.messages.names import (
    DEFAULT_NEW_CHANNEL_PREFIX,
    MAX_NAME_LENGTH,
    is_process_local,
    new_channel_name,
    non_local_name,
    random_client_prefix,
    random_suffix,
    validate_channel_name,
    validate_channel_names,
    validate_group_name,
)

CHANNELS = BaseChannelLayer()
# Channels' message, minus its final period (ours goes on to say what was wrong).
CHANNEL_MESSAGE = CHANNELS.invalid_name_error.format("Channel").rstrip(".")
GROUP_MESSAGE = CHANNELS.invalid_name_error.format("Group").rstrip(".")
RECEIVE_MESSAGE = "Specific channel names in receive() must end at the !"

NAME_CORPUS: list[object] = [
    # ordinary
    "a",
    "chat",
    "chat.room-1_x",
    "...",
    "---",
    "_",
    "0",
    "a" * (MAX_NAME_LENGTH - 1),
    "a" * MAX_NAME_LENGTH,
    "a" * (MAX_NAME_LENGTH + 50),
    "",
    # process-local
    "a!",
    "a!b",
    "specific.abc!def",
    "specific.abc!def.ghi-jkl_mno",
    "a!" + "b" * (MAX_NAME_LENGTH - 3),
    "a!" + "b" * (MAX_NAME_LENGTH - 2),
    "!",
    "!a",
    "a!!",
    "a!b!c",
    "a!b!",
    # characters
    "a b",
    " a",
    "a\tb",
    "a/b",
    "a:b",
    "a*b",
    "a$b",
    "chat$inflight",
    "a+b",
    "é",
    "aé",
    "a!é",
    "a!ß",
    "a!b c",
    "a!b/c",
    "\N{SNOWMAN}",
    "a!\N{SNOWMAN}",
    "\u0661\u0662",  # Arabic-Indic digits: \d is Unicode-aware in Channels' regex
    "a!\u0661",
    "\uff11",  # fullwidth digit one
    "a\x00b",
    # the trailing-newline quirk of `$`
    "chat\n",
    "a!b\n",
    "a!\n",
    "\n",
    "a\n\n",
    "a\nb",
    "\na",
    # not strings
    None,
    1,
    1.5,
    b"chat",
    ["chat"],
    object(),
]


class StrSubclass(str):
    pass


NAME_CORPUS.append(StrSubclass("chat"))


def name_id(value: object) -> str:
    if type(value) is object:
        return "object()"
    return repr(value)[:40]


def channels_accepts(check: object, *args: object, **kwargs: object) -> tuple[bool, str]:
    try:
        check(*args, **kwargs)  # type: ignore[operator]
    except TypeError as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize("name", NAME_CORPUS, ids=name_id)
@pytest.mark.parametrize("receive", [False, True])
def test_channel_names_match_channels(name: object, receive: bool) -> None:
    expected, their_message = channels_accepts(
        CHANNELS.require_valid_channel_name, name, receive=receive
    )
    if expected:
        assert validate_channel_name(name, receive=receive) is name
        return
    with pytest.raises(InvalidChannelName) as info:
        validate_channel_name(name, receive=receive)
    assert isinstance(info.value, TypeError)
    prefix = RECEIVE_MESSAGE if their_message.startswith(RECEIVE_MESSAGE) else CHANNEL_MESSAGE
    assert their_message.startswith(prefix)
    assert str(info.value).startswith(prefix)


@pytest.mark.parametrize("name", NAME_CORPUS, ids=name_id)
def test_group_names_match_channels(name: object) -> None:
    expected, _ = channels_accepts(CHANNELS.require_valid_group_name, name)
    if expected:
        assert validate_group_name(name) is name
        return
    with pytest.raises(InvalidGroupName, match=re.escape(GROUP_MESSAGE)) as info:
        validate_group_name(name)
    assert isinstance(info.value, TypeError)


NAME_ALPHABET = st.sampled_from([*"aZ09-_.!é\u0661 \n/$:", "\N{SNOWMAN}", "ß"])


@given(st.text(NAME_ALPHABET, max_size=8) | st.text(max_size=4))
def test_random_names_match_channels(name: str) -> None:
    for receive in (False, True):
        expected, _ = channels_accepts(CHANNELS.require_valid_channel_name, name, receive=receive)
        try:
            validate_channel_name(name, receive=receive)
        except InvalidChannelName:
            ours = False
        else:
            ours = True
        assert ours == expected, (name, receive)
    expected, _ = channels_accepts(CHANNELS.require_valid_group_name, name)
    try:
        validate_group_name(name)
    except InvalidGroupName:
        ours = False
    else:
        ours = True
    assert ours == expected, name


@pytest.mark.parametrize(
    "name", ["a", "a!", "a!b", "specific.x!y", "a!b!c", "!", "!x", "", "chat\n"], ids=repr
)
def test_non_local_name_matches_channels(name: str) -> None:
    assert non_local_name(name) == CHANNELS.non_local_name(name)
    assert is_process_local(name) == ("!" in name)


@pytest.mark.parametrize(
    ("name", "receive", "detail"),
    [
        (5, False, "got int, expected str"),
        (b"chat", False, "got bytes, expected str"),
        ("a" * 100, False, "length is 100, must be at most 99"),
        ("", False, "it is empty"),
        ("!abc", False, "'!' must follow a non-empty name"),
        ("a!b!c", False, "more than one '!'"),
        ("chat room", False, "character ' ' at index 4 is not allowed"),
        ("chat!a b", False, "character ' ' at index 6 is not allowed"),
        ("é", False, "character 'é' at index 0 is not allowed"),
        ("a!b", True, "non-local name 'a!'"),
    ],
)
def test_channel_error_messages_say_what_is_wrong(name: object, receive: bool, detail: str) -> None:
    with pytest.raises(InvalidChannelName, match=re.escape(detail)) as info:
        validate_channel_name(name, receive=receive)
    assert repr(name)[:50] in str(info.value)


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        (None, "got NoneType, expected str"),
        ("g" * 150, "length is 150"),
        ("", "it is empty"),
        ("room 1", "character ' ' at index 4"),
        ("a!b", "group names cannot be process-local"),
    ],
)
def test_group_error_messages_say_what_is_wrong(name: object, detail: str) -> None:
    with pytest.raises(InvalidGroupName, match=re.escape(detail)):
        validate_group_name(name)


def test_long_names_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidChannelName) as info:
        validate_channel_name("x" * 10_000)
    assert len(str(info.value)) < 400


def test_validate_channel_names() -> None:
    names = ["a", "b!c"]
    assert validate_channel_names(names) is names
    bad_lists: list[object] = [[], "a", ("a",), None]
    for bad in bad_lists:
        with pytest.raises(InvalidChannelName, match="non-empty list"):
            validate_channel_names(bad)
    with pytest.raises(InvalidChannelName, match=re.escape(CHANNEL_MESSAGE)):
        validate_channel_names(["a", "b c"])
    with pytest.raises(InvalidChannelName, match=re.escape(RECEIVE_MESSAGE)):
        validate_channel_names(["a", "b!c"], receive=True)


HEX32 = re.compile(r"[0-9a-f]{32}")


def test_random_parts_have_channels_redis_shape() -> None:
    prefixes = {random_client_prefix() for _ in range(100)}
    suffixes = {random_suffix() for _ in range(100)}
    assert len(prefixes) == len(suffixes) == 100
    assert all(HEX32.fullmatch(part) for part in prefixes | suffixes)


def test_new_channel_name_shape() -> None:
    client_prefix = random_client_prefix()
    name = new_channel_name(DEFAULT_NEW_CHANNEL_PREFIX, client_prefix)
    match = re.fullmatch(r"specific\.([0-9a-f]{32})!([0-9a-f]{32})", name)
    assert match is not None
    assert match.group(1) == client_prefix
    assert non_local_name(name) == f"specific.{client_prefix}!"
    assert is_process_local(name)
    # Channels and we both accept it; receive() reads the non-local part.
    assert CHANNELS.require_valid_channel_name(name)
    validate_channel_name(name)
    validate_channel_name(non_local_name(name), receive=True)
    assert len({new_channel_name("x", client_prefix) for _ in range(100)}) == 100


def test_new_channel_name_prefix_limits() -> None:
    client_prefix = random_client_prefix()
    longest = MAX_NAME_LENGTH - 1 - len(f".{client_prefix}!{random_suffix()}")
    name = new_channel_name("p" * longest, client_prefix)
    assert len(name) == MAX_NAME_LENGTH - 1
    validate_channel_name(name)
    assert new_channel_name("", client_prefix).startswith(f".{client_prefix}!")
    with pytest.raises(InvalidChannelName, match=f"at most {longest} characters"):
        new_channel_name("p" * (longest + 1), client_prefix)
    for bad in ("a!b", "a b", "é"):
        with pytest.raises(InvalidChannelName, match="only ASCII alphanumerics"):
            new_channel_name(bad, client_prefix)
    with pytest.raises(InvalidChannelName, match="must be a str"):
        new_channel_name(None, client_prefix)  # type: ignore[arg-type]
    with pytest.raises(InvalidChannelName, match="client prefix"):
        new_channel_name("specific", "bad!prefix")
