"""Exponential back-off: the one schedule every loop that waits for Redis follows.

Owns the arithmetic only: a delay that starts at :data:`FIRST_DELAY`, doubles
on every failure up to :data:`MAX_DELAY`, and starts again after a success.
It must not sleep, log or know what failed; its users do. They are the
connection pool (when the next connection attempt may be made), subscriber
connections and the cluster placer (when to reconnect, re-place), and the
queue layer's pop loops (when to pop again).
"""

from __future__ import annotations

from typing import Final

__all__ = ["FIRST_DELAY", "MAX_DELAY", "Backoff"]

#: The first pause after a failure.
FIRST_DELAY: Final = 0.05
#: The longest pause: short, so that whoever waits gets going soon after Redis is back.
MAX_DELAY: Final = 0.5


class Backoff:
    """Pauses between attempts: 0 until something fails, then doubling to a cap."""

    __slots__ = ("delay",)

    def __init__(self) -> None:
        #: The pause before the next attempt (0: the last attempt succeeded).
        self.delay = 0.0

    def failed(self) -> float:
        """Count a failure; return the pause to take before trying again."""
        self.delay = min(max(self.delay * 2, FIRST_DELAY), MAX_DELAY)
        return self.delay

    def succeeded(self) -> None:
        """Count a success: the next failure pauses :data:`FIRST_DELAY` again."""
        self.delay = 0.0
