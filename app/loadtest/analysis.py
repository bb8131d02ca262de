"""Pure analysis of a load-test run: percentiles, poll-journal statistics, change matching.

Nothing here does I/O, so every number in ``results.json`` can be unit-tested.

Matching delivered events to the simulator's change log
-------------------------------------------------------
The poller reports a record's *latest* state once per poll, so several changes to one
record between two polls legitimately collapse into one event (a create followed by
updates is one ``CREATED``; several updates are one ``UPDATED``). Expected events can
therefore not be counted one per change. The rule used instead, per change ``c`` of
record ``r = (account, resource, id)`` at simulator time ``c.at`` (creates and updates;
deletes produce no event):

* ``c`` is **covered** when some event for ``r`` was delivered with a 2xx answer and
  received at or after ``c.at``. The first such event (by received time) is the one that
  covers it; all changes of ``r`` between two consecutive deliveries of ``r`` are thus
  covered by the later delivery, which is exactly the poll window that collapsed them.
* ``c`` is **missed** when no event for ``r`` was received after ``c.at``.
* its **end-to-end latency** is ``first covering receive time - c.at``.

Received-after is necessary but, on its own, lenient: a poll that read ``r`` just *before*
``c`` and delivered just *after* it looks like coverage. As a diagnostic (not part of
``missed``), a covered change is **unconfirmed** when no covering-or-later event of ``r``
reports a record date at least as new as the change's record date (compared at whole
seconds, because Keap renders most dates to the second).

``duplicates`` counts event ids that were delivered with a 2xx answer more than once
(at-least-once delivery may redeliver; the receiver is expected to dedupe on it).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "BurstResult",
    "Change",
    "DeliveryAnalysis",
    "JournalEntry",
    "JournalStats",
    "ReceivedEvent",
    "analyze_delivery",
    "burst_capacity",
    "journal_stats",
    "parse_change",
    "parse_iso",
    "parse_journal_entry",
    "percentile",
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation; ``None`` when empty."""
    if not values:
        return None
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be within [0, 100]")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def parse_iso(value: str) -> float:
    """Epoch seconds of an ISO-8601 timestamp (``Z`` or an offset; naive means UTC)."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC).timestamp()
    return dt.timestamp()


# --- the poll journal ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One line of the poll journal (``pollinator:journal:polls``), times as epoch seconds."""

    instance: int
    scheduled: float | None
    started: float
    finished: float
    events: int
    requests: int
    failed: bool


def parse_journal_entry(fields: dict[str, str]) -> JournalEntry:
    """A journal stream entry (string fields, as Redis returns them decoded)."""
    scheduled = fields.get("scheduled") or ""
    return JournalEntry(
        instance=int(fields["instance"]),
        scheduled=parse_iso(scheduled) if scheduled else None,
        started=parse_iso(fields["started"]),
        finished=parse_iso(fields["finished"]),
        events=int(fields.get("events") or 0),
        requests=int(fields.get("requests") or 0),
        failed=fields.get("failed", "0") not in ("0", "", "False", "false"),
    )


@dataclass(frozen=True)
class JournalStats:
    polls: int
    polls_per_s: float
    failed: int
    requests: int
    lag_p50: float | None
    lag_p99: float | None
    lag_max: float | None
    lags: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (started, lag)


def journal_stats(
    entries: Iterable[JournalEntry], start: float, end: float, instances: set[int] | None = None
) -> JournalStats:
    """Polls that *started* within ``[start, end)`` (of ``instances`` when given).

    Schedule lag is ``started - scheduled`` (clamped at 0: a poll run early is not late).
    """
    chosen = [
        e
        for e in entries
        if start <= e.started < end and (instances is None or e.instance in instances)
    ]
    lags = [(e.started, max(e.started - e.scheduled, 0.0)) for e in chosen if e.scheduled]
    values = [lag for _, lag in lags]
    seconds = max(end - start, 1e-9)
    return JournalStats(
        polls=len(chosen),
        polls_per_s=len(chosen) / seconds,
        failed=sum(1 for e in chosen if e.failed),
        requests=sum(e.requests for e in chosen),
        lag_p50=percentile(values, 50),
        lag_p99=percentile(values, 99),
        lag_max=max(values) if values else None,
        lags=sorted(lags),
    )


@dataclass(frozen=True)
class BurstResult:
    """The capacity burst: every instance made due at ``start``."""

    instances: int
    completed: int
    seconds: float | None  # start -> the last burst poll finished
    capacity_polls_per_s: float | None
    requests: int  # provider requests of the burst polls (journal)
    duration_p50: float | None = None  # wall time of one burst poll
    duration_p99: float | None = None
    mean_in_flight: float | None = None  # summed poll time / burst seconds
    # start -> 1 % of the burst polls had started (the ramp); not the first one, which can
    # be a poll that was due anyway and started just after the trigger
    ramp_s: float | None = None


def burst_capacity(
    entries: Iterable[JournalEntry], instances: set[int], start: float
) -> BurstResult:
    """The first poll of each instance that started at or after ``start``.

    ``capacity = completed / (last finish - start)``. Instances without such a poll are
    not completed (the burst timed out for them).
    """
    first: dict[int, JournalEntry] = {}
    for e in entries:
        if e.instance in instances and e.started >= start:
            known = first.get(e.instance)
            if known is None or e.started < known.started:
                first[e.instance] = e
    if not first:
        return BurstResult(len(instances), 0, None, None, 0)
    last = max(e.finished for e in first.values())
    seconds = max(last - start, 1e-9)
    durations = [max(e.finished - e.started, 0.0) for e in first.values()]
    return BurstResult(
        instances=len(instances),
        completed=len(first),
        seconds=seconds,
        capacity_polls_per_s=len(first) / seconds,
        requests=sum(e.requests for e in first.values()),
        duration_p50=percentile(durations, 50),
        duration_p99=percentile(durations, 99),
        mean_in_flight=sum(durations) / seconds,
        ramp_s=max((percentile([e.started for e in first.values()], 1) or start) - start, 0.0),
    )


# --- change log vs delivered events --------------------------------------------------------

RecordKey = tuple[str, str, str]  # (account, resource, object id)


@dataclass(frozen=True, slots=True)
class Change:
    """One ground-truth change from ``GET /_sim/accounts/{a}/changes``."""

    account: str
    op: str  # create | update | delete
    resource: str
    object_id: str
    at: float  # when the simulator applied it (epoch s)
    record_date: float | None  # the record's date as written (may lag ``at`` with clock skew)

    @property
    def key(self) -> RecordKey:
        return (self.account, self.resource, self.object_id)


def parse_change(account: str, raw: dict[str, object]) -> Change:
    record_date = raw.get("recordDate")
    return Change(
        account=account,
        op=str(raw["op"]),
        resource=str(raw["resource"]),
        object_id=str(raw["id"]),
        at=parse_iso(str(raw["at"])),
        record_date=parse_iso(str(record_date)) if record_date else None,
    )


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One event of one callback as the receiver saw it."""

    account: str
    resource: str
    object_id: str
    event_type: str
    event_id: str
    date: float | None  # the event's record date
    received: float
    status: int
    webhook_id: str = ""

    @property
    def key(self) -> RecordKey:
        return (self.account, self.resource, self.object_id)


@dataclass(frozen=True)
class DeliveryAnalysis:
    changes: int  # creates + updates considered
    events_delivered: int  # distinct event ids answered 2xx
    missed: int
    duplicates: int  # event ids answered 2xx more than once
    duplicate_deliveries: int  # webhook ids answered 2xx more than once
    unconfirmed: int  # covered by time only (see module doc)
    type_mismatch: int  # creates whose covering event is not CREATED
    latency_p50: float | None
    latency_p99: float | None
    latency_max: float | None
    latencies: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (at, s)
    missed_changes: list[Change] = field(default_factory=list, repr=False)


def _floor_second(value: float) -> float:
    return math.floor(value + 1e-6)


def analyze_delivery(
    changes: Iterable[Change],
    events: Iterable[ReceivedEvent],
    *,
    overdue_before: float | None = None,
) -> DeliveryAnalysis:
    """Match changes to delivered events (rule in the module docstring).

    ``overdue_before``: only changes applied before this time count (a live estimate
    ignores the changes the system has not had time to deliver yet).
    """
    ok = [e for e in events if 200 <= e.status < 300]
    by_record: dict[RecordKey, list[ReceivedEvent]] = defaultdict(list)
    for e in ok:
        by_record[e.key].append(e)
    times: dict[RecordKey, list[float]] = {}
    latest_date_from: dict[RecordKey, list[float]] = {}
    for key, evs in by_record.items():
        evs.sort(key=lambda e: e.received)
        times[key] = [e.received for e in evs]
        # suffix max of record dates: the newest state reported at or after position i
        suffix: list[float] = [0.0] * len(evs)
        best = -math.inf
        for i in range(len(evs) - 1, -1, -1):
            date = evs[i].date
            if date is not None and date > best:
                best = date
            suffix[i] = best
        latest_date_from[key] = suffix

    considered = 0
    missed: list[Change] = []
    unconfirmed = 0
    mismatch = 0
    latencies: list[tuple[float, float]] = []
    for c in changes:
        if c.op not in ("create", "update"):
            continue
        if overdue_before is not None and c.at >= overdue_before:
            continue
        considered += 1
        received = times.get(c.key)
        pos = bisect.bisect_left(received, c.at) if received else 0
        if not received or pos >= len(received):
            missed.append(c)
            continue
        event = by_record[c.key][pos]
        latencies.append((c.at, event.received - c.at))
        if c.record_date is not None and latest_date_from[c.key][pos] < _floor_second(
            c.record_date
        ):
            unconfirmed += 1
        if c.op == "create" and event.event_type != "CREATED":
            mismatch += 1

    id_counts = Counter(e.event_id for e in ok)
    hook_counts = Counter(e.webhook_id for e in ok if e.webhook_id)
    # a webhook id carries up to 10 events: count each delivery once per receive
    hook_receives: dict[str, set[float]] = defaultdict(set)
    for e in ok:
        if e.webhook_id and hook_counts[e.webhook_id] > 1:
            hook_receives[e.webhook_id].add(e.received)
    values = [lat for _, lat in latencies]
    return DeliveryAnalysis(
        changes=considered,
        events_delivered=len(id_counts),
        missed=len(missed),
        duplicates=sum(1 for n in id_counts.values() if n > 1),
        duplicate_deliveries=sum(1 for s in hook_receives.values() if len(s) > 1),
        unconfirmed=unconfirmed,
        type_mismatch=mismatch,
        latency_p50=percentile(values, 50),
        latency_p99=percentile(values, 99),
        latency_max=max(values) if values else None,
        latencies=sorted(latencies),
        missed_changes=missed,
    )
