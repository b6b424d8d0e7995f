"""Benchmark anyio_layer's Redis client against redis-py's asyncio client.

Three scenarios, each run for our client under asyncio and under trio, and
for ``redis.asyncio`` (with hiredis when installed), every one in its own
event loop, in one process::

    sequential   one task: SET k v, GET k, one round trip after another
    pipelined    one task: batches of 100 commands (50 SET/GET pairs) sent at once
    concurrent   50 tasks, each doing sequential SET/GET pairs

An "op" is one Redis command. Every GET is checked against the value its SET
wrote, so a client that drops or mismatches replies fails instead of looking
fast. See benchmarks/README.md for how to run it and read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final

import anyio
import redis
import redis.asyncio

from anyio_layer.redis.pool import open_pool
from anyio_layer.redis.protocol import Parser
from anyio_layer.testing import RedisServer

SCENARIOS: Final = ("sequential", "pipelined", "concurrent")
SCENARIO_TITLES: Final = {
    "sequential": "sequential SET/GET, 1 task",
    "pipelined": "pipelined, batches of 100",
    "concurrent": "concurrent SET/GET, 50 tasks",
}
TASKS: Final = 50
BATCH_SIZE: Final = 100  # commands per pipelined batch (half SET, half GET)
KEYS_PER_TASK: Final = 128  # keys cycle, values never repeat: stale replies are caught
VALUE_SIZE: Final = 32
KEY_PREFIX: Final = b"anyio-layer-bench:"
REDIS_PY: Final = "redis-py/asyncio"

# Counts at --scale 1, sized for roughly 1-2 minutes in total on a 2-core machine.
BASE_SEQUENTIAL_PAIRS: Final = 15_000
BASE_PIPELINED_BATCHES: Final = 3_000
BASE_CONCURRENT_PAIRS_PER_TASK: Final = 1_000
WARMUP_FRACTION: Final = 0.1


class VerificationError(AssertionError):
    """A reply was not what the benchmark wrote: the client is broken."""


# -- workload -----------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """How much work each scenario does (ops = 2 x pairs, or 100 x batches)."""

    sequential_pairs: int
    pipelined_batches: int
    concurrent_pairs_per_task: int

    @classmethod
    def scaled(cls, scale: float) -> Workload:
        return cls(
            sequential_pairs=max(1, round(BASE_SEQUENTIAL_PAIRS * scale)),
            pipelined_batches=max(1, round(BASE_PIPELINED_BATCHES * scale)),
            concurrent_pairs_per_task=max(1, round(BASE_CONCURRENT_PAIRS_PER_TASK * scale)),
        )

    def fraction(self, share: float) -> Workload:
        return Workload(
            sequential_pairs=max(1, round(self.sequential_pairs * share)),
            pipelined_batches=max(1, round(self.pipelined_batches * share)),
            concurrent_pairs_per_task=max(1, round(self.concurrent_pairs_per_task * share)),
        )

    def ops(self, scenario: str) -> int:
        if scenario == "sequential":
            return 2 * self.sequential_pairs
        if scenario == "pipelined":
            return BATCH_SIZE * self.pipelined_batches
        return 2 * TASKS * self.concurrent_pairs_per_task


def keys_for(scenario: str, task: int) -> list[bytes]:
    return [KEY_PREFIX + b"%s:%d:%d" % (scenario.encode(), task, n) for n in range(KEYS_PER_TASK)]


def all_keys() -> list[bytes]:
    return [
        key for scenario in SCENARIOS for task in range(TASKS) for key in keys_for(scenario, task)
    ]


def make_value(tag: bytes, i: int) -> bytes:
    return (tag + b":%d:" % i).ljust(VALUE_SIZE, b"x")


def check_set(reply: object) -> None:
    # redis-py turns +OK into True; ours returns b"OK".
    if reply is not True and reply != b"OK":
        raise VerificationError(f"SET replied {reply!r}")


def check_get(reply: object, expected: bytes) -> None:
    if reply != expected:
        raise VerificationError(f"GET returned {reply!r}, expected {expected!r}")


# -- clients ------------------------------------------------------------------

Command = tuple[str | bytes, ...]


@dataclass(frozen=True)
class Client:
    """The three things a scenario needs, bound to one client library."""

    #: ``await execute("SET", key, value)``: one command, its reply.
    execute: Callable[..., Awaitable[object]]
    #: ``await pipeline(commands)``: several commands in one round trip, their replies.
    pipeline: Callable[[list[Command]], Awaitable[list[object]]]
    #: How many connections to Redis the client has opened so far.
    connections: Callable[[], int]


@dataclass
class RunResult:
    """What one contender measured in one event loop (one round)."""

    #: Wall-clock seconds per scenario.
    seconds: dict[str, float] = field(default_factory=dict)
    #: CPU seconds this process (the client, not the server) spent per scenario.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    connections: int = 0


Body = Callable[[Client], Awaitable[RunResult]]


def run_ours(backend: str, url: str, body: Body) -> RunResult:
    async def main() -> RunResult:
        async with open_pool(url) as pool:
            client = Client(
                execute=pool.execute,
                pipeline=pool.pipeline,
                connections=lambda: pool.statistics().connections_opened,
            )
            return await body(client)

    return anyio.run(main, backend=backend)


def run_redis_py(url: str, body: Body) -> RunResult:
    async def main() -> RunResult:
        pool = redis.asyncio.ConnectionPool.from_url(url)  # default max_connections
        r = redis.asyncio.Redis(connection_pool=pool)

        async def pipeline(commands: list[Command]) -> list[object]:
            pipe = r.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

        def connections() -> int:
            # No public counter in redis-py: count idle + in-use connections.
            return len(pool._available_connections) + len(pool._in_use_connections)

        try:
            return await body(Client(r.execute_command, pipeline, connections))
        finally:
            await r.aclose()
            await pool.aclose()

    return asyncio.run(main())


@dataclass(frozen=True)
class Contender:
    name: str
    run: Callable[[str, Body], RunResult]


CONTENDERS: Final = (
    Contender("anyio_layer/asyncio", lambda url, body: run_ours("asyncio", url, body)),
    Contender("anyio_layer/trio", lambda url, body: run_ours("trio", url, body)),
    Contender(REDIS_PY, run_redis_py),
)


# -- scenarios ----------------------------------------------------------------


async def set_get_loop(client: Client, keys: Sequence[bytes], pairs: int, tag: bytes) -> None:
    execute = client.execute
    for i in range(pairs):
        key = keys[i % KEYS_PER_TASK]
        value = make_value(tag, i)
        check_set(await execute("SET", key, value))
        check_get(await execute("GET", key), value)


async def sequential(client: Client, workload: Workload, tag: bytes) -> None:
    await set_get_loop(client, keys_for("sequential", 0), workload.sequential_pairs, tag)


async def pipelined(client: Client, workload: Workload, tag: bytes) -> None:
    pairs = BATCH_SIZE // 2
    keys = keys_for("pipelined", 0)[:pairs]
    for batch in range(workload.pipelined_batches):
        values = [make_value(tag, batch * pairs + n) for n in range(pairs)]
        commands: list[Command] = []
        for key, value in zip(keys, values, strict=True):
            commands.append(("SET", key, value))
            commands.append(("GET", key))
        replies = await client.pipeline(commands)
        if len(replies) != len(commands):
            raise VerificationError(f"{len(commands)} commands, {len(replies)} replies")
        for n, value in enumerate(values):
            check_set(replies[2 * n])
            check_get(replies[2 * n + 1], value)


async def concurrent(client: Client, workload: Workload, tag: bytes) -> None:
    pairs = workload.concurrent_pairs_per_task
    async with anyio.create_task_group() as task_group:
        for task in range(TASKS):
            task_tag = tag + b":%d" % task
            task_group.start_soon(
                set_get_loop, client, keys_for("concurrent", task), pairs, task_tag
            )


SCENARIO_FUNCTIONS: Final[dict[str, Callable[[Client, Workload, bytes], Awaitable[None]]]] = {
    "sequential": sequential,
    "pipelined": pipelined,
    "concurrent": concurrent,
}


async def measure(
    client: Client, scenarios: Sequence[str], workload: Workload, round_no: int
) -> RunResult:
    """Warm up every scenario, then time each one once."""
    result = RunResult()
    warmup = workload.fraction(WARMUP_FRACTION)
    for scenario in scenarios:
        await SCENARIO_FUNCTIONS[scenario](client, warmup, b"warm%d" % round_no)
    for scenario in scenarios:
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        await SCENARIO_FUNCTIONS[scenario](client, workload, b"r%d" % round_no)
        result.seconds[scenario] = time.perf_counter() - started
        result.cpu_seconds[scenario] = time.process_time() - cpu_started
    result.connections = client.connections()
    return result


# -- running and reporting ----------------------------------------------------


@dataclass
class Outcome:
    """All rounds of one contender."""

    contender: str
    rounds: list[RunResult] = field(default_factory=list)
    error: str | None = None

    def ops_per_second(self, scenario: str, workload: Workload) -> list[float]:
        ops = workload.ops(scenario)
        return [ops / r.seconds[scenario] for r in self.rounds if scenario in r.seconds]

    def cpu_us_per_op(self, scenario: str, workload: Workload) -> list[float]:
        ops = workload.ops(scenario)
        return [1e6 * r.cpu_seconds[scenario] / ops for r in self.rounds if scenario in r.seconds]


def describe_error(exc: BaseException) -> str:
    """One line naming the error, looking inside single-error exception groups."""
    while len(getattr(exc, "exceptions", ())) == 1:
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


def run_all(
    url: str,
    contenders: Sequence[Contender],
    scenarios: Sequence[str],
    workload: Workload,
    repeats: int,
) -> list[Outcome]:
    """Interleave rounds (A B C, A B C, ...) so background noise hits everyone alike."""
    outcomes = [Outcome(c.name) for c in contenders]
    for round_no in range(repeats):
        for contender, outcome in zip(contenders, outcomes, strict=True):
            if outcome.error is not None:
                continue
            print(f"  round {round_no + 1}/{repeats}: {contender.name} ...", file=sys.stderr)

            async def body(client: Client, round_no: int = round_no) -> RunResult:
                return await measure(client, scenarios, workload, round_no)

            try:
                outcome.rounds.append(contender.run(url, body))
            except Exception as exc:  # report it in the table, keep the others going
                outcome.error = describe_error(exc)
                print(f"    FAILED: {outcome.error}", file=sys.stderr)
    return outcomes


HEADER: Final = (
    "scenario",
    "client/backend",
    "ops/s (best)",
    "median",
    "vs redis-py",
    "client CPU us/op",
)


def best_rate(
    outcomes: Sequence[Outcome], contender: str, scenario: str, workload: Workload
) -> float | None:
    for outcome in outcomes:
        if outcome.contender == contender and outcome.error is None:
            return max(outcome.ops_per_second(scenario, workload), default=None)
    return None


def table_rows(
    outcomes: Sequence[Outcome], scenarios: Sequence[str], workload: Workload
) -> list[tuple[str, ...]]:
    """One row per scenario and contender; the ratio compares best ops/s with redis-py's."""
    rows = []
    for scenario in scenarios:
        title = SCENARIO_TITLES[scenario]
        baseline = best_rate(outcomes, REDIS_PY, scenario, workload)
        for outcome in outcomes:
            rates = outcome.ops_per_second(scenario, workload)
            if outcome.error is not None or not rates:
                rows.append((title, outcome.contender, "FAILED", "", "", ""))
                continue
            ratio = f"{max(rates) / baseline:.2f}x" if baseline else "n/a"
            cpu = min(outcome.cpu_us_per_op(scenario, workload))
            median = statistics.median(rates)
            rows.append(
                (
                    title,
                    outcome.contender,
                    f"{max(rates):,.0f}",
                    f"{median:,.0f}",
                    ratio,
                    f"{cpu:.1f}",
                )
            )
    return rows


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text: the first two columns left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_notes(
    outcomes: Sequence[Outcome], args: argparse.Namespace, workload: Workload, pool_limit: int
) -> str:
    counts = ", ".join(f"{s} {workload.ops(s):,}" for s in args.scenarios)
    opened = ", ".join(
        f"{o.contender} {max((r.connections for r in o.rounds), default=0)}" for o in outcomes
    )
    notes = [
        f"ops = Redis commands per second (a SET/GET pair is 2 ops); best and median of"
        f" {args.repeats} rounds; ratio = best ops/s divided by redis-py's best.",
        f"ops per measurement: {counts}.",
        f"connections opened per round: {opened}.",
        f"redis-py gives each concurrent task its own connection (up to {TASKS}; pool"
        f" max_connections={pool_limit}, its default); ours pipelines all tasks over 1.",
    ]
    notes += [f"{o.contender} FAILED: {o.error}" for o in outcomes if o.error is not None]
    return "\n".join(notes)


def environment(url: str, server_version: str) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis_server": server_version,
        "url_kind": url.split(":", 1)[0],
        "packages": {name: package_version(name) for name in ("anyio", "trio", "redis", "hiredis")},
        "our_parser": Parser().implementation,
        "redis_py_max_connections": redis.asyncio.ConnectionPool.from_url(url).max_connections,
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
    }


def describe_environment(env: dict[str, Any]) -> str:
    packages = ", ".join(f"{name} {v}" for name, v in env["packages"].items())
    return (
        f"Redis {env['redis_server']} over {env['url_kind']}://, Python {env['python']}"
        f" on {env['platform']}\n{packages}; our parser: {env['our_parser']}\n"
        f"{env['cpus']} CPUs, 1-minute load average {env['load_average_before']:.2f} before"
        f" and {env['load_average_after']:.2f} after the run"
    )


def write_json(
    path: Path,
    outcomes: Sequence[Outcome],
    workload: Workload,
    env: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    results = []
    for outcome in outcomes:
        for scenario in args.scenarios:
            rates = outcome.ops_per_second(scenario, workload)
            results.append(
                {
                    "scenario": scenario,
                    "client": outcome.contender,
                    "ops": workload.ops(scenario),
                    "seconds": [
                        r.seconds[scenario] for r in outcome.rounds if scenario in r.seconds
                    ],
                    "client_cpu_us_per_op": outcome.cpu_us_per_op(scenario, workload),
                    "ops_per_second": rates,
                    "best": max(rates, default=None),
                    "median": statistics.median(rates) if rates else None,
                    "connections": [r.connections for r in outcome.rounds],
                    "error": outcome.error,
                }
            )
    document = {
        "environment": env,
        "scale": args.scale,
        "repeats": args.repeats,
        "workload": asdict(workload),
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- server -------------------------------------------------------------------


def server_version(url: str) -> str:
    admin = redis.Redis.from_url(url)
    try:
        return str(admin.info("server")["redis_version"])
    finally:
        admin.close()


def delete_bench_keys(url: str) -> None:
    """Remove what we wrote from a server we did not start."""
    admin = redis.Redis.from_url(url)
    try:
        keys = all_keys()
        for start in range(0, len(keys), 1000):
            admin.unlink(*keys[start : start + 1000])
    finally:
        admin.close()


def benchmark(url: str, args: argparse.Namespace) -> int:
    workload = Workload.scaled(args.scale)
    contenders = [c for c in CONTENDERS if c.name in args.clients]
    env = environment(url, server_version(url))
    started = time.perf_counter()
    outcomes = run_all(url, contenders, args.scenarios, workload, args.repeats)
    print(f"  done in {time.perf_counter() - started:.0f} s\n", file=sys.stderr)
    env["load_average_after"] = os.getloadavg()[0]
    print(describe_environment(env))
    print()
    print(render_table(HEADER, table_rows(outcomes, args.scenarios, workload)))
    print()
    print(format_notes(outcomes, args, workload, env["redis_py_max_connections"]))
    if args.json is not None:
        write_json(args.json, outcomes, workload, env, args)
    return 1 if any(o.error is not None for o in outcomes) else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="benchmark this server instead of launching a private one")
    where.add_argument("--unix", action="store_true", help="launch the server on a unix socket")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per measurement")
    parser.add_argument("--json", type=Path, help="also write raw results to this file")
    parser.add_argument(
        "--clients",
        nargs="+",
        choices=[c.name for c in CONTENDERS],
        default=[c.name for c in CONTENDERS],
        help="run only these contenders (default: all)",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="run only these scenarios (default: all)",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeats < 1:
        parser.error("--scale must be positive and --repeats at least 1")
    args.scenarios = [s for s in SCENARIOS if s in args.scenarios]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url is not None:
        try:
            return benchmark(args.url, args)
        finally:
            delete_bench_keys(args.url)
    server = RedisServer.launch(unix_socket=args.unix)
    try:
        return benchmark(server.url, args)
    finally:
        server.close()  # stop() and delete its temporary directory


if __name__ == "__main__":
    sys.exit(main())
