"""Django Channels backends (drop-in for ``channels_redis``) over the anyio core."""

from __future__ import annotations
