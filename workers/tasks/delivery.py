"""``delivery.batch`` (Flower shows each delivery as ``delivery.send``); ``delivery.sweep``."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from celery import Celery, shared_task

from app.services.breaker import CircuitBreakers
from app.services.delivery import DeliveryDeps, deliver_many, due_deliveries
from workers.messages import DeliveryTicket, decode_deliveries, encode_deliveries
from workers.queues import DELIVERY_BATCH, DELIVERY_SWEEP, TASK_BATCH, Queue
from workers.runtime import Clients, get_runtime
from workers.taskview import task_view

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 120.0


_process_deps: tuple[Clients, DeliveryDeps] | None = None


def _deps() -> DeliveryDeps:
    """One per runtime: its attempt writer groups the records of every batch in flight."""
    global _process_deps
    c = get_runtime().clients
    if _process_deps is None or _process_deps[0] is not c:
        deps = DeliveryDeps(
            c.settings, c.pg, c.callback_http, c.box, c.redis, CircuitBreakers(c.redis), c.slots
        )
        _process_deps = (c, deps)
    return _process_deps[1]


def enqueue_deliveries(app: Celery, tickets: Iterable[tuple[uuid.UUID, datetime]]) -> None:
    """Queue deliveries in batches of ``TASK_BATCH`` (one message, one worker thread each)."""
    items = [DeliveryTicket(delivery_id, ticket) for delivery_id, ticket in tickets]
    if not items:
        return
    with app.producer_or_acquire() as producer:
        for start in range(0, len(items), TASK_BATCH):
            app.send_task(
                DELIVERY_BATCH,
                args=[encode_deliveries(items[start : start + TASK_BATCH])],
                queue=Queue.DELIVERY.value,
                producer=producer,
            )


@shared_task(name=DELIVERY_BATCH, ignore_result=True)
def send_deliveries_task(body: object) -> None:
    """POST the batch's deliveries (:func:`workers.messages.decode_deliveries`) concurrently;
    failures reschedule in PostgreSQL."""
    batch = [(t.delivery_id, t.ticket) for t in decode_deliveries(body)]
    runtime = get_runtime()
    outcomes = runtime.submit(
        deliver_many(_deps(), batch, runtime.clients.delivery_slots), timeout=SEND_TIMEOUT_S
    )
    task_view(send_deliveries_task.app, send_deliveries_task.request.hostname).deliveries(outcomes)
    log.info("deliveries: %s", dict(Counter(o.outcome.value for o in outcomes)))


@shared_task(name=DELIVERY_SWEEP, ignore_result=True)
def sweep_deliveries_task() -> None:
    """Enqueue every pending delivery whose next attempt is due (retries, lost messages)."""
    runtime = get_runtime()
    lease = runtime.clients.settings.delivery_lease_seconds
    due = runtime.submit(due_deliveries(runtime.clients.pg, lease), timeout=SEND_TIMEOUT_S)
    enqueue_deliveries(sweep_deliveries_task.app, due)
    if due:
        log.info("sweeper enqueued %d due deliveries", len(due))
