"""Group commit: items that arrive within the window share one call."""

from __future__ import annotations

import asyncio

import pytest

from app.services.coalesce import Coalescer


class Recorder:
    def __init__(self, answer: bool = True, error: Exception | None = None) -> None:
        self.calls: list[list[int]] = []
        self.answer = answer
        self.error = error

    async def send(self, group: list[int]) -> bool:
        self.calls.append(group)
        await asyncio.sleep(0.01)  # a round trip, during which more items arrive
        if self.error is not None:
            raise self.error
        return self.answer


async def test_items_within_the_window_go_in_one_call_and_later_ones_in_the_next() -> None:
    sent = Recorder()
    group = Coalescer(sent.send, window_s=0.02)

    async def later(item: int, after_s: float) -> bool:
        await asyncio.sleep(after_s)
        return await group.join(item)

    answers = await asyncio.gather(group.join(1), later(2, 0.005), later(3, 0.01), later(4, 0.025))
    assert answers == [True, True, True, True]
    # 4 arrived while the first call was on the wire: it went in the next one, at once.
    assert sent.calls == [[1, 2, 3], [4]]


async def test_nobody_waits_for_an_item_that_has_not_arrived() -> None:
    sent = Recorder()
    group = Coalescer(sent.send, window_s=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await group.join(1)
    assert loop.time() - started < 0.5
    assert await group.join(2)  # a new window: the first one ended
    assert sent.calls == [[1], [2]]


async def test_a_group_the_sender_refuses_is_sent_alone_by_each() -> None:
    group = Coalescer(Recorder(answer=False).send, window_s=0.001)
    assert await asyncio.gather(group.join(1), group.join(2)) == [False, False]


async def test_a_failed_call_fails_every_item_of_its_group() -> None:
    group = Coalescer(Recorder(error=ConnectionError("down")).send, window_s=0.001)
    answers = await asyncio.gather(group.join(1), group.join(2), return_exceptions=True)
    assert [type(a) for a in answers] == [ConnectionError, ConnectionError]


async def test_a_cancelled_waiter_does_not_stop_its_group() -> None:
    sent = Recorder()
    group = Coalescer(sent.send, window_s=0.05)
    first = asyncio.create_task(group.join(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(group.join(2))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is True
    assert sent.calls == [[1, 2]]  # a cancelled poll's item may still be sent


async def test_items_still_waiting_when_the_sender_is_cancelled_are_sent_alone() -> None:
    sent = Recorder()
    group = Coalescer(sent.send, window_s=0.05)
    waiting = [asyncio.create_task(group.join(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert group._sender is not None
    group._sender.cancel()  # the loop shutting down
    assert await asyncio.gather(*waiting) == [False, False]
    assert sent.calls == []
    assert await group.join(3)  # a new sender for the next item


async def test_the_first_item_is_answered_with_its_group_while_more_keep_arriving() -> None:
    """One coalescer serves a whole process: whoever came first must not be kept sending
    for everyone after it."""
    sent = Recorder()
    group = Coalescer(sent.send, window_s=0.005)
    stop = asyncio.Event()

    async def stream() -> None:
        item = 100
        while not stop.is_set():
            item += 1
            asyncio.create_task(group.join(item))
            await asyncio.sleep(0.002)

    feeder = asyncio.create_task(stream())
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await group.join(1)
    assert loop.time() - started < 0.2
    assert len(sent.calls) <= 2  # answered by the first call or the one after it
    stop.set()
    await feeder
    await asyncio.sleep(0.1)
