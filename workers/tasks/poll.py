"""``poll.instance``: one poll of one instance."""

from __future__ import annotations

import logging

from celery import shared_task

from app.services.polling import PollDeps, poll_instance
from workers.queues import DELIVERY_SEND, POLL_INSTANCE, Queue
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
POLL_TIMEOUT_S = 14 * 60.0


@shared_task(name=POLL_INSTANCE, ignore_result=True)
def poll_instance_task(instance_id: int) -> None:
    """Run the poll on this process's loop, then hand its deliveries to the delivery queue."""
    runtime = get_runtime()
    c = runtime.clients
    deps = PollDeps(c.settings, c.sessions, c.redis, c.http, c.box)
    outcome = runtime.submit(poll_instance(deps, instance_id), timeout=POLL_TIMEOUT_S)
    if outcome.skipped:
        return
    for delivery_id in outcome.delivery_ids:
        # A lost message is fine: the sweeper enqueues pending deliveries whose lease expired.
        poll_instance_task.app.send_task(
            DELIVERY_SEND, args=[str(delivery_id)], queue=Queue.DELIVERY.value
        )
    errors = [f"{r.resource}: {r.error}" for r in outcome.resources if r.error]
    log.info(
        "instance %s polled: %d events, %d deliveries%s",
        instance_id,
        outcome.events,
        len(outcome.delivery_ids),
        f", errors: {'; '.join(errors)}" if errors else "",
    )
