"""Poll scheduling: phase spread, drift-free ticks, once after downtime, failure backoff."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.schedule import (
    failure_backoff_s,
    first_poll_at,
    next_poll_at,
)

T = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def test_ten_thousand_instances_created_together_are_spread_over_the_interval() -> None:
    interval = 900.0
    seconds = Counter(int(first_poll_at(T, i, interval).timestamp()) for i in range(1, 10_001))
    # 10k polls over ~895 one-second slots: ~11 per slot; no slot holds more than a few.
    assert max(seconds.values()) <= 0.003 * 10_000
    assert len(seconds) >= 880
    # Consecutive ids are far apart.
    assert abs(first_poll_at(T, 1, interval) - first_poll_at(T, 2, interval)) > timedelta(
        seconds=100
    )


def test_spread_of_one_minute_interval() -> None:
    # First polls of a one-minute interval fall in [5 s, 60 s): 55 one-second slots.
    counts = Counter(int((first_poll_at(T, i, 60.0) - T).total_seconds()) for i in range(1, 10_001))
    assert sorted(counts) == list(range(5, 60))
    assert max(counts.values()) <= 1.05 * 10_000 / 55


@given(st.integers(0, 2**70), st.floats(0.01, 10**6))
def test_first_poll_is_within_the_interval_and_stable(instance_id: int, interval: float) -> None:
    first = first_poll_at(T, instance_id, interval)
    assert T < first <= T + timedelta(seconds=interval) + timedelta(microseconds=1)
    assert first_poll_at(T, instance_id, interval) == first


@given(st.integers(1, 10**9), st.floats(0.5, 10**5))
def test_first_poll_is_soon_but_not_immediate(instance_id: int, interval: float) -> None:
    first = first_poll_at(T, instance_id, interval)
    delay = (first - T).total_seconds()
    assert min(5.0, interval) - 1e-6 <= delay <= interval + 1e-6


def test_next_poll_is_drift_free() -> None:
    scheduled = T
    # The poll ran late and took 7 s: the next tick is still on the grid.
    assert next_poll_at(scheduled, 60, T + timedelta(seconds=7)) == T + timedelta(seconds=60)
    # Ran early (clock ahead) or exactly on time: the next tick, never the same one.
    assert next_poll_at(scheduled, 60, T) == T + timedelta(seconds=60)
    assert next_poll_at(scheduled, 60, T - timedelta(seconds=5)) == T + timedelta(seconds=60)
    ticks = [T]
    for _ in range(1000):
        ticks.append(next_poll_at(ticks[-1], 0.7, ticks[-1] + timedelta(seconds=0.3)))
    assert ticks[-1] == T + timedelta(seconds=700)


def test_after_downtime_an_overdue_instance_polls_once_then_resumes_its_grid() -> None:
    now = T + timedelta(hours=5, seconds=10)
    nxt = next_poll_at(T, 900, now)
    assert nxt == T + timedelta(hours=5, minutes=15)
    # Exactly on a tick of the grid: the following one.
    assert next_poll_at(T, 900, T + timedelta(hours=5)) == nxt


@given(st.floats(0.01, 10**5), st.floats(0, 10**7))
def test_next_poll_is_the_smallest_tick_after_now(interval: float, behind: float) -> None:
    now = T + timedelta(seconds=behind)
    nxt = next_poll_at(T, interval, now)
    assert nxt > now
    assert nxt - timedelta(seconds=interval) <= max(now, T) + timedelta(microseconds=2)


def test_bad_intervals_are_refused() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="interval"):
            next_poll_at(T, bad, T)
        with pytest.raises(ValueError, match="interval"):
            first_poll_at(T, 1, bad)


def test_failure_backoff_for_a_fifteen_minute_interval() -> None:
    delays = [failure_backoff_s(n, 900) for n in range(1, 10)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_failure_backoff_for_fast_and_slow_intervals() -> None:
    # 1-minute polls: quick first retry, capped at 16 minutes.
    assert [failure_backoff_s(n, 60) for n in (1, 2, 5, 6, 100)] == [30, 60, 480, 960, 960]
    # Test-speed polls (1.2 s): the retry never waits much longer than a few intervals.
    assert failure_backoff_s(1, 1.2) == 1.2
    assert failure_backoff_s(50, 1.2) == pytest.approx(19.2)
    # 2-hour polls: the cap is the interval itself, never more.
    assert failure_backoff_s(1, 7200) == 30
    assert failure_backoff_s(30, 7200) == 7200
    assert failure_backoff_s(10**6, 900) == 3600
    with pytest.raises(ValueError, match="consecutive_failures"):
        failure_backoff_s(0, 60)


@given(st.integers(1, 200), st.floats(0.01, 10**6))
def test_failure_backoff_bounds(failures: int, interval: float) -> None:
    delay = failure_backoff_s(failures, interval)
    assert 0 < delay <= max(interval, 3600)
    assert failure_backoff_s(failures + 1, interval) >= delay
