"""The retry budget: how long, and with which pauses, the cluster client retries a command.

Owns :data:`RETRY_CODES` (the error replies that mean "the command did not run;
try again in a moment") and :class:`RetryBudget` (growing pauses within
``retry_timeout`` seconds of the first failure). It decides nothing about
*whether* a command may be retried (that is the router's rule: only after
those replies, or after a connection error for idempotent commands) and
sends nothing. Exercised by the failover and ``CLUSTERDOWN`` tests of
``tests/test_cluster_client.py``.
"""

from __future__ import annotations

from typing import Final

import anyio

__all__ = ["RETRY_CODES", "RetryBudget"]

#: Error codes meaning "the command did not run; try again in a moment".
RETRY_CODES: Final = frozenset({"TRYAGAIN", "CLUSTERDOWN", "LOADING"})
_MIN_BACKOFF: Final = 0.02
_MAX_BACKOFF: Final = 0.5


class RetryBudget:
    """Growing pauses between retries, within ``timeout`` seconds of the first failure."""

    __slots__ = ("_deadline", "_delay", "_timeout")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadline: float | None = None
        self._delay = _MIN_BACKOFF

    def next_delay(self) -> float | None:
        """The pause before the next attempt, or None when the time is up."""
        now = anyio.current_time()
        if self._deadline is None:
            self._deadline = now + self._timeout
        remaining = self._deadline - now
        if remaining <= 0:
            return None
        delay = min(self._delay, remaining)
        self._delay = min(self._delay * 2, _MAX_BACKOFF)
        return delay
