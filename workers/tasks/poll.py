"""``poll.instances``: a batch of polls, run concurrently on the process loop.

Flower shows each poll as its own ``poll.instance`` task (:mod:`workers.taskview`).
"""

from __future__ import annotations

import logging

from celery import shared_task

from app.services.polling import run_polls
from workers.messages import decode_polls
from workers.queues import POLL_INSTANCES
from workers.runtime import get_runtime
from workers.tasks.delivery import enqueue_deliveries
from workers.taskview import task_view

log = logging.getLogger(__name__)
BATCH_TIMEOUT_S = 14 * 60.0


@shared_task(name=POLL_INSTANCES, ignore_result=True)
def poll_instances_task(body: object) -> None:
    """Poll the batch's instances (:func:`workers.messages.decode_polls`), then queue their
    deliveries.

    Beat sends due instances in batches so that one Celery message (and one
    worker thread) carries many polls; the process-wide poll slots bound how many
    are in flight. The scheduled time measures schedule lag.
    """
    batch = [(order.instance_id, order.due) for order in decode_polls(body)]
    runtime = get_runtime()
    c = runtime.clients
    outcomes = runtime.submit(run_polls(c.poll, batch, c.poll_slots), timeout=BATCH_TIMEOUT_S)
    scheduled = {i: at.isoformat() if at else None for i, at in batch}
    task_view(poll_instances_task.app, poll_instances_task.request.hostname).polls(
        outcomes, scheduled
    )
    # A lost message is fine: the sweeper re-enqueues a delivery when its lease runs out.
    enqueue_deliveries(poll_instances_task.app, (d for o in outcomes for d in o.deliveries))
    for outcome in outcomes:
        if outcome.failed:
            errors = "; ".join(f"{r.resource}: {r.error}" for r in outcome.resources if r.error)
            log.warning(
                "instance %s: poll failed: %s",
                outcome.instance_id,
                errors,
                extra={"instance_id": outcome.instance_id},
            )
    log.info(
        "polled %d instances: %d events, %d deliveries",
        len(outcomes),
        sum(o.events for o in outcomes),
        sum(len(o.deliveries) for o in outcomes),
    )
