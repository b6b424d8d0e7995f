"""Waking tasks that wait for a local buffer, with each backend's own primitive.

Owns :class:`Waiters`: tasks park in :meth:`Waiters.wait` until someone calls
:meth:`Waiters.wake_all` (synchronously, from the same event loop). It is what
an ``anyio.Event`` created per wait did for :class:`~anyio_layer.common.channels.LocalBuffer`,
at a fraction of the cost on the delivery hot path: under asyncio one
``loop.create_future()`` per wait, under trio ``wait_task_rescheduled`` and
``reschedule``, instead of an anyio ``Event`` wrapping the backend's own event
(and its waiter) per wait.

A waiting task holds as few objects as possible, because with a thousand
receivers waiting (a group's local members) every object each one holds is
traversed by every garbage collection of the youngest generation, which in
fan-out happens every few hundred deliveries: :meth:`Waiters.wait` is not a
coroutine (the caller awaits the backend's own awaitable directly), and under
trio the abort callback is made once per waiting task, not once per wait.

Contract: a cancelled waiter stops waiting and is forgotten (a later
``wake_all`` does not count it); ``wake_all`` wakes every task waiting at that
moment, once. It must NOT know about messages or buffers: the caller re-checks
its condition after waking. Covered through the buffers by
``tests/test_queue_layer.py``, ``tests/test_pubsub_layer.py`` and the
cancellation suites, on both backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final

try:
    from sniffio import current_async_library
except ImportError:  # pragma: no cover - recent anyio no longer requires sniffio (trio does)

    def current_async_library() -> str:
        asyncio.get_running_loop()  # anyio's rule without sniffio: a running loop is asyncio
        return "asyncio"


__all__ = ["Waiters"]

#: Futures an asyncio Waiters holds before the first sweep of cancelled ones.
_PRUNE_AT: Final = 16


class Waiters:
    """Tasks waiting for one condition; see the module docstring."""

    __slots__ = ("_abort", "_asyncio", "_prune_at", "_waiting")

    def __init__(self) -> None:
        #: asyncio futures, or trio tasks (always this list: abort callbacks hold it).
        self._waiting: list[Any] = []
        #: The backend, learned at the first wait (None: not known yet).
        self._asyncio: bool | None = None
        #: Under trio, the last waiting task and its abort callback (made once
        #: per task, not per wait: a buffer is usually read by one task).
        self._abort: tuple[Any, Any] | None = None
        #: Under asyncio, how many futures to hold before dropping cancelled ones.
        self._prune_at = _PRUNE_AT

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def wait(self) -> Awaitable[None]:
        """An awaitable that returns once :meth:`wake_all` is called (it always suspends).

        Not a coroutine itself: the caller awaits the backend's own awaitable
        (a future, or trio's ``wait_task_rescheduled``), one coroutine fewer
        per wait on every delivery's path.
        """
        on_asyncio = self._asyncio
        if on_asyncio is None:
            on_asyncio = self._asyncio = current_async_library() == "asyncio"
        waiting = self._waiting
        if on_asyncio:
            if len(waiting) >= self._prune_at:
                # A cancelled waiter's future is done; drop those now and then.
                waiting[:] = [future for future in waiting if not future.done()]
                self._prune_at = max(_PRUNE_AT, 2 * len(waiting))
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting.append(future)
            return future
        trio = _trio()
        task = trio.current_task()
        cached = self._abort
        if cached is not None and cached[0] is task:
            abort = cached[1]
        else:
            abort = self._abort_for(task)
            self._abort = (task, abort)
        waiting.append(task)
        return trio.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def wake_all(self) -> None:
        """Wake every task waiting right now."""
        waiting = self._waiting
        if not waiting:
            return
        woken = waiting.copy()
        waiting.clear()
        if self._asyncio:
            for future in woken:
                if not future.done():  # done: its waiter was cancelled
                    future.set_result(None)
        else:
            reschedule = _trio().reschedule
            for task in woken:
                reschedule(task)

    def _abort_for(self, task: Any) -> Any:
        trio = _trio()
        waiting = self._waiting  # not self: no reference cycle through the cached callback

        def abort(_: object) -> Any:
            # Cancelled before being woken: wake_all() has not taken it off the list yet.
            waiting.remove(task)
            return trio.Abort.SUCCEEDED

        return abort


def _trio() -> Any:
    """``trio.lowlevel`` (trio is optional: only imported under trio)."""
    global _trio_lowlevel
    if _trio_lowlevel is None:
        import trio.lowlevel

        _trio_lowlevel = trio.lowlevel
    return _trio_lowlevel


_trio_lowlevel: Any = None
