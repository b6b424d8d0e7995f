"""The Redis client the layers stand on.

* ``protocol/``: the sans-IO RESP codec (``replies``, ``encoder``, the
  ``python_parser`` and the optional ``hiredis_parser``; ``Parser`` picks one).
* ``connection``: one connection (TCP, Unix, TLS) and its handshake.
* ``pipeline``: the shared pipelined connection on an anyio stream, and the
  interface the pool needs of it; ``asyncio_pipeline`` and ``trio_pipeline``
  are its fast paths, and ``shared`` picks one for the running backend
  (``asyncio_stream``: dedicated connections under asyncio).
* ``pool``: one server's connections: the shared pipeline plus dedicated
  connections lent to one task at a time, reconnection with back-off;
  ``waiting`` is how a command waits for a connection (``reconnect_timeout``).
* ``blocking``: blocking commands on dedicated connections, and recovering one
  whose caller was cancelled without losing what it popped.
* ``sentinel``: finding a Sentinel-managed primary.
* ``config``: the frozen server descriptions; ``hosts`` parses the ``hosts``
  option into them, with ``host_options`` (an entry's connection options) and
  ``redaction`` (passwords kept out of messages).
* ``scripts``: Lua scripts identified by SHA-1.
* ``cluster/``: speaking to a Redis Cluster.

Nothing here knows about channels, groups or messages.
"""
