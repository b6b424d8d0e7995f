"""Waking tasks that wait for a local buffer, with each backend's own primitive.

Owns :class:`Waiters`: tasks park in :meth:`Waiters.wait` until someone calls
:meth:`Waiters.wake_all` (synchronously, from the same event loop). It is what
an ``anyio.Event`` created per wait did for :class:`~anyio_layer.common.channels.LocalBuffer`,
at a fraction of the cost on the delivery hot path: under asyncio one
``loop.create_future()`` per wait, under trio ``wait_task_rescheduled`` and
``reschedule``, instead of an anyio ``Event`` wrapping the backend's own event
(and its waiter) per wait.

Contract: a cancelled waiter stops waiting and is forgotten (a later
``wake_all`` does not count it); ``wake_all`` wakes every task waiting at that
moment, once. It must NOT know about messages or buffers: the caller re-checks
its condition after waking. Covered through the buffers by
``tests/test_queue_layer.py``, ``tests/test_pubsub_layer.py`` and the
cancellation suites, on both backends.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from sniffio import current_async_library
except ImportError:  # pragma: no cover - recent anyio no longer requires sniffio (trio does)

    def current_async_library() -> str:
        asyncio.get_running_loop()  # anyio's rule without sniffio: a running loop is asyncio
        return "asyncio"


__all__ = ["Waiters"]


class Waiters:
    """Tasks waiting for one condition; see the module docstring."""

    __slots__ = ("_asyncio", "_waiting")

    def __init__(self) -> None:
        #: asyncio futures, or trio tasks.
        self._waiting: list[Any] = []
        #: The backend, learned at the first wait (None: not known yet).
        self._asyncio: bool | None = None

    def __bool__(self) -> bool:
        return bool(self._waiting)

    async def wait(self) -> None:
        """Wait until :meth:`wake_all` is called (always suspends)."""
        on_asyncio = self._asyncio
        if on_asyncio is None:
            on_asyncio = self._asyncio = current_async_library() == "asyncio"
        if on_asyncio:
            await self._wait_asyncio()
        else:
            await self._wait_trio()

    def wake_all(self) -> None:
        """Wake every task waiting right now."""
        waiting = self._waiting
        if not waiting:
            return
        self._waiting = []
        if self._asyncio:
            for future in waiting:
                if not future.done():  # done: its waiter was cancelled
                    future.set_result(None)
        else:
            import trio.lowlevel  # trio is optional: only imported under trio

            for task in waiting:
                trio.lowlevel.reschedule(task)

    async def _wait_asyncio(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            await future
        except BaseException:
            if future in self._waiting:
                self._waiting.remove(future)
            raise

    async def _wait_trio(self) -> None:
        import trio.lowlevel  # trio is optional: only imported under trio

        task = trio.lowlevel.current_task()
        waiting = self._waiting
        waiting.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Cancelled before being woken: wake_all() has not taken the list yet.
            self._waiting.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
