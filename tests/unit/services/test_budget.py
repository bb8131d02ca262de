"""The per-app request budget (``app.services.tokens.RedisBudget``) on fakeredis with a
fake clock: N requests a second per OAuth app, shared by every worker, and a poll that
waits for the next second gives its poll slot back while it sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

import fakeredis
import pytest

from app.services import tokens
from app.services.tokens import RedisBudget

KEY = "pollinator:budget:org-1:client-1"


class Clock:
    """Epoch time that moves only when a budget sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.25
        self.slept: list[float] = []
        self.on_sleep: list[Callable[[], None]] = []  # run at each sleep, before time moves

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        for hook in fake.on_sleep:
            hook()
        fake.slept.append(seconds)
        fake.now += seconds
        await real_sleep(0)

    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=fake.time))
    monkeypatch.setattr(tokens, "asyncio", SimpleNamespace(sleep=sleep))
    return fake


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


async def test_n_requests_a_second_then_wait_for_the_next_second(
    redis: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    budget = RedisBudget(redis, KEY, per_second=3)
    for _ in range(3):
        await budget.acquire()
    assert clock.slept == []
    await budget.acquire()  # the fourth request of this second
    assert clock.slept == [pytest.approx(0.75)]  # until the next second, not longer
    assert int(clock.now) == 1_800_000_001
    await budget.acquire()
    await budget.acquire()
    assert len(clock.slept) == 1  # the new second has room for three


async def test_the_budget_is_shared_by_every_worker_of_the_app(
    redis: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    workers = [RedisBudget(redis, KEY, per_second=4) for _ in range(4)]
    for worker in workers:  # one request each: four in this second
        await worker.acquire()
    assert clock.slept == []
    await workers[0].acquire()
    assert len(clock.slept) == 1
    # Another app's budget is its own.
    other = RedisBudget(redis, "pollinator:budget:org-1:client-2", per_second=4)
    slept = len(clock.slept)
    await other.acquire()
    assert len(clock.slept) == slept


async def test_a_waiting_poll_gives_its_slot_back_while_it_sleeps(
    redis: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    slots = asyncio.Semaphore(1)
    budget = RedisBudget(redis, KEY, per_second=1, slots=slots)
    await slots.acquire()  # the poll holds its slot while it runs
    await budget.acquire()
    seen_free: list[bool] = []
    clock.on_sleep.append(lambda: seen_free.append(not slots.locked()))  # could another run?
    await asyncio.wait_for(budget.acquire(), 10)  # a slot taken twice would hang here
    assert seen_free == [True]
    assert slots.locked()  # and it has its slot again when its request goes out
