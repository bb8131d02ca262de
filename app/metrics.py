"""Metrics shared by every process through Redis, exposed by the API at ``/metrics``.

Poll and delivery workers are separate processes (often on separate hosts), so
in-process Prometheus counters would each need scraping. Instead workers add
to counters and histogram buckets in Redis (one script call per batch of polls
or deliveries, :meth:`MetricsBatch.flush`) and the API renders them, plus gauges
read from PostgreSQL at scrape time (backlog, overdue polls). Workers also append
one line per poll to a bounded Redis stream, the *poll journal*, that load tests
and operators read for exact schedule lag.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from app import keys

POLL_JOURNAL = keys.poll_journal()
JOURNAL_MAXLEN = 500_000

LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | histogram
    help: str
    buckets: tuple[float, ...] = ()

    @property
    def key(self) -> str:
        return keys.metric(self.name)

    @functools.cached_property
    def bucket_bounds(self) -> tuple[tuple[float, str], ...]:
        """Each bucket's bound and its name in the hash field (``observe`` per poll)."""
        return tuple((bound, str(bound)) for bound in self.buckets)


POLLS = Metric("pollinator_polls_total", "counter", "Polls by outcome (ok, failed, skipped)")
POLL_EVENTS = Metric("pollinator_poll_events_total", "counter", "Events found, by resource")
POLL_REQUESTS = Metric("pollinator_provider_requests_total", "counter", "Provider page requests")
POLL_ERRORS = Metric("pollinator_poll_errors_total", "counter", "Failed resource polls, by kind")
POLL_LAG = Metric(
    "pollinator_poll_schedule_lag_seconds",
    "histogram",
    "Poll start minus its scheduled time",
    LAG_BUCKETS,
)
POLL_DURATION = Metric(
    "pollinator_poll_duration_seconds",
    "histogram",
    "Wall time of one poll of one instance",
    DURATION_BUCKETS,
)
DELIVERY_ATTEMPTS = Metric(
    "pollinator_delivery_attempts_total",
    "counter",
    "Callback attempts by outcome (delivered, retry, failed, error class)",
)
DELIVERY_LATENCY = Metric(
    "pollinator_delivery_duration_seconds", "histogram", "Callback POST duration", DURATION_BUCKETS
)
QUARANTINES = Metric(
    "pollinator_quarantines_total",
    "counter",
    "Instances quarantined, by cause (schedule: next poll time cannot be computed or stored; "
    "crash: polls kept crashing)",
)
RECORDS_SKIPPED = Metric(
    "pollinator_records_skipped_total",
    "counter",
    "Provider records skipped as unreadable (no id, or a date the configured format cannot "
    "read); each skip is also the resource's lastError",
)
ALL_METRICS = (
    RECORDS_SKIPPED,
    POLLS,
    POLL_EVENTS,
    POLL_REQUESTS,
    POLL_ERRORS,
    POLL_LAG,
    POLL_DURATION,
    DELIVERY_ATTEMPTS,
    DELIVERY_LATENCY,
    QUARANTINES,
)


#: The field of a metric without labels.
NO_LABELS: Final = "{}"


def label_field(labels: Mapping[str, str] | None) -> str:
    """The field a label set is counted under (one per label set, so cached: a poll counts
    several metrics, each with one of a handful of label sets)."""
    return _label_field(tuple(sorted(labels.items()))) if labels else NO_LABELS


@lru_cache(maxsize=4096)
def _label_field(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(items), separators=(",", ":"))


class MetricsBatch:
    """Collects increments and journal lines and applies them in one round trip.

    Increments to the same counter or bucket are summed first, so a batch of polls
    costs about as many Redis commands as one poll.
    """

    def __init__(self) -> None:
        self._ops: dict[tuple[str, str], float] = {}
        self._journal: list[tuple[str, ...]] = []

    def _add(self, key: str, field: str, amount: float) -> None:
        self._ops[(key, field)] = self._ops.get((key, field), 0.0) + amount

    def inc(
        self, metric: Metric, labels: Mapping[str, str] | None = None, amount: float = 1.0
    ) -> None:
        self._add(metric.key, label_field(labels), amount)

    def add(self, metric: Metric, field: str, amount: float = 1.0) -> None:
        """:meth:`inc` with the label set's field already made (:func:`label_field`)."""
        self._add(metric.key, field, amount)

    def observe(
        self, metric: Metric, value: float, labels: Mapping[str, str] | None = None
    ) -> None:
        """Count ``value`` in its own bucket only; rendering makes the buckets cumulative."""
        base = label_field(labels)
        bucket = next((name for bound, name in metric.bucket_bounds if value <= bound), "+Inf")
        self._add(metric.key, f"{base}|{bucket}", 1)
        self._add(metric.key, f"{base}|sum", value)

    def journal_line(self, pairs: tuple[str, ...]) -> None:
        """A journal line as its (name, value) pairs flattened, all strings."""
        self._journal.append(pairs)

    async def flush(self, redis: Redis) -> None:
        """One script call: a pipeline of one command per increment and journal line costs
        the worker several times more CPU (its client packs and parses each command). The
        journal lines travel as one JSON argument, not ~17 per line: the client encodes
        each argument in Python, which was most of this call's cost."""
        if not (self._ops or self._journal):
            return
        journal = orjson.dumps(self._journal) if self._journal else b""
        args: list[str | bytes | float | int] = [len(self._ops), JOURNAL_MAXLEN, journal]
        for (_, field), amount in self._ops.items():
            args += [field, amount]
        # By SHA1, loaded on NOSCRIPT (registering only hashes the text).
        await redis.register_script(_FLUSH)(
            keys=[*(key for key, _ in self._ops), POLL_JOURNAL], args=args
        )
        self._ops.clear()
        self._journal.clear()


#: KEYS = the counters' hashes (one per increment), then the journal stream; ARGV = the
#: number of increments, the journal's approximate MAXLEN, the journal lines as a JSON
#: array of flat (name, value, ...) string arrays (empty: none), then (field, amount) per
#: increment.
_FLUSH: Final = """
local increments = tonumber(ARGV[1])
for i = 1, increments do
  redis.call('hincrbyfloat', KEYS[i], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
if ARGV[3] ~= '' then
  local journal = KEYS[increments + 1]
  for _, line in ipairs(cjson.decode(ARGV[3])) do
    redis.call('xadd', journal, 'MAXLEN', '~', ARGV[2], '*', unpack(line))
  end
end
return 0
"""


def inc_sync(
    client: SyncRedis, metric: Metric, labels: Mapping[str, str] | None = None, amount: float = 1.0
) -> None:
    """One counter increment from a synchronous process (beat has no event loop)."""
    client.hincrbyfloat(metric.key, label_field(labels), amount)


def metric_family(metric: Metric, raw: Mapping[bytes | str, bytes | str]) -> Family:
    """One metric's family (for ``prometheus_client``'s exposition) from its Redis hash."""
    # A counter family is named without "_total"; its samples carry it (OpenMetrics rule).
    family = Family(metric.name.removesuffix("_total"), metric.help, metric.kind)
    values = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
    if metric.kind == "counter":
        for field, value in sorted(values.items()):
            family.add_sample(family.name + "_total", _str_labels(json.loads(field)), value)
        return family
    series: dict[str, dict[str, float]] = {}
    for field, value in values.items():
        base, _, part = field.rpartition("|")
        series.setdefault(base, {})[part] = value
    for base, parts in sorted(series.items()):
        labels = _str_labels(json.loads(base))
        cumulative = 0.0
        for bound in (*[str(b) for b in metric.buckets], "+Inf"):
            cumulative += parts.get(bound, 0.0)
            family.add_sample(metric.name + "_bucket", {**labels, "le": bound}, cumulative)
        family.add_sample(metric.name + "_sum", labels, parts.get("sum", 0.0))
        family.add_sample(metric.name + "_count", labels, cumulative)
    return family


def _str_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in labels.items()}


async def shared_families(redis: Redis, metrics: Sequence[Metric] = ALL_METRICS) -> list[Family]:
    """The workers' counters and histograms, as every process wrote them to Redis."""
    async with redis.pipeline(transaction=False) as pipe:
        for metric in metrics:
            pipe.hgetall(metric.key)
        results = await pipe.execute()
    return [metric_family(m, raw) for m, raw in zip(metrics, results, strict=True)]


def gauge_family(
    name: str, help_: str, samples: Iterable[tuple[Mapping[str, str], float]]
) -> Family:
    """A gauge read at scrape time (from PostgreSQL or Redis)."""
    family = Family(name, help_, "gauge")
    for labels, value in samples:
        family.add_sample(name, _str_labels(labels), value)
    return family


def exposition(families: Iterable[Family]) -> bytes:
    """The Prometheus text of ``families`` plus this process's own metrics, rendered by
    ``prometheus_client`` (escaping, ordering and format are its, not ours)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(list(families)))
    return generate_latest(registry) + generate_latest()


class _Snapshot(Collector):
    """A collector over families read once per scrape (the shared store, not this process)."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Family]:
        return iter(self.families)
