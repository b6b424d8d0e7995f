"""Time ``anyio_layer.inspect`` on a large key space: one server, two shards, a cluster.

Launches private servers on the loopback (``anyio_layer.testing``; never a
Redis that happens to run), writes a queue-layer key space of ``--keys``
keys (default 100,000) in the layer's own layout, and times
:func:`anyio_layer.inspect.read_snapshot` under asyncio and trio, plus one
run of the command (``python -m anyio_layer summary --json``, a new process,
so imports and connecting included). The key space is:

    70%  channel keys, 1-3 messages each (ZADD, EXPIRE 3600)
    20%  process keys (``specific.<client>!``), 1 message each
    10%  group keys, 5 members each (3 process-local channels, 2 normal)

Every run checks that the snapshot found every key (and nothing else), so a
reader that skips keys cannot look fast. The fastest of ``--repeats`` rounds
is shown, and the median.

Reproduce::

    python benchmarks/bench_inspect.py                      # about a minute
    python benchmarks/bench_inspect.py --keys 20000 --only single
    python benchmarks/bench_inspect.py --json /tmp/inspect.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio

from anyio_layer.common.sharding import Router
from anyio_layer.inspect import read_snapshot
from anyio_layer.redis.cluster import open_cluster
from anyio_layer.redis.pool import open_pool
from anyio_layer.testing import RedisServer, find_redis_server
from anyio_layer.testing.cluster import RedisCluster

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "asgi"
BATCH = 2000


Items = list[tuple[str, list[tuple[float, str]]]]


def key_space(total: int) -> Items:
    """``(name, [(score, member)])`` for every key (a group's name as ``:group:<group>``)."""
    now = time.time()
    channels = int(total * 0.7)
    processes = int(total * 0.2)
    groups = total - channels - processes
    items: Items = []
    for index in range(channels):
        items.append(
            (f"chat.{index}", [(now - j, f"msg-{index}-{j}") for j in range(1 + index % 3)])
        )
    clients = [f"specific.{index:032x}!" for index in range(processes)]
    for client in clients:
        items.append((client, [(now, "msg")]))
    for index in range(groups):
        members = [f"{clients[(index * 3 + j) % processes]}{j:032x}" for j in range(3)]
        members += [f"chat.{(index * 2 + j) % channels}" for j in range(2)]
        items.append((f":group:room{index}", [(now - 60, member) for member in members]))
    return items


def commands(key: bytes, entries: list[tuple[float, str]]) -> list[tuple[Any, ...]]:
    flat: list[Any] = [part for score, member in entries for part in (repr(score), member)]
    return [("ZADD", key, *flat), ("EXPIRE", key, 3600)]


def key_of(name: str, cluster: bool) -> bytes:
    if name.startswith(":group:"):
        group = name[len(":group:") :]
        return (f"{PREFIX}:group:{{{group}}}" if cluster else f"{PREFIX}:group:{group}").encode()
    return (f"{PREFIX}{{{name}}}" if cluster else PREFIX + name).encode()


async def fill_servers(urls: Sequence[str], items: Items) -> None:
    router = Router(PREFIX, len(urls))
    async with contextlib.AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(open_pool(url)) for url in urls]
        per_shard: list[list[tuple[Any, ...]]] = [[] for _ in urls]
        for name, entries in items:
            if name.startswith(":group:"):
                shard = router.group_shard(name[len(":group:") :])
            else:
                shard = router.channel_shard(name)
            per_shard[shard].extend(commands(key_of(name, False), entries))
        for pool, batch in zip(pools, per_shard, strict=True):
            for start in range(0, len(batch), BATCH):
                await pool.pipeline(batch[start : start + BATCH])


async def fill_cluster(seeds: list[str], items: Items) -> None:
    async with open_cluster(seeds) as client:
        pairs = []
        for name, entries in items:
            key = key_of(name, True)
            pairs.extend((key, command) for command in commands(key, entries))
        for start in range(0, len(pairs), BATCH):
            await client.pipeline_by_key(pairs[start : start + BATCH])


def time_snapshot(hosts: list[str], backend: str, expected: int) -> float:
    async def run() -> float:
        started = time.perf_counter()
        snapshot = await read_snapshot(hosts, PREFIX)
        elapsed = time.perf_counter() - started
        found = len(snapshot.channels) + len(snapshot.groups)
        if found != expected or snapshot.other_keys:
            raise SystemExit(f"FAILED: found {found} keys (+{snapshot.other_keys}), not {expected}")
        return elapsed

    return anyio.run(run, backend=backend)


def time_command(hosts: list[str], expected: int) -> float:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "anyio_layer", "summary", "--json", "--hosts", ",".join(hosts)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"FAILED: the command exited with {result.returncode}: {result.stderr}")
    summary = json.loads(result.stdout)
    found = summary["groups"] + summary["channels"] + summary["process_keys"]
    if found != expected:
        raise SystemExit(f"FAILED: the command found {found} keys, not {expected}")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", action="append", choices=("single", "shards", "cluster"), help="a subset"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results there")
    args = parser.parse_args(argv)
    items = key_space(args.keys)
    deployments = args.only or ["single", "shards", "cluster"]
    binary = find_redis_server()
    print(f"{args.keys:,} keys, server {binary}, {args.repeats} rounds (best / median)")
    results: list[dict[str, Any]] = []
    for deployment in deployments:
        with ExitStack() as stack:
            hosts: list[str]
            fill: Callable[[list[str], Items], Awaitable[None]]
            if deployment == "cluster":
                cluster = stack.enter_context(RedisCluster.launch(primaries=3, replicas=0))
                hosts = cluster.hosts
                fill = fill_cluster
            else:
                count = 1 if deployment == "single" else 2
                servers = [stack.enter_context(RedisServer.launch()) for _ in range(count)]
                hosts = [server.url for server in servers]
                fill = fill_servers
            started = time.perf_counter()
            anyio.run(fill, hosts, items)
            print(f"\n{deployment}: filled in {time.perf_counter() - started:.1f} s")
            for backend in ("asyncio", "trio"):
                times = [time_snapshot(hosts, backend, args.keys) for _ in range(args.repeats)]
                row = {
                    "deployment": deployment,
                    "what": f"read_snapshot ({backend})",
                    "best_s": round(min(times), 3),
                    "median_s": round(statistics.median(times), 3),
                    "keys_per_s": round(args.keys / min(times)),
                }
                results.append(row)
                print(
                    f"  {row['what']:<30} {row['best_s']:7.2f} s  (median {row['median_s']:.2f} s)"
                    f"  {row['keys_per_s']:>9,} keys/s"
                )
            times = [time_command(hosts, args.keys) for _ in range(args.repeats)]
            row = {
                "deployment": deployment,
                "what": "python -m anyio_layer summary",
                "best_s": round(min(times), 3),
                "median_s": round(statistics.median(times), 3),
                "keys_per_s": round(args.keys / min(times)),
            }
            results.append(row)
            print(
                f"  {row['what']:<30} {row['best_s']:7.2f} s  (median {row['median_s']:.2f} s)"
                f"  {row['keys_per_s']:>9,} keys/s"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"keys": args.keys, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
