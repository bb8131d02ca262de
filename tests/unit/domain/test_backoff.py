"""Delivery retry schedule, jitter, exhaustion and Retry-After (SPEC §5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.backoff import (
    MAX_RETRY_AFTER_S,
    next_attempt_delay,
    parse_retry_after,
    retry_delay_s,
)

SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
NOW = datetime(2015, 10, 21, 7, 20, 0, tzinfo=UTC)


def test_retry_n_uses_schedule_entry_n() -> None:
    middle = [retry_delay_s(n, SCHEDULE, lambda: 0.5) for n in range(1, 10)]
    assert middle == list(SCHEDULE)


def test_jitter_bounds() -> None:
    assert retry_delay_s(2, SCHEDULE, lambda: 0.0) == pytest.approx(270.0)
    assert retry_delay_s(2, SCHEDULE, lambda: 0.999999) == pytest.approx(330.0, rel=1e-5)


@given(st.integers(1, len(SCHEDULE)), st.floats(0, 1, exclude_max=True))
def test_jitter_is_within_ten_percent(attempts: int, r: float) -> None:
    delay = retry_delay_s(attempts, SCHEDULE, lambda: r)
    assert delay is not None
    base = SCHEDULE[attempts - 1]
    assert 0.9 * base - 1e-9 <= delay < 1.1 * base + 1e-9


def test_real_randomness_varies_but_stays_in_bounds() -> None:
    delays = {retry_delay_s(3, SCHEDULE) for _ in range(200)}
    assert len(delays) > 100
    assert all(d is not None and 1620 <= d <= 1980 for d in delays)


def test_exhausted_schedule_means_failed() -> None:
    assert retry_delay_s(len(SCHEDULE), SCHEDULE) is not None
    assert retry_delay_s(len(SCHEDULE) + 1, SCHEDULE) is None
    assert retry_delay_s(1, ()) is None
    with pytest.raises(ValueError, match="attempts_made"):
        retry_delay_s(0, SCHEDULE)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 480.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 480.0),  # obsolete RFC 850
        ("Wed Oct 21 07:28:00 2015", 480.0),  # obsolete asctime (no zone: GMT)
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: now
        ("99999999999", MAX_RETRY_AFTER_S),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_retry_after_is_honoured_only_when_longer() -> None:
    half = lambda: 0.5  # noqa: E731
    assert next_attempt_delay(1, SCHEDULE, 60.0, half) == 60.0
    assert next_attempt_delay(1, SCHEDULE, 2.0, half) == 5.0
    assert next_attempt_delay(2, SCHEDULE, None, half) == 300.0
    assert next_attempt_delay(2, SCHEDULE, 10 * MAX_RETRY_AFTER_S, half) == MAX_RETRY_AFTER_S
    # Retry-After never adds attempts.
    assert next_attempt_delay(len(SCHEDULE) + 1, SCHEDULE, 60.0, half) is None


def test_parse_then_schedule() -> None:
    later = NOW + timedelta(minutes=30)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    wait = parse_retry_after(header, NOW)
    assert wait == 1800.0
    assert next_attempt_delay(2, SCHEDULE, wait, lambda: 0.5) == 1800.0
