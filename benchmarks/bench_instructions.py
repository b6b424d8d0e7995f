"""Instructions per pub/sub round trip, counted by valgrind: stable on a noisy machine.

Usage::

    python benchmarks/bench_instructions.py                  # about 5 minutes
    python benchmarks/bench_instructions.py --messages 2000

Rates on a shared or virtual machine move by tens of percent from one run to
the next; the number of instructions a process executes does not. This runs
``bench_pubsub.py``'s round trip (send to a ``new_channel()`` channel, receive
it, again) for channels_redis's pub/sub layer and ours under asyncio and
trio, and ``bench_floor.py``'s floors (the same chain on blocking sockets,
on asyncio Protocols and on trio sockets), each in a child process under
``valgrind --tool=callgrind``, twice: with 50 warm-up round trips and
``--messages`` more, and with the warm-up alone. The difference divided by
``--messages`` is what one round trip costs in the client's own code (Python,
the event loop, msgpack, hiredis; the kernel's work and redis-server's are
not counted). A private ``redis-server`` runs outside valgrind for all of
them; ``--url`` uses another one.

Needs ``valgrind`` on the PATH (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_floor
import bench_layer
import bench_pubsub

from anyio_layer.testing import RedisServer

WARMUP = 50
#: What a child can run: the layers by contender name, the floors by function name.
LAYERS = {contender.name: contender for contender in bench_pubsub.CONTENDERS}
FLOORS = {make.__name__: (what, make) for what, make in bench_floor.FLOORS}
ROWS = (*LAYERS, "resp2_floor", "asyncio_floor", "trio_floor")
COLLECTED = re.compile(rb"Collected : (\d+)")


# -- the child: round trips, nothing else ----------------------------------------------


async def layer_round_trips(contender: bench_layer.Contender, url: str, n: int) -> None:
    async with contender.open_layer(url) as layer:
        channel = await layer.new_channel()
        for seq in range(n):
            await layer.send(channel, bench_layer.message(seq, time.time))
            received = await layer.receive(channel)
            if received["seq"] != seq:
                raise RuntimeError(f"round trip #{seq} received message #{received['seq']}")


def child(row: str, url: str, n: int) -> None:
    if row in LAYERS:
        contender = LAYERS[row]
        anyio.run(layer_round_trips, contender, url, n, backend=contender.backend)
        return
    _, make = FLOORS[row]
    bench_floor.open_floor(make, url)(n)


# -- the parent: run each child under callgrind, twice -----------------------------------


def instructions(row: str, url: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={Path(scratch) / 'callgrind.out'}",
            sys.executable,
            __file__,
            "--child",
            row,
            url,
            str(n),
        ]
        done = subprocess.run(command, capture_output=True, check=False)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{row}: the child failed (exit {done.returncode}):\n{tail}")
    return int(found.group(1))


def describe(row: str) -> str:
    return f"round trip: {row}" if row in LAYERS else FLOORS[row][0]


def benchmark(url: str, messages: int) -> int:
    per_message: dict[str, float] = {}
    for row in ROWS:
        print(f"  {describe(row)} ...", file=sys.stderr, flush=True)
        counted = instructions(row, url, WARMUP + messages) - instructions(row, url, WARMUP)
        per_message[row] = counted / messages
    reference = per_message[bench_layer.CHANNELS_REDIS]
    print(f"instructions per round trip (valgrind callgrind), {messages:,} round trips")
    print(f"{'what':<40}{'instructions':>14}{'cr / this':>11}")
    print("-" * 65)
    for row, count in per_message.items():
        print(f"{describe(row):<40}{count:>14,.0f}{reference / count:>10.1f}x")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["--child"]:
        row, url, n = arguments[1:]
        child(row, url, int(n))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", help="use this server (redis://host:port) instead of a private one"
    )
    parser.add_argument(
        "--messages", type=int, default=1000, help="round trips counted (default 1,000)"
    )
    args = parser.parse_args(arguments)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not on the PATH (Debian: apt-get install valgrind)")
    if args.url is not None:
        return benchmark(args.url, args.messages)
    server = RedisServer.launch()
    try:
        return benchmark(server.url, args.messages)
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
