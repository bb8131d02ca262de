"""The load test's pure analysis: percentiles, journal statistics, change matching."""

from __future__ import annotations

import pytest

from app.loadtest.analysis import (
    Change,
    JournalEntry,
    ReceivedEvent,
    analyze_delivery,
    burst_capacity,
    journal_stats,
    parse_change,
    parse_iso,
    parse_journal_entry,
    percentile,
)
from app.loadtest.report import RESULT_KEYS, format_table


def change(op: str, rid: str, at: float, account: str = "a", record_date: float | None = None):
    return Change(account, op, "contacts", rid, at, at if record_date is None else record_date)


def event(
    rid: str,
    received: float,
    *,
    event_id: str | None = None,
    event_type: str = "UPDATED",
    date: float | None = None,
    status: int = 200,
    account: str = "a",
    webhook_id: str = "",
) -> ReceivedEvent:
    return ReceivedEvent(
        account,
        "contacts",
        rid,
        event_type,
        event_id or f"{rid}@{received}",
        date,
        received,
        status,
        webhook_id,
    )


# --- percentile ----------------------------------------------------------------------------


def test_percentile_interpolates_and_handles_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)
    with pytest.raises(ValueError, match="q must"):
        percentile([1.0], 101)


def test_parse_iso_accepts_z_offsets_and_naive_utc() -> None:
    assert parse_iso("1970-01-01T00:00:01.500Z") == pytest.approx(1.5)
    assert parse_iso("1970-01-01T01:00:01+01:00") == pytest.approx(1.0)
    assert parse_iso("1970-01-01T00:00:02") == pytest.approx(2.0)


# --- the journal ---------------------------------------------------------------------------


def entry(instance: int, scheduled: float | None, started: float, finished: float, **kw: int):
    return JournalEntry(
        instance, scheduled, started, finished, kw.get("events", 0), kw.get("requests", 2), False
    )


def test_parse_journal_entry_reads_the_stream_fields() -> None:
    e = parse_journal_entry(
        {
            "instance": "7",
            "scheduled": "1970-01-01T00:00:10+00:00",
            "started": "1970-01-01T00:00:10.250000+00:00",
            "finished": "1970-01-01T00:00:11+00:00",
            "events": "3",
            "deliveries": "1",
            "requests": "2",
            "failed": "0",
        }
    )
    assert (e.instance, e.scheduled, e.started, e.finished) == (7, 10.0, 10.25, 11.0)
    assert (e.events, e.requests, e.failed) == (3, 2, False)
    assert (
        parse_journal_entry(
            {
                "instance": "1",
                "scheduled": "",
                "started": "1970-01-01T00:00:00Z",
                "finished": "1970-01-01T00:00:00Z",
                "failed": "1",
            }  # fmt: skip
        ).scheduled
        is None
    )


def test_journal_stats_window_lag_and_rate() -> None:
    entries = [
        entry(1, 9.0, 10.0, 10.5),  # lag 1.0
        entry(2, 10.0, 10.0, 10.1),  # lag 0
        entry(3, 12.0, 11.5, 11.6),  # early: clamped to 0
        entry(1, 15.0, 18.0, 18.2),  # lag 3
        entry(9, 0.0, 15.0, 15.1),  # another run's instance
        entry(1, 25.0, 25.0, 25.1),  # outside the window
        entry(2, None, 16.0, 16.1),  # no schedule: counted, no lag
    ]
    stats = journal_stats(entries, 10.0, 20.0, {1, 2, 3})
    assert stats.polls == 5
    assert stats.polls_per_s == pytest.approx(0.5)
    assert stats.requests == 10
    assert stats.lag_max == pytest.approx(3.0)
    assert stats.lag_p50 == pytest.approx(0.5)
    assert stats.lags == [(10.0, 0.0), (10.0, 1.0), (11.5, 0.0), (18.0, 3.0)]


def test_burst_capacity_takes_each_instances_first_poll_after_the_start() -> None:
    entries = [
        entry(1, 99.0, 99.0, 100.5),  # started before the burst: not a burst poll
        entry(1, 100.0, 100.5, 101.0),
        entry(2, 100.0, 101.0, 102.0),
        entry(2, 100.0, 103.0, 104.0),  # a second poll: ignored
    ]
    result = burst_capacity(entries, {1, 2, 3}, 100.0)
    assert (result.instances, result.completed) == (3, 2)
    assert result.seconds == pytest.approx(2.0)
    assert result.capacity_polls_per_s == pytest.approx(1.0)
    assert result.requests == 4
    assert result.duration_p50 == pytest.approx(0.75)
    assert result.mean_in_flight == pytest.approx(0.75)
    assert result.ramp_s == pytest.approx(0.505)  # 1 % of the way from 100.5 to 101.0
    # A poll that was due anyway and started just after the trigger is not the ramp.
    many = [entry(1000, 100.0, 100.01, 100.1)]
    many += [entry(i, 100.0, 100.3 + i / 1000, 100.5 + i / 1000) for i in range(1, 200)]
    ramp = burst_capacity(many, set(range(1, 200)) | {1000}, 100.0).ramp_s
    assert ramp == pytest.approx(0.3, abs=0.01)
    empty = burst_capacity([], {1}, 0.0)
    assert empty.completed == 0
    assert empty.capacity_polls_per_s is None


# --- changes vs events ---------------------------------------------------------------------


def test_parse_change_reads_the_simulator_log() -> None:
    c = parse_change(
        "acct",
        {
            "op": "update",
            "resource": "orders",
            "id": 12,
            "at": "1970-01-01T00:00:05.000Z",
            "recordDate": "1970-01-01T00:00:04.000Z",
        },  # fmt: skip
    )
    assert c == Change("acct", "update", "orders", "12", 5.0, 4.0)


def test_each_change_covered_by_a_later_event_is_not_missed() -> None:
    changes = [change("create", "1", 10.0), change("update", "2", 11.0)]
    events = [event("1", 12.0, event_type="CREATED"), event("2", 13.5)]
    result = analyze_delivery(changes, events)
    assert (result.changes, result.missed, result.duplicates) == (2, 0, 0)
    assert result.events_delivered == 2
    assert result.latency_p50 == pytest.approx(2.25)
    assert result.latency_max == pytest.approx(2.5)
    assert result.type_mismatch == 0


def test_changes_collapsed_into_one_poll_are_covered_by_one_event() -> None:
    # create, then two updates before the next poll: one CREATED event covers all three
    changes = [change("create", "1", 10.0), change("update", "1", 10.5), change("update", "1", 11)]
    result = analyze_delivery(changes, [event("1", 12.0, event_type="CREATED")])
    assert result.missed == 0
    assert [round(lat, 2) for _, lat in result.latencies] == [2.0, 1.5, 1.0]


def test_a_change_after_the_last_event_of_its_record_is_missed() -> None:
    changes = [change("create", "1", 10.0), change("update", "1", 20.0)]
    result = analyze_delivery(changes, [event("1", 12.0, event_type="CREATED")])
    assert result.missed == 1
    assert result.missed_changes == [changes[1]]


def test_latency_uses_the_first_event_received_after_the_change() -> None:
    changes = [change("update", "1", 20.0)]
    events = [event("1", 12.0), event("1", 31.0), event("1", 22.0)]
    result = analyze_delivery(changes, events)
    assert result.latencies == [(20.0, pytest.approx(2.0))]


def test_events_of_another_record_or_account_do_not_cover() -> None:
    changes = [change("update", "1", 10.0, account="a")]
    events = [event("1", 12.0, account="b"), event("2", 12.0, account="a")]
    assert analyze_delivery(changes, events).missed == 1


def test_non_2xx_receipts_do_not_count() -> None:
    changes = [change("update", "1", 10.0)]
    result = analyze_delivery(changes, [event("1", 12.0, status=500)])
    assert result.missed == 1
    assert result.events_delivered == 0


def test_deletes_are_not_expected_to_produce_events() -> None:
    result = analyze_delivery([change("delete", "1", 10.0)], [])
    assert (result.changes, result.missed) == (0, 0)


def test_duplicates_count_event_ids_delivered_more_than_once() -> None:
    events = [
        event("1", 12.0, event_id="e1", webhook_id="d1"),
        event("1", 13.0, event_id="e1", webhook_id="d1"),  # redelivered
        event("1", 14.0, event_id="e1", webhook_id="d2"),
        event("2", 12.0, event_id="e2", webhook_id="d3"),
        event("3", 12.0, event_id="e3", webhook_id="d4", status=500),
        event("3", 13.0, event_id="e3", webhook_id="d4"),  # a retry after a 500: no duplicate
    ]
    result = analyze_delivery([], events)
    assert result.duplicates == 1
    assert result.duplicate_deliveries == 1
    assert result.events_delivered == 3


def test_overdue_before_ignores_changes_still_in_flight() -> None:
    changes = [change("update", "1", 10.0), change("update", "2", 50.0)]
    result = analyze_delivery(changes, [event("1", 12.0)], overdue_before=40.0)
    assert (result.changes, result.missed) == (1, 0)


def test_unconfirmed_flags_coverage_by_an_older_record_state() -> None:
    # the event arrived after the change but reports a record date from before it
    stale = analyze_delivery([change("update", "1", 10.4)], [event("1", 10.6, date=9.0)])
    assert (stale.missed, stale.unconfirmed) == (0, 1)
    # a later event with the new date confirms it; second precision is tolerated
    fresh = analyze_delivery(
        [change("update", "1", 10.4)], [event("1", 10.6, date=9.0), event("1", 14.0, date=10.0)]
    )
    assert fresh.unconfirmed == 0


def test_a_create_covered_by_an_updated_event_is_a_type_mismatch() -> None:
    result = analyze_delivery([change("create", "1", 10.0)], [event("1", 11.0)])
    assert (result.missed, result.type_mismatch) == (0, 1)


def test_table_lists_every_spec_key() -> None:
    table = format_table(dict.fromkeys(RESULT_KEYS, 1.5) | {"processes": {"api": {}}})
    for key in RESULT_KEYS:
        assert key in table
    assert "api" in table
