"""LocalBuffer and its Waiters, without a server: waking, cancellation, shared entries."""

from __future__ import annotations

import anyio
import pytest

from anyio_layer.common.channels import LocalBuffer
from anyio_layer.exceptions import ChannelClosedError

pytestmark = pytest.mark.anyio


async def take_next(buffer: LocalBuffer) -> dict[str, object]:
    """What a layer's receive() does with a buffer."""
    while not buffer.messages:
        await buffer.changed()
    return buffer.take()


async def test_every_waiting_task_is_woken_by_one_put() -> None:
    buffer = LocalBuffer(capacity=10)
    woken: list[int] = []

    async def wait(index: int) -> None:
        while not buffer.messages:
            await buffer.changed()
        woken.append(index)

    async with anyio.create_task_group() as task_group:
        for index in range(5):
            task_group.start_soon(wait, index)
        await anyio.wait_all_tasks_blocked()
        assert not woken
        buffer.put((0.0, {"type": "m"}))
    assert sorted(woken) == [0, 1, 2, 3, 4]


async def test_a_shared_entry_gives_every_buffer_its_own_copy() -> None:
    buffers = [LocalBuffer(capacity=10) for _ in range(3)]
    entry = (0.0, {"type": "group.message", "n": 1})
    for buffer in buffers:
        buffer.put(entry)
    copies = [await take_next(buffer) for buffer in buffers]
    copies[0]["n"] = 2  # a consumer changing its message changes nobody else's
    assert copies[1] == copies[2] == entry[1] == {"type": "group.message", "n": 1}
    assert len({id(c) for c in copies}) == 3


async def test_a_full_buffer_drops_its_oldest_entry() -> None:
    buffer = LocalBuffer(capacity=2)
    assert buffer.put((0.0, {"n": 0}))
    assert buffer.put((0.0, {"n": 1}))
    assert not buffer.put((0.0, {"n": 2}))
    assert [buffer.take()["n"] for _ in range(2)] == [1, 2]


async def test_cancelled_waits_are_forgotten_and_do_not_pile_up() -> None:
    buffer = LocalBuffer(capacity=10)
    for _ in range(1000):
        with anyio.move_on_after(0):
            await take_next(buffer)
    # However many waits were cancelled, the buffer holds a bounded number of them...
    assert len(buffer._waiters._waiting) <= 32
    # ...and a message still reaches the next receiver.
    buffer.put((0.0, {"type": "after"}))
    assert await take_next(buffer) == {"type": "after"}


async def test_a_waiter_cancelled_while_others_wait_does_not_take_their_wake_up() -> None:
    buffer = LocalBuffer(capacity=10)
    received: list[dict[str, object]] = []

    async def receive() -> None:
        received.append(await take_next(buffer))

    doomed = anyio.CancelScope()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(_in_scope, doomed, buffer)
        task_group.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        doomed.cancel()
        await anyio.wait_all_tasks_blocked()
        buffer.put((0.0, {"type": "m"}))
    assert received == [{"type": "m"}]
    assert len(buffer.messages) == 0


async def _in_scope(scope: anyio.CancelScope, buffer: LocalBuffer) -> None:
    with scope:
        await take_next(buffer)


async def test_closing_wakes_waiters_with_channel_closed_error() -> None:
    buffer = LocalBuffer(capacity=10)
    errors: list[BaseException] = []

    async def wait() -> None:
        try:
            await take_next(buffer)
        except ChannelClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(wait)
        task_group.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        buffer.close()
    assert len(errors) == 2
    with pytest.raises(ChannelClosedError):
        await take_next(buffer)
