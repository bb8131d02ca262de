""" "Poll now" makes an instance due without moving its grid (so it keeps its phase)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.domain.schedule import first_poll_at, latest_tick_at_or_before, next_poll_at

T = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def test_poll_now_then_the_next_claim_returns_to_the_same_slot() -> None:
    interval = 900.0
    scheduled = first_poll_at(T, 42, interval)  # somewhere in the next 15 minutes
    now = T + timedelta(seconds=1)
    due = latest_tick_at_or_before(scheduled, interval, now)
    assert due <= now
    assert (scheduled - due) % timedelta(seconds=interval) == timedelta(0)
    # Beat claims it a moment later and reschedules from the tick it was due at.
    assert next_poll_at(due, interval, now + timedelta(seconds=1)) == scheduled


def test_a_slot_already_due_is_left_alone() -> None:
    assert latest_tick_at_or_before(T, 60.0, T) == T
    assert latest_tick_at_or_before(T, 60.0, T + timedelta(hours=1)) == T


@given(
    st.integers(1, 10**9),
    st.floats(1.0, 86_400.0),
    st.floats(0.0, 10 * 86_400.0),
)
def test_the_phase_is_kept_whatever_the_interval_and_the_distance(
    instance_id: int, interval: float, ahead_s: float
) -> None:
    scheduled = first_poll_at(T, instance_id, interval) + timedelta(seconds=ahead_s)
    step = timedelta(microseconds=round(interval * 1e6))  # the grid's step
    due = latest_tick_at_or_before(scheduled, interval, T)
    assert due <= max(T, scheduled)
    claimed_at = T + timedelta(milliseconds=1)
    following = next_poll_at(due, interval, claimed_at)
    # Still a tick of the instance's grid (its phase is kept), and the next one after the
    # claim: a scheduled slot within one interval is kept exactly.
    assert (scheduled - following) % step == timedelta(0)
    assert claimed_at < following <= claimed_at + step
    if claimed_at < scheduled <= claimed_at + step:
        assert following == scheduled
