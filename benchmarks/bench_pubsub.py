"""Benchmark anyio_layer's PubSubLayer against channels_redis's RedisPubSubChannelLayer.

The pub/sub counterpart of ``bench_layer.py`` (whose verification, measurement
and table it imports). Every scenario runs for three contenders, one after the
other, against the same Redis server, each in a fresh event loop with a fresh
layer:

    channels_redis/asyncio   channels_redis.pubsub.RedisPubSubChannelLayer (redis-py + hiredis)
    ours/asyncio             anyio_layer.open_pubsub_layer under asyncio
    ours/trio                the same under trio

Both layers get msgpack and the same prefix; ours a local buffer capacity of
1000 per channel (channels_redis's buffers are unbounded asyncio Queues). The
harness (tasks, events, clocks) is anyio for everyone; channels_redis runs on
anyio's asyncio backend and is awaited directly.

Scenarios (``--only`` takes the names on the left)::

    round-trip      1 task: send to its own new_channel(), receive it, repeat
    streaming       1 sender task + 1 receiver task on one new_channel() channel
    cross-process   the receiver is another process (this script, ``--worker``)
    fanout          group_send to groups of 1, 10, 100 and 1000 new_channel() members,
                    one receiver task per member
    concurrent      50 sender tasks, each to its own new_channel() channel, 50 receivers
    payload         round trip with a 10 kB and a 100 kB bytes value in the message

Pub/sub has no in-memory path: every send() and group_send() is one PUBLISH and
every message comes back over the layer's subscriber connection, so one layer
sends and receives (variant "1 process"; "2 processes" for cross-process). A run
fails unless Redis counted at least one PUBLISH per send()/group_send() call.

Pub/sub is at-most-once and has no back-pressure: a publisher that outruns its
subscriber fills the subscriber's local buffers (ours drops the oldest message
beyond ``capacity``; channels_redis's queues grow without bound). So senders are
paced: each stays at most 100 messages ahead of the slowest receiver of its
channel or group (across processes, the receiver reports progress on its
stdout). With receivers keeping up, nothing may be lost: every message carries
a sequence number and its send time, and receivers check that each channel
delivers every message exactly once and in order (and nothing more afterwards).
A lost message shows up as a gap, or, when nothing follows it, as a stall: a run
in which nothing arrives for 10 s fails too. Any deviation fails the run (FAILED
in the table) and makes the script exit with status 1.

channels_redis's pub/sub layer confirms nothing: its new_channel() and
group_add() return once SUBSCRIBE is written, and cancelling its receive()
unsubscribes the channel. So before anything is published, every run waits
until ``PUBSUB NUMSUB`` shows the subscriptions (for everyone, untimed), and
nothing here ever cancels one of its receives (the silence check peeks at its
queues instead). Its layer is flushed at the end of every run.

Reported per run: messages/s (fan-out: deliveries/s, plus group_send calls/s),
the ratio of ours to channels_redis, p50/p99 latency (receive time minus the
send time carried in the message), the benchmark's CPU time per message and
redis-server's (``INFO cpu``).
Each measurement runs ``--repeats`` times (default 3, interleaved) and the
median round is shown. channels_redis gets a quarter of ours' messages; rates
are per message, so the ratios stay comparable. The load average is printed
before and after the run.

Run it as a script (Python puts ``benchmarks/`` on ``sys.path``, which makes
``bench_layer`` importable); it launches a private redis-server and takes about
3 minutes on 2 cores::

    python benchmarks/bench_pubsub.py
    python benchmarks/bench_pubsub.py --only fanout --scale 0.5 --json fanout.json
    python benchmarks/bench_pubsub.py --url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import bench_layer
import redis
from anyio.streams.buffered import BufferedByteReceiveStream
from bench_layer import (
    CHANNELS_REDIS,
    PROCESSES,
    RUN_TIMEOUT,
    SILENCE_SECONDS,
    BenchServer,
    Case,
    Contender,
    Layer,
    Layers,
    Measurement,
    Outcome,
    RunContext,
    Start,
    StreamCheck,
    VerificationError,
    Window,
    describe_environment,
    describe_error,
    environment,
    format_table,
    hosts_of,
    layer_statistics,
    measured,
    median_round,
    message,
    outcome_json,
    read_line,
    receive_all,
)
from bench_layer import expect_silence as expect_silence_by_receiving
from channels.exceptions import ChannelFull as ChannelsRedisChannelFull
from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]

from anyio_layer.exceptions import ChannelFull as OurChannelFull
from anyio_layer.pubsub import open_pubsub_layer
from anyio_layer.testing import RedisServer

PREFIX: Final = "benchpubsub"
SERIALIZER: Final = "msgpack"
#: Our local buffer per channel; far above the pacing window, so it never overflows.
CAPACITY: Final = 1000
#: A sender stays at most this many messages ahead of the slowest receiver.
WINDOW: Final = 100
CONCURRENT_CHANNELS: Final = 50
CROSS_WARMUP: Final = 50  # untimed messages before a cross-process run
ACK_EVERY: Final = 20  # the receiving process reports progress every this many messages
WARMUP_ROUND_TRIPS: Final = 100
SUBSCRIBE_TIMEOUT: Final = 10.0
#: A run fails when no message arrives for this long (a lost message stalls a round trip).
STALL_SECONDS: Final = 10.0
#: The variant of every in-process run: one layer sends and receives, through Redis.
ONE_PROCESS: Final = "1 process"


# -- contenders -----------------------------------------------------------------


@asynccontextmanager
async def open_channels_redis(url: str) -> AsyncIterator[Layer]:
    layer = RedisPubSubChannelLayer(hosts=[url], prefix=PREFIX, serializer_format=SERIALIZER)
    try:
        yield layer
    finally:
        # Cancels its reader task and closes its connections.
        await layer.flush()


@asynccontextmanager
async def open_ours(url: str) -> AsyncIterator[Layer]:
    async with open_pubsub_layer(
        hosts=hosts_of(url), prefix=PREFIX, serializer_format=SERIALIZER, capacity=CAPACITY
    ) as layer:
        yield layer


# Pub/sub send() never raises ChannelFull; ``channel_full`` is just each library's class.
CONTENDERS: Final = (
    Contender(CHANNELS_REDIS, "asyncio", open_channels_redis, ChannelsRedisChannelFull, 0.25),
    Contender("ours/asyncio", "asyncio", open_ours, OurChannelFull),
    Contender("ours/trio", "trio", open_ours, OurChannelFull),
)
CONTENDERS_BY_NAME: Final = {c.name: c for c in CONTENDERS}


# -- pub/sub specifics ----------------------------------------------------------------


def group_channel(group: str) -> str:
    """The Redis channel a group is published to (the same in both libraries)."""
    return f"{PREFIX}__group__{group}"


CLUSTER_SCHEME: Final = "redis+cluster://"


def _numsub(url: str, names: Sequence[str]) -> dict[str, int]:
    """Subscribers per Redis channel name: ``PUBSUB NUMSUB`` on the server.

    For a Redis Cluster (``url`` holds ``redis+cluster://`` seeds, as
    ``bench_cluster.py`` passes them) every node counts only its own
    subscribers, so every node is asked, and sharded subscriptions
    (``SSUBSCRIBE``, counted by ``PUBSUB SHARDNUMSUB``) count too.
    """
    seeds = hosts_of(url)
    if not seeds[0].startswith(CLUSTER_SCHEME):
        return _node_numsub(url, names, sharded=False)
    seed = redis.Redis.from_url(seeds[0].replace(CLUSTER_SCHEME, "redis://", 1))
    try:
        nodes = list(seed.cluster("NODES"))  # {"host:port": {...}, ...}
    finally:
        seed.close()
    totals = dict.fromkeys(names, 0)
    for node in nodes:
        for name, count in _node_numsub(f"redis://{node}", names, sharded=True).items():
            totals[name] += count
    return totals


def _node_numsub(url: str, names: Sequence[str], *, sharded: bool) -> dict[str, int]:
    admin = redis.Redis.from_url(url)
    try:
        replies = list(admin.pubsub_numsub(*names))
        if sharded:
            replies += admin.pubsub_shardnumsub(*names)
    finally:
        admin.close()
    counts = dict.fromkeys(names, 0)
    for name, count in replies:
        counts[name.decode() if isinstance(name, bytes) else name] += int(count)
    return counts


async def wait_subscribed(url: str, names: Sequence[str]) -> None:
    """Wait until Redis has a subscriber for every name (channels_redis does not confirm)."""
    with anyio.fail_after(SUBSCRIBE_TIMEOUT):
        while True:
            counts = await anyio.to_thread.run_sync(_numsub, url, names)
            if all(counts.get(name, 0) > 0 for name in names):
                return
            await anyio.sleep(0.005)


async def expect_silence(layer: Layer, channels: Sequence[str]) -> None:
    """Fail if any channel delivers another message within SILENCE_SECONDS."""
    if not isinstance(layer, RedisPubSubChannelLayer):
        # Cancelling our receive() loses nothing and keeps the subscription.
        await expect_silence_by_receiving(layer, channels)
        return
    # Cancelling channels_redis's receive() would unsubscribe: look at its queues instead.
    await anyio.sleep(SILENCE_SECONDS)
    queues = layer._get_layer().channels
    extras = [
        f"{channel}: #{layer.deserialize(queues[channel].get_nowait()).get('seq')}"
        for channel in channels
        if channel in queues and not queues[channel].empty()
    ]
    if extras:
        raise VerificationError(f"messages delivered more than once: {', '.join(extras[:5])}")


# -- in-process scenarios -------------------------------------------------------------


async def warm_up(layers: Layers, ctx: RunContext) -> None:
    """Open connections and start the subscriber before timing anything."""
    layer = layers.receiver
    channel = await layer.new_channel()
    await wait_subscribed(ctx.url, [channel])
    for seq in range(WARMUP_ROUND_TRIPS):
        await layer.send(channel, message(seq, time.perf_counter))
        await layer.receive(channel)


async def round_trip(
    layers: Layers, ctx: RunContext, n: int, payload: bytes | None = None
) -> Measurement:
    layer = layers.receiver
    channel = await layer.new_channel()
    await wait_subscribed(ctx.url, [channel])
    check = ctx.check(channel, n, time.perf_counter)
    extra = {} if payload is None else {"payload": payload}
    start = Start.now()
    for seq in range(n):
        await layer.send(channel, message(seq, time.perf_counter, **extra))
        received = await layer.receive(channel)
        check.record(received)
        if payload is not None and received.get("payload") != payload:
            raise VerificationError(f"message #{seq}: payload corrupted")
    result = measured([check], start)
    await expect_silence(layer, [channel])
    return result


async def paced_streams(layers: Layers, ctx: RunContext, channels: int, n: int) -> Measurement:
    """One sender task and one receiver task per channel, each sender paced by a window."""
    layer = layers.receiver
    names = [await layer.new_channel() for _ in range(channels)]
    await wait_subscribed(ctx.url, names)
    checks = [ctx.check(name, n, time.perf_counter) for name in names]

    async def sender(channel: str, window: Window) -> None:
        for seq in range(n):
            await window.wait_for_room(seq)
            await layer.send(channel, message(seq, time.perf_counter))

    start = Start.now()
    async with anyio.create_task_group() as task_group:
        for name, check in zip(names, checks, strict=True):
            window = Window(WINDOW, 1, n)
            task_group.start_soon(receive_all, layer, check, window.delivered)
            task_group.start_soon(sender, name, window)
    result = measured(checks, start)
    await expect_silence(layer, names)
    return result


async def streaming(layers: Layers, ctx: RunContext, n: int) -> Measurement:
    return await paced_streams(layers, ctx, 1, n)


async def concurrent(layers: Layers, ctx: RunContext, n: int) -> Measurement:
    return await paced_streams(layers, ctx, CONCURRENT_CHANNELS, max(1, n // CONCURRENT_CHANNELS))


async def fanout(layers: Layers, ctx: RunContext, n: int, members: int) -> Measurement:
    layer = layers.receiver
    group = f"bench-fanout-{members}"
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(group, channel)
    await wait_subscribed(ctx.url, [group_channel(group)])
    checks = [ctx.check(channel, n, time.perf_counter) for channel in channels]
    window = Window(WINDOW, members, n)

    async def sender() -> None:
        for seq in range(n):
            await window.wait_for_room(seq)
            await layer.group_send(group, message(seq, time.perf_counter))

    start = Start.now()
    async with anyio.create_task_group() as task_group:
        for check in checks:
            task_group.start_soon(receive_all, layer, check, window.delivered)
        task_group.start_soon(sender)
    result = measured(checks, start, calls=n)
    await expect_silence(layer, channels)
    return result


# -- cross-process scenario -------------------------------------------------------


async def drive_worker(
    layer: Layer, ctx: RunContext, n: int, lines: BufferedByteReceiveStream
) -> dict[str, Any]:
    """Warm up, then send n messages paced by the worker's progress reports."""
    channel = (await read_line(lines)).removeprefix("READY ")
    await wait_subscribed(ctx.url, [channel])
    for seq in range(CROSS_WARMUP):
        await layer.send(channel, message(seq, time.time))
    if (line := await read_line(lines)) != "WARM":
        raise VerificationError(f"receiving process: {line[:300]}")
    window = Window(WINDOW, 1, n)
    progress = ctx.check(channel, n, time.time)  # the other process's count, for the watchdog
    report: dict[str, Any] = {}

    async def follow_progress() -> None:
        while (line := await read_line(lines)).startswith("ACK "):
            for seq in range(progress.received, int(line[4:])):
                window.delivered(seq)
            progress.received = int(line[4:])
        report.update(json.loads(line))
        if report["error"] is not None:  # stop sending into a dead end
            raise VerificationError(f"receiving process: {report['error']}")

    start = Start.now(time.time)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(follow_progress)
        for seq in range(n):
            await window.wait_for_room(seq)
            await layer.send(channel, message(seq, time.time))
        sender_cpu = start.cpu_since()
    # After the receiver's last report: Redis has done all its work for the run.
    return {
        **report,
        "started": start.wall,
        "sender_cpu": sender_cpu,
        "redis_cpu": start.redis_cpu_since(),
    }


async def cross_process(layers: Layers, ctx: RunContext, n: int) -> Measurement:
    """Send n messages to a receiver in a worker process (see :func:`worker_main`)."""
    command = [sys.executable, __file__, "--worker", ctx.contender.name, ctx.url, str(n)]
    async with await anyio.open_process(command, stdin=None, stderr=None) as process:
        try:
            assert process.stdout is not None
            lines = BufferedByteReceiveStream(process.stdout)
            report = await drive_worker(layers.sender, ctx, n, lines)
        except BaseException:
            if process.returncode is None:
                process.kill()
            raise
    latencies: list[float] = report["latencies"]
    seconds = report["last"] - report["started"]
    cpu = report["sender_cpu"] + report["receiver_cpu"]
    return Measurement(
        len(latencies), seconds, latencies, cpu, redis_cpu_seconds=report["redis_cpu"]
    )


async def worker_receive(contender: Contender, url: str, n: int) -> dict[str, Any]:
    """The receiving process: report the channel, check the warm-up, then time n messages."""
    async with contender.open_layer(url) as layer:
        channel = await layer.new_channel()
        print(f"READY {channel}", flush=True)
        try:
            await receive_all(layer, StreamCheck(channel, CROSS_WARMUP, time.time))
            print("WARM", flush=True)
            check = StreamCheck(channel, n, time.time)

            def progress(seq: int) -> None:
                if (seq + 1) % ACK_EVERY == 0:
                    print(f"ACK {seq + 1}", flush=True)

            start = Start.now(time.time)
            with anyio.fail_after(RUN_TIMEOUT):
                await receive_all(layer, check, progress)
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


def worker_main(contender_name: str, url: str, n: str) -> int:
    contender = CONTENDERS_BY_NAME[contender_name]
    receive = functools.partial(worker_receive, contender, url, int(n))
    print(json.dumps(anyio.run(receive, backend=contender.backend)), flush=True)
    return 0


# -- cases ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PubSubCase(Case):
    """A case of ``bench_layer``'s kind with pub/sub's single variant."""

    def variants(self, contender: Contender) -> tuple[str, ...]:
        return (ONE_PROCESS,) if self.in_process else (PROCESSES,)


# Counts at --scale 1 keep every run of ours to a second or two, and the whole benchmark
# to about 3-4 minutes on a 2-core machine.
CASES: Final = (
    PubSubCase("round-trip", "round trip", round_trip, 10_000),
    PubSubCase("streaming", "streaming, 1 channel", streaming, 20_000),
    PubSubCase(
        "cross-process",
        "cross-process, new_channel()",
        cross_process,
        20_000,
        warm_up=False,
        in_process=False,
    ),
    *(
        PubSubCase(
            "fanout",
            f"group_send, {members} member{'s' * (members > 1)}",
            functools.partial(fanout, members=members),
            count,
        )
        for members, count in ((1, 15_000), (10, 8_000), (100, 1_500), (1000, 200))
    ),
    PubSubCase("concurrent", "50 senders -> 50 channels", concurrent, 30_000),
    PubSubCase(
        "payload",
        "round trip, 10 kB",
        functools.partial(round_trip, payload=os.urandom(10_000)),
        6_000,
    ),
    PubSubCase(
        "payload",
        "round trip, 100 kB",
        functools.partial(round_trip, payload=os.urandom(100_000)),
        2_000,
    ),
)
SCENARIOS: Final = tuple(dict.fromkeys(case.scenario for case in CASES))


# -- running ------------------------------------------------------------------------


@dataclasses.dataclass
class PubSubOutcome(Outcome):
    #: PUBLISH commands Redis counted during the run, warm-up included.
    redis_publishes: int | None = None


class PubSubServer(BenchServer):
    """The Redis under test. Pub/sub stores no keys, so it is never emptied."""

    def publish_calls(self) -> int:
        """PUBLISH commands the server has run since it started."""
        admin = redis.Redis.from_url(self.url)
        try:
            stats = admin.info("commandstats")
        finally:
            admin.close()
        return int(stats.get("cmdstat_publish", {}).get("calls", 0))


def stuck_channels(ctx: RunContext) -> str:
    stuck = [c.describe() for c in ctx.checks if c.received < c.expected]
    return "; ".join(stuck)[:300] if stuck else "(in warm-up or setup)"


async def watch_progress(ctx: RunContext) -> None:
    """Fail the run when no message arrives for STALL_SECONDS: a lost message stalls it."""
    last = -1
    while True:
        await anyio.sleep(STALL_SECONDS)
        progress = sum(check.received for check in ctx.checks)
        if progress == last:
            raise VerificationError(
                f"nothing received for {STALL_SECONDS:.0f} s (messages lost?):"
                f" {stuck_channels(ctx)}"
            )
        last = progress


async def run_watched(case: Case, layers: Layers, ctx: RunContext, n: int) -> Measurement:
    result: Measurement | None = None

    async def run() -> None:
        nonlocal result
        if case.warm_up:
            await warm_up(layers, ctx)
        gc.collect()
        result = await case.run(layers, ctx, n)
        # Only now: cancelling channels_redis's receive() would unsubscribe its channel.
        task_group.cancel_scope.cancel()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(run)
        await watch_progress(ctx)
    assert result is not None
    return result


async def run_case(case: Case, ctx: RunContext, n: int) -> Measurement:
    async with ctx.contender.open_layer(ctx.url) as layer:
        layers = Layers(layer, layer)  # one layer sends and receives: always through Redis
        try:
            with anyio.fail_after(RUN_TIMEOUT):
                result = await run_watched(case, layers, ctx, n)
        except TimeoutError:
            raise VerificationError(
                f"timed out after {RUN_TIMEOUT:.0f} s: {stuck_channels(ctx)}"
            ) from None
        result.layer_stats = layer_statistics(layer)
        return result


def check_went_through_redis(outcome: PubSubOutcome) -> None:
    """Redis must have run one PUBLISH per send (or group_send) call."""
    result = outcome.result
    if result is None or outcome.redis_publishes is None:
        return
    sends = result.calls or result.messages
    if outcome.redis_publishes < sends:
        raise VerificationError(
            f"Redis ran {outcome.redis_publishes} PUBLISH for {sends} sends"
            " (messages did not go through Redis)"
        )


def run_one(
    case: Case, contender: Contender, variant: str, server: PubSubServer, scale: float
) -> PubSubOutcome:
    outcome = PubSubOutcome(case, contender, variant, case.messages_for(contender, scale))
    ctx = RunContext(contender, server.url, variant)
    try:
        publishes_before = server.publish_calls()
        outcome.result = anyio.run(run_case, case, ctx, outcome.messages, backend=contender.backend)
        outcome.redis_publishes = server.publish_calls() - publishes_before
        check_went_through_redis(outcome)
    except Exception as exc:  # shown in the table; the exit status says it failed
        outcome.error = describe_error(exc)
    return outcome


def run_all(
    server: PubSubServer, cases: Sequence[Case], scale: float, repeats: int
) -> list[Outcome]:
    """Run every case for every contender; rounds interleave (A B C, A B C)."""
    outcomes: list[Outcome] = []
    for case in cases:
        rounds: dict[str, list[Outcome]] = {}
        for round_no in range(repeats):
            for contender in CONTENDERS:
                (variant,) = case.variants(contender)
                label = f"  {case.title}: {contender.name} (round {round_no + 1}/{repeats})"
                print(f"{label} ...", end="", file=sys.stderr, flush=True)
                started = time.perf_counter()
                outcome = run_one(case, contender, variant, server, scale)
                status = "ok" if outcome.error is None else f"FAILED: {outcome.error}"
                print(f" {time.perf_counter() - started:.1f} s {status}", file=sys.stderr)
                rounds.setdefault(contender.name, []).append(outcome)
        outcomes += [median_round(each) for each in rounds.values()]
    return outcomes


# -- reporting ----------------------------------------------------------------------------

NOTES: Final = f"""\
channels_redis/asyncio is channels_redis.pubsub.RedisPubSubChannelLayer; ours is
anyio_layer.open_pubsub_layer (capacity {CAPACITY}). Every message goes through Redis:
one PUBLISH per send()/group_send() (checked against INFO commandstats), delivered over the
layer's subscriber connection. 1 process: one layer sends and receives; 2 processes: the receiver
is another process running the same contender.
msg/s: messages received per second, first send to last receive; for group_send, deliveries
(messages x local members) per second, with group_send calls per second in the notes.
vs cr: msg/s divided by channels_redis's in the same case. Latency: receive time - send time in
the message (time.time() across processes).
cpu us/msg: CPU time of the benchmark process(es) (sender and receiver; not redis-server) per
message while timed: less sensitive to machine load than msg/s. redis us/msg: redis-server's
CPU time (INFO cpu, user + sys) per message over the same span.
Pacing: pub/sub has no back-pressure, so every sender stays at most {WINDOW} messages ahead of the
slowest receiver of its channel or group; across processes the receiver reports progress every
{ACK_EVERY} messages on its stdout. Latency in paced cases includes that queue. Delivery is
checked exactly-once and in order per channel; a loss shows as FAILED, never as a lower rate.
Before publishing, every run waits for PUBSUB NUMSUB to show the subscriptions (channels_redis's
new_channel()/group_add() do not wait for the server's confirmation; ours do).
channels_redis gets fewer messages than ours (see "messages"); rates are per message.
channels_redis publishes one message at a time per layer (a lock around PUBLISH), files each
message as bytes into every member's queue and deserializes it in each receive(); ours sends
concurrent PUBLISHes together on one connection and decodes each message once (group members
get a copy of the dict)."""


def write_json(
    path: Path, outcomes: Sequence[Outcome], env: dict[str, Any], scale: float, repeats: int
) -> None:
    results = []
    for outcome in outcomes:
        document = outcome_json(outcome)
        document.pop("redis_script_calls", None)
        document["redis_publish_calls"] = getattr(outcome, "redis_publishes", None)
        results.append(document)
    document = {
        "environment": env,
        "scale": scale,
        "repeats": repeats,
        "layer_options": {"prefix": PREFIX, "serializer_format": SERIALIZER, "capacity": CAPACITY},
        "window": WINDOW,
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def benchmark(server: PubSubServer, args: argparse.Namespace) -> int:
    cases = [case for case in CASES if args.only is None or case.scenario == args.only]
    env = environment(server.url, server.version())
    bench_layer.redis_cpu_probe = server.cpu_seconds
    load_before = os.getloadavg()
    began = time.perf_counter()
    outcomes = run_all(server, cases, args.scale, args.repeats)
    print(f"  done in {time.perf_counter() - began:.0f} s\n", file=sys.stderr)
    load_after = os.getloadavg()
    print(describe_environment(env))
    print(bench_layer.describe_load(load_before, load_after))
    print()
    print(format_table(outcomes))
    print()
    print(NOTES)
    if args.json is not None:
        env["load_average"] = {"before": load_before, "after": load_after}
        write_json(args.json, outcomes, env, args.scale, args.repeats)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in failed:
        print(f"FAILED {outcome.case.title} / {outcome.contender.name}: {outcome.error}")
    return 1 if failed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        help="use this server instead of launching a private one (the benchmark only"
        f" publishes and subscribes to channels named {PREFIX}*; it writes no keys)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--json", type=Path, help="also write raw results to this file")
    parser.add_argument("--only", choices=SCENARIOS, help="run only this scenario")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds per run (default 3); the median is reported"
    )
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeats < 1:
        parser.error("--scale must be positive and --repeats at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(*args.worker)
    if args.url is not None:
        return benchmark(PubSubServer(args.url, private=False), args)
    server = RedisServer.launch()
    try:
        return benchmark(PubSubServer(server.url, private=True), args)
    finally:
        server.close()  # stop() and delete its temporary directory


if __name__ == "__main__":
    sys.exit(main())
