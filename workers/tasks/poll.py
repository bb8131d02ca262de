"""``poll.instance``: one poll of one instance."""

from __future__ import annotations

import logging
from datetime import datetime

from celery import shared_task

from app.services.polling import PollDeps, run_poll
from workers.queues import DELIVERY_SEND, POLL_INSTANCE, Queue
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
POLL_TIMEOUT_S = 14 * 60.0


@shared_task(name=POLL_INSTANCE, ignore_result=True)
def poll_instance_task(instance_id: int, scheduled_at: str | None = None) -> None:
    """Run the poll on this process's loop, then hand its deliveries to the delivery queue.

    ``scheduled_at`` (ISO, from beat) is when the poll was due; it measures schedule lag.
    """
    runtime = get_runtime()
    c = runtime.clients
    deps = PollDeps(c.settings, c.sessions, c.redis, c.http, c.box)
    due = datetime.fromisoformat(scheduled_at) if scheduled_at else None
    outcome = runtime.submit(run_poll(deps, instance_id, due), timeout=POLL_TIMEOUT_S)
    if outcome.skipped:
        return
    for delivery_id, ticket in outcome.deliveries:
        # A lost message is fine: the sweeper enqueues pending deliveries whose lease expired.
        poll_instance_task.app.send_task(
            DELIVERY_SEND, args=[str(delivery_id), ticket.isoformat()], queue=Queue.DELIVERY.value
        )
    errors = [f"{r.resource}: {r.error}" for r in outcome.resources if r.error]
    log.info(
        "instance %s polled: %d events, %d deliveries%s",
        instance_id,
        outcome.events,
        len(outcome.delivery_ids),
        f", errors: {'; '.join(errors)}" if errors else "",
    )
