"""Benchmark anyio_layer's QueueLayer against channels_redis's RedisChannelLayer.

Every scenario runs for three contenders, one after the other, against the same
Redis server (emptied between runs), each in a fresh event loop with fresh
layers (ours in two variants, see below):

    channels_redis/asyncio   channels_redis.core.RedisChannelLayer (redis-py + hiredis)
    ours/asyncio             anyio_layer.open_redis_layer under asyncio
    ours/trio                the same under trio

Both layers get the same options: msgpack, capacity 100, expiry 60 s, the
same key prefix. The harness (tasks, events, clocks) is anyio for everyone;
channels_redis runs on anyio's asyncio backend and is awaited directly.

Scenarios (``--only`` takes the names on the left)::

    round-trip      1 task: send to a process-local channel, receive it, repeat
    streaming       1 sender task + 1 receiver task on one process-local channel
    cross-process   the receiver is another process (this script, ``--worker``):
                    to a channel it made with new_channel(), and to a normal channel
    fanout          group_send to groups of 1, 10, 100 and 1000 process-local channels,
                    one receiver task per member, at most 50 messages in flight
    concurrent      50 sender tasks, each to its own process-local channel, 50 receivers
    payload         round trip with a 10 kB and a 100 kB bytes value in the message

Two variants of ours (the table's "variant" column). Every scenario but
cross-process runs sender and receiver in this one process, and our layer
delivers a message it sends to one of its *own* process-local channels (named
by its own ``new_channel()``, directly or as a group member) in memory,
without Redis. So ours runs each of those scenarios twice:

    same layer   sender and receiver share one layer: the in-memory path (what a
                 single-process deployment, a consumer messaging itself or group
                 members in the sending process get). group_send still reads the
                 group's members from Redis; send() does not touch Redis at all.
    via Redis    the sender is a second layer of ours (``open_redis_layer`` again,
                 same server, same process); the channels belong to the first, so
                 every message goes through Redis exactly as between two processes.
                 The run fails unless Redis executed at least one send script
                 (EVALSHA) per send()/group_send() call.

channels_redis always goes through Redis, so it runs once, with one layer
(variant "Redis"), and both variants of ours are compared with that row.
Cross-process runs go through Redis for everyone (variant "2 processes").

Senders go as fast as they can; on ChannelFull they sleep 1 ms and retry (the
retries are reported). Every message carries a sequence number and its send
time. Receivers check that each channel delivers every message exactly once
and in order (and that nothing more arrives afterwards); any deviation fails
the run loudly and makes the script exit with status 1.

Reported per run: messages/s (fan-out: deliveries/s, plus group_send calls/s),
the ratio of ours to channels_redis, p50/p99 latency (receive time minus the
send time carried in the message: ``time.perf_counter()`` in one process,
``time.time()`` across processes), the benchmark's CPU time per message and
redis-server's (``INFO cpu``).
Rates are timed from the first send to the last receive; each measurement runs
``--repeats`` times (default 3, interleaved) and the median round is shown.
channels_redis gets fewer messages where it is slow; rates are per message,
so the ratios stay comparable.

Reproduce (launches a private redis-server; ~4.5 minutes on 2 cores)::

    python benchmarks/bench_layer.py
    python benchmarks/bench_layer.py --only fanout --scale 0.5 --json fanout.json
    python benchmarks/bench_layer.py --url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import redis
from anyio.streams.buffered import BufferedByteReceiveStream
from channels.exceptions import ChannelFull as ChannelsRedisChannelFull
from channels_redis.core import RedisChannelLayer  # type: ignore[import-untyped]

from anyio_layer.exceptions import ChannelFull as OurChannelFull
from anyio_layer.queue import open_redis_layer
from anyio_layer.redis.protocol import Parser
from anyio_layer.testing import RedisServer

PREFIX: Final = "benchlayer"
#: The same options for both layers (all but the prefix are both libraries' defaults).
LAYER_OPTIONS: Final[dict[str, Any]] = {
    "prefix": PREFIX,
    "capacity": 100,
    "expiry": 60,
    "serializer_format": "msgpack",
}
RETRY_SLEEP: Final = 0.001  # after ChannelFull
FANOUT_WINDOW: Final = 50  # group messages in flight: below the capacity of 100
CONCURRENT_CHANNELS: Final = 50
CROSS_WARMUP: Final = 50  # untimed messages before a cross-process run
WARMUP_ROUND_TRIPS: Final = 100
SILENCE_SECONDS: Final = 0.05  # how long we wait for unexpected extra messages
RUN_TIMEOUT: Final = 180.0
NORMAL_CHANNEL: Final = "bench.cross-process"
CHANNELS_REDIS: Final = "channels_redis/asyncio"

# How a run's messages get from sender to receiver (the table's "variant" column).
#: channels_redis, one layer: always through Redis.
REDIS: Final = "Redis"
#: Ours, one layer for sender and receiver: in memory (group_send reads members from Redis).
SAME_LAYER: Final = "same layer"
#: Ours, a second layer of ours sends: through Redis, as between two processes.
VIA_REDIS: Final = "via Redis"
#: Cross-process runs: through Redis for everyone.
PROCESSES: Final = "2 processes"


class VerificationError(AssertionError):
    """A message was lost, duplicated or reordered: the layer is broken."""


class Layer(Protocol):
    """What the scenarios use; both layers have these methods."""

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...

    async def receive(self, channel: str) -> dict[str, Any]: ...

    async def new_channel(self, prefix: str = "specific") -> str: ...

    async def group_add(self, group: str, channel: str) -> None: ...

    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class Layers:
    """The layers of one run: ``receiver`` makes the channels and receives, ``sender`` sends.

    The same layer, except in our "via Redis" variant, where ``sender`` is a
    second layer on the same server, so nothing it sends is one of its own
    channels and every message goes through Redis.
    """

    receiver: Layer
    sender: Layer


# -- contenders -----------------------------------------------------------------


def hosts_of(url: str) -> list[str]:
    """Our layers' ``hosts`` for a run's ``url``: one URL, or several joined by commas.

    ``bench_cluster.py`` passes a Redis Cluster's seeds (``redis+cluster://...``)
    that way, through the same ``url`` argument, to the worker process too.
    """
    return url.split(",")


@asynccontextmanager
async def open_channels_redis(url: str) -> AsyncIterator[Layer]:
    layer = RedisChannelLayer(hosts=[url], **LAYER_OPTIONS)
    try:
        yield layer
    finally:
        # Waits for its receive-cleanup tasks, deletes its keys, closes its pools.
        await layer.flush()


@asynccontextmanager
async def open_ours(url: str) -> AsyncIterator[Layer]:
    async with open_redis_layer(hosts=hosts_of(url), **LAYER_OPTIONS) as layer:
        yield layer


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    backend: str
    open_layer: Callable[[str], AbstractAsyncContextManager[Layer]]
    channel_full: type[Exception]
    #: channels_redis gets this fraction of the messages (it is slow).
    share: float = 1.0


CONTENDERS: Final = (
    Contender(CHANNELS_REDIS, "asyncio", open_channels_redis, ChannelsRedisChannelFull, 0.2),
    Contender("ours/asyncio", "asyncio", open_ours, OurChannelFull),
    Contender("ours/trio", "trio", open_ours, OurChannelFull),
)
CONTENDERS_BY_NAME: Final = {c.name: c for c in CONTENDERS}


# -- verification and measurement -------------------------------------------------


class StreamCheck:
    """One channel's messages: sequence numbers 0..expected-1, each once, in order."""

    __slots__ = ("channel", "clock", "expected", "last", "latencies", "received")

    def __init__(self, channel: str, expected: int, clock: Callable[[], float]) -> None:
        self.channel = channel
        self.expected = expected
        self.clock = clock
        self.received = 0
        self.last = 0.0
        self.latencies: list[float] = []

    def record(self, message: dict[str, Any]) -> int:
        """Check and time one received message; returns its sequence number."""
        now = self.clock()
        seq = message.get("seq")
        if seq != self.received:
            problem = "a duplicate" if isinstance(seq, int) and seq < self.received else "lost"
            raise VerificationError(
                f"{self.channel}: expected message #{self.received}, got #{seq}"
                f" (messages {problem} or out of order)"
            )
        self.latencies.append(now - message["t"])
        self.received += 1
        self.last = now
        return self.received - 1

    def describe(self) -> str:
        return f"{self.channel}: {self.received} of {self.expected} received"


def message(seq: int, clock: Callable[[], float], **extra: Any) -> dict[str, Any]:
    return {"type": "bench.message", "seq": seq, **extra, "t": clock()}


async def receive_all(
    layer: Layer, check: StreamCheck, on_message: Callable[[int], None] | None = None
) -> None:
    for _ in range(check.expected - check.received):
        seq = check.record(await layer.receive(check.channel))
        if on_message is not None:
            on_message(seq)


async def send_with_retry(
    layer: Layer, channel: str, msg: dict[str, Any], full: type[Exception]
) -> int:
    """Send, sleeping and retrying while the channel is full; returns the retries."""
    retries = 0
    while True:
        try:
            await layer.send(channel, msg)
            return retries
        except full:
            retries += 1
            await anyio.sleep(RETRY_SLEEP)


async def expect_silence(layer: Layer, channels: Sequence[str]) -> None:
    """Fail if any channel delivers another message within SILENCE_SECONDS."""
    extras: list[str] = []

    async def listen(channel: str) -> None:
        with anyio.move_on_after(SILENCE_SECONDS):
            extra = await layer.receive(channel)
            extras.append(f"{channel}: #{extra.get('seq')}")

    async with anyio.create_task_group() as task_group:
        for channel in channels:
            task_group.start_soon(listen, channel)
    if extras:
        raise VerificationError(f"messages delivered more than once: {', '.join(extras[:5])}")


@dataclasses.dataclass
class Measurement:
    """One contender, one case."""

    messages: int  # deliveries (fan-out: one per member and message)
    seconds: float
    latencies: list[float]
    cpu_seconds: float  # CPU time of the benchmark processes while timed
    calls: int = 0  # group_send calls (fan-out only)
    retries: int = 0  # sends refused with ChannelFull and retried
    layer_stats: dict[str, Any] | None = None  # the receiving layer's (ours only)
    sender_stats: dict[str, Any] | None = None  # the sending layer's, if it is another one
    redis_cpu_seconds: float = math.nan  # redis-server's CPU time while timed (INFO cpu)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_message(self) -> float:
        return self.cpu_seconds / self.messages

    @property
    def redis_cpu_per_message(self) -> float:
        return self.redis_cpu_seconds / self.messages

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: Reads redis-server's CPU time in seconds (INFO cpu, user + sys); set by the runner in the
#: benchmark's main process (None in workers, whose Redis CPU the main process accounts for).
redis_cpu_probe: Callable[[], float] | None = None


def redis_cpu_now() -> float:
    return math.nan if redis_cpu_probe is None else redis_cpu_probe()


@dataclasses.dataclass(frozen=True)
class Start:
    """When a timed phase began: the messages' clock, process CPU time and Redis's CPU time."""

    wall: float
    cpu: float
    redis_cpu: float = math.nan

    @classmethod
    def now(cls, clock: Callable[[], float] = time.perf_counter) -> Start:
        redis_cpu = redis_cpu_now()  # first: the probe's own cost stays out of the timing
        return cls(clock(), time.process_time(), redis_cpu)

    def cpu_since(self) -> float:
        return time.process_time() - self.cpu

    def redis_cpu_since(self) -> float:
        return redis_cpu_now() - self.redis_cpu


def measured(
    checks: Sequence[StreamCheck], start: Start, *, calls: int = 0, retries: int = 0
) -> Measurement:
    """Rate from the start to the last receive, with every check's latencies."""
    cpu = start.cpu_since()
    redis_cpu = start.redis_cpu_since()
    latencies = [x for check in checks for x in check.latencies]
    seconds = max(check.last for check in checks) - start.wall
    return Measurement(
        len(latencies),
        seconds,
        latencies,
        cpu,
        calls=calls,
        retries=retries,
        redis_cpu_seconds=redis_cpu,
    )


@dataclasses.dataclass(frozen=True)
class RunContext:
    contender: Contender
    url: str
    variant: str = SAME_LAYER
    #: Filled in while the run goes, so a timeout can say where it got stuck.
    checks: list[StreamCheck] = dataclasses.field(default_factory=list)

    def check(self, channel: str, expected: int, clock: Callable[[], float]) -> StreamCheck:
        check = StreamCheck(channel, expected, clock)
        self.checks.append(check)
        return check


# -- in-process scenarios -------------------------------------------------------


async def round_trip(
    layers: Layers, ctx: RunContext, n: int, payload: bytes | None = None
) -> Measurement:
    layer, sender = layers.receiver, layers.sender
    channel = await layer.new_channel()
    check = ctx.check(channel, n, time.perf_counter)
    extra = {} if payload is None else {"payload": payload}
    start = Start.now()
    for seq in range(n):
        await sender.send(channel, message(seq, time.perf_counter, **extra))
        received = await layer.receive(channel)
        check.record(received)
        if payload is not None and received.get("payload") != payload:
            raise VerificationError(f"message #{seq}: payload corrupted")
    result = measured([check], start)
    await expect_silence(layer, [channel])
    return result


async def streaming(layers: Layers, ctx: RunContext, n: int) -> Measurement:
    layer = layers.receiver
    channel = await layer.new_channel()
    check = ctx.check(channel, n, time.perf_counter)
    retries = 0

    async def sender() -> None:
        nonlocal retries
        for seq in range(n):
            msg = message(seq, time.perf_counter)
            retries += await send_with_retry(
                layers.sender, channel, msg, ctx.contender.channel_full
            )

    start = Start.now()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(receive_all, layer, check)
        task_group.start_soon(sender)
    result = measured([check], start, retries=retries)
    await expect_silence(layer, [channel])
    return result


async def concurrent(layers: Layers, ctx: RunContext, n: int) -> Measurement:
    layer = layers.receiver
    per_channel = max(1, n // CONCURRENT_CHANNELS)
    channels = [await layer.new_channel() for _ in range(CONCURRENT_CHANNELS)]
    checks = [ctx.check(channel, per_channel, time.perf_counter) for channel in channels]
    retries = 0

    async def sender(channel: str) -> None:
        nonlocal retries
        for seq in range(per_channel):
            msg = message(seq, time.perf_counter)
            retries += await send_with_retry(
                layers.sender, channel, msg, ctx.contender.channel_full
            )

    start = Start.now()
    async with anyio.create_task_group() as task_group:
        for channel, check in zip(channels, checks, strict=True):
            task_group.start_soon(receive_all, layer, check)
            task_group.start_soon(sender, channel)
    result = measured(checks, start, retries=retries)
    await expect_silence(layer, channels)
    return result


class Window:
    """Keeps a group sender at most ``size`` messages ahead of its slowest member.

    Without it a sender outruns 1000 receivers and the layers drop messages
    (channels_redis skips full channels in group_send; both drop the oldest
    message of a full local buffer), which the checks would report as lost.
    """

    def __init__(self, size: int, members: int, messages: int) -> None:
        self.size = size
        self.members = members
        self.counts = [0] * messages
        self.completed = 0  # messages every member has received
        self._event = anyio.Event()

    def delivered(self, seq: int) -> None:
        self.counts[seq] += 1
        if self.counts[seq] == self.members:
            # Each member receives in order, so messages complete in order.
            self.completed = seq + 1
            self._event.set()
            self._event = anyio.Event()

    async def wait_for_room(self, seq: int) -> None:
        while seq - self.completed >= self.size:
            await self._event.wait()


async def fanout(layers: Layers, ctx: RunContext, n: int, members: int) -> Measurement:
    layer = layers.receiver
    group = f"bench-fanout-{members}"
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(group, channel)
    checks = [ctx.check(channel, n, time.perf_counter) for channel in channels]
    window = Window(FANOUT_WINDOW, members, n)

    async def sender() -> None:
        for seq in range(n):
            await window.wait_for_room(seq)
            await layers.sender.group_send(group, message(seq, time.perf_counter))

    start = Start.now()
    async with anyio.create_task_group() as task_group:
        for check in checks:
            task_group.start_soon(receive_all, layer, check, window.delivered)
        task_group.start_soon(sender)
    result = measured(checks, start, calls=n)
    await expect_silence(layer, channels)
    return result


# -- cross-process scenario -------------------------------------------------------


async def read_line(stream: BufferedByteReceiveStream) -> str:
    return (await stream.receive_until(b"\n", 64 * 1024 * 1024)).decode()


async def drive_worker(
    layer: Layer, ctx: RunContext, n: int, lines: BufferedByteReceiveStream
) -> dict[str, Any]:
    """Warm up, then send n messages; returns the worker's report plus our start time."""
    channel = (await read_line(lines)).removeprefix("READY ")
    full = ctx.contender.channel_full
    for seq in range(CROSS_WARMUP):
        await send_with_retry(layer, channel, message(seq, time.time), full)
    if (line := await read_line(lines)) != "WARM":
        raise VerificationError(f"receiving process: {line[:300]}")
    retries = 0
    start = Start.now(time.time)
    for seq in range(n):
        retries += await send_with_retry(layer, channel, message(seq, time.time), full)
    report: dict[str, Any] = json.loads(await read_line(lines))
    return {
        **report,
        "started": start.wall,
        "sender_cpu": start.cpu_since(),
        "redis_cpu": start.redis_cpu_since(),
        "retries": retries,
    }


async def cross_process(layers: Layers, ctx: RunContext, n: int, mode: str) -> Measurement:
    """Send n messages to a receiver in a worker process (see :func:`worker_main`)."""
    layer = layers.sender
    command = [sys.executable, __file__, "--worker", ctx.contender.name, ctx.url, str(n), mode]
    async with await anyio.open_process(command, stdin=None, stderr=None) as process:
        try:
            assert process.stdout is not None
            report = await drive_worker(layer, ctx, n, BufferedByteReceiveStream(process.stdout))
        except BaseException:
            if process.returncode is None:
                process.kill()
            raise
    if report["error"] is not None:
        raise VerificationError(f"receiving process: {report['error']}")
    latencies: list[float] = report["latencies"]
    seconds = report["last"] - report["started"]
    cpu = report["sender_cpu"] + report["receiver_cpu"]
    return Measurement(
        len(latencies),
        seconds,
        latencies,
        cpu,
        retries=report["retries"],
        redis_cpu_seconds=report["redis_cpu"],
    )


async def worker_receive(contender: Contender, url: str, n: int, mode: str) -> dict[str, Any]:
    """The receiving process: report the channel, check the warm-up, then time n messages."""
    async with contender.open_layer(url) as layer:
        channel = await layer.new_channel() if mode == "local" else NORMAL_CHANNEL
        print(f"READY {channel}", flush=True)
        try:
            await receive_all(layer, StreamCheck(channel, CROSS_WARMUP, time.time))
            print("WARM", flush=True)
            check = StreamCheck(channel, n, time.time)
            start = Start.now(time.time)
            with anyio.fail_after(RUN_TIMEOUT):
                await receive_all(layer, check)
            cpu = start.cpu_since()
            await expect_silence(layer, [channel])
        except (VerificationError, TimeoutError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "error": None,
            "last": check.last,
            "latencies": check.latencies,
            "receiver_cpu": cpu,
        }


def worker_main(contender_name: str, url: str, n: str, mode: str) -> int:
    contender = CONTENDERS_BY_NAME[contender_name]
    receive = functools.partial(worker_receive, contender, url, int(n), mode)
    print(json.dumps(anyio.run(receive, backend=contender.backend)), flush=True)
    return 0


# -- cases ------------------------------------------------------------------------------

Scenario = Callable[[Layers, RunContext, int], Awaitable[Measurement]]


@dataclasses.dataclass(frozen=True)
class Case:
    """One row group of the table: a scenario with fixed parameters."""

    scenario: str  # what --only selects
    title: str
    run: Scenario
    #: Messages (fan-out: group_send calls) for ours at --scale 1.
    count: int
    #: channels_redis's messages, as a fraction of ``count`` (default: its contender share).
    channels_redis_share: float | None = None
    warm_up: bool = True
    #: Sender and receiver in this process: ours runs "same layer" and "via Redis".
    in_process: bool = True

    def messages_for(self, contender: Contender, scale: float) -> int:
        share = contender.share
        if contender.name == CHANNELS_REDIS and self.channels_redis_share is not None:
            share = self.channels_redis_share
        return max(1, round(self.count * scale * share))

    def variants(self, contender: Contender) -> tuple[str, ...]:
        if not self.in_process:
            return (PROCESSES,)
        return (REDIS,) if contender.name == CHANNELS_REDIS else (SAME_LAYER, VIA_REDIS)


# Counts at --scale 1 are sized so that every run takes at most a few seconds and the
# whole benchmark about 4.5 minutes on a 2-core machine. Both variants of ours get the
# same count: the "same layer" runs are quick, the "via Redis" ones take most of the time.
CASES: Final = (
    Case("round-trip", "round trip", round_trip, 10_000),
    Case("streaming", "streaming, 1 channel", streaming, 12_000),
    Case(
        "cross-process",
        "cross-process, new_channel()",
        functools.partial(cross_process, mode="local"),
        12_000,
        warm_up=False,
        in_process=False,
    ),
    Case(
        "cross-process",
        "cross-process, normal channel",
        functools.partial(cross_process, mode="normal"),
        10_000,
        warm_up=False,
        in_process=False,
    ),
    *(
        Case(
            "fanout",
            f"group_send, {members} member{'s' * (members > 1)}",
            functools.partial(fanout, members=members),
            count,
        )
        for members, count in ((1, 6_000), (10, 4_000), (100, 1_200), (1000, 150))
    ),
    # channels_redis manages ~80 messages/s here: give it 1% of ours.
    Case("concurrent", "50 senders -> 50 channels", concurrent, 40_000, 0.01),
    Case(
        "payload",
        "round trip, 10 kB",
        functools.partial(round_trip, payload=os.urandom(10_000)),
        6_000,
    ),
    Case(
        "payload",
        "round trip, 100 kB",
        functools.partial(round_trip, payload=os.urandom(100_000)),
        3_000,
    ),
)
SCENARIOS: Final = tuple(dict.fromkeys(case.scenario for case in CASES))


# -- running ------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    case: Case
    contender: Contender
    variant: str
    messages: int
    result: Measurement | None = None
    error: str | None = None
    #: Lua script calls (EVALSHA + EVAL) Redis counted during the run, warm-up included.
    redis_scripts: int | None = None


@asynccontextmanager
async def open_layers(ctx: RunContext) -> AsyncIterator[Layers]:
    """One layer, or for "via Redis" a second one of the same kind that sends."""
    async with ctx.contender.open_layer(ctx.url) as layer:
        if ctx.variant != VIA_REDIS:
            yield Layers(layer, layer)
        else:
            async with ctx.contender.open_layer(ctx.url) as sender:
                yield Layers(layer, sender)


async def warm_up(layers: Layers) -> None:
    """Open connections, load scripts and start readers before timing anything."""
    channel = await layers.receiver.new_channel()
    for seq in range(WARMUP_ROUND_TRIPS):
        await layers.sender.send(channel, message(seq, time.perf_counter))
        await layers.receiver.receive(channel)


def layer_statistics(layer: Layer) -> dict[str, Any] | None:
    """Our layer's counters (channels_redis has none)."""
    statistics = getattr(layer, "statistics", None)
    return None if statistics is None else dataclasses.asdict(statistics())


async def run_case(case: Case, ctx: RunContext, n: int) -> Measurement:
    async with open_layers(ctx) as layers:
        if case.warm_up:
            await warm_up(layers)
        gc.collect()
        try:
            with anyio.fail_after(RUN_TIMEOUT):
                result = await case.run(layers, ctx, n)
        except TimeoutError:
            stuck = "; ".join(c.describe() for c in ctx.checks if c.received < c.expected)
            raise VerificationError(f"timed out after {RUN_TIMEOUT:.0f} s: {stuck[:300]}") from None
        result.layer_stats = layer_statistics(layers.receiver)
        if layers.sender is not layers.receiver:
            result.sender_stats = layer_statistics(layers.sender)
        return result


def describe_error(exc: BaseException) -> str:
    """One line naming the error, looking inside single-error exception groups."""
    while len(getattr(exc, "exceptions", ())) == 1:
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


def check_went_through_redis(outcome: Outcome) -> None:
    """A "via Redis" run must have run the send script once per send (or group_send) call.

    Guards the label: if the sending layer ever delivered these messages in
    memory, the run would fail instead of reporting in-memory rates as Redis's.
    """
    result = outcome.result
    if outcome.variant != VIA_REDIS or result is None or outcome.redis_scripts is None:
        return
    sends = result.calls or result.messages
    if outcome.redis_scripts < sends:
        raise VerificationError(
            f"via Redis: Redis ran {outcome.redis_scripts} send scripts for {sends} sends"
            " (messages did not go through Redis)"
        )


def run_one(
    case: Case, contender: Contender, variant: str, server: BenchServer, scale: float
) -> Outcome:
    outcome = Outcome(case, contender, variant, case.messages_for(contender, scale))
    ctx = RunContext(contender, server.url, variant)
    try:
        scripts_before = server.script_calls()
        outcome.result = anyio.run(run_case, case, ctx, outcome.messages, backend=contender.backend)
        outcome.redis_scripts = server.script_calls() - scripts_before
        check_went_through_redis(outcome)
    except Exception as exc:  # shown in the table; the exit status says it failed
        outcome.error = describe_error(exc)
    return outcome


def better(a: Outcome, b: Outcome) -> Outcome:
    """The faster of two rounds; a failed round wins, so failures are never hidden."""
    if a.error is not None or b.error is not None:
        return a if a.error is not None else b
    assert a.result is not None
    assert b.result is not None
    return a if a.result.rate >= b.result.rate else b


def median_round(rounds: Sequence[Outcome]) -> Outcome:
    """The round with the median rate (the lower middle one for an even count).

    A failed round wins, so failures are never hidden.
    """
    failed = [o for o in rounds if o.error is not None or o.result is None]
    if failed:
        return failed[0]
    ordered = sorted(rounds, key=lambda o: o.result.rate if o.result else 0.0)
    return ordered[(len(ordered) - 1) // 2]


def run_all(
    server: BenchServer, cases: Sequence[Case], scale: float, repeats: int
) -> list[Outcome]:
    """Run every case for every contender and variant; rounds interleave (A B C, A B C)."""
    outcomes: list[Outcome] = []
    for case in cases:
        rounds: dict[tuple[str, str], list[Outcome]] = {}
        for round_no in range(repeats):
            for contender in CONTENDERS:
                for variant in case.variants(contender):
                    server.reset()
                    label = (
                        f"  {case.title}: {contender.name}, {variant}"
                        f" (round {round_no + 1}/{repeats})"
                    )
                    print(f"{label} ...", end="", file=sys.stderr, flush=True)
                    started = time.perf_counter()
                    outcome = run_one(case, contender, variant, server, scale)
                    status = "ok" if outcome.error is None else f"FAILED: {outcome.error}"
                    print(f" {time.perf_counter() - started:.1f} s {status}", file=sys.stderr)
                    rounds.setdefault((contender.name, variant), []).append(outcome)
        outcomes += [median_round(each) for each in rounds.values()]
    server.reset()
    return outcomes


# -- reporting ----------------------------------------------------------------------


def notes_for(outcome: Outcome) -> str:
    result = outcome.result
    assert result is not None
    return ", ".join(result_notes(result))


def result_notes(result: Measurement) -> list[str]:
    """Side facts of one measurement: group_send rate, ChannelFull retries, overflows."""
    notes = []
    if result.calls:
        notes.append(f"{result.calls / result.seconds:,.0f} group_send/s")
    if result.retries:
        notes.append(f"{result.retries:,} ChannelFull retries")
    overflows = sum(
        (stats or {}).get("local_buffer_overflows", 0)
        for stats in (result.layer_stats, result.sender_stats)
    )
    if overflows:
        notes.append(f"{overflows} buffer overflows")
    return notes


def table_rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        # Both variants of ours are compared with the same channels_redis row.
        baseline = next(
            (
                o.result.rate
                for o in outcomes
                if o.case is outcome.case
                and o.contender.name == CHANNELS_REDIS
                and o.result
                and o.error is None
            ),
            None,
        )
        result = outcome.result
        delivered = outcome.messages if result is None else result.messages
        head = (outcome.case.title, outcome.contender.name, outcome.variant, f"{delivered:,}")
        if result is None or outcome.error is not None:
            rows.append((*head, "FAILED", "", "", "", "", "", outcome.error or ""))
            continue
        ratio = f"{result.rate / baseline:.1f}x" if baseline else "n/a"
        rows.append(
            (
                *head,
                f"{result.rate:,.0f}",
                ratio,
                f"{result.percentile(0.5) * 1000:.2f}",
                f"{result.percentile(0.99) * 1000:.2f}",
                f"{result.cpu_per_message * 1e6:.0f}",
                format_us(result.redis_cpu_per_message),
                notes_for(outcome),
            )
        )
    return rows


def format_us(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:.1f}"


def format_table(outcomes: Sequence[Outcome]) -> str:
    header = (
        "case",
        "layer/backend",
        "variant",
        "messages",
        "msg/s",
        "vs cr",
        "p50 ms",
        "p99 ms",
        "cpu us/msg",
        "redis us/msg",
        "notes",
    )
    rows = table_rows(outcomes)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


NOTES: Final = f"""\
variant: how messages get from sender to receiver. Redis: channels_redis, one layer (it always
goes through Redis). same layer: ours, sender and receiver share one layer, which delivers to
its own new_channel() channels in memory (group_send still reads the members from Redis).
via Redis: ours, a second layer of ours in this process sends, so every message goes through
Redis as between two processes (checked: one send script per send). 2 processes: all via Redis.
msg/s: messages received per second, first send to last receive; for group_send, deliveries
(messages x members) per second, with group_send calls per second in the notes.
vs cr: msg/s divided by channels_redis's in the same case (both variants of ours against the
same channels_redis row). Latency: receive time - send time in the message.
cpu us/msg: CPU time of the benchmark process(es) (sender and receiver; not redis-server) per
message while timed: less sensitive to machine load than msg/s. redis us/msg: redis-server's
CPU time (INFO cpu, user + sys) per message over the same span.
channels_redis gets fewer messages than ours (see "messages"); rates are per message.
Senders retry after ChannelFull with a {RETRY_SLEEP * 1000:.0f} ms sleep. group_send keeps at most
{FANOUT_WINDOW} messages in flight (capacity is 100). channels_redis receives on process-local
channels one Redis pop at a time under a layer-wide lock (its design), whatever the number of
receiving tasks; ours has one reader per layer that pops up to 500 messages per round trip.
Where senders outrun the receiver, a channel sits at capacity and latency is mostly queueing:
about 100 x the receiver's time per message."""


def environment(url: str, server: str) -> dict[str, Any]:
    packages = ("anyio", "trio", "redis", "hiredis", "msgpack", "channels", "channels_redis")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_server": server,
        "url_kind": url.split(":", 1)[0],
        "packages": {name: package_version(name) for name in packages},
        "our_parser": Parser().implementation,
        "redis_py_hiredis": redis.utils.HIREDIS_AVAILABLE,
    }


def describe_load(before: Sequence[float], after: Sequence[float]) -> str:
    """The machine's load averages (``os.getloadavg()``) before and after a run, as printed."""
    return (
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in after)
    )


def describe_environment(env: dict[str, Any]) -> str:
    packages = ", ".join(f"{name} {v}" for name, v in env["packages"].items())
    return (
        f"Redis {env['redis_server']} over {env['url_kind']}://, Python {env['python']}"
        f" on {env['platform']} ({env['cpus']} CPUs)\n{packages}\n"
        f"parsers: ours {env['our_parser']}, redis-py hiredis={env['redis_py_hiredis']}"
    )


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    result = outcome.result
    document: dict[str, Any] = {
        "scenario": outcome.case.scenario,
        "case": outcome.case.title,
        "contender": outcome.contender.name,
        "variant": outcome.variant,
        "messages": outcome.messages,
        "error": outcome.error,
        "redis_script_calls": outcome.redis_scripts,
    }
    if result is not None:
        document |= {
            "deliveries": result.messages,
            "seconds": result.seconds,
            "messages_per_second": result.rate,
            "cpu_seconds": result.cpu_seconds,
            "redis_cpu_seconds": result.redis_cpu_seconds,
            "group_send_calls": result.calls,
            "channel_full_retries": result.retries,
            "latency_seconds": {f"p{q}": result.percentile(q / 100) for q in (50, 90, 99, 100)},
            "layer_statistics": result.layer_stats,
            "sender_layer_statistics": result.sender_stats,
        }
    return document


def write_json(
    path: Path, outcomes: Sequence[Outcome], env: dict[str, Any], scale: float, repeats: int
) -> None:
    document = {
        "environment": env,
        "scale": scale,
        "repeats": repeats,
        "layer_options": LAYER_OPTIONS,
        "results": [outcome_json(o) for o in outcomes],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- server -----------------------------------------------------------------------------


@dataclasses.dataclass
class BenchServer:
    """The Redis under test; ``reset()`` empties it between runs."""

    url: str
    private: bool  # launched by us: FLUSHALL; else only our prefix's keys are deleted
    _admin: redis.Redis | None = dataclasses.field(default=None, repr=False)

    def reset(self) -> None:
        admin = redis.Redis.from_url(self.url)
        try:
            if self.private:
                admin.flushall()
            else:
                for key in admin.scan_iter(match=f"{PREFIX}*", count=1000):
                    admin.unlink(key)
        finally:
            admin.close()

    def script_calls(self) -> int:
        """Lua script calls (EVALSHA and EVAL) the server has run since it started."""
        admin = redis.Redis.from_url(self.url)
        try:
            stats = admin.info("commandstats")
        finally:
            admin.close()
        return sum(
            int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
        )

    def cpu_seconds(self) -> float:
        """redis-server's CPU time so far (user + sys, all threads), from INFO cpu."""
        if self._admin is None:
            self._admin = redis.Redis.from_url(self.url)
        cpu = self._admin.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def version(self) -> str:
        admin = redis.Redis.from_url(self.url)
        try:
            return str(admin.info("server")["redis_version"])
        finally:
            admin.close()


def benchmark(server: BenchServer, args: argparse.Namespace) -> int:
    cases = [case for case in CASES if args.only is None or case.scenario == args.only]
    env = environment(server.url, server.version())
    global redis_cpu_probe
    redis_cpu_probe = server.cpu_seconds
    load_before = os.getloadavg()
    began = time.perf_counter()
    outcomes = run_all(server, cases, args.scale, args.repeats)
    print(f"  done in {time.perf_counter() - began:.0f} s\n", file=sys.stderr)
    load_after = os.getloadavg()
    print(describe_environment(env))
    print(describe_load(load_before, load_after))
    print()
    print(format_table(outcomes))
    print()
    print(NOTES)
    if args.json is not None:
        env["load_average"] = {"before": load_before, "after": load_after}
        write_json(args.json, outcomes, env, args.scale, args.repeats)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in failed:
        print(
            f"FAILED {outcome.case.title} / {outcome.contender.name}, {outcome.variant}:"
            f" {outcome.error}"
        )
    return 1 if failed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        help="use this server instead of launching a private one (keys under the"
        f" {PREFIX!r} prefix are deleted between runs; nothing else is touched)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--json", type=Path, help="also write raw results to this file")
    parser.add_argument("--only", choices=SCENARIOS, help="run only this scenario")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds per run (default 3); the median is reported"
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeats < 1:
        parser.error("--scale must be positive and --repeats at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(*args.worker)
    if args.url is not None:
        return benchmark(BenchServer(args.url, private=False), args)
    server = RedisServer.launch()
    try:
        return benchmark(BenchServer(server.url, private=True), args)
    finally:
        server.close()  # stop() and delete its temporary directory


if __name__ == "__main__":
    sys.exit(main())
