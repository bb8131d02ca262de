"""The per-origin guards of deliveries (``app.services.breaker``): the circuit breaker's
open / half-open / closed cycle with its doubling cooldown, on fakeredis with a fake
clock, and the in-process cap of 8 POSTs per origin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import fakeredis
import pytest

from app.services import breaker
from app.services.breaker import (
    BASE_COOLDOWN_S,
    FAILURE_THRESHOLD,
    MAX_COOLDOWN_S,
    PER_ORIGIN_CONCURRENCY,
    CircuitBreakers,
    OriginSlots,
)

ORIGIN = "https://hooks.example.com:443"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(breaker, "time", SimpleNamespace(time=fake.time))
    return fake


@pytest.fixture
async def breakers() -> AsyncIterator[CircuitBreakers]:
    redis = fakeredis.FakeAsyncRedis()
    yield CircuitBreakers(redis)
    await redis.aclose()


async def _fail(breakers: CircuitBreakers, times: int) -> None:
    for _ in range(times):
        await breakers.record(ORIGIN, False)


def test_cooldown_doubles_up_to_ten_minutes() -> None:
    assert [breaker.cooldown_s(n) for n in range(1, 9)] == [
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        320.0,
        600.0,
        600.0,
    ]
    assert breaker.cooldown_s(1) == BASE_COOLDOWN_S
    assert breaker.cooldown_s(50) == MAX_COOLDOWN_S


async def test_opens_after_the_threshold_of_consecutive_failures(
    breakers: CircuitBreakers, clock: Clock
) -> None:
    await _fail(breakers, FAILURE_THRESHOLD - 1)
    assert (await breakers.admit(ORIGIN)).allowed
    await breakers.record(ORIGIN, True)  # a success resets the count
    await _fail(breakers, FAILURE_THRESHOLD - 1)
    assert (await breakers.admit(ORIGIN)).allowed
    await _fail(breakers, 1)
    closed = await breakers.admit(ORIGIN)
    assert not closed.allowed
    assert closed.retry_in_s == pytest.approx(BASE_COOLDOWN_S)
    # Other origins are not affected.
    assert (await breakers.admit("https://other.example.com:443")).allowed


async def test_half_open_lets_exactly_one_probe_through_and_its_failure_doubles_the_cooldown(
    breakers: CircuitBreakers, clock: Clock
) -> None:
    await _fail(breakers, FAILURE_THRESHOLD)
    cooldown = BASE_COOLDOWN_S
    for _ in range(3):
        clock.advance(cooldown - 0.5)
        assert not (await breakers.admit(ORIGIN)).allowed  # still open
        clock.advance(0.5)
        probe = await breakers.admit(ORIGIN)
        assert probe.allowed
        assert probe.probe
        # While the probe is out, everyone else still waits.
        others = [await breakers.admit(ORIGIN) for _ in range(3)]
        assert [a.allowed for a in others] == [False] * 3
        await breakers.record(ORIGIN, False)  # the probe failed: re-open, twice as long
        cooldown *= 2
        reopened = await breakers.admit(ORIGIN)
        assert not reopened.allowed
        assert reopened.retry_in_s == pytest.approx(cooldown)


async def test_a_successful_probe_closes_the_circuit_and_resets_the_cooldown(
    breakers: CircuitBreakers, clock: Clock
) -> None:
    await _fail(breakers, FAILURE_THRESHOLD)
    clock.advance(BASE_COOLDOWN_S)
    assert (await breakers.admit(ORIGIN)).probe
    await breakers.record(ORIGIN, True)
    after = await breakers.admit(ORIGIN)
    assert after.allowed
    assert not after.probe
    assert after.clean
    # Failing again starts over at the base cooldown, not where the last cycle ended.
    await _fail(breakers, FAILURE_THRESHOLD)
    assert (await breakers.admit(ORIGIN)).retry_in_s == pytest.approx(BASE_COOLDOWN_S)


async def test_stragglers_failing_while_open_do_not_extend_it(
    breakers: CircuitBreakers, clock: Clock
) -> None:
    await _fail(breakers, FAILURE_THRESHOLD)
    clock.advance(3)
    await _fail(breakers, 10)  # POSTs that were already in flight when it opened
    assert (await breakers.admit(ORIGIN)).retry_in_s == pytest.approx(BASE_COOLDOWN_S - 3)


async def test_at_most_eight_posts_in_flight_per_origin() -> None:
    slots = OriginSlots()
    assert PER_ORIGIN_CONCURRENCY == 8
    held = [await slots.acquire(ORIGIN, 0.01) for _ in range(8)]
    assert held == [True] * 8
    assert not await slots.acquire(ORIGIN, 0.01)  # the ninth waits, then gives up
    assert await slots.acquire("https://other.example.com:443", 0.01)  # per origin
    # A slot given back lets one waiter in, not more.
    ninth = asyncio.ensure_future(slots.acquire(ORIGIN, 30))
    tenth = asyncio.ensure_future(slots.acquire(ORIGIN, 30))
    await asyncio.sleep(0)
    slots.release(ORIGIN)
    assert await ninth
    await asyncio.sleep(0.01)
    assert not tenth.done()
    slots.release(ORIGIN)
    assert await tenth
