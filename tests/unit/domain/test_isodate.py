"""The API's one date format: UTC, milliseconds (truncated), literal ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.domain.isodate import format_ms, format_ms_or_none


def test_utc_with_milliseconds_truncated_never_rounded_up() -> None:
    moment = datetime(2026, 11, 27, 10, 0, 5, 123_999, tzinfo=UTC)
    assert format_ms(moment) == "2026-11-27T10:00:05.123Z"


def test_whole_seconds_still_carry_milliseconds() -> None:
    # Python's isoformat drops the fraction of a whole second; the API never does.
    assert format_ms(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


def test_other_zones_are_written_in_utc() -> None:
    pacific = datetime(2026, 11, 27, 2, 0, 5, 120_000, tzinfo=timezone(timedelta(hours=-8)))
    assert format_ms(pacific) == "2026-11-27T10:00:05.120Z"


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_ms(datetime(2026, 11, 27, 10, 0, 5))


def test_none_is_null() -> None:
    assert format_ms_or_none(None) is None
    assert format_ms_or_none(datetime(2026, 11, 27, tzinfo=UTC)) == "2026-11-27T00:00:00.000Z"
