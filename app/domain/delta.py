"""Watermarks and the CREATED/UPDATED decision: which records of a poll are changes (SPEC §4).

A *watermark* is ``(at, ids)``: the newest effective date that is known to be complete, plus
the ids already seen at exactly that date. Providers render dates coarsely (Keap: to the
second), so many records share one date; a bare timestamp watermark either skips the ones
that arrive later with the same date (``>``) or repeats all of them forever (``>=``). With the
ids, a record is a change when its date is after ``at``, or equal to it and its id is new.
The watermark as a value (start, order, stored form, which stored copy wins) is
:mod:`app.domain.watermark`; this module decides how one poll moves it.

How the watermark advances, and why it is safe:

* It only moves to a date that a record of this poll actually carries (the provider's clock,
  not ours), so a provider clock that lags ours cannot make us skip its records.
* It never moves past ``poll_started_at - pollDelay``. A record that was not visible when its
  page was read was committed after the poll started, so (with the provider's clock at most
  ``pollDelay`` behind, and dates never later than commits) its date is at least that cap:
  it is after the new ``at``, or at it with an id not in ``ids``, and the next poll reports
  it. Records newer than the cap are reported now *and* re-read next time; the re-read gives
  the same event id (same updated date), which the outbox deduplicates.
* It never moves backwards, and it does not move when no record qualifies.

Resources with no date at all (Keap appointments) cannot be filtered by date: the poller reads
the full list every time and the watermark's ``ids`` is the *seen set* of every id ever
reported; ``at`` is then only the time of the last poll (it dates those events, below).

Everything here is pure and runs once per resource per poll over every fetched record, so
per-record work is kept to two compiled lookups, one (memoised) date parse and a comparison;
the created date is parsed only for records that are changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

from app.domain.dateformats import DateFormat, DateFormatError
from app.domain.fieldpath import Getter, compile_path
from app.domain.pollconfig import DateField, ResourceConfig
from app.domain.watermark import Watermark

__all__ = [
    "Change",
    "DeltaResult",
    "EventType",
    "compute_delta",
]

EventType = Literal["CREATED", "UPDATED"]


def _utc(dt: datetime, what: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {dt!r}")
    return dt if dt.tzinfo is UTC else dt.astimezone(UTC)


@dataclass(frozen=True)
class Change:
    """One record that changed since the watermark.

    ``date`` is the event's identity date: the effective (updated, or created when filtering
    by created date) date of the record, or, for date-less resources, the watermark's ``at``
    (the previous poll) — deterministic so that a poll retried after a crash yields the same
    event ids.
    """

    object_id: str
    event_type: EventType
    date: datetime
    record: dict[str, Any]


@dataclass(frozen=True)
class DeltaResult:
    """Changes of one batch, the watermark to store after they are saved, and bad records.

    ``skipped_unparseable`` lists ``(object id, reason)`` for records without an id or whose
    effective date is missing or malformed; they are reported, never fatal, and do not move
    the watermark.
    """

    changes: list[Change]
    watermark: Watermark
    skipped_unparseable: list[tuple[str, str]] = field(default_factory=list)


# --- per-call plan -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DateReader:
    """A date field compiled for the loop: getter, parser and zone, plus a parse memo."""

    path: str
    getter: Getter
    fmt: DateFormat
    tz: tzinfo
    memo: dict[object, datetime] = field(default_factory=dict)

    @classmethod
    def of(cls, date_field: DateField, default_tz: tzinfo) -> _DateReader:
        tz = default_tz if date_field.timezone is None else date_field.timezone
        return cls(date_field.path, compile_path(date_field.path), date_field.format, tz)

    def parse(self, value: Any) -> datetime:
        """Parse a raw value; raises DateFormatError. Repeated values are parsed once."""
        hashable = type(value) is str or type(value) is int
        if hashable:
            cached = self.memo.get(value)
            if cached is not None:
                return cached
        parsed = self.fmt.parse(value, self.tz)
        if hashable:
            self.memo[value] = parsed
        return parsed

    def read(self, record: Mapping[str, Any]) -> datetime | None:
        """The record's date, ``None`` when absent, empty or malformed (lenient reader)."""
        value = self.getter(record)
        if value is None or value == "":
            return None
        try:
            return self.parse(value)
        except DateFormatError:
            return None


def _effective_fields(cfg: ResourceConfig) -> tuple[DateField | None, DateField | None]:
    """(field that filters and identifies, created field used only to pick the event type).

    ``filterByUpdatedDate`` false means "filter by created date" (Open Connectors). A
    resource with only one of the two dates filters by that one, whatever the flag says.
    """
    updated, created = cfg.updated, cfg.created
    if updated is not None and (cfg.filter_by_updated_date or created is None):
        return updated, created
    return created, None


# --- dated resources -----------------------------------------------------------------------


class _WatermarkTracker:
    """Finds the newest candidate date not after the cap, and the ids seen at it."""

    __slots__ = ("at", "cap", "ids")

    def __init__(self, cap: datetime) -> None:
        self.cap = cap
        self.at: datetime | None = None
        self.ids: set[str] = set()

    def see(self, date: datetime, object_id: str) -> None:
        if date > self.cap:
            return
        at = self.at
        if at is None or date > at:
            self.at = date
            self.ids = {object_id}
        elif date == at:
            self.ids.add(object_id)

    def result(self, old: Watermark) -> Watermark:
        at = self.at
        if at is None or at < old.at:
            return old
        if at == old.at:
            return Watermark(at, old.ids | self.ids) if not self.ids <= old.ids else old
        return Watermark(at, frozenset(self.ids))


def _event_type(
    object_id: str,
    updated: datetime,
    created: datetime | None,
    tolerance: timedelta,
    watermark: Watermark,
) -> EventType:
    """SPEC §4: CREATED when the dates agree within the tolerance or it was born after the
    previous watermark (a new record edited before we saw it is still new to the receiver)."""
    if created is None:
        return "UPDATED"
    if abs(updated - created) <= tolerance or created > watermark.at:
        return "CREATED"
    if created == watermark.at and object_id not in watermark.ids:
        return "CREATED"
    return "UPDATED"


def _as_dict(record: Mapping[str, Any]) -> dict[str, Any]:
    # Records come from json.loads: already dicts, kept as-is (no per-change copy).
    return record if type(record) is dict else dict(record)


def _object_id(record: Mapping[str, Any], get_id: Getter) -> str | None:
    raw = get_id(record)
    if raw is None or raw == "":
        return None
    return raw if type(raw) is str else str(raw)


def _dated_delta(
    records: Iterable[Mapping[str, Any]],
    cfg: ResourceConfig,
    effective: DateField,
    created_field: DateField | None,
    watermark: Watermark,
    poll_started_at: datetime,
    default_tz: tzinfo,
) -> DeltaResult:
    get_id = compile_path(cfg.id_field)
    reader = _DateReader.of(effective, default_tz)
    get_date, parse = reader.getter, reader.parse
    wm_at, wm_ids = watermark.at, watermark.ids
    newest_allowed = poll_started_at if cfg.filter_by_current_date else None
    tracker = _WatermarkTracker(poll_started_at - timedelta(seconds=cfg.poll_delay))
    best: dict[str, tuple[datetime, Mapping[str, Any]]] = {}
    skipped: list[tuple[str, str]] = []

    for record in records:
        object_id = _object_id(record, get_id)
        if object_id is None:
            skipped.append(("", f"no value at idField {cfg.id_field!r}"))
            continue
        value = get_date(record)
        if value is None or value == "":
            skipped.append((object_id, f"no date at {effective.path!r}"))
            continue
        try:
            date = parse(value)
        except DateFormatError as exc:
            skipped.append((object_id, str(exc)))
            continue
        if date < wm_at or (newest_allowed is not None and date > newest_allowed):
            continue
        tracker.see(date, object_id)
        if date == wm_at and object_id in wm_ids:
            continue
        previous = best.get(object_id)
        if previous is None or date > previous[0]:
            best[object_id] = (date, record)

    changes = _dated_changes(best, effective, created_field, cfg, watermark, default_tz)
    return DeltaResult(changes, tracker.result(watermark), skipped)


def _dated_changes(
    best: Mapping[str, tuple[datetime, Mapping[str, Any]]],
    effective: DateField,
    created_field: DateField | None,
    cfg: ResourceConfig,
    watermark: Watermark,
    default_tz: tzinfo,
) -> list[Change]:
    if created_field is None:
        # Filtering by created date (or only one date exists): CREATED when the effective
        # date is the created one, UPDATED when it is an updated date with nothing to
        # compare it against (SPEC §4 needs a created date to call a change CREATED).
        kind: EventType = "UPDATED" if effective is cfg.updated else "CREATED"
        return [Change(oid, kind, date, _as_dict(rec)) for oid, (date, rec) in best.items()]
    created_reader = _DateReader.of(created_field, default_tz)
    tolerance = timedelta(seconds=cfg.created_check_tolerance)
    return [
        Change(
            oid,
            _event_type(oid, date, created_reader.read(rec), tolerance, watermark),
            date,
            _as_dict(rec),
        )
        for oid, (date, rec) in best.items()
    ]


# --- date-less resources -------------------------------------------------------------------


def _dateless_delta(
    records: Iterable[Mapping[str, Any]],
    cfg: ResourceConfig,
    watermark: Watermark,
    poll_started_at: datetime,
) -> DeltaResult:
    get_id = compile_path(cfg.id_field)
    seen = watermark.ids
    batch_ids: set[str] = set()
    fresh: dict[str, Mapping[str, Any]] = {}
    skipped: list[tuple[str, str]] = []
    for record in records:
        object_id = _object_id(record, get_id)
        if object_id is None:
            skipped.append(("", f"no value at idField {cfg.id_field!r}"))
            continue
        batch_ids.add(object_id)
        if object_id not in seen:
            # The last sighting wins: it is the freshest state of the record.
            fresh[object_id] = record
    changes = [Change(oid, "CREATED", watermark.at, _as_dict(rec)) for oid, rec in fresh.items()]
    new_at = max(watermark.at, poll_started_at)
    return DeltaResult(changes, Watermark(new_at, seen | batch_ids), skipped)


# --- entry points --------------------------------------------------------------------------


def compute_delta(
    records: Iterable[Mapping[str, Any]],
    cfg: ResourceConfig,
    watermark: Watermark,
    poll_started_at: datetime,
    *,
    default_tz: tzinfo = UTC,
    baseline: bool = False,
) -> DeltaResult:
    """The changes among ``records`` (one poll's records of one resource) since ``watermark``.

    ``records`` should be everything the poll read for the resource (all pages): compute one
    delta per poll — never carry the watermark from page to page of one poll, because pages
    are ordered by id, not by date, and a later page may hold older dates.

    ``default_tz`` is the instance's zone, used when neither the value nor the date field
    names one. With ``baseline`` the watermark advances but no change is reported: a
    date-less resource must be baselined on its first poll, or every existing record would
    be reported CREATED.

    Rules (SPEC §4): the effective date is the updated date, or the created date when
    ``filterByUpdatedDate`` is false or there is no updated field; a record is a change when
    that date is after the watermark, or at it with an id not yet seen; records dated after
    ``poll_started_at`` are dropped with ``filterByCurrentDate``; an id seen twice yields one
    change, the newest; see the module docstring for how the watermark moves.
    """
    started = _utc(poll_started_at, "poll_started_at")
    effective, created_field = _effective_fields(cfg)
    if effective is None:
        result = _dateless_delta(records, cfg, watermark, started)
    else:
        result = _dated_delta(
            records, cfg, effective, created_field, watermark, started, default_tz
        )
    if baseline:
        return DeltaResult([], result.watermark, result.skipped_unparseable)
    return result
