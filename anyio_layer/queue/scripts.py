"""The queue layer's Lua scripts: what one send costs on the server.

Owns the server-side half of ``send()`` and ``group_send()``: each is one
script run with EVALSHA, so pruning expired messages, checking capacity,
adding the message and refreshing the key's TTL happen in one round trip and
atomically. Must not hold client-side logic; :mod:`.replies` decodes what the
scripts return. Every key one call touches is in one cluster slot (see
:mod:`.keyspace`). Covered by ``tests/test_queue_layer.py``;
``tests/test_cancellation_layer.py`` runs :data:`SEND` itself.
"""

from __future__ import annotations

from typing import Final

from ..redis.scripts import Script

__all__ = ["GROUP_SEND", "SEND"]

#: KEYS[1]: channel key. ARGV: message, score (now), prune cutoff, capacity, ttl.
#: Returns {added (0 or 1), messages pruned as expired}.
SEND: Final = Script(
    """
local pruned = redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return {0, pruned}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, pruned}
"""
)

#: KEYS: n channel keys. ARGV: n messages, n capacities, score (now), prune cutoff, ttl.
#: Returns {copies added, keys skipped because full, messages pruned as expired}.
GROUP_SEND: Final = Script(
    """
local n = #KEYS
local now, cutoff, ttl = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local added, skipped, pruned = 0, 0, 0
for i = 1, n do
    pruned = pruned + redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], ttl)
        added = added + 1
    else
        skipped = skipped + 1
    end
end
return {added, skipped, pruned}
"""
)
