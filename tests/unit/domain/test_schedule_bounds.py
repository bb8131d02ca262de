"""Schedule arithmetic is total: a datetime inside the calendar, or ScheduleError.

A tenant once set a refresh interval of 4,193,436,587 minutes; the next slot fell past
year 9999, ``OverflowError`` escaped from beat's claim and every organization's polls
stopped. These tests pin that no interval and no stored time can raise anything else.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.schedule import (
    SLOT_MAX,
    SLOT_MIN,
    ScheduleError,
    first_poll_at,
    next_poll_at,
    retry_at,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
NEAR_MAX = datetime.max.replace(tzinfo=UTC) - timedelta(seconds=1)
NEAR_MIN = datetime.min.replace(tzinfo=UTC) + timedelta(seconds=1)

# Any float at all, and aware datetimes over Python's whole range in a few time zones.
any_interval = st.floats(allow_nan=True, allow_infinity=True)
any_zone = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12, minutes=45))]
)
any_time = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    any_zone,
)


def test_the_reported_interval_is_a_schedule_error_not_an_overflow() -> None:
    interval_s = 4_193_436_587 * 60.0
    with pytest.raises(ScheduleError, match="after 9999-12-30"):
        next_poll_at(NOW, interval_s, NOW)


@pytest.mark.parametrize("interval_s", [1e300, 1.7e308, float("inf"), float("nan"), 0.0, -60.0])
def test_absurd_intervals_are_schedule_errors(interval_s: float) -> None:
    with pytest.raises(ScheduleError):
        next_poll_at(NOW, interval_s, NOW)
    with pytest.raises(ScheduleError):
        first_poll_at(NOW, 1, interval_s)
    with pytest.raises(ScheduleError):
        retry_at(NOW, 50, interval_s)


def test_stored_times_at_the_ends_of_the_calendar() -> None:
    # A slot next to datetime.max has no next tick inside the calendar.
    with pytest.raises(ScheduleError):
        next_poll_at(NEAR_MAX, 60.0, NOW)
    # A slot next to datetime.min resumes its grid right after now: polls once, no catch-up.
    nxt = next_poll_at(NEAR_MIN, 60.0, NOW)
    assert NOW < nxt <= NOW + timedelta(seconds=60)
    assert (nxt - NEAR_MIN) % timedelta(seconds=60) == timedelta(0)
    # The latest slot the scheduler may store is reachable; one microsecond more is not.
    step = SLOT_MAX - NOW
    assert next_poll_at(NOW, step.total_seconds(), NOW) == SLOT_MAX
    with pytest.raises(ScheduleError):
        next_poll_at(NOW + timedelta(microseconds=1), step.total_seconds(), NOW)


def test_a_slot_before_the_range_is_a_schedule_error() -> None:
    # 0001-01-02 00:00 at UTC+14 is 0001-01-01 10:00 UTC: representable, but a session in
    # a western time zone could not read it back.
    east = timezone(timedelta(hours=14))
    scheduled = datetime(1, 1, 2, tzinfo=east)
    with pytest.raises(ScheduleError, match="before 0001-01-02"):
        next_poll_at(scheduled, 60.0, scheduled)
    assert next_poll_at(scheduled, 86400.0, scheduled) == scheduled + timedelta(days=1)


def test_intervals_below_a_microsecond_still_move_forward() -> None:
    # Previously a loop of k += 1 whose float product could stop changing.
    nxt = next_poll_at(NOW - timedelta(days=3650), 1e-9, NOW)
    assert nxt == NOW + timedelta(microseconds=1)


def test_a_huge_failure_count_on_a_long_interval_is_a_schedule_error() -> None:
    # Backoff doubles up to the interval; an interval of 9000 years passes 9999.
    millennia_s = 9000 * 365 * 86400.0
    assert retry_at(NOW, 1, millennia_s) == NOW + timedelta(seconds=30)
    assert retry_at(NOW, 20, millennia_s) == NOW + timedelta(seconds=30 * 2**19)
    with pytest.raises(ScheduleError):
        retry_at(NOW, 64, millennia_s)


@given(any_time, any_interval, any_time)
def test_next_poll_is_a_valid_later_slot_or_a_schedule_error(
    scheduled: datetime, interval_s: float, now: datetime
) -> None:
    try:
        nxt = next_poll_at(scheduled, interval_s, now)
    except ScheduleError:
        return
    assert SLOT_MIN <= nxt <= SLOT_MAX
    assert nxt > now
    assert nxt > scheduled
    # On the grid, and the first tick after now (to the microsecond the step is rounded to).
    step = max(timedelta(microseconds=1), timedelta(microseconds=round(interval_s * 1e6)))
    assert (nxt - scheduled) % step == timedelta(0)
    assert nxt - step <= max(now, scheduled)


@given(any_time, st.integers(0, 2**63 - 1), any_interval)
def test_first_poll_is_a_valid_slot_or_a_schedule_error(
    created: datetime, instance_id: int, interval_s: float
) -> None:
    try:
        first = first_poll_at(created, instance_id, interval_s)
    except ScheduleError:
        return
    assert created < first <= SLOT_MAX
    assert first - created <= timedelta(seconds=interval_s) + timedelta(microseconds=1)


@given(any_time, st.integers(1, 10**6), any_interval)
def test_retry_is_a_valid_later_time_or_a_schedule_error(
    now: datetime, failures: int, interval_s: float
) -> None:
    try:
        at = retry_at(now, failures, interval_s)
    except ScheduleError:
        return
    assert now < at <= SLOT_MAX
