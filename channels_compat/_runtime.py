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

Some servers stop their loop without that shutdown: daphne's Twisted reactor
stops the asyncio loop and never closes it, and daphne 4.2 may not even cancel
its application tasks (its shutdown hook raises ``KeyError`` when a connection's
application has already finished, e.g. an HTTP keep-alive connection). The
host task, the core's tasks, and the server's tasks would then stay suspended
until the interpreter's last garbage collection, after the ``_asyncio``
extension module is gone; finalizing such a coroutine can then crash CPython
3.11 before 3.11.8 with a segmentation fault (CPython gh-113566, e.g. in
``asyncio.Queue.get``, daphne's ``receive``). So at interpreter exit (``atexit``)
every loop that still hosts an open layer and is stopped but not closed is run
once more until its layer is closed (at most :data:`EXIT_TIMEOUT` seconds):
the core's tasks stop, its connections close, and the callbacks already due
on that loop run, rather than being left to interpreter teardown.

No event loop method is patched, and layers are held in a
``WeakKeyDictionary`` keyed by loop, so a loop that is gone leaves nothing
behind. The map is guarded by a lock, so one layer object can be used from
several threads, each with its own loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

__all__ = ["EXIT_TIMEOUT", "LoopRuntime"]

L = TypeVar("L")

#: Seconds a stopped loop gets at interpreter exit to close its layer.
EXIT_TIMEOUT = 5.0


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
        _RUNTIMES.add(self)

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

    def close_stopped_loops(self, timeout: float = EXIT_TIMEOUT) -> None:
        """Close the layers of loops that were stopped but not closed (blocking).

        Runs each such loop until its layer is closed, at most ``timeout``
        seconds; loops that are running or closed are left alone. Called at
        interpreter exit; see the module documentation.
        """
        with self._lock:
            hosts = list(self._hosts.items())
        for loop, host in hosts:
            if host.finished or loop.is_running() or loop.is_closed():
                continue
            with contextlib.suppress(Exception):  # best effort: the process is exiting
                loop.run_until_complete(_stop_within(host, timeout))


async def _stop_within(host: _Host[L], timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError on 3.11+
        await asyncio.wait_for(host.stop(), timeout)


_RUNTIMES: weakref.WeakSet[LoopRuntime[Any]] = weakref.WeakSet()


@atexit.register
def _close_stopped_loops() -> None:
    for runtime in list(_RUNTIMES):
        runtime.close_stopped_loops()
