"""The queue layer's counters, and the snapshot of them it hands out.

Owns :class:`Counters` (plain integers the layer, its readers and its
receivers bump as things happen: no locking, no I/O) and
:class:`LayerStatistics`, the frozen snapshot
:meth:`~anyio_layer.queue.layer.QueueLayer.statistics` returns. Must not
decide anything: what counts as what is decided where it is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters", "LayerStatistics"]


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """A snapshot of a layer's counters since it was opened."""

    #: Messages accepted by ``send()``.
    messages_sent: int
    #: Messages handed to callers of ``receive()``.
    messages_received: int
    #: ``send()`` calls refused with ChannelFull.
    channel_full: int
    #: ``group_send()`` calls, and copies they wrote (one per Redis key).
    group_sends: int
    group_deliveries: int
    #: Group members skipped because their channel was at capacity.
    group_skipped_over_capacity: int
    #: Messages this layer saw dropped for outliving ``expiry``: pruned by a send,
    #: popped too late, or aged out of a local buffer. (Keys that Redis expires
    #: whole, when nobody sent to them for ``expiry`` seconds, are not counted.)
    expired: int
    #: Oldest local messages dropped because a consumer's buffer was full.
    local_buffer_overflows: int
    #: Messages that could not be decrypted or deserialized, or that named no
    #: channel of the key they were in (all dropped), and group members that
    #: were no channel name (skipped by ``group_send()``).
    decode_errors: int
    #: Connections re-established after a failure, over all shards.
    reconnects: int
    #: Local channels with buffered messages or waiting receivers.
    local_channels: int


class Counters:
    """What one layer has counted since it was opened (see :class:`LayerStatistics`)."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.channel_full = 0
        self.group_sends = 0
        self.group_deliveries = 0
        self.group_skipped = 0
        self.expired = 0
        self.overflows = 0
        self.decode_errors = 0

    def snapshot(self, *, reconnects: int, local_channels: int) -> LayerStatistics:
        """These counts, with the two the layer reads from elsewhere."""
        return LayerStatistics(
            messages_sent=self.sent,
            messages_received=self.received,
            channel_full=self.channel_full,
            group_sends=self.group_sends,
            group_deliveries=self.group_deliveries,
            group_skipped_over_capacity=self.group_skipped,
            expired=self.expired,
            local_buffer_overflows=self.overflows,
            decode_errors=self.decode_errors,
            reconnects=reconnects,
            local_channels=local_channels,
        )
