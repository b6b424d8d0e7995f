"""The pub/sub layer's counters, and the snapshot of them that ``statistics()`` returns.

Owns only the numbers: the layer, its delivery and its outage bookkeeping
each increment their own counters of one shared :class:`Counters`. Must NOT
hold any other state. Covered by ``tests/test_pubsub_layer.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters", "PubSubStatistics"]


@dataclass(frozen=True, slots=True)
class PubSubStatistics:
    """A snapshot of a pub/sub layer's counters since it was opened."""

    #: Messages published by ``send()`` and ``group_send()``.
    messages_sent: int
    group_sends: int
    #: Messages handed to callers of ``receive()``.
    messages_received: int
    #: Messages that arrived for a channel or group this process no longer has.
    unroutable: int
    #: Oldest messages dropped because a consumer's buffer was full.
    local_buffer_overflows: int
    #: Messages that could not be decrypted or deserialized.
    decode_errors: int
    #: Subscription losses (a subscriber connection dropped, or on a cluster a
    #: slot moved away), and recoveries from them with every lost subscription
    #: restored: one each per event, however many channels it concerned.
    disconnects: int
    reconnects: int
    #: Redis channels (local channels and groups) currently subscribed.
    subscriptions: int
    #: Subscriber connections currently open (one per server or cluster node in use).
    subscriber_connections: int


class Counters:
    """The running counts behind :class:`PubSubStatistics`."""

    def __init__(self) -> None:
        self.sent = 0
        self.group_sends = 0
        self.received = 0
        self.unroutable = 0
        self.overflows = 0
        self.decode_errors = 0
        self.disconnects = 0
        self.reconnects = 0
