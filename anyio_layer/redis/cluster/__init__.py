"""A Redis Cluster client built on the per-server :class:`~anyio_layer.redis.pool.ConnectionPool`.

Redis Cluster splits the key space into 16384 *hash slots*; each slot is
served by one primary (and copied to its replicas). :func:`key_slot` computes
a key's slot exactly as Redis does, and :class:`ClusterClient` sends every
command to the primary that serves the slot of the key the caller names::

    async with open_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]) as cluster:
        await cluster.execute("SET", "user:1", b"...", key="user:1")
        await cluster.execute("GET", "user:1", key="user:1", idempotent=True)
        await cluster.evalsha(script, keys=["{room}:a", "{room}:b"], args=[...])

There is one connection pool per node, opened lazily inside the client's own
task group and closed when the ``async with`` block of :func:`open_cluster`
ends. The connection options (TLS, username/password, timeouts) of the first
seed, or the ``options`` argument, apply to every node.

Other packages import from here, not from the modules, which are:

* ``slots``: :func:`key_slot`, :func:`slot_for_keys` (pure hashing);
* ``topology``: parsing ``CLUSTER SHARDS``/``CLUSTER SLOTS``/``MOVED`` into the
  slot map (pure, no I/O);
* ``discovery``: asking nodes for the topology, lazily and after changes;
* ``retry``: the retry budget (``TRYAGAIN``, ``CLUSTERDOWN``, ``LOADING``);
* ``nodes``: one pool and one script cache per node, one round trip to a node;
* ``routing``: sending each command to its slot's node, following
  ``MOVED``/``ASK`` and retrying (the rules are in its docstring);
* ``client``: :class:`ClusterClient` and :func:`open_cluster`.
"""

from ...exceptions import (
    ClusterClientError,
    ClusterUnavailableError,
    CrossSlotError,
    TooManyRedirectionsError,
)
from .client import ClusterClient, ClusterStatistics, open_cluster
from .slots import CLUSTER_SLOTS, key_slot, slot_for_keys

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterClient",
    "ClusterClientError",
    "ClusterStatistics",
    "ClusterUnavailableError",
    "CrossSlotError",
    "TooManyRedirectionsError",
    "key_slot",
    "open_cluster",
    "slot_for_keys",
]
