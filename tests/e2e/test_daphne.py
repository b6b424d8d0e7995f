"""End-to-end tests: two real daphne servers (and a ``runworker``) sharing one private Redis.

Everything is real: ``python -m daphne ... project.asgi:application`` processes
serving the project in ``tests/e2e/project`` (its ``CHANNEL_LAYERS`` come from
``E2E_BACKEND`` / ``E2E_REDIS_URL``), ``python -m django runworker e2e-worker``,
a ``redis-server`` of our own, and websocket clients from the ``websockets``
library. Each test is a plain synchronous test that runs its clients with
``asyncio.run``.

Every test runs against both Channels backends of this project:
``channels_compat.core.RedisChannelLayer`` (queue) and
``channels_compat.pubsub.RedisPubSubChannelLayer`` (pub/sub). ``runworker``
works with both: the worker's ``receive("e2e-worker")`` subscribes that channel
in the pub/sub layer, and the stack waits for the subscription
(``PUBSUB NUMSUB``) before a test sends anything to it.

Most tests share one stack per backend (module-scoped fixture); the Redis
restart test starts its own with the ``redis_server_factory`` fixture. The
processes' stdout/stderr are written to files under pytest's temporary
directory; each test, and each stack's teardown (after SIGTERM, so shutdown is
included), fails if a process logged a ``Traceback``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _support import BACKENDS, Client, Stack, numsub, poll, running_stack

from anyio_layer.testing.pytest_plugin import RedisServerFactory

MESSAGES_PER_SENDER = 5
#: How long to keep listening after the expected messages arrived, to catch duplicates.
SETTLE = 0.3


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Redis + two daphne servers + runworker for one backend, shared by the module's tests."""
    factory = RedisServerFactory()  # what the redis_server_factory fixture uses, module-wide
    try:
        redis = factory()
        log_dir = tmp_path_factory.mktemp(f"e2e-{request.param}")
        with running_stack(BACKENDS[request.param], redis, log_dir) as running:
            yield running
    finally:
        factory.close()


@pytest.fixture
def room() -> str:
    return uuid.uuid4().hex[:12]


def _chat_path(kind: str, room: str) -> str:
    return f"ws/{'sync-chat' if kind == 'sync' else 'chat'}/{room}/"


@contextlib.asynccontextmanager
async def _clients(
    stack: Stack, specs: list[tuple[int, str]], prefix: str = "client"
) -> AsyncIterator[list[Client]]:
    """Open one client per ``(server index, path)``; close them all at the end."""
    async with contextlib.AsyncExitStack() as exits:
        clients = []
        for index, (server, path) in enumerate(specs):
            client = await Client.open(f"{prefix}-{index}@{server}", stack.url(server, path))
            exits.push_async_callback(client.close)
            clients.append(client)
        yield clients


def _check_all_received(clients: list[Client], senders: int) -> None:
    """Every client got every sender's messages exactly once, each sender's in order."""
    expected = {(sender, seq) for sender in range(senders) for seq in range(MESSAGES_PER_SENDER)}
    for client in clients:
        received = [(p["sender"], p["seq"]) for p in client.payloads()]
        counts = collections.Counter(received)
        duplicates = {key: n for key, n in counts.items() if n > 1}
        assert not duplicates, f"{client.name} got duplicates: {duplicates}"
        assert set(received) == expected, f"{client.name} missed {expected - set(received)}"
        for sender in range(senders):
            seqs = [seq for s, seq in received if s == sender]
            assert seqs == list(range(MESSAGES_PER_SENDER)), (
                f"{client.name} got sender {sender}'s messages out of order: {seqs}"
            )


# -- tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync", "mixed"])
def test_group_broadcast_across_two_servers(stack: Stack, room: str, kind: str) -> None:
    """Two clients per server in one room; each sends numbered messages; all get all.

    ``async``: AsyncJsonWebsocketConsumer; ``sync``: WebsocketConsumer with
    ``async_to_sync(group_add/group_send/group_discard)``; ``mixed``: both in one room.
    """
    kinds = {
        "async": ["async"] * 4,
        "sync": ["sync"] * 4,
        "mixed": ["async", "async", "sync", "sync"],
    }
    specs = [(index % 2, _chat_path(k, room)) for index, k in enumerate(kinds[kind])]

    async def scenario() -> None:
        async with _clients(stack, specs) as clients:
            # Every client has joined (its consumer is in the group) before anyone sends.
            total = len(clients) * MESSAGES_PER_SENDER

            async def send_all(sender: int, client: Client) -> None:
                for seq in range(MESSAGES_PER_SENDER):
                    await client.send({"sender": sender, "seq": seq})

            await asyncio.gather(*(send_all(i, c) for i, c in enumerate(clients)))
            for client in clients:
                await client.wait_until(
                    lambda c=client: len(c.payloads()) >= total, 15, f"{total} messages"
                )
            await asyncio.sleep(SETTLE)
            _check_all_received(clients, len(clients))

    asyncio.run(scenario())
    stack.assert_all_running()
    stack.assert_no_tracebacks()


def test_runworker_answers_through_the_senders_channel(stack: Stack) -> None:
    """A client asks its consumer, which sends to ``e2e-worker``; runworker answers on
    the consumer's own channel (``reply_to``) and the consumer relays it."""
    assert stack.worker is not None
    worker_pid = stack.worker.pid

    async def scenario() -> None:
        async with _clients(stack, [(0, "ws/ask/"), (1, "ws/ask/")], "asker") as clients:
            for index, client in enumerate(clients):
                for k in range(3):
                    await client.send({"n": 10 * index + k, "id": f"{index}-{k}"})
            for client in clients:
                await client.wait_until(lambda c=client: len(c.of("result")) >= 3, 15, "answers")
            await asyncio.sleep(SETTLE)
            for index, client in enumerate(clients):
                results = client.of("result")
                assert sorted(r["id"] for r in results) == [f"{index}-{k}" for k in range(3)]
                for result in results:
                    assert result["result"] == result["n"] ** 2
                    assert result["reply_to"] == client.channel
                    assert result["worker_pid"] == worker_pid  # answered by runworker
                    assert client.joined["pid"] != worker_pid

    asyncio.run(scenario())
    stack.assert_all_running()
    stack.assert_no_tracebacks()


@pytest.mark.slow
def test_groups_are_left_when_clients_disconnect(stack: Stack, room: str) -> None:
    """After every client has gone, Redis holds no member of the room's group.

    Queue layer: the group's sorted set (``asgi:group:room-<x>``) is empty.
    Pub/sub layer: no process subscribes ``asgi__group__room-<x>`` any more, and
    the consumers' own channels are unsubscribed too (after ``channel_close_delay``,
    5 s by default).
    """
    group = f"room-{room}"
    kinds = ["async", "async", "sync", "sync"]
    specs = [(index % 2, _chat_path(k, room)) for index, k in enumerate(kinds)]
    channels: list[str] = []

    async def scenario() -> None:
        async with _clients(stack, specs) as clients:
            channels.extend(client.channel for client in clients)
            # Queue layer: one entry per consumer; pub/sub: one subscription per daphne.
            assert stack.group_members(group) == (2 if stack.pubsub else len(clients))
            if stack.pubsub:
                assert all(numsub(stack.redis, channel) == 1 for channel in channels)

    asyncio.run(scenario())
    poll(lambda: stack.group_members(group) == 0, 5, f"{group} to have no member")
    if stack.pubsub:
        poll(
            lambda: all(numsub(stack.redis, channel) == 0 for channel in channels),
            10,
            "the closed consumers' channels to be unsubscribed",
        )
    stack.assert_all_running()
    stack.assert_no_tracebacks()


@pytest.mark.slow
def test_a_slow_handler_does_not_cost_the_consumer_its_group(stack: Stack, room: str) -> None:
    """A consumer busy for longer than the pub/sub layer's ``channel_close_delay``
    (5 s, the default) in one handler stays in its group and loses no message.

    The napper's consumer (server 0) handles one channel-layer message for 6.5 s
    (``{"nap": 6.5}``, see the project's consumers), during which Channels has no
    ``receive()`` pending on its channel. A client on server 1 sends to the room
    during and after the nap; the napper must get both messages, and server 0
    must still be subscribed to the room's group.
    """
    nap = 6.5
    group = f"room-{room}"
    path = _chat_path("async", room)

    async def scenario() -> None:
        async with _clients(stack, [(0, path), (1, path)]) as (napper, other):
            await napper.send({"nap": nap})
            await asyncio.sleep(0.5)  # the napper's consumer is in its slow handler
            await other.send({"sender": "other", "when": "during"})
            await napper.wait_until(lambda: bool(napper.of("napped")), nap + 5, "the nap's end")
            members = stack.group_members(group)
            await other.send({"sender": "other", "when": "after"})
            await other.wait_until(lambda: len(other.payloads()) == 2, 5, "both messages")
            with contextlib.suppress(AssertionError):
                await napper.wait_until(lambda: len(napper.payloads()) == 2, 2, "both messages")
            await asyncio.sleep(SETTLE)
            got = [p["when"] for p in napper.payloads()]
            # Queue layer: one entry per consumer; pub/sub: one subscription per daphne.
            assert (got, members) == (["during", "after"], 2), (
                f"after its nap the slow consumer got {got} (expected ['during', 'after']) "
                f"and {group} had {members} member(s) (expected 2)"
            )

    asyncio.run(scenario())
    stack.assert_all_running()
    stack.assert_no_tracebacks()


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_redis_restart_in_the_middle(
    backend: str, redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    """Redis restarts (same port, data lost) while clients are connected to both servers.

    Afterwards group messages and worker requests flow again (the test retries
    for a few seconds, as a client would), the pub/sub consumers have told
    their clients ``redis_disconnect`` then ``redis_reconnect`` exactly once, and
    no process logged a traceback.
    """
    redis = redis_server_factory()
    room = uuid.uuid4().hex[:12]
    chat_specs = [(0, _chat_path("async", room)), (1, _chat_path("async", room))]
    chat_specs.append((1, _chat_path("sync", room)))

    with running_stack(BACKENDS[backend], redis, tmp_path / "logs") as stack:

        async def scenario() -> None:
            async with (
                _clients(stack, chat_specs) as chatters,
                _clients(stack, [(0, "ws/ask/")], "asker") as (asker,),
            ):
                everyone = [*chatters, asker]
                await _probe_until_everyone_hears_everyone(chatters, "before", timeout=10)

                await asyncio.to_thread(redis.restart)

                if stack.pubsub:
                    for client in everyone:
                        await client.wait_until(
                            lambda c=client: bool(c.of("redis_reconnect")),
                            15,
                            "redis_reconnect",
                        )
                await _probe_until_everyone_hears_everyone(chatters, "after", timeout=15)
                await _ask_until_answered(asker, timeout=15)
                for client in everyone:
                    events = [e["event"] for e in client.events if e["event"].startswith("redis_")]
                    expected = ["redis_disconnect", "redis_reconnect"] if stack.pubsub else []
                    assert events == expected, f"{client.name}: {events}"

        asyncio.run(scenario())
        stack.assert_all_running()
        stack.assert_no_tracebacks()


async def _probe_until_everyone_hears_everyone(
    clients: list[Client], tag: str, timeout: float
) -> None:
    """Each client sends probes, round after round, until every client got one from each.

    Retrying is what a client does after an outage: messages sent while a
    pub/sub subscription was being restored, or before a queue-layer consumer
    re-added itself to its group (Redis lost the data), can be lost.
    """
    deadline = time.monotonic() + timeout

    def heard(client: Client) -> set[int]:
        return {
            p["sender"] for p in client.payloads() if isinstance(p, dict) and p.get("tag") == tag
        }

    probe = 0
    while True:
        for sender, client in enumerate(clients):
            await client.send({"tag": tag, "sender": sender, "probe": probe})
        await asyncio.sleep(0.3)
        if all(heard(client) == set(range(len(clients))) for client in clients):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{tag}: after {timeout:g} s, not everyone heard everyone: "
                + "; ".join(f"{c.name} heard {sorted(heard(c))}" for c in clients)
            )
        probe += 1


async def _ask_until_answered(client: Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    attempt = 0
    while not client.of("result"):
        if time.monotonic() >= deadline:
            raise AssertionError(f"the worker did not answer within {timeout:g} s: {client.events}")
        await client.send({"n": attempt, "id": f"retry-{attempt}"})
        attempt += 1
        with contextlib.suppress(AssertionError):
            await client.wait_until(lambda: bool(client.of("result")), 1.0, "an answer")
    result = client.of("result")[0]
    assert result["result"] == result["n"] ** 2
    assert result["reply_to"] == client.channel
