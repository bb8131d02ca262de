"""Queue and task names (dotted task names keep Flower readable)."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    POLL = "poll"
    DELIVERY = "delivery"


POLL_INSTANCES = "poll.instances"
DELIVERY_SEND = "delivery.send"
DELIVERY_SWEEP = "delivery.sweep"
LIFECYCLE_PURGE = "lifecycle.purge"
LIFECYCLE_JOBS = "lifecycle.jobs"

# Polls and deliveries travel in batches of this many per Celery message.
TASK_BATCH = 20
