"""The pub/sub layer's cancellation contract (``anyio_layer.pubsub.layer``), under asyncio and trio.

* Cancelling ``receive()`` at any moment loses nothing that was published
  while the channel was subscribed and delivers nothing twice, for direct
  sends and for ``group_send`` fan-out; per channel (and per sender) messages
  arrive in the order they were published.
* Cancelling ``send()`` / ``group_send()`` either published the message or
  did not; it never corrupts the shared connection.
* Cancelling ``new_channel()`` / ``group_add()`` at any moment leaves the
  layer's subscriptions and the server's in agreement: a cancelled
  ``new_channel()`` leaves no subscription behind, every group with a local
  member is subscribed exactly once, and later calls work at once.
* Cancelling a scope around the layer and its users mid-traffic surfaces
  nothing but that cancellation (no error from the layer's own teardown).
* Once the layer has exited, the server has no channel subscribed and no
  connection of ours open.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from anyio_layer.exceptions import LayerClosedError
from anyio_layer.pubsub import PubSubLayer, open_pubsub_layer
from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio

#: Every connection the layer under test opens carries this name (``CLIENT LIST``).
CLIENT_NAME = "anyio-pubsub-cancellation"
#: Timeouts around ``receive()``: 0 cancels at the first checkpoint, the
#: larger ones usually let it finish; in between they land at random moments.
RECEIVE_TIMEOUTS = (0, 0, 0.00001, 0.0001, 0.0003, 0.001, 0.002, 0.005, 0.02)
#: Timeouts around ``send()`` / ``group_send()``.
SEND_TIMEOUTS = (0, 0.00001, 0.00005, 0.0001, 0.0003, 0.001, 0.005)
#: Timeouts around ``new_channel()`` (a subscription takes a round trip: the
#: larger ones let enough calls complete) and ``group_add()`` (which needs no
#: round trip when the group is subscribed already).
NEW_CHANNEL_TIMEOUTS = (0, 0, 0.00001, 0.00005, 0.0001, 0.0003, 0.001, 0.002, 0.005, 0.02, 0.05)
GROUP_ADD_TIMEOUTS = (0, 0, 0.00001, 0.00005, 0.0001, 0.0003, 0.001, 0.005)
#: High enough that no local buffer overflows.
CAPACITY = 100_000
#: Bound on every stress phase, so a lost message fails the test instead of hanging it.
PHASE_TIMEOUT = 20
#: How long in-flight (un)subscriptions may take to settle. Far below the
#: layer's SUBSCRIBE_TIMEOUT (10 s): on a local server a confirmation takes
#: well under a millisecond.
SETTLE_TIMEOUT = 2

MessageId = tuple[int, int]  # (sender, sequence number)


def layer_hosts(redis_url: str) -> list[str]:
    return [f"{redis_url}?client_name={CLIENT_NAME}"]


async def server_channels(server: RedisServer) -> set[str]:
    """``PUBSUB CHANNELS *``: every Redis channel somebody is subscribed to."""
    reply = await server.aexecute("PUBSUB", "CHANNELS", "*", decode=True)
    assert isinstance(reply, list)
    return set(reply)


async def numsub(server: RedisServer, names: Iterable[str]) -> dict[str, int]:
    """``PUBSUB NUMSUB``: how many subscribers each of ``names`` has."""
    names = sorted(names)
    if not names:
        return {}
    reply = await server.aexecute("PUBSUB", "NUMSUB", *names, decode=True)
    assert isinstance(reply, list)
    return dict(zip(reply[::2], reply[1::2], strict=True))


async def our_clients(server: RedisServer) -> list[str]:
    """``CLIENT LIST`` entries of connections opened by the layer under test."""
    reply = await server.aexecute("CLIENT", "LIST", decode=True)
    assert isinstance(reply, str)
    return [line for line in reply.splitlines() if f" name={CLIENT_NAME} " in f" {line} "]


async def assert_subscriptions(layer: PubSubLayer, server: RedisServer, expected: set[str]) -> None:
    """Once in-flight (un)subscriptions settle, the layer and the server both have ``expected``.

    Checks the server (``PUBSUB CHANNELS``, one subscriber per name with
    ``PUBSUB NUMSUB``), ``statistics().subscriptions`` and each shard's own
    bookkeeping (wanted == confirmed, nothing left in flight).
    """

    def layer_settled() -> bool:
        return layer.statistics().subscriptions == len(expected) and all(
            not shard._in_flight and shard.wanted == shard.confirmed for shard in layer._subscribers
        )

    with anyio.move_on_after(SETTLE_TIMEOUT):
        while not layer_settled() or await server_channels(server) != expected:
            await anyio.sleep(0.01)
    on_server = await server_channels(server)
    wanted_by_layer = {name for shard in layer._subscribers for name in shard.wanted}
    assert on_server == expected, (
        f"subscribed on the server but not expected: {sorted(on_server - expected)} "
        f"(of which the layer no longer wants: {sorted(on_server - expected - wanted_by_layer)}); "
        f"expected but not subscribed on the server: {sorted(expected - on_server)}"
    )
    counts = await numsub(server, expected)
    assert all(count == 1 for count in counts.values()), f"PUBSUB NUMSUB: {counts}"
    for shard in layer._subscribers:
        in_flight = dict(shard._in_flight)
        wanted, confirmed = set(shard.wanted), set(shard.confirmed)
        assert not in_flight, (
            f"(un)subscriptions still counted as in flight {SETTLE_TIMEOUT}s later: {in_flight} "
            f"(on the server: { {name: name in on_server for name in in_flight} })"
        )
        assert wanted == confirmed, (
            f"wanted but never confirmed: {sorted(wanted - confirmed)}; "
            f"confirmed but not wanted: {sorted(confirmed - wanted)}"
        )
    assert layer.statistics().subscriptions == len(expected)


async def assert_server_clean(server: RedisServer) -> None:
    """After the layer has exited: no subscription and no connection of ours remain."""
    with anyio.move_on_after(5):
        while await server_channels(server) or await our_clients(server):
            await anyio.sleep(0.01)
    assert await server_channels(server) == set()
    assert await our_clients(server) == []


@contextlib.asynccontextmanager
async def checked_layer(
    redis_url: str, redis_server: RedisServer, **options: Any
) -> AsyncIterator[PubSubLayer]:
    """``open_pubsub_layer`` that checks, when the body succeeds, that nothing leaked."""
    options.setdefault("capacity", CAPACITY)
    async with open_pubsub_layer(hosts=layer_hosts(redis_url), **options) as layer:
        pools = [shard.pool for shard in layer._subscribers]
        yield layer
        statistics = layer.statistics()
        assert statistics.local_buffer_overflows == 0
        assert statistics.decode_errors == 0
        assert statistics.disconnects == 0
        # The server has exactly what the layer believes it has.
        expected = set(layer._channels) | set(layer._groups)
        await assert_subscriptions(layer, redis_server, expected)
        with anyio.fail_after(5):
            while any(pool.statistics().pipeline_pending for pool in pools):
                await anyio.sleep(0.01)
        for pool in pools:
            stats = pool.statistics()
            assert stats.connect_failures == 0
            assert stats.reconnects == 0
    for pool in pools:
        stats = pool.statistics()
        assert stats.connections_in_use == 0
        assert stats.idle_connections == 0
        assert stats.connections_opened == stats.connections_closed
    await assert_server_clean(redis_server)


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
    """``received`` holds each accepted message once, each sender's in publishing order."""
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


async def drain_until_barrier(layer: PubSubLayer, channel: str) -> list[dict[str, Any]]:
    """Publish a barrier to ``channel`` and return everything received before it.

    Publishes go through one pipelined connection and are delivered on one
    subscriber connection, in the order the server ran them: once the
    barrier arrives, everything published before it has arrived too.
    """
    await layer.send(channel, {"type": "barrier"})
    messages: list[dict[str, Any]] = []
    with anyio.fail_after(5):
        while (message := await layer.receive(channel))["type"] != "barrier":
            messages.append(message)
    return messages


async def assert_nothing_more(layer: PubSubLayer, channels: Iterable[str]) -> None:
    for channel in channels:
        with anyio.move_on_after(0.02) as scope:
            extra = await layer.receive(channel)
            pytest.fail(f"{channel} received an extra message {extra!r}")
        assert scope.cancelled_caught


# -- receive() cancelled at random moments -----------------------------------------


async def test_local_channels_receive_everything_once_in_order_under_cancelled_receives(
    redis_url: str, redis_server: RedisServer
) -> None:
    n_channels, senders_per_channel, per_sender = 6, 2, 400
    cancelled = completed = 0
    async with checked_layer(redis_url, redis_server) as layer:
        channels = [await layer.new_channel() for _ in range(n_channels)]
        # Subscribed (and confirmed) before anything is published.
        assert await numsub(redis_server, channels) == dict.fromkeys(channels, 1)
        assert layer.statistics().subscriptions == n_channels
        accepted = {ch: {s: [] for s in range(senders_per_channel)} for ch in channels}
        received: dict[str, list[MessageId]] = {ch: [] for ch in channels}
        senders_running = n_channels * senders_per_channel

        async def sender(channel: str, sender_id: int, seed: int) -> None:
            nonlocal senders_running
            rng = random.Random(seed)
            for number in range(per_sender):
                await layer.send(channel, {"type": "t", "s": sender_id, "n": number})
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

        with anyio.fail_after(PHASE_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for index, channel in enumerate(channels):
                    tg.start_soon(receiver, channel, index)
                    for sender_id in range(senders_per_channel):
                        tg.start_soon(sender, channel, sender_id, 100 * index + sender_id)

        for channel in channels:
            assert_in_order_exactly_once(received[channel], accepted[channel], channel)
        total = n_channels * senders_per_channel * per_sender
        assert completed == total
        statistics = layer.statistics()
        assert statistics.messages_sent == total
        assert statistics.messages_received == total
        assert statistics.unroutable == 0
        assert statistics.local_buffer_overflows == 0
        await assert_nothing_more(layer, channels)
        await assert_subscriptions(layer, redis_server, set(channels))
    # Enough cancellations to mean something, whatever the machine's speed.
    assert cancelled > 300, f"only {cancelled} receives were cancelled"


async def test_group_members_receive_every_group_message_once_in_order(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Two overlapping groups plus direct sends, every receive randomly cancelled."""
    n_members, per_group_sender, per_direct_sender = 4, 300, 120
    # Senders 0 and 1 group_send to "room-a" (all members), sender 2 to "room-b"
    # (members 0 and 1), sender 3 sends to every member directly.
    group_senders = {0: "room-a", 1: "room-a", 2: "room-b"}
    direct = 3
    cancelled = 0
    async with checked_layer(redis_url, redis_server) as layer:
        members = [await layer.new_channel() for _ in range(n_members)]
        membership = {"room-a": members, "room-b": members[:2]}
        for group, channels in membership.items():
            for channel in channels:
                await layer.group_add(group, channel)
        group_channels = {"asgi__group__room-a", "asgi__group__room-b"}
        await assert_subscriptions(layer, redis_server, set(members) | group_channels)

        accepted: dict[int, list[int]] = {s: [] for s in group_senders}
        direct_accepted: dict[str, list[int]] = {member: [] for member in members}
        received: dict[str, list[MessageId]] = {member: [] for member in members}
        senders_running = len(group_senders) + n_members

        async def group_sender(sender_id: int) -> None:
            nonlocal senders_running
            rng = random.Random(sender_id)
            for number in range(per_group_sender):
                message = {"type": "g", "s": sender_id, "n": number}
                await layer.group_send(group_senders[sender_id], message)
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

        def expected_for(member: str) -> dict[int, list[int]]:
            expected = {direct: direct_accepted[member]}
            for sender_id, group in group_senders.items():
                if member in membership[group]:
                    expected[sender_id] = accepted[sender_id]
            return expected

        def all_received(member: str) -> bool:
            total = sum(map(len, expected_for(member).values()))
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

        with anyio.fail_after(PHASE_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for index, member in enumerate(members):
                    tg.start_soon(receiver, member, 10 + index)
                    tg.start_soon(direct_sender, member, 20 + index)
                for sender_id in group_senders:
                    tg.start_soon(group_sender, sender_id)

        for member in members:
            assert_in_order_exactly_once(received[member], expected_for(member), member)
        statistics = layer.statistics()
        assert statistics.group_sends == len(group_senders) * per_group_sender
        assert statistics.messages_received == sum(map(len, received.values()))
        assert statistics.unroutable == 0
        await assert_nothing_more(layer, members)
    assert cancelled > 500, f"only {cancelled} receives were cancelled"


# -- send() / group_send() cancelled at random moments ------------------------------


async def test_cancelled_sends_are_all_or_nothing_and_keep_the_connection_usable(
    redis_url: str, redis_server: RedisServer
) -> None:
    group = "cancel-group"
    n_senders, per_sender, n_members = 4, 150, 3
    outcomes: Counter[str] = Counter()
    async with checked_layer(redis_url, redis_server) as layer:
        target = await layer.new_channel()
        members = [await layer.new_channel() for _ in range(n_members)]
        for member in members:
            await layer.group_add(group, member)
        # Warm up: the pipelined connection exists.
        await layer.send(target, {"type": "warm-up"})
        assert (await layer.receive(target))["type"] == "warm-up"
        pool = layer._subscribers[0].pool
        pipeline = pool._pipeline
        assert pipeline is not None

        # For each target: messages whose publish completed, and those whose publish was cancelled.
        targets = ("channel", "group")
        sent: dict[str, set[MessageId]] = {name: set() for name in targets}
        maybe: dict[str, set[MessageId]] = {name: set() for name in targets}

        async def sender(sender_id: int) -> None:
            rng = random.Random(sender_id)
            for number in range(per_sender):
                kind = rng.choice(targets)
                message = {"type": "t", "s": sender_id, "n": number}
                with anyio.move_on_after(rng.choice(SEND_TIMEOUTS)) as scope:
                    if kind == "channel":
                        await layer.send(target, message)
                    else:
                        await layer.group_send(group, message)
                    sent[kind].add((sender_id, number))
                if scope.cancelled_caught:
                    maybe[kind].add((sender_id, number))
                    outcomes["cancelled"] += 1
                else:
                    outcomes["completed"] += 1
                await pause(rng)

        with anyio.fail_after(PHASE_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for sender_id in range(n_senders):
                    tg.start_soon(sender, sender_id)

        # The shared connection survived: same connection, still in sync.
        assert pool._pipeline is pipeline
        assert not pipeline.closed
        assert await pool.execute("ECHO", "in sync") == b"in sync"

        def check(kind: str, messages: list[dict[str, Any]], where: str) -> list[MessageId]:
            items = [(message["s"], message["n"]) for message in messages]
            duplicates = [item for item, count in Counter(items).items() if count > 1]
            assert not duplicates, f"{where}: delivered twice: {duplicates[:10]}"
            lost = sent[kind] - set(items)
            assert not lost, f"{where}: lost {sorted(lost)[:10]}"
            assert set(items) <= sent[kind] | maybe[kind], f"{where}: never sent"
            for sender_id in range(n_senders):
                numbers = [n for s, n in items if s == sender_id]
                assert numbers == sorted(numbers), f"{where}: out of order"
            return items

        check("channel", await drain_until_barrier(layer, target), target)
        group_items = [
            check("group", await drain_until_barrier(layer, member), member) for member in members
        ]
        # One PUBLISH per group_send: each reached every member or none.
        assert all(items == group_items[0] for items in group_items)
        await assert_nothing_more(layer, [target, *members])
        statistics = layer.statistics()
        assert statistics.messages_sent + statistics.group_sends >= outcomes["completed"]
        assert pool.statistics().reconnects == 0
    assert outcomes["cancelled"] > 100, outcomes
    assert outcomes["completed"] > 100, outcomes


# -- new_channel() / group_add() cancelled at random moments ------------------------


async def test_group_add_cancelled_at_its_first_checkpoint_does_not_wedge_the_group(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A ``group_add()`` cancelled before it could subscribe must not break the group.

    Whether the cancelled call noticed the cancellation or not, and whether it
    counts as joined or not, the layer and the server must agree, and the
    next ``group_add()`` must succeed at once (not after SUBSCRIBE_TIMEOUT)
    with group messages flowing.
    """
    group = "wedge"
    async with checked_layer(redis_url, redis_server) as layer:
        channel = await layer.new_channel()
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled at its first checkpoint
            await layer.group_add(group, channel)
        group_channel = "asgi__group__wedge"
        joined = channel in layer._groups.get(group_channel, set())
        await assert_subscriptions(
            layer, redis_server, {channel, group_channel} if joined else {channel}
        )

        with anyio.fail_after(2):
            await layer.group_add(group, channel)
        await assert_subscriptions(layer, redis_server, {channel, group_channel})
        await layer.group_send(group, {"type": "hello"})
        with anyio.fail_after(2):
            assert await layer.receive(channel) == {"type": "hello"}


async def test_new_channel_cancelled_at_its_first_checkpoint_leaves_nothing_behind(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with checked_layer(redis_url, redis_server) as layer:
        keep = await layer.new_channel()  # the subscriber connection is up
        returned = []  # by calls that completed without noticing the cancellation
        for _ in range(5):
            with anyio.CancelScope() as scope:
                scope.cancel()
                returned.append(await layer.new_channel())
        assert set(layer._channels) == {keep, *returned}
        await assert_subscriptions(layer, redis_server, {keep, *returned})


async def test_new_channel_cancelled_while_awaiting_confirmation_leaves_no_subscription(
    redis_url: str, redis_server: RedisServer
) -> None:
    """SUBSCRIBE is on the wire, the confirmation is not back yet: cancel.

    ``CLIENT PAUSE`` holds the server back so the cancellation lands exactly
    there. The cancelled call returned no name, so nobody can ever use or
    close that channel: the layer must unsubscribe it itself.
    """
    async with checked_layer(redis_url, redis_server) as layer:
        keep = await layer.new_channel()  # the subscriber connection is up
        await redis_server.aexecute("CLIENT", "PAUSE", 200, "ALL")
        with anyio.move_on_after(0.05) as scope:
            await layer.new_channel()
        assert scope.cancelled_caught
        assert list(layer._channels) == [keep]
        await assert_subscriptions(layer, redis_server, {keep})


async def test_cancelled_new_channel_and_group_add_leave_consistent_subscriptions(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Churn of cancelled subscriptions and publishes; afterwards everything agrees and works.

    Each churner owns a few groups (so no two tasks add to and discard from
    the same group at once) and keeps emptying them with ``group_discard()``,
    so that its ``group_add()`` calls keep having to subscribe again.
    """
    n_churners, groups_per_churner, rounds = 4, 3, 100
    n_publishers, per_publisher = 2, 150
    outcomes: Counter[str] = Counter()
    owned = {
        churner: [f"churn-{churner}-{index}" for index in range(groups_per_churner)]
        for churner in range(n_churners)
    }
    groups = [group for names in owned.values() for group in names]

    def group_channel(group: str) -> str:
        return f"asgi__group__{group}"

    async with checked_layer(redis_url, redis_server) as layer:
        opened: list[str] = [await layer.new_channel()]  # new_channel() completed
        # Members whose group_add() completed (and that were not discarded since).
        joined: dict[str, set[str]] = {group: set() for group in groups}
        # How often each (group, channel) membership was discarded.
        discards: Counter[tuple[str, str]] = Counter()
        # Per group_send: the group and its members (with their discard counts) when it began.
        group_targets: dict[MessageId, tuple[str, dict[str, int]]] = {}
        channel_targets: dict[MessageId, str] = {}
        completed_sends: set[MessageId] = set()

        async def churner(churner_id: int) -> None:
            rng = random.Random(churner_id)
            for _ in range(rounds):
                roll = rng.random()
                if roll < 0.25:
                    kind = "new_channel"
                    with anyio.move_on_after(rng.choice(NEW_CHANNEL_TIMEOUTS)) as scope:
                        opened.append(await layer.new_channel())
                elif roll < 0.7:
                    kind = "group_add"
                    group, channel = rng.choice(owned[churner_id]), rng.choice(opened)
                    with anyio.move_on_after(rng.choice(GROUP_ADD_TIMEOUTS)) as scope:
                        await layer.group_add(group, channel)
                        joined[group].add(channel)
                else:
                    # Not cancelled: empty one of this churner's groups (members
                    # of cancelled group_add() calls included, if they count).
                    group = rng.choice(owned[churner_id])
                    for channel in sorted(layer._groups.get(group_channel(group), ())):
                        joined[group].discard(channel)
                        discards[group, channel] += 1
                        await layer.group_discard(group, channel)
                    outcomes["group emptied"] += 1
                    await pause(rng)
                    continue
                outcomes[f"{kind} {'cancelled' if scope.cancelled_caught else 'completed'}"] += 1
                await pause(rng)

        async def publisher(sender_id: int) -> None:
            rng = random.Random(1000 + sender_id)
            for number in range(per_publisher):
                message_id = (sender_id, number)
                message = {"type": "t", "s": sender_id, "n": number}
                with anyio.move_on_after(rng.choice(SEND_TIMEOUTS)) as scope:
                    if rng.random() < 0.4:
                        channel = channel_targets[message_id] = rng.choice(opened)
                        await layer.send(channel, message)
                    else:
                        group = rng.choice(groups)
                        members = {member: discards[group, member] for member in joined[group]}
                        group_targets[message_id] = (group, members)
                        await layer.group_send(group, message)
                    completed_sends.add(message_id)
                outcomes[f"publish {'cancelled' if scope.cancelled_caught else 'completed'}"] += 1
                await pause(rng)

        with anyio.fail_after(PHASE_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for churner_id in range(n_churners):
                    tg.start_soon(churner, churner_id)
                for sender_id in range(n_publishers):
                    tg.start_soon(publisher, sender_id)

        # A cancelled new_channel() left no channel behind; a completed group_add() stuck.
        assert set(layer._channels) == set(opened)
        for group in groups:
            members = layer._groups.get(group_channel(group), set())
            assert joined[group] <= members, f"{group}: completed group_add() lost"
        # The layer and the server agree: every channel, every group with a local member.
        expected = set(opened) | {
            group_channel(group) for group in groups if layer._groups.get(group_channel(group))
        }
        await assert_subscriptions(layer, redis_server, expected)

        # Nothing was delivered twice or out of order, and no completed publish was lost.
        received: dict[str, list[MessageId]] = {}
        for channel in opened:
            messages = await drain_until_barrier(layer, channel)
            items = received[channel] = [(m["s"], m["n"]) for m in messages]
            duplicates = [item for item, count in Counter(items).items() if count > 1]
            assert not duplicates, f"{channel}: received twice: {duplicates[:10]}"
            for sender_id in range(n_publishers):
                numbers = [n for s, n in items if s == sender_id]
                assert numbers == sorted(numbers), f"{channel}: out of order"
        for message_id in completed_sends:
            if message_id in channel_targets:
                must_reach = {channel_targets[message_id]}
            else:
                group, members = group_targets[message_id]
                # Members since before the publish, and never discarded since.
                must_reach = {m for m, count in members.items() if discards[group, m] == count}
            for channel in must_reach:
                assert message_id in received[channel], f"{channel} lost {message_id}"

        # Subscribing still works at once, and every group reaches exactly its members.
        with anyio.fail_after(2):
            fresh = await layer.new_channel()
            for group in groups:
                await layer.group_add(group, fresh)
        for group in groups:
            await layer.group_send(group, {"type": "check", "group": group})
        for channel in [*opened, fresh]:
            messages = await drain_until_barrier(layer, channel)
            got = Counter(message["group"] for message in messages)
            member_of = {g for g in groups if channel in layer._groups[group_channel(g)]}
            assert got == Counter(member_of), f"{channel}: got {got}, member of {member_of}"
        await assert_nothing_more(layer, [*opened, fresh])
    for kind in ("new_channel", "group_add", "publish"):
        assert outcomes[f"{kind} cancelled"] >= 10, outcomes
        assert outcomes[f"{kind} completed"] >= 10, outcomes
    assert outcomes["group emptied"] >= 10, outcomes


# -- leaving the layer ----------------------------------------------------------------


async def cancel_mid_traffic(redis_url: str, seed: int) -> tuple[PubSubLayer, list[str]]:
    """Cancel a scope around the layer while every kind of call is in progress in it."""
    rng = random.Random(seed)
    with anyio.CancelScope() as outer:
        async with open_pubsub_layer(hosts=layer_hosts(redis_url), capacity=CAPACITY) as layer:
            channels = [await layer.new_channel() for _ in range(4)]
            for channel in channels:
                await layer.group_add("leaving", channel)

            async def receiver(channel: str) -> None:
                while True:
                    with anyio.move_on_after(0.001):
                        await layer.receive(channel)

            async def publisher(seed: int) -> None:
                rng = random.Random(seed)
                while True:
                    await layer.send(rng.choice(channels), {"type": "t"})
                    await layer.group_send("leaving", {"type": "g"})
                    await pause(rng)

            async def churner(seed: int) -> None:
                rng = random.Random(seed)
                while True:
                    channel = await layer.new_channel()
                    await layer.group_add(f"leaving-{rng.randrange(3)}", channel)
                    if rng.random() < 0.5:
                        await layer.close_channel(channel)

            async with anyio.create_task_group() as tg:
                for channel in channels:
                    tg.start_soon(receiver, channel)
                    tg.start_soon(publisher, rng.random())
                    tg.start_soon(publisher, rng.random())
                    tg.start_soon(churner, rng.random())
                with anyio.fail_after(5):
                    while (
                        layer.statistics().messages_received < 50
                        or layer.statistics().subscriptions <= len(channels) + 1
                    ):
                        await anyio.sleep(0.005)
                await anyio.sleep(rng.choice((0, 0.001, 0.01)))
                outer.cancel()  # everything at once, the layer's block included
                await anyio.sleep_forever()
    assert outer.cancelled_caught
    return layer, channels


async def test_cancelling_a_scope_around_the_layer_mid_traffic_only_cancels(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A scope around the layer and its users is cancelled: nothing but the cancellation surfaces.

    The calls in progress must end with the scope's cancellation (which the
    scope swallows), not with an error from the layer's own teardown such as
    LayerClosedError; and the server is left clean.
    """
    for seed in range(5):
        layer, channels = await cancel_mid_traffic(redis_url, seed)
        statistics = layer.statistics()
        assert statistics.messages_sent > 0
        assert statistics.group_sends > 0
        with pytest.raises(LayerClosedError):
            await layer.send(channels[0], {"type": "too late"})
        await assert_server_clean(redis_server)
