"""The Celery application. Built by a factory from settings; nothing connects at import."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu import Queue as KombuQueue

from app.settings import Settings, get_settings
from workers.queues import (
    DELIVERY_BATCH,
    DELIVERY_SWEEP,
    LIFECYCLE_JOBS,
    LIFECYCLE_PURGE,
    POLL_INSTANCES,
    Queue,
)

SWEEP_EVERY_S = 2.0
# Retention purge runs (each within its budget, resuming where the last stopped) and
# replay/erasure work (short ticks, so a new replay job starts within seconds).
PURGE_EVERY_S = 60.0
LIFECYCLE_JOBS_EVERY_S = 2.0


# What a worker imports at start (Celery's ``imports``).
TASK_MODULES = ("workers.tasks.poll", "workers.tasks.delivery", "workers.tasks.lifecycle")


def create_celery(settings: Settings, *, tasks: bool = True) -> Celery:
    """Broker from settings; no result backend (the truth lives in PostgreSQL).

    ``tasks=False`` for beat, which sends tasks by name: Celery's beat imports the app's
    task modules at start, and with them aiohttp, asyncpg and the polling code (~20 MB
    of a process that only claims rows and sends messages).
    """
    app = Celery("pollinator", broker=settings.effective_broker_url, set_as_current=True)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=Queue.POLL.value,
        task_queues=[KombuQueue(Queue.POLL.value), KombuQueue(Queue.DELIVERY.value)],
        task_routes={
            POLL_INSTANCES: {"queue": Queue.POLL.value},
            DELIVERY_BATCH: {"queue": Queue.DELIVERY.value},
            DELIVERY_SWEEP: {"queue": Queue.DELIVERY.value},
            LIFECYCLE_PURGE: {"queue": Queue.DELIVERY.value},
            LIFECYCLE_JOBS: {"queue": Queue.DELIVERY.value},
        },
        # Polls are re-scheduled by beat and deliveries re-enqueued by the sweeper
        # from PostgreSQL, so a message lost with a dead worker loses no work; late
        # acks would only add re-runs after the visibility timeout.
        task_acks_late=False,
        # Poll tasks carry batches; prefetching more than one per thread would park
        # batches on a busy process while another sits idle.
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "delivery-sweep": {
                "task": DELIVERY_SWEEP,
                "schedule": SWEEP_EVERY_S,
                "options": {"expires": 30},
            },
            "lifecycle-purge": {
                "task": LIFECYCLE_PURGE,
                "schedule": PURGE_EVERY_S,
                "options": {"expires": PURGE_EVERY_S},
            },
            "lifecycle-jobs": {
                "task": LIFECYCLE_JOBS,
                "schedule": LIFECYCLE_JOBS_EVERY_S,
                "options": {"expires": 10},
            },
        },
        # Flower lists one task per poll and per delivery, sent by the workers themselves
        # (workers/taskview.py); the batch messages and the sweeper send no task events.
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
    )
    app.conf.imports = list(TASK_MODULES) if tasks else []
    return app


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    """The process-wide Celery app."""
    return create_celery(get_settings())
