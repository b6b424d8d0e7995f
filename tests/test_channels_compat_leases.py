"""The Channels adapter's consumers keep their groups: past group_expiry and through a restart.

A consumer's ``channel_name`` comes from the adapter's ``new_channel()``, so
its memberships are leases of the core layer of its event loop. Plain
``asyncio.run`` tests against real servers, as in ``tests/test_channels_compat.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from anyio_layer.testing import RedisServer
from channels_compat import RedisChannelLayer


async def _receive_all(layer: RedisChannelLayer, channel: str, into: list[Any]) -> None:
    while True:
        into.append(await layer.receive(channel))


def test_consumer_keeps_its_group_past_group_expiry(redis_url: str) -> None:
    async def main() -> None:
        consumer_side = RedisChannelLayer(hosts=[redis_url], group_expiry=2)
        sender_side = RedisChannelLayer(hosts=[redis_url], group_expiry=2)
        channel = await consumer_side.new_channel()
        await consumer_side.group_add("chat", channel)
        received: list[Any] = []
        task = asyncio.create_task(_receive_all(consumer_side, channel, received))
        await asyncio.sleep(6)
        await sender_side.group_send("chat", {"type": "chat.message", "text": "late"})
        async with asyncio.timeout(10):
            while not received:
                await asyncio.sleep(0.01)
        task.cancel()
        assert received == [{"type": "chat.message", "text": "late"}]
        stats = consumer_side.statistics()
        assert stats is not None
        assert stats.lease_renewals >= 4
        await consumer_side.close()
        await sender_side.close()

    asyncio.run(main())


def test_consumer_keeps_its_group_through_a_restart(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()

    async def main() -> None:
        consumer_side = RedisChannelLayer(hosts=[server.url])
        sender_side = RedisChannelLayer(hosts=[server.url])
        channel = await consumer_side.new_channel()
        await consumer_side.group_add("chat", channel)
        received: list[Any] = []
        task = asyncio.create_task(_receive_all(consumer_side, channel, received))
        await asyncio.to_thread(server.kill)
        # A group_send from a consumer while Redis is down waits instead of failing.
        sending = asyncio.create_task(sender_side.group_send("chat", {"type": "during"}))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)
        await sending
        async with asyncio.timeout(20):
            while server.execute("ZCARD", "asgi:group:chat") != 1:
                await asyncio.sleep(0.02)
        await sender_side.group_send("chat", {"type": "after"})
        async with asyncio.timeout(10):
            while {"type": "after"} not in received:
                await asyncio.sleep(0.01)
        task.cancel()
        assert received.count({"type": "after"}) == 1
        await consumer_side.close()
        await sender_side.close()

    asyncio.run(main())
