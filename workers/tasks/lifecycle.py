"""``lifecycle.purge`` (retention) and ``lifecycle.jobs`` (replay jobs, tenant erasure).

Thin shells: the work and its bounds live in :mod:`app.services.lifecycle`. Both
run on the delivery queue within a time budget, so a worker thread is never held
for long and a large backlog is worked off over several ticks.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from celery import shared_task

from app.services import lifecycle
from workers.queues import LIFECYCLE_JOBS, LIFECYCLE_PURGE
from workers.runtime import get_runtime
from workers.tasks.delivery import enqueue_deliveries

log = logging.getLogger(__name__)
PURGE_BUDGET_S = 45.0
JOBS_BUDGET_S = 20.0
TIMEOUT_S = 120.0


@shared_task(name=LIFECYCLE_PURGE, ignore_result=True)
def purge_task() -> None:
    """Purge payloads and metadata past their retention, in bounded batches."""
    runtime = get_runtime()
    c = runtime.clients
    report = runtime.submit(
        lifecycle.purge(c.pg, c.settings, budget_s=PURGE_BUDGET_S, redis=c.redis),
        timeout=TIMEOUT_S,
    )
    if report is not None and report.rows:
        log.info("retention purge: %s", report.public())


@shared_task(name=LIFECYCLE_JOBS, ignore_result=True)
def jobs_task() -> None:
    """Work replay jobs, then erasing organizations' rows."""
    runtime = get_runtime()
    c = runtime.clients

    def enqueue(items: list[tuple[uuid.UUID, datetime]]) -> None:
        enqueue_deliveries(jobs_task.app, items)

    armed = runtime.submit(
        lifecycle.run_replay_jobs(c.pg, c.settings, enqueue, budget_s=JOBS_BUDGET_S),
        timeout=TIMEOUT_S,
    )
    erased = runtime.submit(
        lifecycle.erase(c.pg, c.settings.purge_batch_rows, budget_s=JOBS_BUDGET_S),
        timeout=TIMEOUT_S,
    )
    if armed or erased:
        log.info("lifecycle jobs: %d deliveries replayed, %s rows erased", armed, erased)
