"""Queue and task names (dotted task names keep Flower readable)."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    POLL = "poll"
    DELIVERY = "delivery"


# Transport: the Celery messages, each a batch.
POLL_INSTANCES = "poll.instances"
DELIVERY_BATCH = "delivery.batch"
DELIVERY_SWEEP = "delivery.sweep"
# What Flower lists: one task per poll and per delivery (workers/taskview.py).
POLL_UNIT = "poll.instance"
DELIVERY_UNIT = "delivery.send"
LIFECYCLE_PURGE = "lifecycle.purge"
LIFECYCLE_JOBS = "lifecycle.jobs"

# Polls and deliveries travel in batches of this many per Celery message.
TASK_BATCH = 20
