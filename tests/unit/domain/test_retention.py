"""The data-lifecycle rules: effective retention, purge cutoffs, replay and rewind windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.domain.retention import (
    Retention,
    WindowError,
    check_replay_window,
    check_rewind,
    cutoffs,
    parse_instant,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEFAULT = Retention(payload_days=30, metadata_days=90)


def test_overrides_win_field_by_field() -> None:
    assert Retention.effective(DEFAULT, None, None) == DEFAULT
    assert Retention.effective(DEFAULT, 7, None) == Retention(7, 90)
    assert Retention.effective(DEFAULT, None, 0.25) == Retention(30, 0.25)


def test_cutoffs_are_the_horizons_without_pending_deliveries() -> None:
    cut = cutoffs(DEFAULT, NOW, None)
    assert cut.payload_before == NOW - timedelta(days=30)
    assert cut.metadata_before == NOW - timedelta(days=90)


def test_fractional_days() -> None:
    cut = cutoffs(Retention(0.5, 1.5), NOW, None)
    assert cut.payload_before == NOW - timedelta(hours=12)
    assert cut.metadata_before == NOW - timedelta(hours=36)


def test_cutoffs_stop_at_the_oldest_pending_delivery() -> None:
    pending = NOW - timedelta(days=60)
    cut = cutoffs(DEFAULT, NOW, pending)
    assert cut.payload_before == pending  # would have been 30 days ago
    assert cut.metadata_before == NOW - timedelta(days=90)  # older than the pending one
    recent = NOW - timedelta(days=1)
    assert cutoffs(DEFAULT, NOW, recent).payload_before == NOW - timedelta(days=30)


def test_parse_instant() -> None:
    assert parse_instant("since", "2026-11-30T10:00:00Z") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_instant("since", "2026-11-30T10:00:00") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    for bad in ("", "yesterday", 5, None):
        with pytest.raises(WindowError, match="^since: "):
            parse_instant("since", bad)


def test_replay_window_must_not_be_empty() -> None:
    check_replay_window(NOW - timedelta(days=1), NOW)
    for until in (NOW - timedelta(days=1), NOW - timedelta(days=2)):
        with pytest.raises(WindowError, match="^until: "):
            check_replay_window(NOW - timedelta(days=1), until)


def test_rewind_moves_back_within_the_payload_horizon() -> None:
    watermark = NOW - timedelta(minutes=5)
    check_rewind(NOW - timedelta(days=29), NOW, DEFAULT, watermark)
    with pytest.raises(WindowError, match="retention horizon"):
        check_rewind(NOW - timedelta(days=31), NOW, DEFAULT, watermark)
    with pytest.raises(WindowError, match="future"):
        check_rewind(NOW + timedelta(seconds=1), NOW, DEFAULT, watermark)
    with pytest.raises(WindowError, match="after the resource's current watermark"):
        check_rewind(NOW - timedelta(minutes=1), NOW, DEFAULT, watermark)
