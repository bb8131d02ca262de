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

# Polls and deliveries travel in batches of this many per Celery message. Celery's cost
# per message (receive, trace, ack, a thread's hand-off to the loop) and a batch's shared
# round trips are paid once per batch: 100 rather than 20 took a fifth off the worker CPU
# of a quiet poll (bench/bench_poll_worker.py --batch). The process's slots still bound
# what is in flight, and each thread prefetches one message, so a worker holds a few.
TASK_BATCH = 100
