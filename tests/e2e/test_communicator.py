"""In-process tests of the e2e project's consumers with Channels' own communicators.

``WebsocketCommunicator`` / ``ApplicationCommunicator`` drive the consumers of
``tests/e2e/project`` in the test's event loop, against a real Redis (the
``redis_url`` fixture: the session's server, emptied for each test), with both
backends: ``channels_compat.core.RedisChannelLayer`` and
``channels_compat.pubsub.RedisPubSubChannelLayer``. asyncio only (Channels
and asgiref are asyncio code): the module's ``anyio_backend`` fixture overrides
the suite's asyncio+trio one.

How Django settings are handled, so this module coexists with the rest of the
suite in one pytest process:

* Django settings can be configured only once per process. If nobody did
  (``settings.configured`` is false and ``$DJANGO_SETTINGS_MODULE`` is unset),
  the module-scoped ``django_settings`` fixture calls ``settings.configure()``
  with a minimal configuration (no database, no apps), and leaves it in place:
  later tests that need other settings must use ``override_settings`` too, as
  this module does. If settings are already configured, they are used as they
  are.
* Each test chooses its layer with ``override_settings(CHANNEL_LAYERS=...)``.
  Channels' layer manager (``channels.layers.channel_layers``) listens to
  ``setting_changed`` and drops its cached layers when ``CHANNEL_LAYERS``
  changes, so every test gets a fresh layer object bound to its own
  ``redis_url``, and nothing leaks to other tests once the override ends.
* The ``channel_layer`` fixture closes the layer's per-event-loop core in the
  test's event loop before the override is undone, and checks that no core
  layer is left open in any loop (the sync consumer's ``async_to_sync`` calls
  must have reused the test's loop).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.routing import ChannelNameRouter, URLRouter
from channels.testing import ApplicationCommunicator, WebsocketCommunicator
from channels.worker import Worker
from django.conf import settings
from django.test import override_settings

from anyio_layer.testing import RedisServer

pytestmark = pytest.mark.anyio

BACKENDS = {
    "queue": "channels_compat.core.RedisChannelLayer",
    "pubsub": "channels_compat.pubsub.RedisPubSubChannelLayer",
}
WORKER_CHANNEL = "e2e-worker"
TIMEOUT = 5


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> None:
    """Minimal settings, unless the process already has some (see the module docstring)."""
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        settings.configure(
            DEBUG=False,
            SECRET_KEY="e2e-tests-only-not-a-secret",
            DATABASES={},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def pubsub_options() -> dict[str, Any]:
    """Extra CONFIG for the pub/sub layer only (tests parametrize it)."""
    return {}


@pytest.fixture
def layer_settings(
    backend: str, redis_url: str, pubsub_options: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    config: dict[str, Any] = {"hosts": [redis_url]}
    if backend == "pubsub":
        config.update(on_disconnect="redis.disconnect", on_reconnect="redis.reconnect")
        config.update(pubsub_options)
    channel_layers = {"default": {"BACKEND": BACKENDS[backend], "CONFIG": config}}
    with override_settings(CHANNEL_LAYERS=channel_layers):
        yield channel_layers


@pytest.fixture
async def channel_layer(layer_settings: dict[str, Any]) -> AsyncIterator[Any]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    assert layer is not None
    backend_path = f"{type(layer).__module__}.{type(layer).__name__}"
    assert backend_path == layer_settings["default"]["BACKEND"]
    yield layer
    await layer.close()
    assert layer._runtime.open_loops() == 0


def _websocket_app() -> Any:
    from project.routing import websocket_urlpatterns

    return URLRouter(websocket_urlpatterns)


def _worker_app() -> Any:
    from project.routing import worker_consumers

    return ChannelNameRouter(worker_consumers)


def _group_members(redis: RedisServer, backend: str, group: str) -> int:
    if backend == "pubsub":
        reply = redis.execute("PUBSUB", "NUMSUB", f"asgi__group__{group}")
        assert isinstance(reply, list)
        count = reply[1]
    else:
        count = redis.execute("ZCARD", f"asgi:group:{group}")
    assert isinstance(count, int)
    return count


async def _eventually(check: Any, what: str, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _drain(communicator: WebsocketCommunicator, settle: float) -> list[Any]:
    """Everything the client got within ``settle`` seconds, without a receive timeout
    (a timed-out ``receive_json_from`` cancels the application)."""
    await asyncio.sleep(settle)
    messages = []
    while not communicator.output_queue.empty():
        message = communicator.output_queue.get_nowait()
        assert message["type"] == "websocket.send", message
        messages.append(json.loads(message["text"]))
    return messages


async def _connect(path: str) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    communicator = WebsocketCommunicator(_websocket_app(), path)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    joined = await communicator.receive_json_from(timeout=TIMEOUT)
    assert joined["event"] == "joined"
    return communicator, joined


# -- tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "sync-chat"])
async def test_connect_joins_and_disconnect_leaves_the_group(
    channel_layer: Any, backend: str, redis_server: RedisServer, kind: str
) -> None:
    communicator, joined = await _connect(f"/ws/{kind}/lobby/")
    assert joined["channel"].startswith("asgispecific." if backend == "pubsub" else "specific.")
    assert _group_members(redis_server, backend, "room-lobby") == 1

    await communicator.disconnect()
    await _eventually(
        lambda: _group_members(redis_server, backend, "room-lobby") == 0, "the group to empty"
    )


async def test_group_message_round_trip(channel_layer: Any) -> None:
    """An async and a sync consumer in one room: what one client sends, both get;
    a ``group_send`` from outside the consumers reaches both too."""
    async_client, _ = await _connect("/ws/chat/hall/")
    sync_client, _ = await _connect("/ws/sync-chat/hall/")
    try:
        for sender, client in (("async", async_client), ("sync", sync_client)):
            await client.send_json_to({"from": sender})
            for receiver in (async_client, sync_client):
                event = await receiver.receive_json_from(timeout=TIMEOUT)
                assert event == {"event": "message", "payload": {"from": sender}}

        await channel_layer.group_send(
            "room-hall", {"type": "chat.message", "payload": {"from": "outside"}}
        )
        for receiver in (async_client, sync_client):
            event = await receiver.receive_json_from(timeout=TIMEOUT)
            assert event == {"event": "message", "payload": {"from": "outside"}}
        assert await async_client.receive_nothing()
        assert await sync_client.receive_nothing()
    finally:
        await async_client.disconnect()
        await sync_client.disconnect()


@pytest.mark.parametrize("backend", ["pubsub"])
async def test_pubsub_disconnect_and_reconnect_handlers(
    channel_layer: Any, redis_server: RedisServer
) -> None:
    """``CLIENT KILL TYPE pubsub`` drops the subscriber connection: each consumer's
    ``redis_disconnect`` then ``redis_reconnect`` runs once, and groups work again."""
    async_client, _ = await _connect("/ws/chat/storm/")
    sync_client, _ = await _connect("/ws/sync-chat/storm/")
    asker, _ = await _connect("/ws/ask/")
    try:
        killed = redis_server.execute("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed == 1  # one subscriber connection per layer and server
        for client in (async_client, sync_client, asker):
            assert await client.receive_json_from(timeout=TIMEOUT) == {"event": "redis_disconnect"}
            assert await client.receive_json_from(timeout=TIMEOUT) == {"event": "redis_reconnect"}

        await async_client.send_json_to({"after": "reconnect"})
        for client in (async_client, sync_client):
            event = await client.receive_json_from(timeout=TIMEOUT)
            assert event == {"event": "message", "payload": {"after": "reconnect"}}
        for client in (async_client, sync_client, asker):
            assert await client.receive_nothing()
    finally:
        for client in (async_client, sync_client, asker):
            await client.disconnect()


async def test_worker_consumer_replies_on_reply_to(channel_layer: Any) -> None:
    """``ApplicationCommunicator`` on the worker consumer: the answer goes to ``reply_to``."""
    reply_to = await channel_layer.new_channel()
    communicator = ApplicationCommunicator(
        _worker_app(), {"type": "channel", "channel": WORKER_CHANNEL}
    )
    try:
        await communicator.send_input({"type": "compute", "reply_to": reply_to, "n": 6, "id": 1})
        answer = await asyncio.wait_for(channel_layer.receive(reply_to), TIMEOUT)
    finally:
        communicator.stop(exceptions=False)
        await asyncio.gather(communicator.future, return_exceptions=True)
    assert answer["type"] == "worker.result"
    assert (answer["n"], answer["result"], answer["reply_to"]) == (6, 36, reply_to)


async def test_ask_consumer_through_an_in_process_worker(
    channel_layer: Any, backend: str, redis_server: RedisServer
) -> None:
    """The ask consumer sends to ``e2e-worker``; Channels' ``Worker`` (what runworker
    runs) serves that channel in this loop and answers on the consumer's channel."""
    worker = Worker(_worker_app(), [WORKER_CHANNEL], channel_layer)
    handler = asyncio.ensure_future(worker.handle())
    asker, joined = await _connect("/ws/ask/")
    try:
        if backend == "pubsub":  # published messages reach subscribers only

            def subscribed() -> bool:
                reply = redis_server.execute("PUBSUB", "NUMSUB", WORKER_CHANNEL)
                return isinstance(reply, list) and reply[1] == 1

            await _eventually(subscribed, "the worker to subscribe")
        for n in (3, 4):
            await asker.send_json_to({"n": n, "id": n})
            event = await asker.receive_json_from(timeout=TIMEOUT)
            assert event["event"] == "result"
            assert (event["id"], event["result"]) == (n, n * n)
            assert event["reply_to"] == joined["channel"]
    finally:
        await asker.disconnect()
        handler.cancel()
        futures = [details["future"] for details in worker.application_instances.values()]
        for future in futures:
            future.cancel()
        await asyncio.gather(handler, *futures, return_exceptions=True)


@pytest.mark.parametrize("pubsub_options", [{"channel_close_delay": 0.5}], ids=["delay0.5"])
@pytest.mark.parametrize("kind", ["chat", "sync-chat"])
async def test_a_slow_handler_does_not_cost_the_consumer_its_group(
    channel_layer: Any, kind: str
) -> None:
    """A consumer whose handler for one channel-layer message takes longer than the
    pub/sub layer's ``channel_close_delay`` (shortened to 0.5 s here; 5 s by default)
    must stay in its group and keep the messages that arrived meanwhile.

    While a Channels consumer runs a handler for a channel-layer message it has
    no ``receive()`` pending on its channel (``await_many_dispatch`` creates the
    next one after the handler returns), so "no receiver for channel_close_delay
    seconds" also describes a live consumer doing slow work, not only one that
    exited. channels_redis unsubscribes only on a cancelled ``receive()`` (which
    happens when the consumer exits), so this passes with it.
    """
    nap = 1.5
    napper, _ = await _connect(f"/ws/{kind}/nap/")
    other, _ = await _connect("/ws/chat/nap/")
    try:
        await napper.send_json_to({"nap": nap})
        await asyncio.sleep(0.2)  # the napper's consumer is now in its slow handler
        await other.send_json_to({"during": "nap"})
        during = {"event": "message", "payload": {"during": "nap"}}
        assert await other.receive_json_from(timeout=TIMEOUT) == during
        napped = await napper.receive_json_from(timeout=nap + TIMEOUT)
        assert napped == {"event": "napped", "seconds": nap}

        await other.send_json_to({"after": "nap"})
        after = {"event": "message", "payload": {"after": "nap"}}
        assert await other.receive_json_from(timeout=TIMEOUT) == after
        received = await _drain(napper, settle=0.5)
        assert received == [during, after], (
            "what the slow consumer got after its nap (expected the message sent during "
            "it, then the one sent after it)"
        )
    finally:
        await napper.disconnect()
        await other.disconnect()
