"""Opening the shared pipelined connection: the one place that picks its implementation.

Owns :func:`open_shared_pipeline`. Under asyncio the shared connection is an
``asyncio.Protocol`` with no task (:mod:`.asyncio_pipeline`); under trio it
runs on trio's own socket primitives (:mod:`.trio_pipeline`), or on an anyio
stream where there is no plain socket (TLS: :mod:`.pipeline`), with its reader
task started in the task group it is given. It must not keep state: the pool
owns the pipeline it returns, and decides when to open another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio.abc

from .asyncio_pipeline import open_asyncio_pipeline, running_on_asyncio
from .connection import Connection, OpenStream
from .pipeline import SharedPipeline, StreamPipeline

__all__ = ["open_shared_pipeline"]


async def open_shared_pipeline(
    connect: Callable[[OpenStream | None], Awaitable[Connection]],
    on_close: Callable[[SharedPipeline], None],
    task_group: anyio.abc.TaskGroup,
    label: str,
) -> SharedPipeline:
    """Connect with ``connect`` and return the shared pipeline for the running backend.

    ``on_close`` is called once when the pipeline closes (the pool's reconnect
    accounting); a reader task, where there is one, is named after ``label``.
    """
    if running_on_asyncio():
        return await open_asyncio_pipeline(connect, on_close)
    connection = await connect(None)
    sock = connection.raw_socket()
    reader: SharedPipeline
    if sock is not None:
        # The trio fast path (anyio's only other backend): trio's socket primitives.
        from .trio_pipeline import TrioPipeline

        trio_pipeline = TrioPipeline(connection, sock, on_close)
        task_group.start_soon(trio_pipeline.read_loop, name=f"redis reader {label}")
        reader = trio_pipeline
    else:
        stream_pipeline = StreamPipeline(connection, on_close)
        task_group.start_soon(stream_pipeline.read_loop, name=f"redis reader {label}")
        reader = stream_pipeline
    return reader
