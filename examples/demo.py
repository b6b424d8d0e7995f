"""A first look at the layer: a chat room in one terminal.

Run it with the README's demo command. With no ``REDIS_URL`` in the
environment it starts a private redis-server (through ``anyio_layer.testing``)
and stops it on exit; with ``REDIS_URL`` set, it uses that server.

Three "users" join a room (a group), each with a scoped channel; one process
sends to the room with ``group_send`` and every user receives every line.
Then the same again under the other async backend, to show that the core
runs on trio and asyncio alike, and a short throughput measurement.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

import anyio

from anyio_layer import open_redis_layer
from anyio_layer.testing import RedisServer

LINES = ["hello, room", "structured concurrency keeps tasks tidy", "bye"]


async def chat(url: str) -> None:
    async with open_redis_layer(hosts=[url], prefix="demo") as layer:
        async with anyio.create_task_group() as users:

            async def user(name: str, ready: anyio.Event) -> None:
                async with layer.open_channel("room") as channel:
                    ready.set()
                    async for message in channel:
                        print(f"  {name} got {message['text']!r}")
                        if message["text"] == LINES[-1]:
                            return

            for name in ("ada", "bob", "cy"):
                ready = anyio.Event()
                users.start_soon(user, name, ready)
                await ready.wait()
            for text in LINES:
                await layer.group_send("room", {"type": "chat.message", "text": text})

        channel = await layer.new_channel()
        count = 3000
        started = time.perf_counter()
        for i in range(count):
            await layer.send(channel, {"type": "ping", "i": i})
            await layer.receive(channel)
        elapsed = time.perf_counter() - started
        print(f"  {count / elapsed:,.0f} send+receive round trips per second")
        stats = layer.statistics()
        print(f"  sent {stats.messages_sent}, received {stats.messages_received}")


def main() -> None:
    with ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        if not url:
            server = RedisServer.launch()
            stack.callback(server.close)
            url = server.url
            version = ".".join(map(str, server.version))
            print(f"started a private redis-server {version} at {url}")
        for backend in ("asyncio", "trio"):
            print(f"\n{backend}:")
            anyio.run(chat, url, backend=backend)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\nstopped")
