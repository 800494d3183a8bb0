"""The byte budgets alone (server/budget.py): when a stream may be read, what it holds."""

from __future__ import annotations

import asyncio

import pytest

from server.budget import ByteBudget, StreamBudget
from server.errors import Overloaded


async def waits(awaitable) -> bool:
    """True when ``awaitable`` has not finished after the loop has run for a while."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.sleep(0.05)
    if task.done():
        task.result()
        return False
    task.cancel()
    return True


async def test_a_request_is_held_from_its_read_until_answered() -> None:
    server = ByteBudget(1000)
    stream = StreamBudget(500, server)
    stream.arrived(200)
    stream.arrived(100)
    assert (stream.used, server.used) == (300, 300)
    stream.answered()  # the oldest first
    assert (stream.used, server.used) == (100, 100)
    stream.close()
    assert (stream.used, server.used) == (0, 0)


async def test_a_stream_is_not_read_while_the_next_request_would_pass_its_limit() -> None:
    server = ByteBudget(10_000)
    stream = StreamBudget(500, server)
    assert not await waits(stream.wait_for_room())  # a new stream is read at once
    stream.arrived(200)
    assert not await waits(stream.wait_for_room())  # 200 + another 200 fit in 500
    stream.arrived(200)
    assert await waits(stream.wait_for_room())  # a third would not
    room = asyncio.ensure_future(stream.wait_for_room())
    await asyncio.sleep(0.01)
    stream.answered()
    await asyncio.wait_for(room, 1)


async def test_a_larger_request_than_expected_overshoots_by_its_own_size_only() -> None:
    server = ByteBudget(10_000)
    stream = StreamBudget(500, server)
    stream.arrived(100)
    await stream.wait_for_room()
    stream.arrived(900)  # its size is known only once it has been read
    assert stream.used == 1000
    assert await waits(stream.wait_for_room())


async def test_a_new_stream_is_not_read_while_the_server_is_full() -> None:
    server = ByteBudget(1000)
    first = StreamBudget(10_000, server)
    first.arrived(1000)
    second = StreamBudget(10_000, server)
    room = asyncio.ensure_future(second.wait_for_room())
    await asyncio.sleep(0.01)
    assert not room.done()
    with pytest.raises(Overloaded, match="1000 bytes of calls in progress"):
        server.take(10)  # a unary call is refused meanwhile
    first.answered()
    await asyncio.wait_for(room, 1)


async def test_responses_waiting_to_be_written_count_too() -> None:
    server = ByteBudget(1000)
    stream = StreamBudget(300, server)
    stream.arrived(200)
    stream.hold(150)
    assert (stream.used, server.used) == (350, 350)
    assert await waits(stream.wait_for_room())
    stream.release(150)
    stream.answered()
    assert (stream.used, server.used) == (0, 0)


async def test_a_stream_full_on_its_own_keeps_one_waiter_whatever_the_server_gives() -> None:
    """A stream whose client stopped reading waits on its own limit while other calls come
    and go: it keeps one waiter (it kept one more per give on the server: memory that grew
    with everyone's traffic), and is read again once its own response is written."""
    server = ByteBudget(1 << 30)
    stuck = StreamBudget(1000, server)
    stuck.arrived(800)
    room = asyncio.ensure_future(stuck.wait_for_room())
    other = StreamBudget(1 << 20, server)
    for _ in range(1000):
        other.arrived(100)
        other.answered()  # a give on the server
        await asyncio.sleep(0)
    assert not room.done()
    assert len(stuck._waiters) == 1 and len(server._waiters) <= 1
    stuck.answered()
    await asyncio.wait_for(room, 1)


async def test_a_stream_with_room_of_its_own_waits_for_the_server_then_reads() -> None:
    server = ByteBudget(1000)
    holder = StreamBudget(10_000, server)
    holder.arrived(1000)
    stream = StreamBudget(10_000, server)
    stream.arrived(10)  # its own limit has room; the server has none
    room = asyncio.ensure_future(stream.wait_for_room())
    await asyncio.sleep(0.01)
    assert not room.done()
    holder.answered()
    await asyncio.wait_for(room, 1)
    assert stream._waiters == []
