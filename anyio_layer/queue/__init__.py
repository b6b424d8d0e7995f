"""The queue layer: channels_redis's sorted-set channel layer, on anyio.

The package's interface is what this module exports. Inside it:

* :mod:`.factory`: :func:`open_redis_layer`, the layer's lifetime (connections,
  task group, closing).
* :mod:`.options`: every option checked into a frozen :class:`QueueOptions`
  (shared with ``channels_compat.core``).
* :mod:`.layer`: :class:`QueueLayer`, the public API and each call's contract.
* :mod:`.groups`: what ``group_add``, ``group_discard`` and ``group_send`` send.
* :mod:`.leases`: group memberships of the layer's own channels, renewed while
  they live and restored after Redis lost them.
* :mod:`.readers`: process-local buffers and the reader tasks filling them.
* :mod:`.receive`: receiving from normal channels, straight from Redis.
* :mod:`.popping`: what both pop loops share (timeouts, back-off, put-back).
* :mod:`.keyspace`: key names and where each key lives (servers or a cluster).
* :mod:`.scripts`, :mod:`.replies`, :mod:`.codec`, :mod:`.statistics`: the Lua
  scripts, reply decoders, message format and counters.
"""

from __future__ import annotations

from ..common.channels import LayerChannel
from .codec import DEFAULT_MAX_MESSAGE_SIZE
from .factory import open_queue_layer, open_redis_layer
from .keyspace import check_cluster_prefix, scan_keys, scan_pattern
from .layer import QueueLayer
from .options import QueueOptions
from .readers import DRAIN_BATCH
from .statistics import LayerStatistics

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DRAIN_BATCH",
    "LayerChannel",
    "LayerStatistics",
    "QueueLayer",
    "QueueOptions",
    "check_cluster_prefix",
    "open_queue_layer",
    "open_redis_layer",
    "scan_keys",
    "scan_pattern",
]
