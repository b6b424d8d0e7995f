"""What leased group memberships cost, and how fast they come back after Redis lost them.

Usage::

    python benchmarks/bench_leases.py                    # 10,000 memberships, both shapes
    python benchmarks/bench_leases.py --memberships 2000 --cycles 5

Starts private ``redis-server`` processes (no persistence) with
:class:`anyio_layer.testing.RedisServer` and opens one queue layer on each.
For each shape of 10,000 memberships (10,000 channels in 100 groups, and
10,000 channels in 10,000 groups, one each) it reports, per renewal cycle:

* round trips (pipelines sent; one per server is the design),
* Redis commands run (``total_commands_processed``),
* Redis CPU (``used_cpu_user + used_cpu_sys`` of the server, per cycle),
* client wall time per cycle.

Then the restore time: after ``FLUSHALL`` with every client connection
killed, and after SIGKILL plus restart, the time from the server accepting
commands again until the layer has put every membership back (nothing calls
the layer meanwhile). Each restore is measured ``--repeats`` times; the
median and the worst are shown.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anyio_layer import QueueLayer, open_redis_layer
from anyio_layer.redis.pool import ConnectionPool
from anyio_layer.testing import RedisServer


def redis_cpu(server: RedisServer) -> float:
    info = server.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def commands_processed(server: RedisServer) -> int:
    return int(server.info("stats")["total_commands_processed"])


def count_round_trips(pool: ConnectionPool) -> list[int]:
    """Make ``pool`` count its pipelines (a benchmark may poke at internals)."""
    counter = [0]
    pipeline = pool.pipeline

    async def counted(*args: Any, **kwargs: Any) -> list[object]:
        counter[0] += 1
        return await pipeline(*args, **kwargs)

    pool.pipeline = counted  # type: ignore[method-assign]
    return counter


async def join(layer: QueueLayer, memberships: int, groups: int) -> list[str]:
    channels = [await layer.new_channel() for _ in range(memberships)]
    limiter = anyio.CapacityLimiter(200)

    async def add(index: int, channel: str) -> None:
        async with limiter:
            await layer.group_add(f"group-{index % groups}", channel)

    async with anyio.create_task_group() as tg:
        for index, channel in enumerate(channels):
            tg.start_soon(add, index, channel)
    return channels


async def renewal_cost(
    server: RedisServer, memberships: int, groups: int, cycles: int
) -> dict[str, float]:
    async with open_redis_layer(hosts=[server.url]) as layer:
        await join(layer, memberships, groups)
        (pool,) = layer._keys.pools  # type: ignore[attr-defined]
        trips = count_round_trips(pool)
        await layer._leases.renew()  # warm up
        trips[0] = 0
        cpu_before, commands_before = redis_cpu(server), commands_processed(server)
        started = time.perf_counter()
        for _ in range(cycles):
            await layer._leases.renew()
        wall = (time.perf_counter() - started) / cycles
        # The two INFO calls between the samples are Redis commands too.
        commands = (commands_processed(server) - commands_before - 2) / cycles
        cpu = (redis_cpu(server) - cpu_before) / cycles
        assert layer.statistics().leased_memberships == memberships
        return {
            "round_trips": trips[0] / cycles,
            "commands": commands,
            "redis_cpu_ms": cpu * 1000,
            "wall_ms": wall * 1000,
        }


async def flush_and_kill(server: RedisServer) -> None:
    await server.aexecute("FLUSHALL")
    await server.aexecute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


async def sigkill_and_restart(server: RedisServer) -> None:
    await anyio.to_thread.run_sync(server.kill)
    await anyio.sleep(0.5)
    await anyio.to_thread.run_sync(server.start)


async def restore_times(
    server: RedisServer,
    memberships: int,
    groups: int,
    loss: Callable[[RedisServer], Awaitable[None]],
    repeats: int,
) -> list[float]:
    """Seconds from the server accepting commands to every membership being back."""
    times = []
    async with open_redis_layer(hosts=[server.url]) as layer:
        await join(layer, memberships, groups)
        channels_per_group = memberships // groups
        for _ in range(repeats):
            restored_before = layer.statistics().memberships_restored
            await loss(server)
            back_at = time.perf_counter()  # FLUSHALL returned / start() saw the server ready
            with anyio.fail_after(30):
                while True:
                    restored = layer.statistics().memberships_restored - restored_before
                    if restored >= memberships:
                        break
                    await anyio.sleep(0.005)  # polled: the layer has no event for it
            times.append(time.perf_counter() - back_at)
            card = server.execute("ZCARD", "asgi:group:group-0")
            assert card == channels_per_group, card
            await anyio.sleep(0.5)
    return times


async def main(arguments: argparse.Namespace) -> None:
    memberships = arguments.memberships
    shapes = [(100, "100 groups"), (memberships, f"{memberships:,} groups")]
    print(f"# Leased group memberships: {memberships:,} memberships, one server")
    print()
    print("| shape | round trips / cycle | commands / cycle | Redis CPU / cycle | wall / cycle |")
    print("|---|---|---|---|---|")
    for groups, label in shapes:
        server = RedisServer.launch()
        try:
            cost = await renewal_cost(server, memberships, groups, arguments.cycles)
        finally:
            server.close()
        print(
            f"| {memberships:,} channels in {label} | {cost['round_trips']:.0f} "
            f"| {cost['commands']:,.0f} | {cost['redis_cpu_ms']:.1f} ms "
            f"| {cost['wall_ms']:.1f} ms |"
        )
    print()
    print("| data loss | restore time (median) | restore time (worst) |")
    print("|---|---|---|")
    losses = {
        "FLUSHALL + killed connections": flush_and_kill,
        "SIGKILL + restart (0.5 s down)": sigkill_and_restart,
    }
    for name, loss in losses.items():
        server = RedisServer.launch()
        try:
            times = await restore_times(server, memberships, 100, loss, arguments.repeats)
        finally:
            server.close()
        print(f"| {name} | {statistics.median(times) * 1000:.0f} ms | {max(times) * 1000:.0f} ms |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--memberships", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    logging.getLogger("anyio_layer").setLevel(logging.ERROR)  # the "had lost" warnings
    anyio.run(main, args, backend=args.backend)
