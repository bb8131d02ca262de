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


async def test_when_the_first_is_cancelled_the_others_are_told_to_send_alone() -> None:
    sent = Recorder()
    group = Coalescer(sent.send, window_s=0.05)
    first = asyncio.create_task(group.join(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(group.join(2))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is False
    assert sent.calls == []
