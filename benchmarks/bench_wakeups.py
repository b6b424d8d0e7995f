"""The floor under fan-out: what one delivery to one waiting task costs, per backend.

Usage::

    python benchmarks/bench_wakeups.py                 # 1000 members, 300 messages
    python benchmarks/bench_wakeups.py --members 100 --messages 2000

``group_send`` to a group with many local members ends, in every library, in
one task wake-up and one ``receive()`` per member. This measures that part
alone, with no Redis round trip in the timed loop, so the ratios of
``bench_pubsub.py``'s and ``bench_layer.py``'s big fan-out cases can be read
against it:

* ``wake-up``: the bare wake-up of a waiting task and its return to the
  scheduler (``anyio_layer.common.wakeup.Waiters``), nothing else;
* ``asyncio.Queue``: what channels_redis's pub/sub layer does per member
  (``put_nowait`` the payload into the member's queue, the receiver awaits
  ``get()`` and deserializes it), asyncio only;
* ``pub/sub layer``: our pub/sub layer's delivery (the subscriber's
  ``deliver()``, called directly, decodes once and files the message for every
  member) and ``receive()`` on each member.

Every receiver checks the sequence numbers it gets, as the benchmarks do.
Reported: CPU microseconds per delivery (the process's CPU time, the lowest
of ``--repeats`` rounds) and the number of garbage collections during the best
round. The pub/sub layer needs a server for its subscriptions (made before
timing): a private ``redis-server`` is started with
:class:`anyio_layer.testing.RedisServer` and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anyio_layer import open_pubsub_layer
from anyio_layer.common.wakeup import Waiters
from anyio_layer.testing import RedisServer

T = TypeVar("T")
Round = Callable[[int, int], Awaitable[tuple[float, int]]]


class Collections:
    """Counts garbage collections (all generations) while active."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.count += 1


async def timed(run: Callable[[], Awaitable[None]]) -> tuple[float, int]:
    collections = Collections()
    gc.collect()
    gc.callbacks.append(collections)
    try:
        cpu = time.process_time()
        await run()
        cpu = time.process_time() - cpu
    finally:
        gc.callbacks.remove(collections)
    return cpu, collections.count


def check(expected: int, seq: int) -> None:
    if seq != expected:
        raise RuntimeError(f"expected message #{expected}, got #{seq}")


class Rounds:
    """The driver's side of a round: it waits until every member has had the message."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.remaining = members
        self._done = Waiters()

    def member_done(self) -> None:
        self.remaining -= 1
        if not self.remaining:
            self.remaining = self.members
            self._done.wake_all()

    def all_done(self) -> Awaitable[None]:
        return self._done.wait()


async def time_members(
    member: Callable[[T], Coroutine[Any, Any, None]],
    items: Sequence[T],
    run: Callable[[], Awaitable[None]],
) -> tuple[float, int]:
    """Start one ``member`` task per item, let them all wait, then time ``run``."""
    async with anyio.create_task_group() as task_group:
        for item in items:
            task_group.start_soon(member, item)
        await anyio.wait_all_tasks_blocked()
        return await timed(run)


async def wake_ups(members: int, messages: int) -> tuple[float, int]:
    waiters = [Waiters() for _ in range(members)]
    rounds = Rounds(members)

    async def member(waiter: Waiters) -> None:
        for _ in range(messages):
            await waiter.wait()
            rounds.member_done()

    async def run() -> None:
        for _ in range(messages):
            for waiter in waiters:
                waiter.wake_all()
            await rounds.all_done()

    return await time_members(member, waiters, run)


async def asyncio_queues(members: int, messages: int) -> tuple[float, int]:
    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in range(members)]
    rounds = Rounds(members)
    payloads = [msgpack.packb({"type": "bench.message", "seq": seq}) for seq in range(messages)]

    async def member(queue: asyncio.Queue[bytes]) -> None:
        for expected in range(messages):
            check(expected, msgpack.unpackb(await queue.get())["seq"])
            rounds.member_done()

    async def run() -> None:
        for payload in payloads:
            for queue in queues:
                queue.put_nowait(payload)
            await rounds.all_done()

    return await time_members(member, queues, run)


def pubsub_layer(url: str) -> Round:
    async def measure(members: int, messages: int) -> tuple[float, int]:
        async with open_pubsub_layer(hosts=[url], prefix="benchwake", capacity=1000) as layer:
            channels = [await layer.new_channel() for _ in range(members)]
            for channel in channels:
                await layer.group_add("fanout", channel)
            # The subscriber's delivery callback (a benchmark may poke at internals).
            deliver = layer._subscriptions.events.deliver
            group_channel = layer._group_channel("fanout")
            payloads = [
                layer.serializer.serialize({"type": "bench.message", "seq": seq})
                for seq in range(messages)
            ]
            rounds = Rounds(members)

            async def member(channel: str) -> None:
                for expected in range(messages):
                    check(expected, (await layer.receive(channel))["seq"])
                    rounds.member_done()

            async def run() -> None:
                for payload in payloads:
                    deliver(group_channel, payload)
                    await rounds.all_done()

            return await time_members(member, channels, run)

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    server = RedisServer.launch()
    try:
        url = f"redis://{server.host}:{server.port}"
        cases: list[tuple[str, str, Round]] = [
            ("wake-up", "asyncio", wake_ups),
            ("wake-up", "trio", wake_ups),
            ("asyncio.Queue, channels_redis way", "asyncio", asyncio_queues),
            ("pub/sub layer", "asyncio", pubsub_layer(url)),
            ("pub/sub layer", "trio", pubsub_layer(url)),
        ]
        deliveries = args.members * args.messages
        print(f"{args.members} members x {args.messages} messages, best of {args.repeats}")
        print(f"{'what':<36}{'backend':<10}{'cpu us/delivery':>16}{'collections':>13}")
        for label, backend, measure in cases:
            results = [
                anyio.run(measure, args.members, args.messages, backend=backend)
                for _ in range(args.repeats)
            ]
            cpu, collections = min(results)
            print(f"{label:<36}{backend:<10}{cpu / deliveries * 1e6:>16.2f}{collections:>13}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
