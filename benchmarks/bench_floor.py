"""The floor under a sequential round trip: what Redis and the kernel cost per message.

Usage::

    python benchmarks/bench_floor.py                   # 10,000 messages per row, 3 rounds
    python benchmarks/bench_floor.py --messages 30000 --repeats 5

``bench_pubsub.py``'s sequential cases (round trip, its payload variants,
streaming, ``group_send`` to one member) are chains of one PUBLISH after
another: publish a message, wait for Redis's reply and for the message to come
back on the subscriber connection, publish the next. Part of each link is
redis-server's work and the kernel's (loopback TCP, waking the processes),
the same for every client. This script measures what is left of a link when
the client's own work is as small as it gets: blocking sockets, no event loop,
no tasks, no parser (every reply's bytes are known in advance and compared
whole), the message encoded once. No Python client, ours included, can beat
these rows on the same machine, so they bound the ratio any layer can reach:

* ``floor: PUBLISH + subscriber (RESP2)``: PUBLISH on one connection, read its
  reply, read the message from a second connection subscribed to the channel.
  This is what channels_redis's pub/sub layer and ours do per message.
* ``floor: the same, asyncio Protocols`` and ``floor: the same, trio sockets``:
  the same two connections driven by an event loop with nothing else to do
  (under asyncio two ``asyncio.Protocol`` objects and a future per read, as our
  asyncio fast path reads; under trio one task calling trio's socket methods).
  No client built on that event loop can beat these rows: what lies between
  them and the first row is the event loop's own cost per round trip.
* ``floor: one RESP3 connection``: ``HELLO 3``, SUBSCRIBE, then PUBLISH on the
  same connection; the pushed message and the reply come back together, so
  Redis writes once and the client reads once.
* ``floor: one command (PING)``: one round trip of the cheapest command, the
  least any sequential call costs (a queue layer's ``send()``, a blocking pop).

Next to them, in the same run and against the same server,
``bench_pubsub.py``'s round-trip case for channels_redis's pub/sub layer and
ours under asyncio and trio (with their own counts and verification).

Reported per row: messages per second (the median of ``--repeats`` interleaved
rounds), the ratio to channels_redis's round trip, this process's CPU time
(user + sys) per message and redis-server's (``INFO cpu``). A private
``redis-server`` is started with :class:`anyio_layer.testing.RedisServer` and
stopped at the end; ``--url`` uses another server instead (plain TCP only;
the script only publishes to and subscribes to channels named ``PREFIX*``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import msgpack
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_layer
import bench_pubsub

from anyio_layer.testing import RedisServer

#: One floor round: run this many round trips.
Loop = Callable[[int], None]


@dataclasses.dataclass
class Row:
    what: str
    rate: float  # messages per second
    client_cpu: float  # this process's CPU seconds per message
    redis_cpu: float  # redis-server's CPU seconds per message


# -- the floors: blocking sockets, every reply known in advance ----------------------------


def command(*args: bytes) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def expect(sock: socket.socket, *wanted: bytes) -> None:
    """Read exactly as many bytes as ``wanted[0]`` has; they must equal one of ``wanted``."""
    size = len(wanted[0])
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        data += chunk
    if data not in wanted:
        raise RuntimeError(f"unexpected reply from redis-server: {data[:100]!r}")


def read_until(sock: socket.socket, end: bytes) -> None:
    """Read replies of unknown length up to and including ``end``."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        data += chunk


def pushed(kind: bytes, *fields: bytes) -> bytes:
    """A pub/sub message or confirmation as Redis sends it (RESP2 array, RESP3 push)."""
    parts = [kind + b"%d\r\n" % len(fields)]
    for field in fields:
        parts.append(b"$%d\r\n%s\r\n" % (len(field), field))
    return b"".join(parts)


def subscribed(kind: bytes, channel: bytes) -> bytes:
    """SUBSCRIBE's confirmation for the connection's first channel."""
    return pushed(kind, b"subscribe", channel).replace(kind + b"2", kind + b"3", 1) + b":1\r\n"


def subscribed_pair(
    address: tuple[str, int], channel: bytes
) -> tuple[socket.socket, socket.socket]:
    """A connection to publish on and one subscribed to ``channel`` (RESP2)."""
    publisher, subscriber = connect(address), connect(address)
    subscriber.sendall(command(b"SUBSCRIBE", channel))
    expect(subscriber, subscribed(b"*", channel))
    return publisher, subscriber


def resp2_floor(address: tuple[str, int], channel: bytes, payload: bytes) -> Loop:
    publisher, subscriber = subscribed_pair(address, channel)
    publish = command(b"PUBLISH", channel, payload)
    message = pushed(b"*", b"message", channel, payload)

    def loop(n: int) -> None:
        for _ in range(n):
            publisher.sendall(publish)
            expect(publisher, b":1\r\n")
            expect(subscriber, message)

    return loop


def resp3_floor(address: tuple[str, int], channel: bytes, payload: bytes) -> Loop:
    sock = connect(address)
    sock.sendall(command(b"HELLO", b"3") + command(b"PING"))
    read_until(sock, b"+PONG\r\n")
    sock.sendall(command(b"SUBSCRIBE", channel))
    expect(sock, subscribed(b">", channel))
    publish = command(b"PUBLISH", channel, payload)
    message = pushed(b">", b"message", channel, payload)
    both = (message + b":1\r\n", b":1\r\n" + message)

    def loop(n: int) -> None:
        for _ in range(n):
            sock.sendall(publish)
            expect(sock, *both)

    return loop


def ping_floor(address: tuple[str, int], channel: bytes, payload: bytes) -> Loop:
    sock = connect(address)
    ping = command(b"PING")

    def loop(n: int) -> None:
        for _ in range(n):
            sock.sendall(ping)
            expect(sock, b"+PONG\r\n")

    return loop


class Expecting(asyncio.Protocol):
    """A connection whose every read must be one known reply, awaited one at a time."""

    def __init__(self, wanted: bytes) -> None:
        self.wanted = wanted
        self.data = b""
        self.arrived: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.data += data
        arrived = self.arrived
        if arrived is not None and not arrived.done() and len(self.data) >= len(self.wanted):
            arrived.set_result(None)

    async def expect(self) -> None:
        if len(self.data) < len(self.wanted):
            self.arrived = asyncio.get_running_loop().create_future()
            await self.arrived
            self.arrived = None
        data, self.data = self.data[: len(self.wanted)], self.data[len(self.wanted) :]
        if data != self.wanted:
            raise RuntimeError(f"unexpected reply from redis-server: {data[:100]!r}")


def asyncio_floor(address: tuple[str, int], channel: bytes, payload: bytes) -> Loop:
    """As ``resp2_floor``, on asyncio's fastest path: two Protocols, a future per read."""
    publisher, subscriber = subscribed_pair(address, channel)
    publish = command(b"PUBLISH", channel, payload)
    message = pushed(b"*", b"message", channel, payload)

    async def run(n: int) -> None:
        running = asyncio.get_running_loop()
        # Duplicates of the sockets, so that closing the transports keeps the connections.
        publishing, replies = await running.create_connection(
            lambda: Expecting(b":1\r\n"), sock=publisher.dup()
        )
        listening, messages = await running.create_connection(
            lambda: Expecting(message), sock=subscriber.dup()
        )
        try:
            for _ in range(n):
                publishing.write(publish)
                await replies.expect()
                await messages.expect()
        finally:
            publishing.close()
            listening.close()

    return lambda n: asyncio.run(run(n))


def trio_floor(address: tuple[str, int], channel: bytes, payload: bytes) -> Loop:
    """As ``resp2_floor``, with trio's own socket calls, all in one task."""
    publisher, subscriber = subscribed_pair(address, channel)
    publish = command(b"PUBLISH", channel, payload)
    message = pushed(b"*", b"message", channel, payload)

    async def expect(sock: trio.socket.SocketType, wanted: bytes) -> None:
        data = b""
        while len(data) < len(wanted):
            chunk = await sock.recv(len(wanted) - len(data))
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            data += chunk
        if data != wanted:
            raise RuntimeError(f"unexpected reply from redis-server: {data[:100]!r}")

    async def run(n: int) -> None:
        with (
            trio.socket.from_stdlib_socket(publisher.dup()) as replies,
            trio.socket.from_stdlib_socket(subscriber.dup()) as messages,
        ):
            for _ in range(n):
                if await replies.send(publish) != len(publish):
                    raise RuntimeError("PUBLISH was not sent in one write")
                await expect(replies, b":1\r\n")
                await expect(messages, message)

    return lambda n: trio.run(run, n)


FLOORS = (
    ("floor: PUBLISH + subscriber (RESP2)", resp2_floor),
    ("floor: the same, asyncio Protocols", asyncio_floor),
    ("floor: the same, trio sockets", trio_floor),
    ("floor: one RESP3 connection", resp3_floor),
    ("floor: one command (PING)", ping_floor),
)


def time_floor(loop: Loop, messages: int, server: bench_pubsub.PubSubServer) -> Row:
    loop(bench_pubsub.WARMUP_ROUND_TRIPS)
    redis_before, cpu_before, started = (
        server.cpu_seconds(),
        time.process_time(),
        time.perf_counter(),
    )
    loop(messages)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    redis_cpu = server.cpu_seconds() - redis_before
    return Row("", messages / seconds, cpu / messages, redis_cpu / messages)


# -- running ----------------------------------------------------------------------------


def median(rows: Sequence[Row]) -> Row:
    ordered = sorted(rows, key=lambda row: row.rate)
    return ordered[(len(ordered) - 1) // 2]


def layer_rows(server: bench_pubsub.PubSubServer, repeats: int, scale: float) -> list[Row]:
    """bench_pubsub's round-trip case for every contender, median of ``repeats`` rounds."""
    case = next(case for case in bench_pubsub.CASES if case.scenario == "round-trip")
    bench_layer.redis_cpu_probe = server.cpu_seconds
    rounds: dict[str, list[Row]] = {}
    for _ in range(repeats):
        for contender in bench_pubsub.CONTENDERS:
            (variant,) = case.variants(contender)
            outcome = bench_pubsub.run_one(case, contender, variant, server, scale)
            if outcome.error is not None or outcome.result is None:
                raise RuntimeError(f"{contender.name}: {outcome.error}")
            result = outcome.result
            rounds.setdefault(contender.name, []).append(
                Row(
                    f"round trip: {contender.name}",
                    result.rate,
                    result.cpu_per_message,
                    result.redis_cpu_per_message,
                )
            )
    return [median(each) for each in rounds.values()]


def open_floor(make: Callable[[tuple[str, int], bytes, bytes], Loop], url: str) -> Loop:
    """Connect one floor to the server at ``url``, ready to time.

    It sends the message bench_pubsub's round trip sends, on a channel named
    like a ``new_channel()``.
    """
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 6379)
    channel = f"{bench_pubsub.PREFIX}specific.{uuid.uuid4().hex}".encode()
    return make(address, channel, msgpack.packb(bench_layer.message(0, time.time)))


def floor_rows(server: bench_pubsub.PubSubServer, messages: int, repeats: int) -> list[Row]:
    rows = []
    for what, make in FLOORS:
        loop = open_floor(make, server.url)
        timed = [time_floor(loop, messages, server) for _ in range(repeats)]
        rows.append(dataclasses.replace(median(timed), what=what))
    return rows


def format_rows(rows: Sequence[Row], reference: float) -> str:
    lines = [
        f"{'what':<40}{'msg/s':>10}{'vs cr':>8}{'cpu us/msg':>12}{'redis us/msg':>14}",
        "-" * 84,
    ]
    for row in rows:
        lines.append(
            f"{row.what:<40}{row.rate:>10,.0f}{row.rate / reference:>7.1f}x"
            f"{row.client_cpu * 1e6:>12.1f}{row.redis_cpu * 1e6:>14.1f}"
        )
    return "\n".join(lines)


def benchmark(server: bench_pubsub.PubSubServer, args: argparse.Namespace) -> int:
    env = bench_layer.environment(server.url, server.version())
    load_before = os.getloadavg()
    layers = layer_rows(server, args.repeats, args.messages / 10_000)
    floors = floor_rows(server, args.messages, args.repeats)
    load_after = os.getloadavg()
    reference = next(row.rate for row in layers if "channels_redis" in row.what)
    print(bench_layer.describe_environment(env))
    print(bench_layer.describe_load(load_before, load_after))
    print()
    print(format_rows([*layers, *floors], reference))
    print()
    ratio = {
        make.__name__: row.rate / reference for (_, make), row in zip(FLOORS, floors, strict=True)
    }
    print(
        f"2x channels_redis's round trip is {2 * reference:,.0f} msg/s. With a client that costs"
        f" nothing, two connections reach {ratio['resp2_floor']:.1f}x and one RESP3 connection"
        f" {ratio['resp3_floor']:.1f}x; with nothing but the event loop's own work, asyncio"
        f" reaches {ratio['asyncio_floor']:.1f}x and trio {ratio['trio_floor']:.1f}x."
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", help="use this server (redis://host:port) instead of a private one"
    )
    parser.add_argument(
        "--messages", type=int, default=10_000, help="round trips per floor round (default 10,000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds per row (default 3); the median is reported"
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.repeats < 1:
        parser.error("--messages and --repeats must be at least 1")
    if args.url is not None:
        return benchmark(bench_pubsub.PubSubServer(args.url, private=False), args)
    server = RedisServer.launch()
    try:
        return benchmark(bench_pubsub.PubSubServer(server.url, private=True), args)
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
