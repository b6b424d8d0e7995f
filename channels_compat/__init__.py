"""Django Channels backends over the anyio core: a drop-in for ``channels_redis``.

Replace ``channels_redis`` with ``channels_compat`` in ``CHANNEL_LAYERS`` (and
in imports of its public modules) and change nothing else::

    "BACKEND": "channels_compat.core.RedisChannelLayer"
    "BACKEND": "channels_compat.pubsub.RedisPubSubChannelLayer"
"""

from __future__ import annotations

from .core import RedisChannelLayer
from .pubsub import RedisPubSubChannelLayer

__all__ = ["RedisChannelLayer", "RedisPubSubChannelLayer"]
