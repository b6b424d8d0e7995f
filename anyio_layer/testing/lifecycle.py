"""Waiting for a test process, and the lifetime of handles started from async code.

Owns :func:`poll` and :func:`apoll` (call a blocking check until it answers),
:func:`managed` (launch in a worker thread, close shielded on the way out) and
:func:`close_all`. It knows no process type: anything with ``close()`` will do.
Covered by the cleanup tests of tests/test_testing.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

import anyio
import anyio.to_thread

from .errors import RedisReplyError

__all__ = ["apoll", "close_all", "managed", "poll"]

_T = TypeVar("_T")


class _Closable(Protocol):
    def close(self) -> None: ...


_Running = TypeVar("_Running", bound=_Closable)


def poll(check: Callable[[], _T | None], timeout: float, what: str) -> _T:
    """Call ``check`` until it returns something other than None, or time out."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except (OSError, RedisReplyError) as exc:
            last_error = exc
        else:
            if result is not None:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(0.02)


async def apoll(check: Callable[[], _T | None]) -> _T:
    """Async :func:`poll` without a time limit (callers use ``anyio.fail_after``)."""
    while True:
        try:
            result = await anyio.to_thread.run_sync(check)
        except (OSError, RedisReplyError):
            result = None
        if result is not None:
            return result
        await anyio.sleep(0.02)


@asynccontextmanager
async def managed(launch: Callable[[], _Running]) -> AsyncIterator[_Running]:
    """Launch in a worker thread, yield the handle, close it (shielded, in a thread) on exit."""
    # A cancellation that arrives while the worker thread launches the server
    # is delivered only after run_sync returns the handle (the thread is not
    # abandoned), so the handle is never lost.
    process = await anyio.to_thread.run_sync(launch)
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(process.close)


def close_all(processes: Iterable[_Closable]) -> None:
    """Close every process, newest first, even if some fail; re-raise the first error."""
    errors: list[BaseException] = []
    for process in reversed(list(processes)):
        try:
            process.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
