"""Benchmark our layers on a Redis Cluster next to a single Redis server, in one run.

Launches two private Redis deployments on the loopback and runs the same
scenarios on both, interleaved, for our queue layer (``open_redis_layer``)
under asyncio and under trio:

    single    one redis-server (``anyio_layer.testing.RedisServer``)
    cluster   3 primaries with 1 replica each (``anyio_layer.testing.cluster.RedisCluster``);
              the layers get the seeds as ``redis+cluster://`` hosts

The scenarios are ``bench_layer.py``'s (imported, not copied), all in its
"via Redis" variant: a second layer of ours sends, so every message really
goes through Redis (one EVALSHA per send, routed to the primary of the
channel's slot on the cluster). Scenarios (``--only`` takes the names on the left)::

    round-trip      1 task: send to a new_channel() channel, receive it, repeat
    streaming       1 sender task + 1 receiver task on one new_channel() channel
    cross-process   the receiver is another process (bench_layer.py's worker):
                    to a channel it made with new_channel(), and to a normal channel
    fanout          group_send to 100 and to 1000 members, one receiver task each
    concurrent      50 sender tasks, each to its own channel, 50 receivers
    pubsub-round-trip, pubsub-fanout, pubsub-concurrent
                    bench_pubsub.py's round trip, group_send to 100 members and 50
                    senders -> 50 channels, for our pub/sub layer (sharded pub/sub on
                    the cluster): only if it accepts cluster hosts (see --pubsub)

On a cluster the layer keeps all process-local channels of one
``new_channel()`` prefix in one key, so one slot. In ``fanout`` and
``concurrent`` the receiving layer's channels are therefore made with 6
different prefixes, chosen so that 2 keys land on each primary (on the single
server the same 6 keys): group_send writes one copy per key, one script call
per slot pipelined per node, and the 50 senders' EVALSHAs go to all three
primaries. Those runs fail unless every primary ran at least a fifth of the
send scripts (``INFO commandstats`` per primary).

Verification is bench_layer's (bench_pubsub's for pub/sub): every message
exactly once and in order per channel, nothing extra afterwards, and at least
one send script (pub/sub: PUBLISH or SPUBLISH) per send, summed over the
primaries. A failed run shows as FAILED and makes the script exit with status 1.

Besides msg/s, latency and the benchmark's CPU per message (as in
bench_layer), every run records where the CPU went while its scenario ran:
the benchmark process (plus the receiving process in cross-process), every
redis-server (``INFO cpu``, primaries and replicas apart) and the whole
machine (``/proc/stat``), so the table shows whether the client, the servers
or the machine's two cores were the limit. Each measurement runs
``--repeats`` times (default 3, interleaved: asyncio single, asyncio
cluster, trio single, trio cluster, then again); the fastest round is shown,
with the ratio cluster / single.

Reproduce (about 5 minutes on 2 cores)::

    python benchmarks/bench_cluster.py
    python benchmarks/bench_cluster.py --scale 0.2 --repeats 1
    python benchmarks/bench_cluster.py --only fanout --json /tmp/cluster.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import bench_layer
import bench_pubsub
from bench_layer import (
    VIA_REDIS,
    Case,
    Contender,
    Layer,
    Layers,
    Measurement,
    RunContext,
    Scenario,
    VerificationError,
    better,
    describe_environment,
    describe_error,
    describe_load,
    environment,
)
from bench_pubsub import PubSubOutcome

from anyio_layer.exceptions import ConfigurationError
from anyio_layer.pubsub import open_pubsub_layer
from anyio_layer.redis.cluster import ClusterClient, key_slot
from anyio_layer.testing import RedisServer
from anyio_layer.testing.cluster import CLUSTER_SLOTS, RedisCluster

PRIMARIES: Final = 3
REPLICAS: Final = 1
#: Process-local keys the channels of the spread cases are spread over (2 per primary).
SPREAD_KEYS: Final = 6
#: In a spread case on the cluster, every primary must run at least this share of the sends.
MIN_PRIMARY_SHARE: Final = 0.2
SINGLE: Final = "single"
CLUSTER: Final = "cluster"
QUEUE: Final = "queue"
PUBSUB: Final = "pubsub"
#: The commands that carry a layer's messages into Redis, per layer kind.
SEND_COMMANDS: Final = {QUEUE: ("evalsha", "eval"), PUBSUB: ("publish", "spublish")}
#: Commands counted per node for the JSON output.
COUNTED_COMMANDS: Final = ("evalsha", "eval", "bzmpop", "zrange", "publish", "spublish")


# -- the two deployments --------------------------------------------------------------


@dataclasses.dataclass
class Topology:
    """A Redis deployment under test: one server, or a cluster."""

    name: str
    #: What the layers get (bench_layer.hosts_of splits it): the server's URL or the seeds.
    url: str
    primaries: list[RedisServer]
    replicas: list[RedisServer]
    #: The index (in ``primaries``) of the primary serving each slot.
    owners: list[int]

    @classmethod
    def single(cls, server: RedisServer) -> Topology:
        return cls(SINGLE, server.url, [server], [], [0] * CLUSTER_SLOTS)

    @classmethod
    def cluster(cls, cluster: RedisCluster) -> Topology:
        primaries = cluster.primaries()  # ordered by first slot
        index = {cluster.node_id(node): i for i, node in enumerate(primaries)}
        owners = [-1] * CLUSTER_SLOTS
        for (first, last), node_id in cluster.slot_map().items():
            owners[first : last + 1] = [index[node_id]] * (last - first + 1)
        if -1 in owners:
            raise RuntimeError("the cluster does not serve every slot")
        replicas = [r for node in primaries for r in cluster.replicas_of(node)]
        return cls(CLUSTER, ",".join(cluster.hosts), primaries, replicas, owners)

    @property
    def nodes(self) -> list[RedisServer]:
        return self.primaries + self.replicas

    def reset(self) -> None:
        """Empty every primary (replicas follow)."""
        for node in self.primaries:
            node.execute("FLUSHALL")

    def command_calls(self) -> list[dict[str, int]]:
        """Per primary, calls of COUNTED_COMMANDS since it started (``INFO commandstats``)."""
        counts = []
        for node in self.primaries:
            stats = node.info("commandstats")
            counts.append(
                {name: _calls(stats.get(f"cmdstat_{name}", "")) for name in COUNTED_COMMANDS}
            )
        return counts

    def cpu_seconds(self) -> tuple[list[float], list[float]]:
        """CPU time (user + sys, all threads) of every primary and every replica so far."""

        def used(node: RedisServer) -> float:
            cpu = node.info("cpu")
            return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

        return [used(n) for n in self.primaries], [used(n) for n in self.replicas]

    def describe(self) -> str:
        if self.name == SINGLE:
            return f"single: 1 redis-server on port {self.primaries[0].port}"
        ports = ", ".join(str(node.port) for node in self.primaries)
        return (
            f"cluster: {len(self.primaries)} primaries (ports {ports}),"
            f" {len(self.replicas)} replicas; slots split evenly"
        )


def _calls(field: str) -> int:
    """``calls`` from an ``INFO commandstats`` value (``calls=12,usec=...``)."""
    for item in field.split(","):
        key, _, value = item.partition("=")
        if key == "calls":
            return int(value)
    return 0


# -- where the CPU went -----------------------------------------------------------------


def _client_cpu() -> float:
    """CPU time of this process and of its finished children (the cross-process worker)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _machine_busy() -> float:
    """CPU seconds every core of the machine spent busy since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Usage:
    """CPU time used while a scenario ran (warm-up excluded, setup and checks included)."""

    seconds: float
    client: float  # the benchmark process, plus the receiving process of cross-process
    primaries: list[float]
    replicas: list[float]
    machine: float  # all processes, from /proc/stat

    @property
    def redis(self) -> float:
        return sum(self.primaries) + sum(self.replicas)

    def percent(self, cpu_seconds: float) -> float:
        """CPU seconds as a percentage of one core over the scenario (the machine has 200 %)."""
        return 100 * cpu_seconds / self.seconds


class Probe:
    """Snapshots around one scenario call, and the cluster clients' redirection counts."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.usage: Usage | None = None
        self.redirections: int | None = None
        self.node_connections: dict[str, int] = {}
        #: Per primary, calls of COUNTED_COMMANDS while the scenario ran.
        self.node_commands: list[dict[str, int]] | None = None
        self._start: tuple[float, float, list[float], list[float], float] | None = None
        self._commands: list[dict[str, int]] = []

    def begin(self) -> None:
        self._commands = self.topology.command_calls()
        primaries, replicas = self.topology.cpu_seconds()
        machine = _machine_busy()
        self._start = (time.perf_counter(), _client_cpu(), primaries, replicas, machine)

    def end(self, layers: Layers) -> None:
        seconds, client = time.perf_counter(), _client_cpu()
        machine = _machine_busy()
        primaries, replicas = self.topology.cpu_seconds()
        commands = self.topology.command_calls()
        self.node_commands = [
            {name: b[name] - a[name] for name in COUNTED_COMMANDS}
            for a, b in zip(self._commands, commands, strict=True)
        ]
        assert self._start is not None
        seconds0, client0, primaries0, replicas0, machine0 = self._start
        self.usage = Usage(
            seconds - seconds0,
            client - client0,
            [b - a for a, b in zip(primaries0, primaries, strict=True)],
            [b - a for a, b in zip(replicas0, replicas, strict=True)],
            machine - machine0,
        )
        distinct = [layers.receiver] + [layers.sender] * (layers.sender is not layers.receiver)
        for layer in distinct:
            statistics = _cluster_statistics(layer)
            if statistics is not None:
                self.redirections = (self.redirections or 0) + statistics.redirections
                for node, pool in statistics.nodes.items():
                    opened = self.node_connections.get(node, 0) + pool.connections_opened
                    self.node_connections[node] = opened

    def wrap(self, scenario: Scenario, spread: bool) -> Scenario:
        """``scenario`` with snapshots around it (and its channels spread over the nodes)."""

        async def run(layers: Layers, ctx: RunContext, n: int) -> Measurement:
            used = layers
            if spread:
                used = Layers(SpreadChannels(layers.receiver, self.topology), layers.sender)
            self.begin()
            try:
                return await scenario(used, ctx, n)
            finally:
                self.end(layers)

        return run


def _cluster_statistics(layer: Layer) -> Any:
    """The statistics of the layer's cluster client (moved/asked, per-node pools), else None.

    The layers' public statistics() have no cluster counters, so this looks for
    the :class:`ClusterClient` among the layer's attributes and theirs (private:
    ``QueueLayer._keys._client``, ``PubSubLayer._subscriptions.client`` today).
    """
    objects = [layer]
    for _ in range(2):  # the layer's attributes, then theirs
        found = []
        for obj in objects:
            for value in getattr(obj, "__dict__", {}).values():
                if isinstance(value, ClusterClient):
                    return value.statistics()
                found.append(value)
        objects = found
    return None


# -- spreading channels over the primaries ------------------------------------------------


class SpreadChannels:
    """A queue layer whose ``new_channel()`` rotates over SPREAD_KEYS prefixes.

    All process-local channels of one prefix share one Redis key (on a cluster:
    ``<prefix>{<prefix>.<client>!}``, one slot). The prefixes are picked so that
    the keys are spread evenly over the primaries; everything else is the
    layer's own bound methods (no extra call per message).
    """

    def __init__(self, layer: Any, topology: Topology) -> None:
        self.layer = layer
        self.send = layer.send
        self.receive = layer.receive
        self.group_add = layer.group_add
        self.group_send = layer.group_send
        self.prefixes = spread_prefixes(layer.client_prefix, topology)
        self._next = itertools.cycle(self.prefixes)

    async def new_channel(self, prefix: str = "specific") -> str:
        return str(await self.layer.new_channel(next(self._next)))


def spread_prefixes(client_prefix: str, topology: Topology) -> list[str]:
    """SPREAD_KEYS ``new_channel()`` prefixes whose keys fall evenly on the primaries."""
    nodes = len(topology.primaries)
    per_node = math.ceil(SPREAD_KEYS / nodes)
    taken = [0] * nodes
    chosen: list[str] = []
    for i in itertools.count():
        prefix = f"spread{i}"
        # The queue layer's cluster key of these channels is prefix{<non-local part>}.
        key = f"{bench_layer.PREFIX}{{{prefix}.{client_prefix}!}}"
        node = topology.owners[key_slot(key)]
        if taken[node] < per_node:
            taken[node] += 1
            chosen.append(prefix)
            if len(chosen) == SPREAD_KEYS:
                return chosen
    raise AssertionError("unreachable")


# -- cases ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterCase:
    """A case of bench_layer (or bench_pubsub), with our message count and options."""

    scenario: str  # what --only selects
    kind: str  # QUEUE or PUBSUB
    case: Case
    #: Messages (group_send calls for fan-out) at --scale 1.
    count: int
    #: Queue layer: make the channels with SPREAD_KEYS new_channel() prefixes (2 keys per primary).
    spread: bool = False
    #: On the cluster, every primary must run at least this share of the sends (None: no check).
    min_primary_share: float | None = None

    @property
    def title(self) -> str:
        return self.case.title if self.kind == QUEUE else f"pub/sub {self.case.title}"

    def messages(self, scale: float) -> int:
        return max(1, round(self.count * scale))


def _layer_case(title: str) -> Case:
    return next(case for case in bench_layer.CASES if case.title == title)


def _pubsub_case(title: str) -> Case:
    return next(case for case in bench_pubsub.CASES if case.title == title)


# Counts at --scale 1 keep every run to about 1-3 s on a 2-core machine and the whole
# benchmark (2 repeats) to about 5 minutes.
CASES: Final = (
    ClusterCase("round-trip", QUEUE, _layer_case("round trip"), 6_000),
    ClusterCase("streaming", QUEUE, _layer_case("streaming, 1 channel"), 10_000),
    ClusterCase("cross-process", QUEUE, _layer_case("cross-process, new_channel()"), 10_000),
    ClusterCase("cross-process", QUEUE, _layer_case("cross-process, normal channel"), 8_000),
    *(
        ClusterCase(
            scenario,
            QUEUE,
            _layer_case(title),
            count,
            spread=True,
            min_primary_share=MIN_PRIMARY_SHARE,
        )
        for scenario, title, count in (
            ("fanout", "group_send, 100 members", 500),
            ("fanout", "group_send, 1000 members", 80),
            ("concurrent", "50 senders -> 50 channels", 20_000),
        )
    ),
    ClusterCase("pubsub-round-trip", PUBSUB, _pubsub_case("round trip"), 10_000),
    ClusterCase("pubsub-fanout", PUBSUB, _pubsub_case("group_send, 100 members"), 2_000),
    # Pub/sub channel names are random, so their slots are: each primary gets some of the
    # 50 channels (a third on average; fewer than 10 for one primary in ~2% of runs).
    ClusterCase(
        "pubsub-concurrent",
        PUBSUB,
        _pubsub_case("50 senders -> 50 channels"),
        30_000,
        min_primary_share=0.05,
    ),
)
SCENARIOS: Final = tuple(dict.fromkeys(case.scenario for case in CASES))
BACKENDS: Final = ("asyncio", "trio")


def contender(kind: str, backend: str) -> Contender:
    contenders: dict[str, Contender] = (
        bench_layer.CONTENDERS_BY_NAME if kind == QUEUE else bench_pubsub.CONTENDERS_BY_NAME
    )
    return contenders[f"ours/{backend}"]


# -- running -------------------------------------------------------------------------------


@dataclasses.dataclass
class ClusterOutcome(PubSubOutcome):
    """One run: a case, a backend, a topology."""

    spec: ClusterCase | None = None
    topology: str = ""
    usage: Usage | None = None
    #: Per primary, calls of COUNTED_COMMANDS while the scenario ran (warm-up excluded).
    node_commands: list[dict[str, int]] | None = None
    redirections: int | None = None
    node_connections: dict[str, int] | None = None
    #: msg/s of every round (None: failed), in order; the outcome is the fastest.
    round_rates: list[float | None] = dataclasses.field(default_factory=list)

    @property
    def sends_per_primary(self) -> list[int]:
        assert self.spec is not None
        names = SEND_COMMANDS[self.spec.kind]
        return [sum(node[name] for name in names) for node in self.node_commands or []]


def check_spread(outcome: ClusterOutcome) -> None:
    """In a spread case on the cluster, every primary must have run its share of the sends."""
    assert outcome.spec is not None
    share = outcome.spec.min_primary_share
    if share is None or outcome.topology != CLUSTER:
        return
    sends = outcome.sends_per_primary
    total = sum(sends)
    if total == 0 or min(sends) == 0 or min(sends) < share * total:
        raise VerificationError(
            f"cluster traffic did not reach every primary: send scripts per primary {sends}"
        )


def run_one(spec: ClusterCase, backend: str, topology: Topology, scale: float) -> ClusterOutcome:
    runner = contender(spec.kind, backend)
    variant = VIA_REDIS if spec.kind == QUEUE else bench_pubsub.ONE_PROCESS
    if not spec.case.in_process:
        variant = bench_layer.PROCESSES
    outcome = ClusterOutcome(
        spec.case, runner, variant, spec.messages(scale), spec=spec, topology=topology.name
    )
    probe = Probe(topology)
    case = dataclasses.replace(spec.case, run=probe.wrap(spec.case.run, spec.spread))
    ctx = RunContext(runner, topology.url, variant)
    run_case = bench_layer.run_case if spec.kind == QUEUE else bench_pubsub.run_case
    try:
        outcome.result = anyio.run(run_case, case, ctx, outcome.messages, backend=backend)
        outcome.node_commands = probe.node_commands
        sends = sum(outcome.sends_per_primary)
        if spec.kind == QUEUE:
            outcome.redis_scripts = sends
            bench_layer.check_went_through_redis(outcome)
        else:
            outcome.redis_publishes = sends
            bench_pubsub.check_went_through_redis(outcome)
        check_spread(outcome)
    except Exception as exc:  # shown in the table; the exit status says it failed
        outcome.error = describe_error(exc)
    outcome.usage = probe.usage
    outcome.redirections = probe.redirections
    outcome.node_connections = probe.node_connections or None
    return outcome


def run_all(
    topologies: Sequence[Topology], cases: Sequence[ClusterCase], scale: float, repeats: int
) -> list[ClusterOutcome]:
    """Every case, backend and topology; rounds interleave (aS aC tS tC, aS aC tS tC)."""
    outcomes: list[ClusterOutcome] = []
    for spec in cases:
        best: dict[tuple[str, str], ClusterOutcome] = {}
        rates: dict[tuple[str, str], list[float | None]] = {}
        for round_no in range(repeats):
            for backend in BACKENDS:
                for topology in topologies:
                    topology.reset()
                    label = (
                        f"  {spec.title}: {backend}, {topology.name}"
                        f" (round {round_no + 1}/{repeats})"
                    )
                    print(f"{label} ...", end="", file=sys.stderr, flush=True)
                    started = time.perf_counter()
                    outcome = run_one(spec, backend, topology, scale)
                    status = "ok" if outcome.error is None else f"FAILED: {outcome.error}"
                    print(f" {time.perf_counter() - started:.1f} s {status}", file=sys.stderr)
                    key = (backend, topology.name)
                    result = None if outcome.error is not None else outcome.result
                    rates.setdefault(key, []).append(None if result is None else result.rate)
                    previous = best.get(key)
                    chosen = outcome if previous is None else better(previous, outcome)
                    assert isinstance(chosen, ClusterOutcome)
                    best[key] = chosen
        for key, outcome in best.items():
            outcome.round_rates = rates[key]
        outcomes += best.values()
    for topology in topologies:
        topology.reset()
    return outcomes


def pubsub_accepts_cluster(url: str) -> str | None:
    """None if the pub/sub layer opens with the cluster's hosts, else why not."""

    async def probe() -> None:
        async with open_pubsub_layer(hosts=bench_layer.hosts_of(url)) as layer:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "probe"})
            with anyio.fail_after(10):
                await layer.receive(channel)

    try:
        anyio.run(probe)
    except ConfigurationError as exc:
        return str(exc)
    except Exception as exc:
        return describe_error(exc)
    return None


# -- reporting --------------------------------------------------------------------------------


def _find(
    outcomes: Sequence[ClusterOutcome], spec: ClusterCase, backend: str, topology: str
) -> ClusterOutcome | None:
    return next(
        (
            o
            for o in outcomes
            if o.spec is spec and o.contender.backend == backend and o.topology == topology
        ),
        None,
    )


def _ratio(outcomes: Sequence[ClusterOutcome], outcome: ClusterOutcome) -> str:
    assert outcome.spec is not None
    single = _find(outcomes, outcome.spec, outcome.contender.backend, SINGLE)
    if outcome.topology != CLUSTER or single is None:
        return ""
    if single.result is None or single.error is not None:
        return "n/a"
    if outcome.result is None or outcome.error is not None:
        return "n/a"
    return f"{outcome.result.rate / single.result.rate:.2f}x"


def _shares(outcome: ClusterOutcome) -> str:
    """Send commands per primary, in percent of the run's total."""
    sends = outcome.sends_per_primary
    total = sum(sends)
    if len(sends) < 2 or total == 0:
        return ""
    return "/".join(f"{100 * s / total:.0f}" for s in sends)


def _notes(outcome: ClusterOutcome) -> str:
    result = outcome.result
    assert result is not None
    notes = bench_layer.result_notes(result)
    if outcome.redirections:
        notes.append(f"{outcome.redirections} MOVED/ASK")
    return ", ".join(notes)


def table_rows(outcomes: Sequence[ClusterOutcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        assert outcome.spec is not None
        result = outcome.result
        head = (
            outcome.spec.title,
            outcome.contender.backend,
            outcome.topology,
            f"{outcome.messages if result is None else result.messages:,}",
        )
        if result is None or outcome.error is not None:
            rows.append((*head, "FAILED", *[""] * 9, outcome.error or ""))
            continue
        usage = outcome.usage
        if usage is None:
            cpu = ("", "", "", "")
        else:
            redis_part = f"{usage.percent(usage.redis):.0f}"
            if usage.replicas:
                redis_part += (
                    f" ({usage.percent(sum(usage.primaries)):.0f}"
                    f"+{usage.percent(sum(usage.replicas)):.0f})"
                )
            cpu = (
                f"{usage.percent(usage.client):.0f}",
                redis_part,
                f"{usage.percent(usage.machine):.0f}",
                f"{usage.redis / result.messages * 1e6:.0f}",
            )
        rows.append(
            (
                *head,
                f"{result.rate:,.0f}",
                _ratio(outcomes, outcome),
                f"{result.percentile(0.5) * 1000:.2f}",
                f"{result.percentile(0.99) * 1000:.2f}",
                f"{result.cpu_per_message * 1e6:.0f}",
                *cpu,
                _shares(outcome),
                _notes(outcome),
            )
        )
    return rows


HEADER: Final = (
    "case",
    "backend",
    "topology",
    "messages",
    "msg/s",
    "cl/single",
    "p50 ms",
    "p99 ms",
    "cpu us/msg",
    "client %",
    "redis % (P+R)",
    "machine %",
    "redis us/msg",
    "sends/primary %",
    "notes",
)


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the last one free."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def summary(outcomes: Sequence[ClusterOutcome], cases: Sequence[ClusterCase]) -> str:
    """cluster / single msg/s per case and backend."""
    rows = []
    for spec in cases:
        cells = []
        for backend in BACKENDS:
            cluster = _find(outcomes, spec, backend, CLUSTER)
            cells.append("" if cluster is None else _ratio(outcomes, cluster))
        rows.append((spec.title, *cells, ""))
    return format_rows(("case", *(f"{b} cluster/single" for b in BACKENDS), ""), rows, 1)


NOTES: Final = f"""\
Every message goes through Redis. Queue layer: "via Redis", a second layer of ours sends
(checked: one send script per send). Pub/sub: one layer sends and receives (checked: one PUBLISH
or SPUBLISH per send). single: one redis-server. cluster: {PRIMARIES} primaries with {REPLICAS}
replica each, hosts = redis+cluster:// seeds.
msg/s: messages received per second, first send to last receive; for group_send, deliveries
(messages x members) per second. cl/single: cluster msg/s / single msg/s, same backend.
Latency: receive time - send time in the message. cpu us/msg: CPU time of the benchmark
process(es) per message while timed (bench_layer's column).
While the scenario ran (setup and checks included, warm-up excluded), in % of one core (the
machine has 2 cores, 200 %): client % = the benchmark process plus, in cross-process, the
receiving process; redis % = every redis-server of the topology (P+R: primaries + replicas,
from INFO cpu); machine % = all processes (/proc/stat), so machine - client - redis is anything
else (idle nodes of the other topology, the kernel, other load). redis us/msg: redis CPU
per message.
sends/primary %: EVALSHA (pub/sub: PUBLISH/SPUBLISH) per primary, from INFO commandstats.
Queue fanout and concurrent spread their channels over {SPREAD_KEYS} process-local keys
(new_channel() prefixes, 2 keys per primary) and fail unless each primary ran at least
{MIN_PRIMARY_SHARE:.0%} of the sends; pub/sub concurrent (50 random channel names) needs 5 %.
MOVED/ASK: redirections the layers' cluster clients followed (0 expected)."""


def outcome_json(outcome: ClusterOutcome) -> dict[str, Any]:
    assert outcome.spec is not None
    document = bench_layer.outcome_json(outcome)
    document |= {
        "layer": outcome.spec.kind,
        "backend": outcome.contender.backend,
        "topology": outcome.topology,
        "spread": outcome.spec.spread,
        "min_primary_share": outcome.spec.min_primary_share,
        "commands_per_primary": outcome.node_commands,
        "messages_per_second_per_round": outcome.round_rates,
        "cluster_redirections": outcome.redirections,
        "connections_opened_per_node": outcome.node_connections,
        "cpu_usage": None if outcome.usage is None else dataclasses.asdict(outcome.usage),
    }
    if outcome.spec.kind == PUBSUB:
        document.pop("redis_script_calls", None)
        document["redis_publish_calls"] = outcome.redis_publishes
    return document


def benchmark(topologies: Sequence[Topology], args: argparse.Namespace) -> int:
    cases = [case for case in CASES if args.only is None or case.scenario == args.only]
    pubsub_note = ""
    if args.pubsub != "on" and any(case.kind == PUBSUB for case in cases):
        reason = "--pubsub off"
        if args.pubsub == "auto":
            cluster = next(t for t in topologies if t.name == CLUSTER)
            reason = pubsub_accepts_cluster(cluster.url) or ""
        if reason:
            cases = [case for case in cases if case.kind != PUBSUB]
            pubsub_note = (
                f"pub/sub cases skipped: {reason}\n"
                "(run with --pubsub on to try them anyway; they run by default once the"
                " pub/sub layer accepts cluster hosts)"
            )
            print(f"  {pubsub_note}", file=sys.stderr)
    if not cases:
        print("nothing to run", file=sys.stderr)
        return 0
    env = environment(topologies[0].url, str(topologies[0].primaries[0].info()["redis_version"]))
    load_before = os.getloadavg()
    began = time.perf_counter()
    outcomes = run_all(topologies, cases, args.scale, args.repeats)
    elapsed = time.perf_counter() - began
    load_after = os.getloadavg()
    print(f"  done in {elapsed:.0f} s\n", file=sys.stderr)
    print(describe_environment(env))
    for topology in topologies:
        print(topology.describe())
    print(f"{describe_load(load_before, load_after)}; {elapsed:.0f} s")
    print()
    print(format_rows(HEADER, table_rows(outcomes), 3))
    print()
    print(summary(outcomes, cases))
    print()
    print(NOTES)
    if pubsub_note:
        print(pubsub_note)
    if args.json is not None:
        env["load_average"] = {"before": load_before, "after": load_after}
        document = {
            "environment": env,
            "topologies": [t.describe() for t in topologies],
            "scale": args.scale,
            "repeats": args.repeats,
            "layer_options": bench_layer.LAYER_OPTIONS,
            "spread_keys": SPREAD_KEYS,
            "pubsub": pubsub_note or "included",
            "results": [outcome_json(o) for o in outcomes],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    failed = [o for o in outcomes if o.error is not None]
    for outcome in failed:
        assert outcome.spec is not None
        print(
            f"FAILED {outcome.spec.title} / {outcome.contender.backend}, {outcome.topology}:"
            f" {outcome.error}"
        )
    return 1 if failed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--json", type=Path, help="also write raw results to this file")
    parser.add_argument("--only", choices=SCENARIOS, help="run only this scenario")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds per run (default 3); the fastest is reported"
    )
    parser.add_argument(
        "--pubsub",
        choices=("auto", "on", "off"),
        default="auto",
        help="pub/sub cases: auto (default) runs them if the pub/sub layer accepts cluster"
        " hosts, on runs them regardless (failures show in the table), off skips them",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeats < 1:
        parser.error("--scale must be positive and --repeats at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"  launching a redis-server and a cluster ({PRIMARIES} primaries,"
        f" {REPLICAS} replica each) ...",
        file=sys.stderr,
    )
    with RedisServer.launch() as server, RedisCluster.launch(PRIMARIES, REPLICAS) as cluster:
        topologies = (Topology.single(server), Topology.cluster(cluster))
        return benchmark(topologies, args)


if __name__ == "__main__":
    sys.exit(main())
