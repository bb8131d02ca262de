"""Poll metrics label a failed resource by its provider fault's kind, carried as a field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis

from app import metrics
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
