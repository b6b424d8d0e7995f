"""The Redis client the layers stand on.

``protocol`` is the sans-IO RESP codec; ``connection`` opens one connection and
runs its handshake; ``pool`` shares one pipelined connection (``asyncio_pipeline``
is its asyncio fast path) and lends dedicated ones; ``hosts`` turns the ``hosts``
option into frozen configurations; ``cluster`` speaks to a Redis Cluster.
Nothing here knows about channels, groups or messages.
"""
