"""``delivery.send`` and ``delivery.sweep``."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from celery import shared_task

from app.services.breaker import CircuitBreakers
from app.services.delivery import DeliveryDeps, deliver, due_deliveries
from workers.queues import DELIVERY_SEND, DELIVERY_SWEEP, Queue
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 60.0


def _deps() -> DeliveryDeps:
    c = get_runtime().clients
    return DeliveryDeps(
        c.settings, c.sessions, c.callback_http, c.box, c.redis, CircuitBreakers(c.redis), c.slots
    )


@shared_task(name=DELIVERY_SEND, ignore_result=True)
def send_delivery_task(delivery_id: str, ticket: str | None = None) -> None:
    """POST one delivery now; its next attempt, if any, is scheduled in PostgreSQL."""
    lease = datetime.fromisoformat(ticket) if ticket else None
    status = get_runtime().submit(
        deliver(_deps(), uuid.UUID(delivery_id), lease), timeout=SEND_TIMEOUT_S
    )
    log.info("delivery %s: %s", delivery_id, status)


@shared_task(name=DELIVERY_SWEEP, ignore_result=True)
def sweep_deliveries_task() -> None:
    """Enqueue every pending delivery whose next attempt is due (retries, lost messages)."""
    runtime = get_runtime()
    lease = runtime.clients.settings.delivery_lease_seconds
    ids = runtime.submit(due_deliveries(runtime.clients.sessions, lease), timeout=SEND_TIMEOUT_S)
    for delivery_id, ticket in ids:
        sweep_deliveries_task.app.send_task(
            DELIVERY_SEND, args=[str(delivery_id), ticket.isoformat()], queue=Queue.DELIVERY.value
        )
    if ids:
        log.info("sweeper enqueued %d due deliveries", len(ids))
