"""End-to-end: Redis without persistence dies for half a second under 60 connected clients.

Two daphne servers and a ``runworker`` on the queue layer
(``channels_compat.core.RedisChannelLayer``) and one private ``redis-server``
(persistence off, as the test servers always are). 60 websocket clients join
one room through :class:`~project.consumers.PlainChatConsumer`, which joins
its group once, on connect, and never again. Redis is SIGKILLed, some
clients send while it is down, and it starts again 0.5 s later, empty.

What must hold: no consumer crashes (every client stays connected, and no
process logs a traceback: the sends made during the outage wait for the
connection instead of failing), the layer restores the lost memberships by
itself, and every client then receives a post-restart message exactly once.
See ``tests/e2e/test_daphne.py`` for how the stack is run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from pathlib import Path

import pytest
from _support import QUEUE_BACKEND, Client, poll, running_stack

from anyio_layer.testing.pytest_plugin import RedisServerFactory

CLIENTS = 60
#: Clients that send while Redis is down (their consumers' group_send hits the outage).
SENDERS_DURING_OUTAGE = 15
OUTAGE = 0.5
#: How long to keep listening after the expected messages arrived, to catch duplicates.
SETTLE = 0.5


@pytest.mark.slow
def test_sigkill_and_restart_with_60_clients(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    redis = redis_server_factory()
    room = uuid.uuid4().hex[:12]
    group = f"room-{room}"
    path = f"ws/plain-chat/{room}/"

    with running_stack(QUEUE_BACKEND, redis, tmp_path / "logs") as stack:

        async def scenario() -> None:
            async with contextlib.AsyncExitStack() as exits:
                clients = await asyncio.gather(
                    *(
                        Client.open(f"client-{index}@{index % 2}", stack.url(index % 2, path))
                        for index in range(CLIENTS)
                    )
                )
                for client in clients:
                    exits.push_async_callback(client.close)
                await clients[0].send({"tag": "before"})
                await _everyone_got(clients, "before", 1)

                await asyncio.to_thread(redis.kill)
                await asyncio.gather(
                    *(
                        client.send({"tag": "during", "sender": index})
                        for index, client in enumerate(clients[:SENDERS_DURING_OUTAGE])
                    )
                )
                await asyncio.sleep(OUTAGE)
                await asyncio.to_thread(redis.start)

                # Nobody re-joins: the layers restore the memberships themselves.
                await asyncio.to_thread(
                    poll,
                    lambda: stack.group_members(group) == CLIENTS,
                    20,
                    "the room's memberships to be restored",
                )
                await clients[-1].send({"tag": "after"})
                await _everyone_got(clients, "after", 1)
                await asyncio.sleep(SETTLE)
                for client in clients:
                    tags = collections.Counter(p["tag"] for p in client.payloads())
                    assert tags["before"] == 1, f"{client.name}: {tags}"
                    assert tags["after"] == 1, f"{client.name}: {tags}"
                    # A message sent during the outage arrives at most once (those
                    # sent before the memberships were restored reach fewer members).
                    during = collections.Counter(
                        p["sender"] for p in client.payloads() if p["tag"] == "during"
                    )
                    assert all(n == 1 for n in during.values()), f"{client.name}: {during}"

        asyncio.run(scenario())
        stack.assert_all_running()
        stack.assert_no_tracebacks()


async def _everyone_got(clients: list[Client], tag: str, count: int) -> None:
    def done(client: Client) -> bool:
        return sum(1 for p in client.payloads() if p.get("tag") == tag) >= count

    await asyncio.gather(
        *(client.wait_until(lambda c=client: done(c), 20, repr(tag)) for client in clients)
    )
