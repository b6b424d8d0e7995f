"""Outage bookkeeping of the pub/sub layer: ``on_disconnect`` / ``on_reconnect``.

:class:`Outages` is told which subscriptions were lost, restored or
abandoned (through the layer's
:class:`~anyio_layer.pubsub.placement.SubscriptionEvents`), groups losses into
outages, and tells every local channel listening on a lost name once per
outage: one ``{"type": on_disconnect}`` when it starts, one
``{"type": on_reconnect}`` once every name lost in it is back (none if one
of them was abandoned). It counts disconnects and reconnects.

It must NOT subscribe or reconnect anything (placement and the subscribers
do) nor await: it is called from the subscribers' reader tasks. Covered by
``tests/test_pubsub_layer.py`` and ``tests/test_pubsub_cluster.py``.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

from .delivery import LocalDelivery
from .statistics import Counters

__all__ = ["Outages"]


class _Outage:
    """Names whose subscription was lost together, and the channels told about it."""

    __slots__ = ("abandoned", "cause", "listeners", "names")

    def __init__(self, cause: object) -> None:
        self.cause = cause
        self.names: set[str] = set()
        self.listeners: dict[str, None] = {}
        #: Some name of it could not be subscribed again: no on_reconnect.
        self.abandoned = False


class Outages:
    """Subscriptions lost and not back yet, and the listeners told about them."""

    def __init__(
        self,
        delivery: LocalDelivery,
        counters: Counters,
        on_disconnect: str | None,
        on_reconnect: str | None,
    ) -> None:
        self._delivery = delivery
        self._counters = counters
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        #: Subscriptions lost and not back yet, each in the outage that lost it.
        self._lost: dict[str, _Outage] = {}
        #: Outages not over yet, by cause (when they have one).
        self._outages: dict[object, _Outage] = {}

    def names_lost(self, names: Collection[str], cause: object = None) -> None:
        """Subscriptions of ``names`` were lost: an outage, announced to their listeners.

        Names already lost (in an outage not over yet) are not announced again.
        Losses with the same ``cause`` (not None) while its outage lasts are
        one outage: channels already told about it are not told again.
        """
        lost = self._lost
        new = [name for name in names if name not in lost]
        if not new:
            return
        outage = self._outages.get(cause) if cause is not None else None
        if outage is None:
            outage = _Outage(cause)
            if cause is not None:
                self._outages[cause] = outage
            self._counters.disconnects += 1
        outage.names.update(new)
        for name in new:
            lost[name] = outage
        listeners = [c for c in self._delivery.listeners_of(new) if c not in outage.listeners]
        outage.listeners.update(dict.fromkeys(listeners))
        if self.on_disconnect:
            now = time.monotonic()
            for channel in listeners:
                self._delivery.put(channel, (now, {"type": self.on_disconnect}))

    def names_restored(self, names: Iterable[str]) -> None:
        """``names`` are subscribed again (or no longer wanted); end the outages they complete."""
        self._end_outages(names, abandoned=False)

    def names_abandoned(self, names: Iterable[str]) -> None:
        """``names`` will not be subscribed again (the server refused): no on_reconnect for them."""
        self._end_outages(names, abandoned=True)

    def _end_outages(self, names: Iterable[str], *, abandoned: bool) -> None:
        lost = self._lost
        if not lost:
            return
        for name in names:
            outage = lost.pop(name, None)
            if outage is None:
                continue
            outage.names.discard(name)
            outage.abandoned = outage.abandoned or abandoned
            if outage.names:
                continue
            if outage.cause is not None and self._outages.get(outage.cause) is outage:
                del self._outages[outage.cause]
            if outage.abandoned:
                continue
            self._counters.reconnects += 1
            if self.on_reconnect:
                now = time.monotonic()
                for channel in outage.listeners:
                    if channel in self._delivery.channels:
                        self._delivery.put(channel, (now, {"type": self.on_reconnect}))
