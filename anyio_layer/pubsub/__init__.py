"""The pub/sub layer: channels_redis's PUBLISH/SUBSCRIBE channel layer, on anyio.

How it behaves (delivery, Redis Cluster, ``on_disconnect`` / ``on_reconnect``,
cancellation) is in :mod:`anyio_layer.pubsub.layer`. Inside the package:

* ``layer``: the public :class:`PubSubLayer` API; ``factory``:
  :func:`open_pubsub_layer`, which owns its pools and task group;
* ``delivery``: filing published messages into local buffers (the hot path);
  ``outages``: lost and restored subscriptions, and the messages announcing
  them; ``janitor``: closing idle channels; ``statistics``: the counters;
* ``placement`` (independent servers) and ``cluster_placement`` (Redis
  Cluster): which subscriber connection carries which name, joined to the
  layer by ``SubscriptionEvents``; ``subscriber``: a subscriber connection's
  reader task; ``subscriber_protocol``: its sans-IO reply matching.
"""

from .factory import DEFAULT_MAX_MESSAGE_SIZE, open_pubsub_layer
from .layer import PubSubLayer
from .statistics import PubSubStatistics

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "PubSubLayer", "PubSubStatistics", "open_pubsub_layer"]
