"""Both layers through a misbehaving network (``anyio_layer.testing.run_fault_proxy``).

Each test puts one or two fault proxies between the layers and a real
redis-server, under asyncio and trio, and breaks the network in one way:

* latency: everything works, only slower;
* a blackhole (a partition, a hung server): senders fail with
  ``RedisTimeoutError`` within ``socket_timeout``; receivers blocked in
  ``receive()`` (process-local and normal channels, pub/sub subscribers) carry
  on once the network heals, and the slow tests measure how long a blocked
  read takes to notice a blackhole that does not heal;
* a reply cut in the middle, a reset connection, a refused connection: the
  call in flight fails with ``RedisConnectionError``, later calls work;
* a narrow link: 1 MB messages still go through.

After every case the layer's ``async with`` exits within :data:`EXIT_BOUND`,
no task (asyncio's or trio's) outlives the layers and proxies, and every message that
``send()`` accepted was received exactly once (a message whose ``send()``
failed may or may not have been delivered, but never twice). On pub/sub,
where messages published while a subscriber is disconnected are gone by
design, the exactly-once check covers what was sent while the subscriber
was connected.

Where the proxy sits: the senders' layer and the receivers' layer each get
their own proxy (or a direct connection), so that a fault meant for one side
does not also hit the other at an unplanned moment. A blocking pop whose
reply carries a message and is then lost loses that message (Redis has no
acknowledgement for pops); the tests keep such replies out of the faults, and
``docs/robustness.md`` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from anyio_layer import (
    PubSubLayer,
    QueueLayer,
    RedisConnectionError,
    RedisTimeoutError,
    open_pubsub_layer,
    open_redis_layer,
)
from anyio_layer.pubsub.subscriber import HEALTH_CHECK_INTERVAL
from anyio_layer.queue.popping import BLOCK_GRACE, BLOCK_SECONDS
from anyio_layer.testing import FaultProxy, RedisServer, run_fault_proxy

pytestmark = pytest.mark.anyio

#: A short deadline for non-blocking commands and connects, so that faults show quickly.
SOCKET_TIMEOUT = 1.0
#: How long leaving a layer's ``async with`` may take, whatever the network does.
EXIT_BOUND = 10.0
#: How long a receive may take once the network is healthy again.
RECOVERY_BOUND = 15.0
ON_DISCONNECT = "test.disconnect"
ON_RECONNECT = "test.reconnect"

Layer = QueueLayer | PubSubLayer


def through(proxy: FaultProxy) -> list[dict[str, object]]:
    """``hosts`` for a layer that talks to Redis through ``proxy``, with short deadlines."""
    return [
        {
            "address": proxy.url,
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
        }
    ]


class Ledger:
    """What was sent (accepted, or attempted and failed) and what was received."""

    def __init__(self) -> None:
        self.next_id = 0
        self.accepted: set[int] = set()
        self.failed: set[int] = set()
        self.received: Counter[int] = Counter()

    async def send(
        self,
        layer: Layer,
        channel: str,
        *,
        expect: type[Exception] | None = None,
        blob: bytes = b"",
    ) -> int:
        """Send one numbered message; fail the test unless it fails exactly as ``expect``ed."""
        number = self.next_id
        self.next_id += 1
        message: dict[str, Any] = {"type": "test.message", "n": number}
        if blob:
            message["blob"] = blob
        if expect is None:
            await layer.send(channel, message)
            self.accepted.add(number)
            return number
        with pytest.raises(expect):
            await layer.send(channel, message)
        self.failed.add(number)
        return number

    async def send_eventually(self, layer: Layer, channel: str) -> int:
        """Send until accepted: a pool refuses calls at once while it backs off from failures."""
        with anyio.fail_after(RECOVERY_BOUND):
            while True:
                try:
                    return await self.send(layer, channel)
                except RedisConnectionError:
                    self.failed.add(self.next_id - 1)
                    await anyio.sleep(0.05)

    async def receive(self, layer: Layer, channel: str, timeout: float = RECOVERY_BOUND) -> int:
        """Receive the next numbered message (control messages are returned as -1)."""
        with anyio.fail_after(timeout):
            message = await layer.receive(channel)
        if message["type"] != "test.message":
            return -1
        number: int = message["n"]
        self.received[number] += 1
        return number

    async def receive_all(self, layer: Layer, channel: str, numbers: set[int]) -> None:
        """Receive until every one of ``numbers`` has arrived (others may arrive in between)."""
        while not numbers <= set(self.received):
            await self.receive(layer, channel)

    def check(self, *, exactly_once: set[int] | None = None) -> None:
        """Nothing twice, nothing unknown, and ``exactly_once`` (default: every accepted) once."""
        duplicates = {n for n, count in self.received.items() if count > 1}
        assert not duplicates, f"received more than once: {sorted(duplicates)}"
        unknown = set(self.received) - self.accepted - self.failed
        assert not unknown, f"received but never sent: {sorted(unknown)}"
        wanted = self.accepted if exactly_once is None else exactly_once
        missing = wanted - set(self.received)
        assert not missing, f"accepted but never received: {sorted(missing)}"


def all_tasks(anyio_backend: str) -> set[object]:
    """Every task of the event loop that has not finished."""
    if anyio_backend == "asyncio":
        return {task for task in asyncio.all_tasks() if not task.done()}
    import trio

    tasks: set[object] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is not None:
            tasks.add(task)
            pending += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return tasks


@contextlib.asynccontextmanager
async def no_leftovers(
    anyio_backend: str, bound: float = 60.0
) -> AsyncIterator[contextlib.AsyncExitStack]:
    """An exit stack for proxies and layers; checks that nothing outlives it.

    Leaving it closes what was entered (layers before their proxies), which
    must take less than :data:`EXIT_BOUND`; afterwards no task started inside
    is left, on either backend. The whole block must end within ``bound`` seconds.
    """
    before = all_tasks(anyio_backend)
    with anyio.fail_after(bound):
        async with contextlib.AsyncExitStack() as stack:
            yield stack
            # The layers are still open here: leave them (and the proxies) in time.
            started = anyio.current_time()
            await stack.aclose()
            elapsed = anyio.current_time() - started
            assert elapsed < EXIT_BOUND, f"leaving the layers took {elapsed:.1f} s"
    await anyio.lowlevel.checkpoint()  # let finished tasks be reaped
    left = all_tasks(anyio_backend) - before
    assert not left, f"tasks outlived the layers: {left}"


async def proxy_to(stack: contextlib.AsyncExitStack, server: RedisServer) -> FaultProxy:
    return await stack.enter_async_context(run_fault_proxy(server.address))


async def queue_layer(stack: contextlib.AsyncExitStack, hosts: object) -> QueueLayer:
    return await stack.enter_async_context(open_redis_layer(hosts=hosts, capacity=1000))


async def pubsub_layer(stack: contextlib.AsyncExitStack, hosts: object) -> PubSubLayer:
    return await stack.enter_async_context(
        open_pubsub_layer(
            hosts=hosts, capacity=1000, on_disconnect=ON_DISCONNECT, on_reconnect=ON_RECONNECT
        )
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def blocked_clients(server: RedisServer) -> int:
    return int(server.info("clients")["blocked_clients"])


async def timed(call: Awaitable[object]) -> float:
    started = anyio.current_time()
    await call
    return anyio.current_time() - started


# -- the queue layer ----------------------------------------------------------------


async def test_queue_latency(anyio_backend: str, redis_url: str, redis_server: RedisServer) -> None:
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        layer = await queue_layer(stack, through(proxy))
        local = await layer.new_channel()
        proxy.set_latency(0.05)
        sent: dict[str, list[int]] = {local: [], "worker": []}
        for _ in range(10):
            for channel, numbers in sent.items():
                numbers.append(await ledger.send(layer, channel))
        for channel, numbers in sent.items():
            assert [await ledger.receive(layer, channel) for _ in numbers] == numbers
        proxy.heal()
    ledger.check()


async def test_queue_blackhole_fails_senders_in_time_and_exits(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Under a blackhole, ``send()`` fails within ``socket_timeout``; the layer still exits."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        receiver = await queue_layer(stack, [redis_url])
        sender = await queue_layer(stack, through(proxy))
        local = await receiver.new_channel()
        await ledger.send(sender, local)
        await ledger.send(sender, "worker")
        proxy.blackhole()
        # Concurrent sends waiting on the shared connection all fail by its deadline...
        started = anyio.current_time()
        async with anyio.create_task_group() as senders:
            for channel in (local, "worker") * 5:
                senders.start_soon(
                    lambda c=channel: ledger.send(sender, c, expect=RedisTimeoutError)
                )
        assert anyio.current_time() - started < SOCKET_TIMEOUT + 2
        # ... and later ones by a new connection's connect deadline (or at once, while
        # the pool backs off from that failure).
        for channel in (local, "worker"):
            elapsed = await timed(ledger.send(sender, channel, expect=RedisTimeoutError))
            assert elapsed < SOCKET_TIMEOUT + 2
        with pytest.raises(RedisTimeoutError):
            await sender.group_send("room", {"type": "test.group"})
        # Still blackholed: the sender's layer is left (by no_leftovers) within EXIT_BOUND.
        await ledger.receive_all(receiver, local, {0})
        await ledger.receive_all(receiver, "worker", {1})
        # Sends that timed out were held by the blackhole and never reached Redis.
        assert redis_server.execute("ZCARD", f"asgi{local.split('!')[0]}!") == 0
    ledger.check()


async def test_queue_blocked_receivers_recover_after_heal(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Receivers blocked in ``receive()`` across a short blackhole get what was sent meanwhile."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await queue_layer(stack, [redis_url])  # not partitioned
        receiver = await queue_layer(stack, through(proxy))
        local = await receiver.new_channel()
        got: dict[str, list[int]] = {local: [], "worker": []}

        async def receive_two(channel: str) -> None:
            for _ in range(2):
                got[channel].append(await ledger.receive(receiver, channel))

        async with anyio.create_task_group() as receivers:
            receivers.start_soon(receive_two, local)
            receivers.start_soon(receive_two, "worker")
            await wait_for(lambda: blocked_clients(redis_server) == 2)
            proxy.blackhole()
            during = [await ledger.send(sender, channel) for channel in (local, "worker")]
            await anyio.sleep(1.5)
            assert got == {local: [], "worker": []}  # held by the blackhole
            proxy.heal()
            after = [await ledger.send(sender, channel) for channel in (local, "worker")]
        assert got == {local: [during[0], after[0]], "worker": [during[1], after[1]]}
    ledger.check()


async def test_queue_layer_with_blocked_receivers_exits_under_a_blackhole(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Leaving the layer while its receivers are blocked behind a blackhole is still bounded.

    The pops blocked on the server go away with their connections once the
    network heals, and the channel is served by the next receiver.
    """
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await queue_layer(stack, [redis_url])
        async with open_redis_layer(hosts=through(proxy)) as receiver:
            local = await receiver.new_channel()
            async with anyio.create_task_group() as receivers:
                receivers.start_soon(receiver.receive, local)
                receivers.start_soon(receiver.receive, "worker")
                await wait_for(lambda: blocked_clients(redis_server) == 2)
                proxy.blackhole()
                await anyio.sleep(0.2)
                receivers.cancel_scope.cancel()  # cancelled behind the blackhole
            started = anyio.current_time()
        elapsed = anyio.current_time() - started
        assert elapsed < EXIT_BOUND
        proxy.heal()
        # The server-side blocked pops are gone with their connections; the
        # worker queue is served by the next receiver.
        await wait_for(lambda: blocked_clients(redis_server) == 0, timeout=RECOVERY_BOUND)
        await ledger.send(sender, "worker")
        await ledger.receive_all(sender, "worker", {0})
    ledger.check()


async def test_pubsub_layer_exits_under_a_blackhole(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        async with open_pubsub_layer(hosts=through(proxy)) as receiver:
            channel = await subscribe(receiver, redis_server)
            await receiver.group_add("room", channel)
            async with anyio.create_task_group() as receivers:
                receivers.start_soon(receiver.receive, channel)
                proxy.blackhole()
                await anyio.sleep(0.2)
                receivers.cancel_scope.cancel()
            started = anyio.current_time()
        assert anyio.current_time() - started < EXIT_BOUND
        proxy.heal()


@pytest.mark.slow
async def test_queue_blocked_read_notices_a_blackhole(
    anyio_backend: str, redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A pop blocked behind a blackhole gives up after BLOCK_SECONDS + BLOCK_GRACE, then recovers.

    Measured: the reader of process-local channels and a normal-channel
    receiver each log "waiting for Redis" about 15 s after the blackhole
    began (5 s server-side block + 10 s grace), and deliver again once healed.
    """
    bound = BLOCK_SECONDS + BLOCK_GRACE
    ledger = Ledger()
    caplog.set_level(logging.WARNING, logger="anyio_layer")
    async with no_leftovers(anyio_backend, bound=120) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await queue_layer(stack, [redis_url])
        receiver = await queue_layer(stack, through(proxy))
        local = await receiver.new_channel()
        got: list[int] = []

        async def receive_one(channel: str) -> None:
            got.append(await ledger.receive(receiver, channel, timeout=bound + 30))

        async with anyio.create_task_group() as receivers:
            receivers.start_soon(receive_one, local)
            receivers.start_soon(receive_one, "worker")
            await wait_for(lambda: blocked_clients(redis_server) == 2)
            proxy.blackhole()
            started = anyio.current_time()

            def noticed() -> set[str]:
                waiting = {r.getMessage() for r in caplog.records if "waiting for Redis" in r.msg}
                return {kind for kind in ("reader", "receive(") if any(kind in w for w in waiting)}

            await wait_for(lambda: noticed() == {"reader", "receive("}, timeout=bound + 10)
            detected = anyio.current_time() - started
            print(f"blocked pops noticed the blackhole after {detected:.1f} s (bound {bound} s)")
            assert bound - 1 <= detected <= bound + 5
            proxy.heal()
            await ledger.send(sender, local)
            await ledger.send(sender, "worker")
        assert sorted(got) == [0, 1]
    ledger.check()


async def test_queue_reply_cut_mid_way(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """A send (and a group_send) whose reply is cut fails; later calls work; nothing is doubled."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        receiver = await queue_layer(stack, [redis_url])
        sender = await queue_layer(stack, through(proxy))
        local = await receiver.new_channel()
        await receiver.group_add("room", local)
        for channel in (local, "worker"):
            await ledger.send(sender, channel)
            proxy.cut_replies(after=1)
            await ledger.send(sender, channel, expect=RedisConnectionError)
            proxy.heal()
            await ledger.send(sender, channel)
        await sender.group_send("room", {"type": "test.message", "n": ledger.next_id})
        ledger.accepted.add(ledger.next_id)
        ledger.next_id += 1
        # The group's member list is an array reply: cut inside it.
        proxy.cut_replies(after=3)
        with pytest.raises(RedisConnectionError):
            await sender.group_send("room", {"type": "test.message", "n": ledger.next_id})
        ledger.next_id += 1  # never sent: the members were not read
        proxy.heal()
        await sender.group_send("room", {"type": "test.message", "n": ledger.next_id})
        ledger.accepted.add(ledger.next_id)
        ledger.next_id += 1
        await ledger.receive_all(receiver, local, {0, 2, 6, 8})
        await ledger.receive_all(receiver, "worker", {3, 5})
        # The cut sends did run on the server: they arrive too, once.
        assert ledger.received[1] == ledger.received[4] == 1
        assert sender.statistics().reconnects >= 2
    ledger.check()


async def test_queue_reset(anyio_backend: str, redis_url: str, redis_server: RedisServer) -> None:
    """Resets fail the sends in flight and break blocked pops; both sides carry on."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        to_sender = await proxy_to(stack, redis_server)
        to_receiver = await proxy_to(stack, redis_server)
        sender = await queue_layer(stack, through(to_sender))
        receiver = await queue_layer(stack, through(to_receiver))
        local = await receiver.new_channel()
        got: dict[str, list[int]] = {local: [], "worker": []}

        async def receive_two(channel: str) -> None:
            for _ in range(2):
                got[channel].append(await ledger.receive(receiver, channel))

        async with anyio.create_task_group() as receivers:
            receivers.start_soon(receive_two, local)
            receivers.start_soon(receive_two, "worker")
            await wait_for(lambda: blocked_clients(redis_server) == 2)
            await sender.group_send("nobody", {"type": "test.warm-up"})  # connected now
            # Sends in flight (the latency holds them) when the connection is reset.
            to_sender.set_latency(0.5)
            async with anyio.create_task_group() as in_flight:
                for channel in (local, "worker") * 5:
                    in_flight.start_soon(
                        lambda c=channel: ledger.send(sender, c, expect=RedisConnectionError)
                    )
                await anyio.sleep(0.2)
                to_sender.reset()
            to_sender.heal()
            # Blocked pops with nothing popped yet: their connections are reset.
            to_receiver.reset()
            await wait_for(lambda: blocked_clients(redis_server) == 2, timeout=RECOVERY_BOUND)
            first = [await ledger.send(sender, channel) for channel in (local, "worker")]
            second = [await ledger.send(sender, channel) for channel in (local, "worker")]
        assert got == {local: [first[0], second[0]], "worker": [first[1], second[1]]}
        assert to_sender.statistics().connections_reset >= 1
        assert receiver.statistics().messages_received == 4
    ledger.check()


async def test_queue_refused(anyio_backend: str, redis_url: str, redis_server: RedisServer) -> None:
    """While the server refuses connections, calls fail fast; they work again afterwards."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        receiver = await queue_layer(stack, [redis_url])
        sender = await queue_layer(stack, through(proxy))
        local = await receiver.new_channel()
        await ledger.send(sender, local)
        proxy.refuse()
        proxy.reset()  # the open connection goes; new ones are refused
        for channel in (local, "worker", local):
            elapsed = await timed(ledger.send(sender, channel, expect=RedisConnectionError))
            assert elapsed < SOCKET_TIMEOUT  # refused, not timed out
        proxy.heal()
        local_after = await ledger.send_eventually(sender, local)
        worker_after = await ledger.send(sender, "worker")
        await ledger.receive_all(receiver, local, {0, local_after})
        await ledger.receive_all(receiver, "worker", {worker_after})
        assert proxy.statistics().connections_refused >= 1
    ledger.check()


async def test_queue_receivers_ride_out_refused_connections(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Receivers whose connections are reset and refused for a while resume on their own."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await queue_layer(stack, [redis_url])
        receiver = await queue_layer(stack, through(proxy))
        local = await receiver.new_channel()
        got: dict[str, list[int]] = {local: [], "worker": []}

        async def receive_one(channel: str) -> None:
            got[channel].append(await ledger.receive(receiver, channel))

        async with anyio.create_task_group() as receivers:
            receivers.start_soon(receive_one, local)
            receivers.start_soon(receive_one, "worker")
            await wait_for(lambda: blocked_clients(redis_server) == 2)
            proxy.refuse()
            proxy.reset()
            await wait_for(lambda: proxy.statistics().connections_refused >= 2)
            sent = [await ledger.send(sender, channel) for channel in (local, "worker")]
            await anyio.sleep(0.5)
            assert got == {local: [], "worker": []}
            proxy.heal()
        assert got == {local: [sent[0]], "worker": [sent[1]]}
    ledger.check()


async def test_queue_large_messages_through_a_narrow_link(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    ledger = Ledger()
    blob = bytes(range(256)) * 4096  # 1 MiB
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        layer = await stack.enter_async_context(
            open_redis_layer(hosts=[{"address": proxy.url, "socket_timeout": 5}])
        )
        local = await layer.new_channel()
        proxy.set_bandwidth(8 * 1024 * 1024)  # 1 MiB takes about 1/8 s each way
        other = await stack.enter_async_context(open_redis_layer(hosts=[redis_url]))
        for _ in range(2):
            await ledger.send(other, local, blob=blob)  # through Redis, not in memory
            await ledger.send(layer, "worker", blob=blob)
        for channel in (local, "worker"):
            for _ in range(2):
                with anyio.fail_after(RECOVERY_BOUND):
                    message = await layer.receive(channel)
                assert message["blob"] == blob
                ledger.received[message["n"]] += 1
        proxy.heal()
    ledger.check()


async def test_queue_large_send_slower_than_its_deadline(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """``socket_timeout`` covers sending the command too: a slow 1 MB send times out.

    Its bytes may still be on their way (in socket buffers, here the
    proxy's): such a send may be delivered anyway, once.
    """
    ledger = Ledger()
    blob = b"x" * 1_000_000
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        receiver = await queue_layer(stack, [redis_url])
        sender = await queue_layer(stack, through(proxy))
        await ledger.send(sender, "worker")
        proxy.set_bandwidth(500_000)  # 2 s for the message, the deadline is 1 s
        late = await ledger.send(sender, "worker", blob=blob, expect=RedisTimeoutError)
        proxy.heal()
        after = await ledger.send_eventually(sender, "worker")
        await ledger.receive_all(receiver, "worker", {0, after})
        with anyio.move_on_after(0.5):  # the late one may still be on its way
            await ledger.receive(receiver, "worker")
        assert ledger.received[late] <= 1
    ledger.check()


# -- the pub/sub layer ----------------------------------------------------------------


async def subscribe(layer: PubSubLayer, redis_server: RedisServer) -> str:
    channel = await layer.new_channel()
    reply = await redis_server.aexecute("PUBSUB", "NUMSUB", channel, decode=True)
    assert reply == [channel, 1]
    return channel


async def wait_for_marker(ledger: Ledger, layer: PubSubLayer, channel: str, kind: str) -> None:
    """Receive until the control message ``kind`` arrives (numbered messages are recorded)."""
    while True:
        with anyio.fail_after(RECOVERY_BOUND):
            message = await layer.receive(channel)
        if message["type"] == kind:
            return
        assert message["type"] == "test.message", message
        ledger.received[message["n"]] += 1


async def test_pubsub_latency(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        layer = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(layer, redis_server)
        proxy.set_latency(0.05)
        for _ in range(20):
            await ledger.send(layer, channel)
        await ledger.receive_all(layer, channel, ledger.accepted)
        proxy.heal()
    ledger.check()


async def test_pubsub_blackhole_fails_senders_in_time_and_exits(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        receiver = await pubsub_layer(stack, [redis_url])
        sender = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(receiver, redis_server)
        await ledger.send(sender, channel)
        proxy.blackhole()
        elapsed = await timed(ledger.send(sender, channel, expect=RedisTimeoutError))
        assert elapsed < SOCKET_TIMEOUT + 2
        with pytest.raises(RedisTimeoutError):
            await sender.group_send("room", {"type": "test.group"})
        await ledger.receive_all(receiver, channel, {0})
        # Still blackholed: the sender's layer is left (by no_leftovers) within EXIT_BOUND.
    ledger.check()


async def test_pubsub_subscriber_recovers_after_heal(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """A short blackhole holds published messages; after heal they arrive, without a gap."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await pubsub_layer(stack, [redis_url])
        receiver = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(receiver, redis_server)
        got: list[int] = []

        async def receive_two() -> None:
            for _ in range(2):
                got.append(await ledger.receive(receiver, channel))

        async with anyio.create_task_group() as receivers:
            receivers.start_soon(receive_two)
            proxy.blackhole()
            during = await ledger.send(sender, channel)  # Redis has it, the proxy holds it
            await anyio.sleep(1.5)
            assert got == []
            proxy.heal()
            after = await ledger.send(sender, channel)
        assert got == [during, after]  # no ON_DISCONNECT: the subscriber never noticed
        assert receiver.statistics().disconnects == 0
    ledger.check()


@pytest.mark.slow
async def test_pubsub_subscriber_notices_a_blackhole(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """A silent subscriber connection is given up after about 2 x HEALTH_CHECK_INTERVAL.

    Measured: ON_DISCONNECT arrives about 30 s after the last data (15 s of
    silence, then a PING that gets no answer for another 15 s); once healed,
    the subscriber reconnects and resubscribes (ON_RECONNECT), and messages
    published after that arrive.
    """
    bound = 2 * HEALTH_CHECK_INTERVAL
    ledger = Ledger()
    async with no_leftovers(anyio_backend, bound=120) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await pubsub_layer(stack, [redis_url])
        receiver = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(receiver, redis_server)
        await ledger.send(sender, channel)
        await ledger.receive_all(receiver, channel, {0})
        proxy.blackhole()
        started = anyio.current_time()
        with anyio.fail_after(bound + 10):
            assert (await receiver.receive(channel))["type"] == ON_DISCONNECT
        detected = anyio.current_time() - started
        print(f"the subscriber noticed the blackhole after {detected:.1f} s (bound {bound} s)")
        assert bound - 1 <= detected <= bound + 5
        proxy.heal()
        await wait_for_marker(ledger, receiver, channel, ON_RECONNECT)
        await ledger.send(sender, channel)
        await ledger.receive_all(receiver, channel, {1})
    ledger.check()


async def test_pubsub_reply_cut_mid_way(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        receiver = await pubsub_layer(stack, [redis_url])
        sender = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(receiver, redis_server)
        await ledger.send(sender, channel)
        proxy.cut_replies(after=1)
        cut = await ledger.send(sender, channel, expect=RedisConnectionError)
        proxy.heal()
        await ledger.send(sender, channel)
        await ledger.receive_all(receiver, channel, {0, 2})
        assert ledger.received[cut] == 1  # the PUBLISH ran; its reply was lost
    ledger.check()


async def test_pubsub_subscriber_message_cut_mid_way(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """A published message cut on its way to the subscriber is lost whole, never half delivered."""
    ledger = Ledger()
    blob = b"z" * 200_000
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await pubsub_layer(stack, [redis_url])
        receiver = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(receiver, redis_server)
        await ledger.send(sender, channel)
        await ledger.receive_all(receiver, channel, {0})
        proxy.cut_replies(after=1000)
        cut = await ledger.send(sender, channel, blob=blob)
        await wait_for_marker(ledger, receiver, channel, ON_DISCONNECT)
        await wait_for_marker(ledger, receiver, channel, ON_RECONNECT)
        after = await ledger.send(sender, channel, blob=blob)
        await ledger.receive_all(receiver, channel, {after})
        assert cut not in ledger.received  # published while the subscriber was going down
        assert receiver.statistics().decode_errors == 0
    ledger.check(exactly_once={0, after})


async def test_pubsub_reset(anyio_backend: str, redis_url: str, redis_server: RedisServer) -> None:
    """Resets fail the sends in flight; a reset subscriber reports the gap and resubscribes."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        to_sender = await proxy_to(stack, redis_server)
        to_receiver = await proxy_to(stack, redis_server)
        sender = await pubsub_layer(stack, through(to_sender))
        receiver = await pubsub_layer(stack, through(to_receiver))
        channel = await subscribe(receiver, redis_server)
        await ledger.send(sender, channel)
        to_sender.set_latency(0.5)
        async with anyio.create_task_group() as in_flight:
            for _ in range(5):
                in_flight.start_soon(
                    lambda: ledger.send(sender, channel, expect=RedisConnectionError)
                )
            await anyio.sleep(0.2)
            to_sender.reset()
        to_sender.heal()
        await ledger.receive_all(receiver, channel, {0})
        to_receiver.reset()
        await wait_for_marker(ledger, receiver, channel, ON_DISCONNECT)
        await wait_for_marker(ledger, receiver, channel, ON_RECONNECT)
        after = {await ledger.send(sender, channel) for _ in range(3)}
        await ledger.receive_all(receiver, channel, after)
        stats = receiver.statistics()
        assert stats.disconnects == stats.reconnects == 1
    ledger.check()


async def test_pubsub_refused(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        receiver = await pubsub_layer(stack, [redis_url])
        sender = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(receiver, redis_server)
        await ledger.send(sender, channel)
        proxy.refuse()
        proxy.reset()
        for _ in range(3):
            elapsed = await timed(ledger.send(sender, channel, expect=RedisConnectionError))
            assert elapsed < SOCKET_TIMEOUT
        proxy.heal()
        await ledger.send_eventually(sender, channel)
        await ledger.receive_all(receiver, channel, ledger.accepted)
    ledger.check()


async def test_pubsub_subscriber_rides_out_refused_connections(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    """A subscriber reset and refused for a while reports the gap and resubscribes on its own."""
    ledger = Ledger()
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        sender = await pubsub_layer(stack, [redis_url])
        receiver = await pubsub_layer(stack, through(proxy))
        channel = await subscribe(receiver, redis_server)
        await receiver.group_add("room", channel)
        proxy.refuse()
        proxy.reset()
        await wait_for_marker(ledger, receiver, channel, ON_DISCONNECT)
        await wait_for(lambda: proxy.statistics().connections_refused >= 2)
        proxy.heal()
        await wait_for_marker(ledger, receiver, channel, ON_RECONNECT)
        after = {await ledger.send(sender, channel)}
        await sender.group_send("room", {"type": "test.message", "n": ledger.next_id})
        ledger.accepted.add(ledger.next_id)
        after.add(ledger.next_id)
        ledger.next_id += 1
        await ledger.receive_all(receiver, channel, after)
        stats = receiver.statistics()
        assert stats.disconnects == stats.reconnects == 1
    ledger.check()


async def test_pubsub_large_messages_through_a_narrow_link(
    anyio_backend: str, redis_url: str, redis_server: RedisServer
) -> None:
    ledger = Ledger()
    blob = bytes(range(256)) * 4096  # 1 MiB
    async with no_leftovers(anyio_backend) as stack:
        proxy = await proxy_to(stack, redis_server)
        layer = await stack.enter_async_context(
            open_pubsub_layer(hosts=[{"address": proxy.url, "socket_timeout": 5}])
        )
        channel = await subscribe(layer, redis_server)
        proxy.set_bandwidth(8 * 1024 * 1024)
        for _ in range(2):
            await ledger.send(layer, channel, blob=blob)
        for _ in range(2):
            with anyio.fail_after(RECOVERY_BOUND):
                message = await layer.receive(channel)
            assert message["blob"] == blob
            ledger.received[message["n"]] += 1
        proxy.heal()
    ledger.check()
