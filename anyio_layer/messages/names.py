"""Channel and group naming rules, identical to Django Channels' ``BaseChannelLayer``.

Contract
--------

A name is accepted here exactly when ``channels.layers.BaseChannelLayer``
accepts it (``require_valid_channel_name`` / ``require_valid_group_name``);
the same regular expressions are used, so the two can never disagree:

* it is a ``str`` (subclasses included) shorter than :data:`MAX_NAME_LENGTH`
  (100) characters;
* a **group** name matches ``^[a-zA-Z\\d\\-_.]+$``;
* a **channel** name matches ``^[a-zA-Z\\d\\-_.]+(\\![\\d\\w\\-_.]*)?$``: an
  ordinary name, optionally followed by one ``!`` and a (possibly empty)
  suffix. A name containing ``!`` is *process-local* ("specific"): the part up
  to and including the ``!`` (:func:`non_local_name`) names the Redis queue
  shared by every channel of one layer instance, the suffix tells those
  channels apart;
* with ``receive=True`` (the check channels_redis applies to the queue it
  actually pops from) a process-local name must *end* at the ``!``.

Inherited quirks, kept on purpose for compatibility: ``\\d`` and ``\\w`` are
Unicode-aware, so non-ASCII digits (e.g. ``"١٢"``) pass, and so do non-ASCII
letters after the ``!``; and ``$`` also matches before one trailing newline,
so ``"chat\\n"`` is accepted, as Channels accepts it.

Errors are :class:`~anyio_layer.exceptions.InvalidChannelName` /
:class:`~anyio_layer.exceptions.InvalidGroupName` (both ``TypeError``
subclasses, which is what Channels raises). Their messages begin with
Channels' own wording, then name the offending value and what exactly was
wrong with it.

Channel names handed out by :func:`new_channel_name` have the shape
channels_redis uses, ``f"{prefix}.{client_prefix}!{suffix}"``, where
``client_prefix`` (one per layer instance) and ``suffix`` are 32 lowercase hex
digits each (:func:`random_client_prefix`, :func:`random_suffix`).

This module only judges and makes names: it must not map them to Redis keys
or shards (:mod:`anyio_layer.queue.keyspace`, :mod:`anyio_layer.common.sharding`)
and holds no state. Covered by ``tests/test_names.py``.
"""

from __future__ import annotations

import re
import secrets

from ..exceptions import InvalidChannelName, InvalidGroupName

__all__ = [
    "CHANNEL_NAME_REGEX",
    "DEFAULT_NEW_CHANNEL_PREFIX",
    "GROUP_NAME_REGEX",
    "MAX_NAME_LENGTH",
    "is_process_local",
    "new_channel_name",
    "non_local_name",
    "random_client_prefix",
    "random_suffix",
    "validate_channel_name",
    "validate_channel_names",
    "validate_group_name",
]

#: Names must be *shorter* than this many characters (Channels' ``MAX_NAME_LENGTH``).
MAX_NAME_LENGTH = 100

#: Channels' ``BaseChannelLayer.channel_name_regex``, unchanged (use with ``.match``).
CHANNEL_NAME_REGEX = re.compile(r"^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$")
#: Channels' ``BaseChannelLayer.group_name_regex``, unchanged (use with ``.match``).
GROUP_NAME_REGEX = re.compile(r"^[a-zA-Z\d\-_.]+$")

#: The default ``prefix`` of ``new_channel()`` in channels_redis.
DEFAULT_NEW_CHANNEL_PREFIX = "specific"

# Character classes of the two parts of a channel name, for explaining failures.
_NAME_CHAR = re.compile(r"[a-zA-Z\d\-_.]")
_SUFFIX_CHAR = re.compile(r"[\d\w\-_.]")

_INVALID_NAME = (
    "{kind} name must be a valid unicode string with length < "
    + str(MAX_NAME_LENGTH)
    + " containing only ASCII alphanumerics, hyphens, underscores, or periods"
)
_RECEIVE_NAME = "Specific channel names in receive() must end at the !"

# Hex digits in a random client prefix / suffix (uuid4().hex has 32).
_RANDOM_HEX_BYTES = 16


def _show(value: object) -> str:
    """A bounded ``repr`` for error messages."""
    text = repr(value)
    if len(text) > 120:
        text = text[:100] + "..." + text[-10:]
    return text


def _first_bad_char(text: str, allowed: re.Pattern[str], offset: int) -> str | None:
    for index, char in enumerate(text):
        if not allowed.fullmatch(char):
            return f"character {char!r} at index {index + offset} is not allowed"
    return None


def _explain(kind: str, name: object, reason: str) -> str:
    return f"{_INVALID_NAME.format(kind=kind)}, not {_show(name)} ({reason})."


def _require_short_str(
    kind: str, name: object, error: type[InvalidChannelName] | type[InvalidGroupName]
) -> str:
    """``name`` as a ``str`` shorter than ``MAX_NAME_LENGTH``, else raise ``error``."""
    if not isinstance(name, str):
        raise error(_explain(kind, name, f"got {type(name).__name__}, expected str"))
    if len(name) >= MAX_NAME_LENGTH:
        reason = f"length is {len(name)}, must be at most {MAX_NAME_LENGTH - 1}"
        raise error(_explain(kind, name, reason))
    return name


def _channel_problem(name: str) -> str:
    """Why ``CHANNEL_NAME_REGEX`` rejected ``name`` (only called after it did)."""
    if not name:
        return "it is empty"
    head, bang, tail = name.partition("!")
    if bang and not head:
        return "the '!' must follow a non-empty name"
    if "!" in tail:
        return "it contains more than one '!'; at most one is allowed"
    problem = _first_bad_char(head, _NAME_CHAR, 0)
    if problem is None and bang:
        problem = _first_bad_char(tail, _SUFFIX_CHAR, len(head) + 1)
    return problem or "it does not match the channel name pattern"


def _group_problem(name: str) -> str:
    """Why ``GROUP_NAME_REGEX`` rejected ``name`` (only called after it did)."""
    if not name:
        return "it is empty"
    problem = _first_bad_char(name, _NAME_CHAR, 0)
    if problem is not None and "!" in name:
        problem += "; group names cannot be process-local"
    return problem or "it does not match the group name pattern"


def validate_channel_name(name: object, *, receive: bool = False) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannelName`.

    Mirrors ``BaseChannelLayer.require_valid_channel_name(name, receive)``:
    with ``receive=True`` a process-local name must also end at its ``!``
    (i.e. be a non-local name, see :func:`non_local_name`).
    """
    name = _require_short_str("Channel", name, InvalidChannelName)
    if not CHANNEL_NAME_REGEX.match(name):
        raise InvalidChannelName(_explain("Channel", name, _channel_problem(name)))
    if receive and "!" in name and not name.endswith("!"):
        raise InvalidChannelName(
            f"{_RECEIVE_NAME}, not {_show(name)}: a process-local queue is read through "
            f"its non-local name {_show(non_local_name(name))}."
        )
    return name


def validate_channel_names(names: object, *, receive: bool = False) -> list[str]:
    """Validate a non-empty ``list`` of channel names; return it.

    Mirrors ``BaseChannelLayer.valid_channel_names`` (which uses ``assert``
    for the list check; this raises :class:`InvalidChannelName` instead).
    """
    if not isinstance(names, list) or not names:
        raise InvalidChannelName(
            f"names must be a non-empty list of channel names, not {_show(names)}."
        )
    for name in names:
        validate_channel_name(name, receive=receive)
    return names


def validate_group_name(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise :class:`InvalidGroupName`.

    Mirrors ``BaseChannelLayer.require_valid_group_name``. Group names never
    contain ``!``.
    """
    name = _require_short_str("Group", name, InvalidGroupName)
    if not GROUP_NAME_REGEX.match(name):
        raise InvalidGroupName(_explain("Group", name, _group_problem(name)))
    return name


def is_process_local(name: str) -> bool:
    """Whether ``name`` is a process-local ("specific") channel, i.e. contains ``!``."""
    return "!" in name


def non_local_name(name: str) -> str:
    """The part of ``name`` up to and including its first ``!``; ``name`` itself if none.

    Same as ``BaseChannelLayer.non_local_name``. channels_redis stores every
    message for ``"x.abc!suffix"`` in the queue of ``"x.abc!"`` and records the
    full name in the message's ``__asgi_channel__`` key.
    """
    index = name.find("!")
    if index < 0:
        return name
    return name[: index + 1]


def random_client_prefix() -> str:
    """A fresh per-layer-instance client prefix: 32 random lowercase hex digits.

    Same shape as channels_redis' ``uuid.uuid4().hex``.
    """
    return secrets.token_hex(_RANDOM_HEX_BYTES)


def random_suffix() -> str:
    """A fresh suffix for a process-local channel name: 32 random lowercase hex digits."""
    return secrets.token_hex(_RANDOM_HEX_BYTES)


def _check_part(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidChannelName(f"new channel {what} must be a str, not {type(value).__name__}.")
    for index, char in enumerate(value):
        if not _NAME_CHAR.fullmatch(char):
            raise InvalidChannelName(
                f"new channel {what} {_show(value)} contains {char!r} at index {index}; "
                "only ASCII alphanumerics, hyphens, underscores, or periods are allowed."
            )
    return value


def new_channel_name(prefix: str, client_prefix: str) -> str:
    """A new process-local channel name, ``f"{prefix}.{client_prefix}!{random_suffix()}"``.

    This is the shape channels_redis' ``new_channel(prefix="specific")``
    returns, so the non-local part is ``f"{prefix}.{client_prefix}!"``.
    Unlike channels_redis, an unusable ``prefix`` (a character outside the
    channel-name alphabet, a ``!``, or one so long that the result would not
    be shorter than :data:`MAX_NAME_LENGTH`) raises
    :class:`InvalidChannelName` here instead of producing a name that cannot
    be used afterwards.
    """
    _check_part("prefix", prefix)
    _check_part("client prefix", client_prefix)
    suffix = random_suffix()
    name = f"{prefix}.{client_prefix}!{suffix}"
    if len(name) >= MAX_NAME_LENGTH:
        longest = MAX_NAME_LENGTH - 1 - (len(name) - len(prefix))
        raise InvalidChannelName(
            f"new channel prefix {_show(prefix)} is too long: the channel name would have "
            f"{len(name)} characters, it must have fewer than {MAX_NAME_LENGTH}, so the "
            f"prefix may have at most {max(longest, 0)} characters."
        )
    return name
