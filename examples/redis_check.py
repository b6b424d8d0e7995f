"""Start-up check shared by the examples: can this Redis URL be used, and if not, why?

Each chat server (and ``demo.py``) calls it before serving, so a wrong
``REDIS_URL`` stops it at once with one line on stderr, for example::

    django chat: cannot use Redis at redis://127.0.0.1:1 ($REDIS_URL): connection refused.
    Is a Redis server running there? Or run examples/demo.py, which starts a private one.

(one line in the terminal) instead of a page that later says it cannot join
its room. The check goes through the channel layer itself, so every URL form
it accepts is checked the way the server will use it: connect, authenticate,
select the database, run one command (leaving a group nobody is in), all
within a few seconds.
"""

from __future__ import annotations

import concurrent.futures
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

import anyio

from anyio_layer import open_redis_layer
from anyio_layer.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ProtocolError,
    RedisConnectionError,
    RedisError,
    ResponseError,
)

#: Seconds the whole check may take (connect, authenticate, one command).
CHECK_TIMEOUT = 5.0


class RedisUnavailable(Exception):
    """The URL cannot be used; ``str()`` is one line: which URL, why, and what to try."""

    def __init__(self, where: str, why: str, hint: str) -> None:
        why = why.rstrip(". ")
        super().__init__(" ".join(f"cannot use Redis at {where}: {why}. {hint}".split()))


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, fit to print."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def _os_error(exc: BaseException) -> OSError | None:
    """The operating system's error underneath ``exc`` (through causes and groups), if any."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        pending.extend(getattr(current, "exceptions", ()))
    return None


def _reason(exc: BaseException, timeout: float) -> tuple[str, str]:
    """What went wrong, and what to try, in a few words each."""
    cause = _os_error(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s", "Are the host and port right, and reachable?"
    if isinstance(exc, AuthenticationError):
        return str(exc), "Is the password right (redis://:PASSWORD@host:port)?"
    if isinstance(exc, ConfigurationError):
        return str(exc), "Check the URL."
    if isinstance(exc, ProtocolError):
        return "what answers there does not speak the Redis protocol", "Is that Redis's port?"
    if isinstance(exc, RedisConnectionError) and isinstance(cause, ConnectionRefusedError):
        return "connection refused", "Is a Redis server running there?"
    if isinstance(exc, RedisConnectionError) and isinstance(cause, socket.gaierror):
        return f"unknown host ({cause.strerror})", "Is the host name right?"
    if isinstance(exc, ResponseError):
        return f"Redis refused a command: {exc}", "May this user run ZREM (its ACL)?"
    return str(exc), "Is a Redis server running there?"


async def check_redis(url: str, *, source: str = "") -> None:
    """Raise :class:`RedisUnavailable` unless ``url`` answers a command within CHECK_TIMEOUT.

    ``source`` says where the URL came from (``"$REDIS_URL"``), for the message.
    """
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            # reconnect_timeout=0: report the first failed attempt instead of
            # waiting out what could be a short outage (the server's layer waits).
            async with open_redis_layer(hosts=[{"address": url, "reconnect_timeout": 0}]) as layer:
                # One harmless round trip: a connection is made, authenticated and
                # used (leaving a group nobody is in changes nothing).
                await layer.group_discard("chat.startup-check", "specific.check!startup")
    except (RedisError, ConfigurationError, TimeoutError) as exc:
        why, hint = _reason(exc, CHECK_TIMEOUT)
        where = f"{redacted(url)} ({source})" if source else redacted(url)
        raise RedisUnavailable(where, why, hint) from None


def require_redis(url: str, program: str, *, source: str = "$REDIS_URL", hint: str = "") -> None:
    """Exit with status 1 and one line on stderr unless ``url`` can be used.

    For start-up code that is not async, or runs inside a server's event loop
    (an ASGI module imported by uvicorn): the check runs in a thread of its own.
    ``hint`` is appended to the line (another thing to try, as a sentence).
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(anyio.run, lambda: check_redis(url, source=source))
    try:
        future.result()
    except RedisUnavailable as exc:
        print(f"{program}: {exc} {hint}".rstrip(), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
