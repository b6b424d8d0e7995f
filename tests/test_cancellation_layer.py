"""The queue layer's cancellation contract (``anyio_layer.queue.layer``), under asyncio and trio.

* Cancelling ``receive()`` at any moment loses no message that ``send()``
  accepted and delivers none twice: process-local channels (one reader task
  per Redis key, local buffers), normal channels (``BZPOPMIN`` per receive,
  put back at the original score when a pop completes for a cancelled
  receiver) and ``group_send`` fan-out.
* Per channel (and per sender), messages arrive in the order they were sent.
* Cancelling ``send()`` / ``group_send()`` either sent the message or did not;
  it never corrupts the shared connection.
* Afterwards no request is pending, no connection is lent out, and the
  server has no blocked client once the layer has exited.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from anyio_layer.exceptions import ChannelFull
from anyio_layer.queue import QueueLayer, open_redis_layer
from anyio_layer.queue.codec import RESERVED_KEY
from anyio_layer.queue.scripts import SEND as _SEND
from anyio_layer.redis.pool import ConnectionPool
from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio

#: Timeouts around ``receive()``: 0 cancels at the first checkpoint, the
#: larger ones usually let it finish; in between they land at random moments.
RECEIVE_TIMEOUTS = (0, 0, 0.00001, 0.0001, 0.0003, 0.001, 0.002, 0.005, 0.02)
#: Timeouts around ``send()`` / ``group_send()``.
SEND_TIMEOUTS = (0, 0.00001, 0.00005, 0.0001, 0.0003, 0.001, 0.005)
#: High enough that no send is refused and no local buffer overflows.
CAPACITY = 100_000
#: Bound on every stress phase (they take about a second): a lost message makes
#: receivers wait forever; the phase is then stopped and the checks name what is missing.
PHASE_TIMEOUT = 20

MessageId = tuple[int, int]  # (sender, sequence number)


def blocked_clients(server: RedisServer) -> int:
    return int(server.info("clients")["blocked_clients"])


async def settle(layer: QueueLayer) -> None:
    """Wait until no request is pending and only the local readers hold connections."""
    pools = layer._keys.pools
    with anyio.fail_after(5):
        while any(
            pool.statistics().pipeline_pending
            or pool.statistics().connections_in_use > len(layer._readers)
            for pool in pools
        ):
            await anyio.sleep(0.01)
    for pool in pools:
        stats = pool.statistics()
        assert stats.pipeline_pending == 0
        # At most one per reader task (a reader with no demand holds none).
        assert stats.connections_in_use <= len(layer._readers)
        assert stats.reconnects == 0
        assert stats.connect_failures == 0


@contextlib.asynccontextmanager
async def checked_layer(
    redis_url: str, redis_server: RedisServer, *, outermost: bool = True, **options: Any
) -> AsyncIterator[QueueLayer]:
    """``open_redis_layer`` that checks, when the body succeeds, that nothing leaked.

    The server-wide check (no blocked client left) is only meaningful for the
    outermost of nested layers: pass ``outermost=False`` for the inner ones.
    """
    options.setdefault("capacity", CAPACITY)
    async with open_redis_layer(hosts=[redis_url], **options) as layer:
        pools = layer._keys.pools
        yield layer
        await settle(layer)
        statistics = layer.statistics()
        assert statistics.local_buffer_overflows == 0
        assert statistics.decode_errors == 0
        assert statistics.expired == 0
    await assert_closed_cleanly(pools, redis_server if outermost else None)


async def assert_closed_cleanly(
    pools: Sequence[ConnectionPool], server: RedisServer | None
) -> None:
    """After the layer exited: every connection closed, no blocked client left on the server."""
    for pool in pools:
        stats = pool.statistics()
        assert stats.pipeline_pending == 0
        assert stats.connections_in_use == 0
        assert stats.idle_connections == 0
        assert not stats.pipeline_connected
        assert stats.connections_opened == stats.connections_closed
    if server is None:
        return
    with anyio.fail_after(5):
        while await anyio.to_thread.run_sync(blocked_clients, server):
            await anyio.sleep(0.01)


async def pause(rng: random.Random) -> None:
    """Sometimes yield, sometimes sleep a little, so that tasks interleave differently."""
    roll = rng.random()
    if roll < 0.1:
        await anyio.sleep(rng.choice((0.0005, 0.001, 0.003)))
    elif roll < 0.4:
        await anyio.lowlevel.checkpoint()


def assert_in_order_exactly_once(
    received: Sequence[MessageId], accepted: dict[int, list[int]], where: str
) -> None:
    """``received`` holds each accepted message once, each sender's in sending order."""
    duplicates = [item for item, count in Counter(received).items() if count > 1]
    assert not duplicates, f"{where}: received twice: {duplicates[:10]}"
    by_sender: dict[int, list[int]] = {sender: [] for sender in accepted}
    for sender, number in received:
        by_sender.setdefault(sender, []).append(number)
    for sender, numbers in by_sender.items():
        expected = accepted.get(sender, [])
        missing = sorted(set(expected) - set(numbers))
        unexpected = sorted(set(numbers) - set(expected))
        assert not missing, f"{where}: sender {sender} lost {len(missing)}: {missing[:10]}"
        assert not unexpected, f"{where}: sender {sender} never sent {unexpected[:10]}"
        assert numbers == expected, f"{where}: sender {sender}'s messages arrived out of order"


@pytest.mark.parametrize("path", ["redis", "memory"])
async def test_local_channels_lose_and_duplicate_nothing_under_cancelled_receives(
    redis_url: str, redis_server: RedisServer, path: str
) -> None:
    """``redis``: sent by another layer (another process); ``memory``: by the receiving layer."""
    n_channels, senders_per_channel, per_sender = 4, 2, 600
    cancelled = completed = refused = 0
    async with (
        checked_layer(redis_url, redis_server) as layer,
        checked_layer(redis_url, redis_server, outermost=False) as other,
    ):
        sending = other if path == "redis" else layer
        channels = [await layer.new_channel() for _ in range(n_channels)]
        accepted = {ch: {s: [] for s in range(senders_per_channel)} for ch in channels}
        received: dict[str, list[MessageId]] = {ch: [] for ch in channels}
        senders_running = n_channels * senders_per_channel

        async def sender(channel: str, sender_id: int, seed: int) -> None:
            nonlocal refused, senders_running
            rng = random.Random(seed)
            for number in range(per_sender):
                try:
                    await sending.send(channel, {"type": "t", "s": sender_id, "n": number})
                except ChannelFull:
                    refused += 1
                else:
                    accepted[channel][sender_id].append(number)
                await pause(rng)
            senders_running -= 1

        def all_received(channel: str) -> bool:
            total = sum(len(numbers) for numbers in accepted[channel].values())
            return not senders_running and len(received[channel]) >= total

        async def receiver(channel: str, seed: int) -> None:
            nonlocal cancelled, completed
            rng = random.Random(seed)
            while not all_received(channel):
                with anyio.move_on_after(rng.choice(RECEIVE_TIMEOUTS)) as scope:
                    message = await layer.receive(channel)
                    received[channel].append((message["s"], message["n"]))
                    completed += 1
                if scope.cancelled_caught:
                    cancelled += 1

        with anyio.move_on_after(PHASE_TIMEOUT) as phase:
            async with anyio.create_task_group() as tg:
                for index, channel in enumerate(channels):
                    tg.start_soon(receiver, channel, index)
                    for sender_id in range(senders_per_channel):
                        tg.start_soon(sender, channel, sender_id, 100 * index + sender_id)

        for channel in channels:
            assert_in_order_exactly_once(received[channel], accepted[channel], channel)
        assert not phase.cancelled_caught, f"the phase did not finish within {PHASE_TIMEOUT}s"
        assert refused == 0
        assert completed == n_channels * senders_per_channel * per_sender
        assert layer.statistics().messages_received == completed
        # Nothing is left over, in Redis (all local channels share one key) or in a buffer.
        assert (
            await layer._keys.pools[0].execute("ZCARD", layer._keys.channel_key(channels[0])) == 0
        )
        for channel in channels:
            with anyio.move_on_after(0.05) as scope:
                extra = await layer.receive(channel)
                pytest.fail(f"{channel} received an extra message {extra!r}")
            assert scope.cancelled_caught
    minimum = 1000 if path == "redis" else 100  # in-memory receives rarely have to wait
    assert cancelled > minimum, f"only {cancelled} receives were cancelled"


async def stress_normal_channel(
    layer: QueueLayer, channel: str, *, n_senders: int, per_sender: int, n_receivers: int
) -> tuple[dict[int, list[int]], list[list[MessageId]], int, bool]:
    """Senders and randomly cancelled receivers on one normal channel.

    Returns what was accepted per sender, what each receiver got, how many
    receives were cancelled, and whether the phase timed out.
    """
    cancelled = 0
    accepted: dict[int, list[int]] = {s: [] for s in range(n_senders)}
    received: list[list[MessageId]] = [[] for _ in range(n_receivers)]
    senders_running = n_senders

    async def sender(sender_id: int) -> None:
        nonlocal senders_running
        rng = random.Random(sender_id)
        for number in range(per_sender):
            try:
                await layer.send(channel, {"type": "t", "s": sender_id, "n": number})
            except ChannelFull:
                pass
            else:
                accepted[sender_id].append(number)
            await pause(rng)
        senders_running -= 1

    def all_received() -> bool:
        total = sum(len(numbers) for numbers in accepted.values())
        return not senders_running and sum(map(len, received)) >= total

    async def receiver(index: int) -> None:
        nonlocal cancelled
        rng = random.Random(1000 + index)
        while not all_received():
            with anyio.move_on_after(rng.choice(RECEIVE_TIMEOUTS)) as scope:
                message = await layer.receive(channel)
                received[index].append((message["s"], message["n"]))
            if scope.cancelled_caught:
                cancelled += 1

    with anyio.move_on_after(PHASE_TIMEOUT) as phase:
        async with anyio.create_task_group() as tg:
            for index in range(n_receivers):
                tg.start_soon(receiver, index)
            for sender_id in range(n_senders):
                tg.start_soon(sender, sender_id)
    return accepted, received, cancelled, phase.cancelled_caught


async def test_normal_channel_loses_and_duplicates_nothing_with_many_cancelled_receivers(
    redis_url: str, redis_server: RedisServer
) -> None:
    channel = "worker-queue"
    n_senders, per_sender = 4, 250
    async with checked_layer(redis_url, redis_server) as layer:
        accepted, received, cancelled, timed_out = await stress_normal_channel(
            layer, channel, n_senders=n_senders, per_sender=per_sender, n_receivers=8
        )
        everything = [item for items in received for item in items]
        duplicates = [item for item, count in Counter(everything).items() if count > 1]
        assert not duplicates, f"received twice: {duplicates[:10]}"
        assert sum(map(len, accepted.values())) == n_senders * per_sender  # none refused
        expected = {(s, n) for s, numbers in accepted.items() for n in numbers}
        missing = expected - set(everything)
        assert not missing, f"lost {len(missing)}: {sorted(missing)[:10]}"
        assert set(everything) == expected
        assert not timed_out, f"the phase did not finish within {PHASE_TIMEOUT}s"
        assert layer.statistics().messages_received == len(expected)
        assert await layer._keys.pools[0].execute("EXISTS", "asgi" + channel) == 0
    assert cancelled > 1000, f"only {cancelled} receives were cancelled"


async def test_normal_channel_each_receiver_sees_increasing_numbers(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Per receiver, each sender's messages arrive in increasing order.

    A message popped for a cancelled receiver is put back at its original
    score, to be the next one any receiver gets. If another receiver of the
    same process were blocked on the channel meanwhile, it could pop a *later*
    message while the put-back is in flight (CLIENT UNBLOCK, read the reply,
    ZADD: two round trips), then the restored earlier one, and see n+1 before
    n. So receivers of one process must take turns on a normal channel.
    """
    async with checked_layer(redis_url, redis_server) as layer:
        _, received, _, timed_out = await stress_normal_channel(
            layer, "ordered-queue", n_senders=4, per_sender=250, n_receivers=8
        )
    inversions = []
    for index, items in enumerate(received):
        last: dict[int, int] = {}
        for sender_id, number in items:
            if number < last.get(sender_id, -1):
                inversions.append((index, sender_id, last[sender_id], number))
            last[sender_id] = number
    assert not inversions, (
        f"{len(inversions)} times a receiver got a sender's message after a later one "
        f"(receiver, sender, received before, received after): {inversions[:5]}"
    )
    assert not timed_out, f"the phase did not finish within {PHASE_TIMEOUT}s"


async def test_normal_channel_single_receiver_stays_fifo_under_cancellation(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A pop recovered from a cancelled receive goes back at its original score."""
    n_senders, per_sender = 2, 250
    channel = "fifo-queue"
    cancelled = 0
    async with checked_layer(redis_url, redis_server) as layer:
        accepted: dict[int, list[int]] = {s: [] for s in range(n_senders)}
        received: list[MessageId] = []
        senders_running = n_senders

        async def sender(sender_id: int) -> None:
            nonlocal senders_running
            rng = random.Random(sender_id)
            for number in range(per_sender):
                await layer.send(channel, {"type": "t", "s": sender_id, "n": number})
                accepted[sender_id].append(number)
                await pause(rng)
            senders_running -= 1

        async def receiver() -> None:
            nonlocal cancelled
            rng = random.Random(5)
            while senders_running or len(received) < n_senders * per_sender:
                with anyio.move_on_after(rng.choice(RECEIVE_TIMEOUTS)) as scope:
                    message = await layer.receive(channel)
                    received.append((message["s"], message["n"]))
                if scope.cancelled_caught:
                    cancelled += 1

        with anyio.move_on_after(PHASE_TIMEOUT) as phase:
            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver)
                for sender_id in range(n_senders):
                    tg.start_soon(sender, sender_id)

        assert_in_order_exactly_once(received, accepted, channel)
        assert not phase.cancelled_caught, f"the phase did not finish within {PHASE_TIMEOUT}s"
    assert cancelled > 200, f"only {cancelled} receives were cancelled"


async def wait_until_blocked(server: RedisServer, count: int) -> None:
    with anyio.fail_after(5):
        while await anyio.to_thread.run_sync(blocked_clients, server) < count:
            await anyio.sleep(0.001)


def send_while_loop_is_stopped(
    server: RedisServer, layer: QueueLayer, channel: str, message: dict[str, Any]
) -> float:
    """Run the layer's own send script from a blocking client; return the message's score.

    The event loop does not run meanwhile, so when this returns the server has
    already popped the message for a receive blocked on ``channel``, and that
    receive has not read the reply yet: cancelling it right away makes the
    "pop completed just as its receiver was cancelled" race deterministic.
    """
    if "!" in channel:
        message = {**message, RESERVED_KEY: channel}
    score = time.time()
    added = server.execute(
        "EVAL",
        _SEND.source,
        1,
        layer._keys.channel_key(channel),
        layer.serializer.serialize(message),
        repr(score),
        int(score) - int(layer.expiry),
        CAPACITY,
        math.ceil(layer.expiry),
    )
    assert added == [1, 0]
    return score


async def cancel_receive_after_its_pop(
    server: RedisServer, layer: QueueLayer, channel: str, number: int
) -> tuple[list[dict[str, Any]], float]:
    """Block a receive on ``channel``, let the server pop a message for it, then cancel it."""
    got: list[dict[str, Any]] = []

    async def receive_one() -> None:
        got.append(await layer.receive(channel))

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive_one)
        await wait_until_blocked(server, 1)
        score = send_while_loop_is_stopped(server, layer, channel, {"type": "t", "n": number})
        tg.cancel_scope.cancel()  # no checkpoint since the pop
    return got, score


async def test_pop_completed_for_a_cancelled_receive_goes_back_at_its_original_score(
    redis_url: str, redis_server: RedisServer
) -> None:
    channel = "put-back-queue"
    async with checked_layer(redis_url, redis_server) as layer:
        key = layer._keys.channel_key(channel)
        for number in range(5):
            got, score = await cancel_receive_after_its_pop(redis_server, layer, channel, number)
            assert got == []  # the receive was cancelled...
            # ...and the message it popped is back, at the score send() gave it.
            reply = redis_server.execute("ZRANGE", key, 0, -1, "WITHSCORES")
            assert isinstance(reply, list)
            assert len(reply) == 2
            assert float(reply[1]) == score
            with anyio.fail_after(5):
                message = await layer.receive(channel)
            assert message == {"type": "t", "n": number}
            assert redis_server.execute("EXISTS", key) == 0  # received exactly once


async def test_put_back_message_keeps_its_key_expiring(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A message put back after a cancelled receive still expires with its key.

    send() gives every channel key a TTL (``expiry``). The pop emptied the key,
    so Redis deleted it; a bare put-back ``ZADD`` would recreate it without a
    TTL, and a put-back message nobody receives would stay in Redis forever.
    """
    channel = "put-back-ttl"
    async with checked_layer(redis_url, redis_server) as layer:
        key = layer._keys.channel_key(channel)
        got, _ = await cancel_receive_after_its_pop(redis_server, layer, channel, 0)
        assert got == []
        assert redis_server.execute("ZCARD", key) == 1
        ttl = redis_server.execute("TTL", key)
        assert await layer.receive(channel) == {"type": "t", "n": 0}
    assert isinstance(ttl, int)
    assert 0 < ttl <= math.ceil(layer.expiry), f"put-back key has TTL {ttl} (-1: none)"


async def test_messages_popped_by_a_closing_layer_go_back_and_keep_expiring(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Leaving the layer cancels its local reader; a batch it just popped goes back to Redis.

    The key of process-local channels is unique to the layer, so nobody will
    ever receive from it again: only its TTL removes it.
    """
    async with open_redis_layer(hosts=[redis_url]) as layer:
        channel = await layer.new_channel()
        key = layer._keys.channel_key(channel)
        with anyio.move_on_after(0.01):
            await layer.receive(channel)  # starts the reader
        await wait_until_blocked(redis_server, 1)
        score = send_while_loop_is_stopped(redis_server, layer, channel, {"type": "t"})
        # Leave the block (cancelling the reader) without a checkpoint since the pop.
    await assert_closed_cleanly(layer._keys.pools, redis_server)
    reply = redis_server.execute("ZRANGE", key, 0, -1, "WITHSCORES")
    assert isinstance(reply, list)
    assert len(reply) == 2, "the popped message was lost"
    assert float(reply[1]) == score
    ttl = redis_server.execute("TTL", key)
    assert isinstance(ttl, int)
    assert 0 < ttl <= math.ceil(layer.expiry), f"put-back key has TTL {ttl} (-1: none)"


async def test_group_send_fan_out_under_cancelled_receives(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Members get every group message once, in order, mixed with direct sends."""
    group = "room"
    n_members, group_senders, per_group_sender, per_direct_sender = 4, 2, 150, 100
    cancelled = 0
    async with (
        checked_layer(redis_url, redis_server) as layer,
        checked_layer(redis_url, redis_server, outermost=False) as other,
    ):
        members = [await layer.new_channel() for _ in range(n_members)]
        for member in members:
            await layer.group_add(group, member)
        # Senders 0 and 1 group_send from another layer (so through Redis);
        # sender 2 sends to each member directly from the members' own layer.
        direct = group_senders
        accepted: dict[int, list[int]] = {s: [] for s in range(group_senders)}
        direct_accepted: dict[str, list[int]] = {member: [] for member in members}
        received: dict[str, list[MessageId]] = {member: [] for member in members}
        senders_running = group_senders + n_members

        async def group_sender(sender_id: int) -> None:
            nonlocal senders_running
            rng = random.Random(sender_id)
            for number in range(per_group_sender):
                await other.group_send(group, {"type": "g", "s": sender_id, "n": number})
                accepted[sender_id].append(number)
                await pause(rng)
            senders_running -= 1

        async def direct_sender(member: str, seed: int) -> None:
            nonlocal senders_running
            rng = random.Random(seed)
            for number in range(per_direct_sender):
                await layer.send(member, {"type": "d", "s": direct, "n": number})
                direct_accepted[member].append(number)
                await pause(rng)
            senders_running -= 1

        def all_received(member: str) -> bool:
            total = sum(map(len, accepted.values())) + len(direct_accepted[member])
            return not senders_running and len(received[member]) >= total

        async def receiver(member: str, seed: int) -> None:
            nonlocal cancelled
            rng = random.Random(seed)
            while not all_received(member):
                with anyio.move_on_after(rng.choice(RECEIVE_TIMEOUTS)) as scope:
                    message = await layer.receive(member)
                    received[member].append((message["s"], message["n"]))
                if scope.cancelled_caught:
                    cancelled += 1

        with anyio.move_on_after(PHASE_TIMEOUT) as phase:
            async with anyio.create_task_group() as tg:
                for index, member in enumerate(members):
                    tg.start_soon(receiver, member, 10 + index)
                    tg.start_soon(direct_sender, member, 20 + index)
                for sender_id in range(group_senders):
                    tg.start_soon(group_sender, sender_id)

        for member in members:
            expected = {**accepted, direct: direct_accepted[member]}
            assert_in_order_exactly_once(received[member], expected, member)
        assert not phase.cancelled_caught, f"the phase did not finish within {PHASE_TIMEOUT}s"
        statistics = other.statistics()
        assert statistics.group_sends == group_senders * per_group_sender
        # All members share one Redis key, so each group_send wrote one copy.
        assert statistics.group_deliveries == group_senders * per_group_sender
        assert statistics.group_skipped_over_capacity == 0
    assert cancelled > 300, f"only {cancelled} receives were cancelled"


async def test_cancelled_sends_are_all_or_nothing_and_keep_the_connection_usable(
    redis_url: str, redis_server: RedisServer
) -> None:
    normal = "cancel-queue"
    group = "cancel-group"
    n_senders, per_sender, n_members = 4, 150, 3
    outcomes: Counter[str] = Counter()
    async with checked_layer(redis_url, redis_server) as layer:
        local = await layer.new_channel()
        members = [await layer.new_channel() for _ in range(n_members)]
        for member in members:
            await layer.group_add(group, member)
        # Warm up: the pipelined connection exists and the scripts are loaded.
        await layer.send(normal, {"type": "warm-up"})
        assert (await layer.receive(normal))["type"] == "warm-up"
        pool = layer._keys.pools[0]
        pipeline = pool._pipeline
        assert pipeline is not None
        opened = pool.statistics().connections_opened

        # For each target: messages whose send completed, and those whose send was cancelled.
        targets = ("normal", "local", "group")
        sent: dict[str, set[MessageId]] = {target: set() for target in targets}
        maybe: dict[str, set[MessageId]] = {target: set() for target in targets}

        async def sender(sender_id: int) -> None:
            rng = random.Random(sender_id)
            for number in range(per_sender):
                target = rng.choice(targets)
                message = {"type": "t", "s": sender_id, "n": number}
                with anyio.move_on_after(rng.choice(SEND_TIMEOUTS)) as scope:
                    if target == "normal":
                        await layer.send(normal, message)
                    elif target == "local":
                        await layer.send(local, message)
                    else:
                        await layer.group_send(group, message)
                    sent[target].add((sender_id, number))
                if scope.cancelled_caught:
                    maybe[target].add((sender_id, number))
                    outcomes["cancelled"] += 1
                else:
                    outcomes["completed"] += 1
                await pause(rng)

        with anyio.move_on_after(PHASE_TIMEOUT) as phase:
            async with anyio.create_task_group() as tg:
                for sender_id in range(n_senders):
                    tg.start_soon(sender, sender_id)
        assert not phase.cancelled_caught, f"the phase did not finish within {PHASE_TIMEOUT}s"

        # The shared connection survived: same connection, still in sync.
        assert pool._pipeline is pipeline
        assert not pipeline.closed
        assert await pool.execute("ECHO", "in sync") == b"in sync"
        # Ordinary traffic works: a final marker on every channel.
        final = {"type": "final"}
        await layer.send(normal, final)
        await layer.send(local, final)
        await layer.group_send(group, final)

        async def drain(channel: str) -> list[MessageId]:
            items: list[MessageId] = []
            with anyio.fail_after(10):
                while (message := await layer.receive(channel))["type"] != "final":
                    items.append((message["s"], message["n"]))
            return items

        def check(target: str, items: list[MessageId], where: str) -> None:
            duplicates = [item for item, count in Counter(items).items() if count > 1]
            assert not duplicates, f"{where}: delivered twice: {duplicates[:10]}"
            assert sent[target] <= set(items), f"{where}: lost {sorted(sent[target] - set(items))}"
            assert set(items) <= sent[target] | maybe[target], f"{where}: never sent"
            for sender_id in range(n_senders):
                numbers = [n for s, n in items if s == sender_id]
                assert numbers == sorted(numbers), f"{where}: out of order"

        check("normal", await drain(normal), normal)
        check("local", await drain(local), local)
        group_items = [await drain(member) for member in members]
        for member, items in zip(members, group_items, strict=True):
            check("group", items, member)
        # One Redis key holds all members: each group message reached all of them or none.
        assert all(items == group_items[0] for items in group_items)

        # Nothing but the pipelined connection and dedicated ones for blocking pops was opened.
        assert pool._pipeline is pipeline
        assert pool.statistics().connections_opened - opened <= 2  # readers' / receiver's
    # Fewer sends get cancelled the faster they are: enough to exercise it.
    assert outcomes["cancelled"] > 40, outcomes
    assert outcomes["completed"] > 100, outcomes
