"""``pollinator beat``: Celery beat with a scheduler that reads due instances from PostgreSQL.

Beat keeps no per-instance entries in memory. Each tick claims the instances
whose ``next_poll_at`` has passed (a partial index makes that cost grow with the
number of *due* instances, not the total), moves each one's ``next_poll_at`` to
its next drift-free slot and sends one ``poll.instance`` task per instance.
``FOR UPDATE SKIP LOCKED`` plus a Redis leader lock mean two beats never
double-schedule: only the leader ticks, and even a split-brain moment cannot
claim the same row twice.
"""

from __future__ import annotations

import argparse
import logging
import random
import secrets as pysecrets
import time
from datetime import datetime
from typing import Any

import redis
from celery.beat import Scheduler
from sqlalchemy import Engine, create_engine, text

from app import keys
from app.db import sync_url
from app.domain.schedule import next_poll_at
from app.models import utcnow
from app.settings import get_settings
from workers.heartbeat import Heartbeat
from workers.queues import POLL_INSTANCES, TASK_BATCH, Queue

log = logging.getLogger(__name__)

POLL_TICK_S = 1.0
LEADER_TTL_MS = 10_000
CLAIM_BATCH = 2000
MAX_CLAIM_PER_TICK = 50_000
MIN_TASK_EXPIRY_S = 60.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

_CLAIM = text("""
    SELECT id, next_poll_at, refresh_interval_s FROM instances
    WHERE events_enabled AND NOT disabled AND deleted_at IS NULL AND next_poll_at <= :now
    ORDER BY next_poll_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
""")
_RESCHEDULE = text("""
    UPDATE instances AS i SET next_poll_at = u.next_at
    FROM unnest(CAST(:ids AS bigint[]), CAST(:nexts AS timestamptz[])) AS u(id, next_at)
    WHERE i.id = u.id
""")


def claim_due(
    engine: Engine, now: datetime, batch: int = CLAIM_BATCH
) -> list[tuple[int, float, datetime]]:
    """Claim up to ``batch`` due instances and move them to their next slot.

    Returns (id, interval, the slot that was due) per claimed instance.
    """
    with engine.begin() as conn:
        rows = conn.execute(_CLAIM, {"now": now, "batch": batch}).all()
        if not rows:
            return []
        ids = [int(r[0]) for r in rows]
        nexts = [next_poll_at(r[1], float(r[2]), now) for r in rows]
        conn.execute(_RESCHEDULE, {"ids": ids, "nexts": nexts})
    return [(int(r[0]), float(r[2]), r[1]) for r in rows]


class LeaderLock:
    """A Redis lease: whoever holds it schedules; it expires if its holder dies."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int = LEADER_TTL_MS) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = pysecrets.token_hex(8)
        self.held = False

    def ensure(self) -> bool:
        """Acquire or renew; ``False`` while another process leads."""
        try:
            if self.held and self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                return True
            self.held = bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        except redis.RedisError as exc:
            log.warning("leader lock unavailable (%s); not scheduling", type(exc).__name__)
            self.held = False
        return self.held


class DueInstanceScheduler(Scheduler):
    """Static entries (the delivery sweeper) plus every due instance, leader only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        self.engine = create_engine(
            sync_url(settings.require("database_url")), pool_size=2, pool_pre_ping=True
        )
        self.leader = LeaderLock(
            redis.Redis.from_url(settings.require("redis_url")), keys.beat_leader()
        )
        self.polls_sent = 0
        # Standbys beat too: they are alive, and take over when the leader's lock expires.
        self.heartbeat = Heartbeat(settings.heartbeat_file) if settings.heartbeat_file else None
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self.heartbeat is not None:
            self.heartbeat.beat()
        if not self.leader.ensure():
            return POLL_TICK_S
        delay = float(super().tick(*args, **kwargs))
        try:
            self.dispatch_due()
        except Exception:  # a DB blip must not kill beat; the next tick retries
            log.exception("dispatching due polls failed")
        return min(delay, POLL_TICK_S)

    def dispatch_due(self) -> int:
        """Send one poll per due instance; returns how many were sent."""
        sent = 0
        started = time.monotonic()
        while sent < MAX_CLAIM_PER_TICK:
            claimed = claim_due(self.engine, utcnow())
            if not claimed:
                break
            # Neighbouring ids often share an OAuth app (one platform onboards a tenant
            # batch at a time); shuffled batches spread each app's request budget over
            # many worker threads instead of queueing one app's polls behind each other.
            random.shuffle(claimed)
            with self.app.producer_or_acquire() as producer:
                for start in range(0, len(claimed), TASK_BATCH):
                    chunk = claimed[start : start + TASK_BATCH]
                    self.app.send_task(
                        POLL_INSTANCES,
                        args=[[[instance_id, due.isoformat()] for instance_id, _, due in chunk]],
                        queue=Queue.POLL.value,
                        expires=max(min(interval for _, interval, _ in chunk), MIN_TASK_EXPIRY_S),
                        producer=producer,
                    )
            sent += len(claimed)
            if len(claimed) < CLAIM_BATCH:
                break
        if sent:
            self.polls_sent += sent
            log.info("scheduled %d polls in %.0f ms", sent, (time.monotonic() - started) * 1000)
        return sent

    def close(self) -> None:
        super().close()
        self.engine.dispose()


def main(argv: list[str]) -> int:
    """``pollinator beat``."""
    from app.logging import setup_logging
    from app.settings import load_settings_or_exit
    from workers.celery_app import get_celery

    settings = load_settings_or_exit()
    parser = argparse.ArgumentParser(prog="pollinator beat")
    parser.add_argument("--loglevel", default=settings.log_level)
    args = parser.parse_args(argv)
    setup_logging(args.loglevel)
    get_celery().start(
        [
            "beat",
            "-S",
            "workers.beat:DueInstanceScheduler",
            "--loglevel",
            args.loglevel,
            "--max-interval",
            "1",
        ]
    )
    return 0
