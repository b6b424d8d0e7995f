"""The one bridge from Django Channels' unstructured callers into the structured core.

Channels calls a layer from whatever asyncio event loop is running: daphne's
(or uvicorn's) for the life of the server, and a fresh, short-lived loop for
every ``async_to_sync`` call made from code that has no loop of its own
(management commands, Celery tasks, scripts). The core layer, on the other
hand, is an ``async with`` block whose tasks and connections belong to one
loop.

:class:`LoopRuntime` reconciles the two: it keeps **one core layer per event
loop**, hosted by one task on that loop that enters the core's ``async with``
and then waits for a stop signal. This host task is the only task in the
project that nobody awaits, and it is deliberate:

* when the loop shuts down (``asyncio.run`` and asgiref's ``async_to_sync``
  cancel the tasks still pending and wait for them), the host task is
  cancelled and the core's ``async with`` exits cleanly: its tasks stop and
  its connections close before the loop does;
* :meth:`LoopRuntime.close` stops the current loop's layer on demand.

No event loop method is patched, and layers are held in a
``WeakKeyDictionary`` keyed by loop, so a loop that is gone leaves nothing
behind. The map is guarded by a lock, so one layer object can be used from
several threads, each with its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

__all__ = ["LoopRuntime"]

L = TypeVar("L")


class _Host(Generic[L]):
    """One loop's core layer, entered and held open by one task."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[L]]) -> None:
        loop = asyncio.get_running_loop()
        self._opener = opener
        self._ready: asyncio.Future[L] = loop.create_future()
        self._stop = asyncio.Event()
        self.task = loop.create_task(self._run(), name="channels_compat layer host")

    async def _run(self) -> None:
        try:
            async with self._opener() as layer:
                self._ready.set_result(layer)
                await self._stop.wait()
        except asyncio.CancelledError:
            if not self._ready.done():
                self._ready.cancel()
            raise
        except Exception as exc:
            if self._ready.done():
                raise
            self._ready.set_exception(exc)  # raised in the callers waiting for the layer

    async def layer(self) -> L:
        # Shielded: a caller that is cancelled must not cancel the shared future.
        return await asyncio.shield(self._ready)

    @property
    def finished(self) -> bool:
        return self.task.done()

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class LoopRuntime(Generic[L]):
    """One core layer per running event loop, opened lazily by ``opener``."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[L]]) -> None:
        self._opener = opener
        self._hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Host[L]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    async def layer(self) -> L:
        """The current loop's core layer, opening it on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            host = self._hosts.get(loop)
            if host is None or host.finished:
                host = self._hosts[loop] = _Host(self._opener)
        return await host.layer()

    def current(self) -> L | None:
        """The current loop's core layer if one is open, without opening one."""
        host = self._hosts.get(asyncio.get_running_loop())
        if host is None or host.finished or not host._ready.done() or host._ready.cancelled():
            return None
        if host._ready.exception() is not None:
            return None
        return host._ready.result()

    async def close(self) -> None:
        """Close the current loop's core layer (a later call opens a new one)."""
        with self._lock:
            host = self._hosts.pop(asyncio.get_running_loop(), None)
        if host is not None:
            await host.stop()

    def open_loops(self) -> int:
        """How many event loops have a core layer open (for tests and diagnostics)."""
        with self._lock:
            return sum(not host.finished for host in self._hosts.values())
