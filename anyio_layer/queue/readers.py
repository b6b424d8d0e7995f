"""Process-local channels: their buffers, and the reader tasks that fill them from Redis.

Owns everything between Redis and the local buffers of one layer's
``new_channel()`` channels: one reader task per Redis key (all local channels
of one ``new_channel`` prefix share a key), started in the layer's task group
on the first ``receive()`` and cancelled when that task group ends with the
layer's ``async with`` block. A reader pops up to :data:`DRAIN_BATCH`
messages per round trip (``BZMPOP`` on Redis 7, ``BZPOPMIN`` plus
``ZPOPMIN`` on 6.2) and files each into the buffer of the channel(s) it
names; messages the layer sends to its own channels are filed here too,
without Redis. Must not hand messages to callers: ``QueueLayer.receive``
takes them from the buffers, without a checkpoint, so cancelling it never
loses one.

Back-pressure: a reader pops only while some receiver of its key waits on an
empty buffer (:class:`ReaderDemand`), so messages for consumers that are busy
stay in Redis, where the capacity check makes senders back off with
ChannelFull. Buffers are still bounded by the channel's capacity: when one
batch brings a busy consumer more than its buffer holds, the **oldest**
buffered message is dropped (as channels_redis does), but not silently: it is
logged and counted in ``LayerStatistics.local_buffer_overflows``. Blocking the
reader instead would stall every other channel of the process behind one
slow consumer. Readers retry with back-off while Redis is away and resume
without anyone calling again. When the layer closes, what is still buffered
goes back to Redis (:meth:`LocalReaders.return_unreceived`).

Hostile data: whatever another client writes into a process-local key must
not stop the reader, which serves every channel of that key. A message that
cannot be decoded (garbage, another serializer's format, another encryption
key, not a dict), or that names no channel stored under this key (a missing,
non-string or unhashable ``__asgi_channel__``), is dropped, logged and
counted in ``LayerStatistics.decode_errors``; a key of the wrong type
(``WRONGTYPE``) is waited out with back-off, like a server that is away.
Covered by ``tests/test_hostile_data.py``.

Covered by ``tests/test_queue_layer.py`` and ``tests/test_cancellation_layer.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import anyio
import anyio.abc

from ..common.channels import LocalBuffer
from ..exceptions import (
    LayerClosedError,
    MessageDecodeError,
    ProtocolError,
    RedisError,
    ResponseError,
)
from ..messages import non_local_name
from .codec import RESERVED_KEY, MessageCodec
from .keyspace import KeyServer, KeySpace
from .options import CapacityRules
from .popping import BLOCK_GRACE, BLOCK_SECONDS, REDIS_AWAY, RetryDelay, put_back
from .replies import Entry, popped_entries, popped_entry, zpopmin_entries
from .statistics import Counters

__all__ = ["DRAIN_BATCH", "LocalReaders", "ReaderDemand"]

logger = logging.getLogger("anyio_layer")

#: Most messages a process-local reader takes from Redis in one round trip.
DRAIN_BATCH: Final = 500


class ReaderDemand:
    """How many buffers of one process-local key have receivers waiting and no message."""

    __slots__ = ("_event", "_starved_ids", "starved_buffers")

    def __init__(self) -> None:
        #: Buffers of this key with a receiver waiting on no message: the reader pops while > 0.
        self.starved_buffers = 0
        self._starved_ids: set[int] = set()
        self._event = anyio.Event()

    def update(self, buffer: LocalBuffer) -> None:
        """Recount ``buffer`` after its receivers or messages changed."""
        starved = buffer.receivers > 0 and not buffer.messages
        if starved == (id(buffer) in self._starved_ids):
            return
        if starved:
            self._starved_ids.add(id(buffer))
            self.starved_buffers += 1
            self._event.set()
        else:
            self._starved_ids.discard(id(buffer))
            self.starved_buffers -= 1

    async def wait(self) -> None:
        while not self.starved_buffers:
            self._event = anyio.Event()
            await self._event.wait()


class LocalReaders:
    """One layer's local buffers (by channel name) and its reader tasks (by Redis key).

    ``buffers`` and ``demands`` are shared with the layer, whose ``receive()``
    registers its receivers in them and takes messages out of the buffers.
    """

    def __init__(
        self,
        *,
        keys: KeySpace,
        task_group: anyio.abc.TaskGroup,
        codec: MessageCodec,
        counters: Counters,
        capacities: CapacityRules,
        expiry: float,
        ttl: int,
    ) -> None:
        self._keys = keys
        self._task_group = task_group
        self._encode = codec.encode
        self._decode = codec.decode
        self._counters = counters
        self._capacities = capacities
        self._expiry = expiry
        self._ttl = ttl
        #: Local channels with buffered messages or waiting receivers.
        self.buffers: dict[str, LocalBuffer] = {}
        #: Process-local keys with a reader task, and the demand that drives it.
        self.demands: dict[str, ReaderDemand] = {}
        self._next_sweep = 0.0

    def start_reader(self, local_key: str) -> ReaderDemand:
        """Start the reader task of ``local_key`` (which has none yet); return its demand."""
        demand = self.demands[local_key] = ReaderDemand()
        self._task_group.start_soon(
            self._read, local_key, demand, name=f"anyio_layer reader {local_key}"
        )
        return demand

    def deliver(self, channels: Sequence[str], payload: bytes, now: float) -> int:
        """Put a message straight into some of the layer's own buffers; return how many took it.

        A buffer at its channel's capacity does not. The message is decoded
        from the serialized payload, once for all ``channels`` (each
        ``receive()`` copies it), so receivers get exactly what they would
        have got through Redis, independent of the sender's dict.
        """
        entry = (now, self._decode(payload))
        delivered = 0
        for channel in channels:
            buffer = self.buffers.get(channel)
            if buffer is None:
                buffer = self.buffers[channel] = LocalBuffer(self._capacities.for_channel(channel))
            if len(buffer.messages) >= buffer.capacity:
                continue
            buffer.put(entry)
            delivered += 1
            demand = self.demands.get(non_local_name(channel))
            if demand is not None:
                demand.update(buffer)
        return delivered

    def clear(self) -> None:
        """Drop every buffered message (receivers keep waiting)."""
        for name, buffer in self.buffers.items():
            buffer.messages.clear()
            demand = self.demands.get(non_local_name(name))
            if demand is not None:
                demand.update(buffer)

    async def return_unreceived(self) -> None:
        """Put messages buffered for local channels back in Redis, each at its original score.

        For after the readers are stopped, so that another layer with the same
        client prefix gets them. A key whose put-back fails loses its messages
        (logged).
        """
        by_key: dict[str, list[Entry]] = {}
        for name, buffer in self.buffers.items():
            entries = by_key.setdefault(non_local_name(name), [])
            for score, message in buffer.messages:
                entries.append((self._encode({**message, RESERVED_KEY: name}), score))
            buffer.messages.clear()
        for local_key, entries in by_key.items():
            if entries:
                key, server = self._keys.channel(local_key)
                try:
                    await put_back(server, key, entries, self._ttl)
                except (RedisError, LayerClosedError) as exc:
                    logger.warning("lost %d buffered messages on close: %s", len(entries), exc)

    async def _read(self, local_key: str, demand: ReaderDemand) -> None:
        """Move messages for this layer's local channels from Redis into their buffers.

        The reader pops only while some receiver waits on an empty buffer.
        Messages for consumers that are busy stay in Redis, where the
        capacity check makes senders back off with ChannelFull, as with
        channels_redis.
        """
        key, server = self._keys.channel(local_key)
        use_bzmpop = True

        async def on_cancelled_reply(reply: object) -> None:
            entries = popped_entries(reply) if use_bzmpop else [popped_entry(reply)]
            await put_back(server, key, entries, self._ttl)

        retry = RetryDelay()
        while True:
            await demand.wait()
            try:
                with anyio.fail_after(BLOCK_SECONDS + BLOCK_GRACE):
                    if use_bzmpop:
                        try:
                            reply = await server.execute_blocking(
                                "BZMPOP",
                                BLOCK_SECONDS,
                                1,
                                key,
                                "MIN",
                                "COUNT",
                                DRAIN_BATCH,
                                on_cancelled_reply=on_cancelled_reply,
                            )
                        except ResponseError as exc:
                            if "unknown command" not in exc.message.lower():
                                raise
                            use_bzmpop = False  # Redis < 7.0
                            continue
                        entries = popped_entries(reply)
                    else:
                        entries = await self._pop_legacy(server, key, on_cancelled_reply)
            except (*REDIS_AWAY, ProtocolError) as exc:  # a server sending garbage: wait
                await retry.wait(f"reader for {local_key!r}", exc)
                continue
            except ResponseError as exc:
                if exc.code != "WRONGTYPE":
                    raise
                # Another client put something else under the key: wait until it is gone.
                await retry.wait(f"reader for {local_key!r}", exc)
                continue
            retry.reset()
            self._dispatch(local_key, entries, demand)

    async def _pop_legacy(
        self,
        server: KeyServer,
        key: bytes,
        on_cancelled_reply: Callable[[object], Awaitable[None]],
    ) -> list[Entry]:
        """BZPOPMIN for one message, then ZPOPMIN for whatever else is waiting."""
        first = popped_entry(
            await server.execute_blocking(
                "BZPOPMIN", key, BLOCK_SECONDS, on_cancelled_reply=on_cancelled_reply
            )
        )
        if first is None:
            return []
        with anyio.CancelScope(shield=True):  # popped messages must reach the buffers
            rest = await server.execute("ZPOPMIN", key, DRAIN_BATCH - 1)
        return [first, *zpopmin_entries(rest)]

    def _dispatch(self, local_key: str, entries: Iterable[Entry], demand: ReaderDemand) -> None:
        cutoff = time.time() - self._expiry
        for member, score in entries:
            if score < cutoff:
                self._counters.expired += 1
                continue
            try:
                message = self._decode(member)
            except MessageDecodeError as exc:
                logger.error("dropping a message for %r that cannot be decoded: %s", local_key, exc)
                continue
            names = message.pop(RESERVED_KEY, None)
            if isinstance(names, str):
                names = [names]
            if isinstance(names, list):
                # Only names stored under this key: anything else came from a foreign writer.
                names = [n for n in names if isinstance(n, str) and non_local_name(n) == local_key]
            if not isinstance(names, list) or not names:
                self._counters.decode_errors += 1
                logger.error("dropping a message in %r that names no local channel", local_key)
                continue
            entry = (score, message)  # one for all its channels: each receive() copies it
            for name in names:
                buffer = self.buffers.get(name)
                if buffer is None:
                    buffer = self.buffers[name] = LocalBuffer(self._capacities.for_channel(name))
                fits = buffer.put(entry)
                demand.update(buffer)
                if not fits:
                    self._counters.overflows += 1
                    logger.warning(
                        "local buffer of %r is full (%d messages): dropped its oldest message",
                        name,
                        buffer.capacity,
                    )
        self._sweep(cutoff)

    def sweep_soon(self) -> None:
        """Run the sweep if it is due (for ``receive()``, which leaves idle buffers in place)."""
        if time.monotonic() >= self._next_sweep:
            self._sweep(time.time() - self._expiry)

    def _sweep(self, cutoff: float) -> None:
        """Forget idle buffers and expired messages nobody receives (at most once a second).

        A buffer with no receiver and no message is kept until then, so a
        consumer that calls ``receive()`` again right away finds it.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for name, buffer in list(self.buffers.items()):
            if buffer.receivers:
                continue
            if buffer.messages and buffer.messages[0][0] < cutoff:
                self._counters.expired += buffer.drop_expired(cutoff)
            if not buffer.messages:
                del self.buffers[name]
