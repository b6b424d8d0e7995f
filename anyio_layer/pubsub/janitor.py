"""The idle-channel janitor: closes local channels nobody has received from for a while.

Owns the policy loop only: how often to look, and which channels are idle
enough to close. The layer keeps the ``idle_since`` map (on its ``receive()``
path) and starts :func:`close_idle_channels` in its task group on first use
when ``idle_channel_timeout`` is set. Must NOT touch buffers, groups or
subscriptions itself: closing goes through the layer's ``close_channel()``.
Covered by ``tests/test_pubsub_layer.py`` and ``tests/test_channels_compat.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from ..exceptions import RedisConnectionError

__all__ = ["close_idle_channels"]

logger = logging.getLogger("anyio_layer")


async def close_idle_channels(
    idle_since: dict[str, float],
    idle_timeout: float,
    close_channel: Callable[[str], Awaitable[None]],
) -> None:
    """Close channels that had no receiver for ``idle_timeout`` seconds (runs until cancelled).

    ``idle_since`` maps each channel without a receiver to when it became
    idle (``time.monotonic()``); its owner updates it, this only reads it.
    """
    while True:
        await anyio.sleep(max(idle_timeout / 4, 0.01))
        cutoff = time.monotonic() - idle_timeout
        for channel in [name for name, since in idle_since.items() if since < cutoff]:
            if idle_since.get(channel, cutoff + 1) >= cutoff:
                continue  # a receiver arrived while an earlier channel was closed
            try:
                await close_channel(channel)
            except RedisConnectionError as exc:  # unsubscribed on reconnect anyway
                logger.debug("closing idle channel %r: %s", channel, exc)
