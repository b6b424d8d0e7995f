"""A Redis-backed channel layer, native to anyio: runs under trio and asyncio alike."""

from __future__ import annotations

__version__ = "0.1.0"
