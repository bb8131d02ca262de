"""Poll metrics: a failed resource counts by its fault's kind; journal lines reach the stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis

from app import metrics
from app.loadtest.analysis import parse_journal_entry
from app.services.polling import PollOutcome, ResourceOutcome, poll_metrics

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def test_failed_resources_are_counted_by_kind_not_by_their_message() -> None:
    outcome = PollOutcome(
        7,
        resources=[
            # The message is the tenant's lastError; its text is not the label.
            ResourceOutcome("contacts", error="http_5xx: upstream said: no", error_kind="http_5xx"),
            ResourceOutcome("orders", error="timeout: after 30 s", error_kind="timeout"),
            ResourceOutcome("notes", requests=1),
        ],
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1),
    )
    redis = fakeredis.FakeAsyncRedis()
    batch = metrics.MetricsBatch()
    poll_metrics(batch, outcome, T0)
    await batch.flush(redis)
    family = metrics.metric_family(
        metrics.POLL_ERRORS, await redis.hgetall(metrics.POLL_ERRORS.key)
    )
    counted = {s.labels["kind"]: s.value for s in family.samples}
    assert counted == {"http_5xx": 1.0, "timeout": 1.0}
    await redis.aclose()


async def test_journal_lines_reach_the_stream_as_the_load_test_reads_them() -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    batch = metrics.MetricsBatch()
    for instance in (3, 4):
        outcome = PollOutcome(
            instance,
            resources=[ResourceOutcome("contacts", requests=2)],
            started_at=T0 + timedelta(seconds=instance),
            finished_at=T0 + timedelta(seconds=instance + 0.5),
        )
        poll_metrics(batch, outcome, T0 if instance == 3 else None)
    await batch.flush(redis)
    lines = [parse_journal_entry(f) for _, f in await redis.xrange(metrics.POLL_JOURNAL)]
    start = T0.timestamp()
    assert [(e.instance, e.scheduled, e.started, e.finished) for e in lines] == [
        (3, start, start + 3, start + 3.5),
        (4, None, start + 4, start + 4.5),
    ]
    assert [(e.requests, e.failed) for e in lines] == [(2, False), (2, False)]
    polls = metrics.metric_family(metrics.POLLS, await redis.hgetall(metrics.POLLS.key))
    assert [(s.labels, s.value) for s in polls.samples] == [({"outcome": "ok"}, 2.0)]
    await batch.flush(redis)  # flushed: nothing is written twice
    assert await redis.xlen(metrics.POLL_JOURNAL) == 2
    await redis.aclose()
