"""compute_delta: watermarks, equal timestamps, filters and event types (SPEC §4)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from app.domain.delta import Change, compute_delta
from app.domain.watermark import Watermark, initial_watermark, lower_bound
from tests.support.domain_helpers import merge_deltas
from tests.unit.engine.helpers import T0, keap, resource

S = timedelta(seconds=1)
POLL = T0 + 60 * S


def rec(
    oid: int, updated: datetime, created: datetime | None = None, **extra: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {"id": oid, "last_updated": keap(updated), **extra}
    if created is not None:
        record["date_created"] = keap(created)
    return record


def ids(changes: list[Change]) -> list[str]:
    return [c.object_id for c in changes]


# --- basic change detection --------------------------------------------------------------


def test_records_after_watermark_are_changes_and_older_ones_are_ignored() -> None:
    cfg = resource(created=None)
    wm = initial_watermark(T0)
    records = [rec(1, T0 - S), rec(2, T0 + S), rec(3, T0 + 2 * S)]
    result = compute_delta(records, cfg, wm, POLL)
    assert ids(result.changes) == ["2", "3"]
    assert result.watermark == Watermark(T0 + 2 * S, frozenset({"3"}))
    assert [c.date for c in result.changes] == [T0 + S, T0 + 2 * S]
    assert result.changes[0].record is records[1]  # the provider's record, not a copy


def test_record_at_watermark_is_a_change_only_when_its_id_is_new() -> None:
    cfg = resource(created=None)
    wm = Watermark(T0, frozenset({"1"}))
    result = compute_delta([rec(1, T0), rec(2, T0)], cfg, wm, POLL)
    assert ids(result.changes) == ["2"]
    assert result.watermark == Watermark(T0, frozenset({"1", "2"}))


def test_nothing_qualifies_keeps_the_watermark() -> None:
    cfg = resource(created=None)
    wm = Watermark(T0, frozenset({"9"}))
    result = compute_delta([rec(1, T0 - S)], cfg, wm, POLL)
    assert result.changes == []
    assert result.watermark is wm
    assert compute_delta([], cfg, wm, POLL).watermark is wm


def test_fifty_records_sharing_one_second_across_three_polls_each_reported_once() -> None:
    cfg = resource(created=None)
    same = T0 + 5 * S
    everyone = [rec(i, same) for i in range(50)]
    wm = initial_watermark(T0)
    reported: list[str] = []
    # Each poll re-reads everything at or after the lower bound, so batches overlap.
    for visible in (17, 34, 50):
        result = compute_delta(everyone[:visible], cfg, wm, POLL)
        reported += ids(result.changes)
        wm = result.watermark
    assert sorted(reported, key=int) == [str(i) for i in range(50)]
    assert wm == Watermark(same, frozenset(str(i) for i in range(50)))


def test_disjoint_batches_at_one_timestamp_carry_ids() -> None:
    cfg = resource(created=None)
    same = T0 + 5 * S
    wm = initial_watermark(T0)
    reported: list[str] = []
    for chunk in (range(0, 20), range(20, 35), range(35, 50)):
        result = compute_delta([rec(i, same) for i in chunk], cfg, wm, POLL)
        reported += ids(result.changes)
        wm = result.watermark
    assert sorted(reported, key=int) == [str(i) for i in range(50)]
    assert len(wm.ids) == 50


def test_same_id_twice_in_a_batch_gives_one_change_the_newest() -> None:
    cfg = resource(created=None)
    first, second = rec(7, T0 + S, name="old"), rec(7, T0 + 3 * S, name="new")
    result = compute_delta([first, rec(8, T0 + 2 * S), second], cfg, initial_watermark(T0), POLL)
    assert ids(result.changes) == ["7", "8"]
    assert result.changes[0].date == T0 + 3 * S
    assert result.changes[0].record["name"] == "new"
    # Also when the older sighting comes second.
    result = compute_delta([second, first], cfg, initial_watermark(T0), POLL)
    assert [(c.object_id, c.record["name"]) for c in result.changes] == [("7", "new")]


# --- the watermark cap ---------------------------------------------------------------------


def test_watermark_never_moves_beyond_poll_start() -> None:
    cfg = resource(created=None)
    started = T0 + 10 * S
    records = [rec(1, T0 + 5 * S), rec(2, T0 + 10 * S), rec(3, T0 + 12 * S)]
    result = compute_delta(records, cfg, initial_watermark(T0), started)
    # Record 3 (written while pages were read) is reported now...
    assert ids(result.changes) == ["1", "2", "3"]
    # ...but the watermark stays at the newest date not after the poll start,
    assert result.watermark == Watermark(T0 + 10 * S, frozenset({"2"}))
    # so the next poll reads record 3 again: same date, so the same event id (deduped).
    again = compute_delta(records, cfg, result.watermark, started + 60 * S)
    assert ids(again.changes) == ["3"]
    assert again.changes[0].date == T0 + 12 * S


def test_watermark_stays_when_every_record_is_after_poll_start() -> None:
    cfg = resource(created=None)
    wm = initial_watermark(T0)
    result = compute_delta([rec(1, POLL + S)], cfg, wm, POLL)
    assert ids(result.changes) == ["1"]
    assert result.watermark is wm


def test_watermark_never_moves_backwards() -> None:
    cfg = resource(created=None)
    wm = Watermark(T0 + 30 * S, frozenset({"1"}))
    # A poll that "started" before the watermark (clock step) cannot pull it back.
    result = compute_delta([rec(2, T0 + 40 * S)], cfg, wm, T0 + 20 * S)
    assert result.watermark is wm


def test_poll_delay_sets_lower_bound_and_caps_the_watermark() -> None:
    cfg = resource(created=None, pollDelay=5)
    wm = Watermark(T0, frozenset({"0"}))
    assert lower_bound(wm, cfg) == T0 - 5 * S
    assert lower_bound(wm, resource(created=None)) == T0
    started = T0 + 20 * S
    records = [rec(1, T0 + 10 * S), rec(2, T0 + 17 * S)]
    result = compute_delta(records, cfg, wm, started)
    assert ids(result.changes) == ["1", "2"]
    # Capped at started - pollDelay: record 2 is within the skew window and is re-read.
    assert result.watermark == Watermark(T0 + 10 * S, frozenset({"1"}))


def test_late_record_with_lagging_provider_clock_is_caught_with_poll_delay() -> None:
    """A record dated 3 s before another but visible only after the poll is not missed."""
    cfg = resource(created=None, pollDelay=5)
    wm = initial_watermark(T0)
    started = T0 + 10 * S
    first = compute_delta([rec(1, T0 + 9 * S)], cfg, wm, started)
    assert ids(first.changes) == ["1"]
    late = rec(2, T0 + 6 * S)  # committed after the first poll read its page
    second = compute_delta([rec(1, T0 + 9 * S), late], cfg, first.watermark, started + 60 * S)
    assert "2" in ids(second.changes)


# --- filters ------------------------------------------------------------------------------


def test_filter_by_current_date_drops_future_records() -> None:
    cfg = resource(created=None, filterByCurrentDate=True)
    records = [rec(1, T0 + S), rec(2, POLL + S)]
    result = compute_delta(records, cfg, initial_watermark(T0), POLL)
    assert ids(result.changes) == ["1"]
    # Without the filter the future record is reported (and re-read next poll).
    assert ids(
        compute_delta(records, resource(created=None), initial_watermark(T0), POLL).changes
    ) == [
        "1",
        "2",
    ]


def test_filter_by_created_date() -> None:
    cfg = resource(filterByUpdatedDate=False)
    old_but_updated = rec(1, T0 + 5 * S, created=T0 - 100 * S)
    new = rec(2, T0 + 6 * S, created=T0 + 2 * S)
    result = compute_delta([old_but_updated, new], cfg, initial_watermark(T0), POLL)
    assert ids(result.changes) == ["2"]
    change = result.changes[0]
    assert change.event_type == "CREATED"
    assert change.date == T0 + 2 * S  # identity follows the created date
    assert result.watermark == Watermark(T0 + 2 * S, frozenset({"2"}))
    # Updating it again does not report it again.
    new_again = rec(2, T0 + 30 * S, created=T0 + 2 * S)
    assert compute_delta([new_again], cfg, result.watermark, POLL).changes == []


def test_the_filter_flag_string_spelling() -> None:
    cfg = resource(filterByUpdatedDate="false")
    assert cfg.filter_by_updated_date is False


# --- event types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "updated", "tolerance", "expected"),
    [
        (T0 - 100 * S, T0 - 100 * S + timedelta(milliseconds=300) + 110 * S, 0, "UPDATED"),
        (T0 + 5 * S, T0 + 5 * S, 0, "CREATED"),  # equal dates
        (T0 - 50 * S, T0 + 5 * S, 0, "UPDATED"),  # old record, edited
        (T0 - 50 * S, T0 + 5 * S, 60, "CREATED"),  # within the tolerance
        (T0 - 50 * S, T0 + 5 * S, 55, "CREATED"),  # exactly at the tolerance
        (T0 - 50 * S, T0 + 5 * S, 54.9, "UPDATED"),  # just outside it
        (T0 + 2 * S, T0 + 50 * S, 0, "CREATED"),  # born after the watermark, then edited
    ],
)
def test_event_type(created: datetime, updated: datetime, tolerance: float, expected: str) -> None:
    cfg = resource(createdCheckTolerance=tolerance)
    result = compute_delta([rec(1, updated, created=created)], cfg, initial_watermark(T0), POLL)
    assert [c.event_type for c in result.changes] == [expected]


def test_created_at_watermark_is_new_only_for_unseen_ids() -> None:
    cfg = resource()
    wm = Watermark(T0, frozenset({"1"}))
    records = [rec(1, T0 + 9 * S, created=T0), rec(2, T0 + 9 * S, created=T0)]
    types = {c.object_id: c.event_type for c in compute_delta(records, cfg, wm, POLL).changes}
    assert types == {"1": "UPDATED", "2": "CREATED"}


def test_only_updated_date_reports_updated_and_only_created_reports_created() -> None:
    updated_only = resource(created=None)
    result = compute_delta([rec(1, T0 + S)], updated_only, initial_watermark(T0), POLL)
    assert [c.event_type for c in result.changes] == ["UPDATED"]
    created_only = resource(updated=None)
    record = {"id": 1, "date_created": keap(T0 + S)}
    result = compute_delta([record], created_only, initial_watermark(T0), POLL)
    assert [(c.event_type, c.date) for c in result.changes] == [("CREATED", T0 + S)]


def test_missing_or_bad_created_date_means_updated() -> None:
    cfg = resource(createdCheckTolerance=5)
    records = [rec(1, T0 + S), {**rec(2, T0 + S), "date_created": "yesterday"}]
    result = compute_delta(records, cfg, initial_watermark(T0), POLL)
    assert [c.event_type for c in result.changes] == ["UPDATED", "UPDATED"]
    assert result.skipped_unparseable == []


# --- paths, formats, bad data ---------------------------------------------------------------


def test_dotted_id_and_date_paths_and_epoch_format() -> None:
    cfg = resource(
        id_field="meta.key",
        updated="_info.lastUpdated",
        created="_info.created",
        fmt="milliseconds",
    )
    ms = int((T0 + 3 * S).timestamp() * 1000) + 250
    record = {"meta": {"key": 42}, "_info": {"lastUpdated": ms, "created": ms}}
    result = compute_delta([record], cfg, initial_watermark(T0), POLL)
    change = result.changes[0]
    assert (change.object_id, change.event_type) == ("42", "CREATED")
    assert change.date == T0 + 3 * S + timedelta(milliseconds=250)
    assert result.watermark == Watermark(change.date, frozenset({"42"}))


def test_value_zone_wins_over_configured_zone() -> None:
    cfg = resource(
        created=None, fmt="yyyy-MM-dd HH:mm:ss", updatedDateTimezone="America/Los_Angeles"
    )
    record = {"id": 1, "last_updated": "2026-11-27 02:00:05"}  # PST = UTC-8
    result = compute_delta([record], cfg, initial_watermark(T0), POLL)
    assert result.changes[0].date == T0 + 5 * S
    with_zone = resource(
        created=None, fmt="yyyy-MM-dd HH:mm:ssXXX", updatedDateTimezone="Asia/Tokyo"
    )
    record = {"id": 1, "last_updated": "2026-11-27 10:00:05+00:00"}
    assert compute_delta([record], with_zone, initial_watermark(T0), POLL).changes[0].date == (
        T0 + 5 * S
    )


def test_instance_default_zone_applies_without_a_configured_one() -> None:
    cfg = resource(created=None, fmt="yyyy-MM-dd HH:mm:ss")
    record = {"id": 1, "last_updated": "2026-11-27 11:00:05"}
    plus_one = timezone(timedelta(hours=1))
    result = compute_delta([record], cfg, initial_watermark(T0), POLL, default_tz=plus_one)
    assert result.changes[0].date == T0 + 5 * S


def test_unparseable_and_missing_values_are_reported_not_fatal() -> None:
    cfg = resource(created=None)
    records: list[dict[str, Any]] = [
        {"id": 1, "last_updated": "not a date"},
        {"id": 2},
        {"id": 3, "last_updated": ""},
        {"last_updated": keap(T0 + S)},
        {"id": 4, "last_updated": {"nested": True}},
        rec(5, T0 + S),
    ]
    result = compute_delta(records, cfg, initial_watermark(T0), POLL)
    assert ids(result.changes) == ["5"]
    skipped = dict(result.skipped_unparseable)
    assert set(skipped) == {"1", "2", "3", "", "4"}
    assert "not a date" in skipped["1"]
    assert "last_updated" in skipped["2"]
    assert "idField" in skipped[""]
    assert result.watermark == Watermark(T0 + S, frozenset({"5"}))


def test_string_and_int_ids_are_the_same_object() -> None:
    cfg = resource(created=None)
    result = compute_delta(
        [rec(1, T0 + S), {**rec(1, T0 + 2 * S), "id": "1"}], cfg, initial_watermark(T0), POLL
    )
    assert ids(result.changes) == ["1"]


def test_naive_poll_start_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_delta([], resource(), initial_watermark(T0), datetime(2026, 1, 1))


# --- date-less resources ------------------------------------------------------------------


def test_dateless_resource_reports_unseen_ids_once() -> None:
    cfg = resource(updated=None, created=None)
    wm = initial_watermark(T0)
    first = compute_delta([{"id": 1}, {"id": 2}, {"id": 1}], cfg, wm, POLL)
    assert [(c.object_id, c.event_type) for c in first.changes] == [
        ("1", "CREATED"),
        ("2", "CREATED"),
    ]
    assert first.watermark == Watermark(POLL, frozenset({"1", "2"}))
    # The identity date is the previous watermark: a retried poll gives the same events.
    assert {c.date for c in first.changes} == {T0}
    retried = compute_delta([{"id": 1}, {"id": 2}], cfg, wm, POLL + 5 * S)
    assert [c.date for c in retried.changes] == [T0, T0]
    second = compute_delta([{"id": 2}, {"id": 3}], cfg, first.watermark, POLL + 60 * S)
    assert ids(second.changes) == ["3"]
    # Ids that vanished from the list are kept: a record that comes back is not "new".
    assert second.watermark == Watermark(POLL + 60 * S, frozenset({"1", "2", "3"}))


def test_dateless_baseline_reports_nothing_but_remembers() -> None:
    cfg = resource(updated=None, created=None)
    base = compute_delta([{"id": 1}, {"id": 2}], cfg, initial_watermark(T0), POLL, baseline=True)
    assert base.changes == []
    assert base.watermark.ids == {"1", "2"}
    after = compute_delta([{"id": 1}, {"id": 2}, {"id": 3}], cfg, base.watermark, POLL + 60 * S)
    assert ids(after.changes) == ["3"]


def test_dateless_missing_id_is_reported() -> None:
    cfg = resource(updated=None, created=None)
    result = compute_delta([{"name": "x"}], cfg, initial_watermark(T0), POLL)
    assert result.changes == []
    assert result.skipped_unparseable == [("", "no value at idField 'id'")]


# --- per-page merge -----------------------------------------------------------------------


def test_merge_of_pages_equals_one_delta_over_all_pages() -> None:
    cfg = resource(created=None)
    wm = Watermark(T0, frozenset({"0"}))
    pages = [
        [rec(0, T0), rec(1, T0 + 9 * S), rec(2, T0 + 3 * S)],
        [rec(3, T0 + 9 * S), rec(1, T0 + 12 * S), {"id": 9, "last_updated": "bad"}],
        [rec(4, T0 - S)],
    ]
    whole = compute_delta([r for page in pages for r in page], cfg, wm, T0 + 10 * S)
    merged = merge_deltas([compute_delta(page, cfg, wm, T0 + 10 * S) for page in pages])
    assert merged.watermark == whole.watermark == Watermark(T0 + 9 * S, frozenset({"1", "3"}))
    assert {(c.object_id, c.date) for c in merged.changes} == {
        (c.object_id, c.date) for c in whole.changes
    }
    assert merged.skipped_unparseable == whole.skipped_unparseable
    with pytest.raises(ValueError, match="at least one"):
        merge_deltas([])
