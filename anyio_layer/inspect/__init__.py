"""Look inside a deployment's Redis: groups, channel backlogs, process keys, what looks dead.

Read-only, and built for production key spaces: keys are found with
``SCAN`` (never ``KEYS``) on every server, or on every primary of a Redis
Cluster, and read in one pipeline per ``SCAN`` batch.

* :mod:`anyio_layer.inspect.scan` reads a :class:`Snapshot` (async, under
  asyncio or trio): :func:`read_snapshot`.
* :mod:`anyio_layer.inspect.report` turns a snapshot into the reports the
  command prints (JSON-ready dicts): groups, channels, processes, dead, summary.
* :mod:`anyio_layer.inspect.cli` is ``python -m anyio_layer`` / ``anyio-layer``.

From Python::

    from anyio_layer.inspect import read_snapshot, report

    snapshot = await read_snapshot(["redis://localhost:6379"], prefix="asgi")
    print(report.summary(snapshot))
"""

from __future__ import annotations

from . import report
from .scan import ChannelInfo, GroupInfo, Snapshot, read_snapshot

__all__ = ["ChannelInfo", "GroupInfo", "Snapshot", "read_snapshot", "report"]
