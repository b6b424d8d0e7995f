"""Task-group helpers for objects that own background tasks.

Owns :func:`open_service_task_group`, the task group that the pools, the
cluster client and both layers open inside their ``async with``. It must not
start tasks itself, retry, or swallow errors: the owner decides what runs in
the group. No test of its own; every pool, cluster and layer test runs
through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc

__all__ = ["open_service_task_group"]


@contextlib.asynccontextmanager
async def open_service_task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group for background tasks that serve the ``async with`` body.

    When the body finishes, the background tasks are cancelled (they run
    forever otherwise). An exception raised by the body propagates as itself,
    not wrapped in an ``ExceptionGroup``, so ``except RedisConnectionError``
    around a layer's ``async with`` block works as users expect. Background
    tasks are written not to fail; if one does, that is a bug and surfaces as
    an exception group.
    """
    body_error: BaseException | None = None
    async with anyio.create_task_group() as task_group:
        try:
            yield task_group
        except BaseException as exc:  # re-raised below, outside the task group
            body_error = exc
        task_group.cancel_scope.cancel()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None  # break the reference cycle through the traceback
