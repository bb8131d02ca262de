"""``pollinator beat``: Celery beat with a scheduler that reads due instances from PostgreSQL.

Beat keeps no per-instance entries in memory. Every :data:`POLL_TICK_S` it claims
the instances whose ``next_poll_at`` has passed (a partial index makes that cost
grow with the number of *due* instances, not the total), moves each one's
``next_poll_at`` to its next drift-free slot and sends them as ``poll.instances``
messages of up to ``TASK_BATCH`` instances each (:mod:`workers.messages`; a worker
runs a message's polls concurrently and Flower lists each as a ``poll.instance``
task). ``FOR UPDATE SKIP LOCKED`` plus a Redis leader lease mean two beats never
double-schedule: only the leader ticks, and even a split-brain moment cannot claim
the same row twice. The statements are in :mod:`app.store.schedule`; this module
owns the transaction.

One row never fails its neighbours. A claimed instance whose next slot cannot be
computed or stored (an interval past validation, a slot at the end of the
calendar) is *quarantined* in the same transaction that schedules the rest of
its batch: beat stops claiming it, its resources' ``lastError`` says why, and a
PATCH of the instance lifts it (see :mod:`app.services.polling` for instances
whose polls keep crashing).
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from celery.beat import Scheduler
from celery.signals import beat_init
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import OperationalError

from app import keys, liveness, metrics
from app.db import libpq_url, sync_url
from app.domain.rows import utcnow
from app.domain.schedule import SLOT_MAX, SLOT_MIN, ScheduleError, next_poll_at
from app.gctune import tune_gc
from app.services.leases import SyncLease
from app.settings import get_settings
from app.store import schedule
from app.store.wakeups import DueWakeups
from workers.heartbeat import Heartbeat
from workers.messages import PollOrder, encode_polls
from workers.queues import POLL_INSTANCES, TASK_BATCH, Queue

log = logging.getLogger(__name__)

# A poll starts after the first tick at or after its slot: a quarter second of lag at
# worst, an eighth on average (at 1 s, half a second was most of the median lag). Ticks
# cost a leader-lease renewal and one claim statement each; the claim's cost follows
# the rows due, so four smaller claims cost about what one larger did. A poll-now does
# not wait for the tick: it wakes the leader (app.store.wakeups.DueWakeups).
POLL_TICK_S = 0.25
LEADER_TTL_MS = 10_000
CLAIM_BATCH = 2000
# A tick's first claim is small and each next one doubles up to CLAIM_BATCH: when many
# instances come due at once (a burst, beat's restart), the first polls are on the broker
# after claiming 250 rows (at 2,000 the first message waited for the whole claim; that
# tick took 135 ms). Steady ticks claim fewer rows than this anyway.
FIRST_CLAIM = 250
MAX_CLAIM_PER_TICK = 50_000
MIN_TASK_EXPIRY_S = 60.0


@dataclass(frozen=True)
class Claimed:
    """An instance to poll now: its interval and the slot that was due."""

    instance_id: int
    interval_s: float
    due: datetime


@dataclass(frozen=True)
class Quarantined:
    instance_id: int
    reason: str


@dataclass
class Claim:
    """One claimed batch: what to poll, and what was quarantined instead."""

    polls: list[Claimed] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    rows: int = 0  # claimed rows (a row the database refuses to touch is in neither list)


def next_slot(due: datetime | None, interval_s: float, now: datetime) -> datetime:
    """The claimed row's next slot; :class:`ScheduleError` when it has none."""
    if due is None:
        raise ScheduleError(
            f"the stored next poll time is outside {SLOT_MIN.date()} .. {SLOT_MAX.date()}"
        )
    return next_poll_at(due, interval_s, now)


def plan_claim(rows: Sequence[Any], now: datetime) -> tuple[list[tuple[Claimed, datetime]], Claim]:
    """Each row's next slot, or its quarantine: one row's arithmetic never fails the batch."""
    scheduled: list[tuple[Claimed, datetime]] = []
    claim = Claim()
    for row in rows:
        instance_id, due, interval_s = int(row[0]), row[1], float(row[2])
        try:
            slot = next_slot(due, interval_s, now)
        except ScheduleError as exc:
            claim.quarantined.append(
                Quarantined(instance_id, f"next poll time cannot be computed: {exc}")
            )
            continue
        except Exception as exc:  # a bug must cost this row only, not every tenant's polls
            log.exception("instance %s: computing its next poll time failed", instance_id)
            claim.quarantined.append(
                Quarantined(
                    instance_id, f"next poll time cannot be computed ({type(exc).__name__})"
                )
            )
            continue
        assert due is not None  # next_slot refuses None
        scheduled.append((Claimed(instance_id, interval_s, due), slot))
    return scheduled, claim


def _reschedule(conn: Connection, slots: Sequence[tuple[Claimed, datetime]]) -> None:
    schedule.reschedule(conn, [c.instance_id for c, _ in slots], [slot for _, slot in slots])


def _quarantine(conn: Connection, now: datetime, quarantined: Sequence[Quarantined]) -> None:
    schedule.quarantine(
        conn, now, [q.instance_id for q in quarantined], [q.reason for q in quarantined]
    )


def _one_by_one(
    conn: Connection, now: datetime, slots: Sequence[tuple[Claimed, datetime]], claim: Claim
) -> None:
    """Each row in a savepoint of its own, so a row the database refuses fails alone.

    A row whose new slot is refused is quarantined; one whose quarantine is refused too
    is left as it is (logged), and the rest of the batch is still scheduled.
    """
    for claimed, slot in slots:
        try:
            with conn.begin_nested():
                _reschedule(conn, [(claimed, slot)])
        except OperationalError:
            raise
        except Exception as exc:
            claim.quarantined.append(
                Quarantined(
                    claimed.instance_id,
                    f"next poll time {slot.isoformat()} cannot be stored ({type(exc).__name__})",
                )
            )
        else:
            claim.polls.append(claimed)
    stored: list[Quarantined] = []
    for q in claim.quarantined:
        try:
            with conn.begin_nested():
                _quarantine(conn, now, [q])
        except OperationalError:
            raise
        except Exception as exc:
            log.error(
                "instance %s can be neither scheduled nor quarantined (%s): %s",
                q.instance_id,
                type(exc).__name__,
                q.reason,
            )
        else:
            stored.append(q)
    claim.quarantined = stored


def _claim(engine: Engine, now: datetime, batch: int, *, one_by_one: bool) -> Claim:
    with engine.begin() as conn:
        rows = schedule.claim_rows(conn, now, batch)
        scheduled, claim = plan_claim(rows, now)
        claim.rows = len(rows)
        if one_by_one:
            _one_by_one(conn, now, scheduled, claim)
            return claim
        if scheduled:
            _reschedule(conn, scheduled)
            claim.polls.extend(c for c, _ in scheduled)
        if claim.quarantined:
            _quarantine(conn, now, claim.quarantined)
    return claim


def claim_due(engine: Engine, now: datetime, batch: int = CLAIM_BATCH) -> Claim:
    """Claim up to ``batch`` due instances: move each to its next slot or quarantine it.

    Both happen in one transaction, so a quarantined row is never claimed again and the
    rest of its batch is scheduled in the same tick. The batch is moved with one
    statement; should the database refuse it (a constraint or trigger on one row, say),
    the transaction rolls back and the batch is claimed again with a savepoint per row,
    so only the refused row is affected. A lost or timed-out connection
    (``OperationalError``) is no row's fault: it propagates, and every row stays due.
    """
    try:
        return _claim(engine, now, batch, one_by_one=False)
    except OperationalError:
        raise
    except Exception:
        log.exception("claiming due instances failed; claiming them again row by row")
        return _claim(engine, now, batch, one_by_one=True)


SendPolls = Callable[[Sequence[Claimed]], None]


def next_claim(batch: int, rows: int) -> int | None:
    """The size of a tick's next claim after one of ``batch`` returned ``rows``; ``None``
    when it came back short (nothing more is due): twice as many, up to ``CLAIM_BATCH``."""
    return None if rows < batch else min(2 * batch, CLAIM_BATCH)


def dispatch_due(engine: Engine, send: SendPolls, metrics_client: redis.Redis | None = None) -> int:
    """Claim due instances batch by batch and ``send`` each batch's polls; returns how many.

    No row can fail a claim (see :func:`claim_due`), so one tenant's row never stops the
    tick's other batches. Quarantines are logged one line per instance and counted in
    ``pollinator_quarantines_total``, also when a later batch fails. What still ends the
    tick is the database or the broker failing, which would fail every following batch
    too: a failed claim leaves its rows due for the next tick; a failed send is logged
    (its instances were moved and poll at their next slot).
    """
    claimed = sent = quarantined = 0
    batch = FIRST_CLAIM
    started = time.monotonic()
    try:
        while claimed < MAX_CLAIM_PER_TICK:
            claim = claim_due(engine, utcnow(), batch)
            claimed += claim.rows
            for q in claim.quarantined:
                log.warning("instance %s quarantined: %s", q.instance_id, q.reason)
            quarantined += len(claim.quarantined)
            if claim.polls:
                try:
                    send(claim.polls)
                except Exception:
                    log.exception("sending %d polls failed", len(claim.polls))
                    break
                sent += len(claim.polls)
            following = next_claim(batch, claim.rows)
            if following is None:
                break
            batch = following
    finally:
        if quarantined and metrics_client is not None:
            _count_quarantines(metrics_client, quarantined)
    if sent:
        log.info("scheduled %d polls in %.0f ms", sent, (time.monotonic() - started) * 1000)
    return sent


def _count_quarantines(client: redis.Redis, count: int) -> None:
    try:
        metrics.inc_sync(client, metrics.QUARANTINES, {"cause": "schedule"}, count)
    except redis.RedisError as exc:  # a metric must not fail the tick
        log.warning("counting %d quarantines failed (%s)", count, type(exc).__name__)


class LeaderLock:
    """Beat's leadership: a :class:`~app.services.leases.SyncLease` renewed every tick.

    Whoever holds it schedules; it expires :data:`LEADER_TTL_MS` after its holder stops
    renewing (dies, or loses Redis), and a standby takes it at its next tick.
    """

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int = LEADER_TTL_MS) -> None:
        self.client = client
        self.lease = SyncLease(client, key, ttl_ms)
        self.held = False

    def ensure(self) -> bool:
        """Acquire or renew; ``False`` while another process leads."""
        was = self.held
        try:
            self.held = (self.held and self.lease.renew()) or self.lease.acquire()
        except redis.RedisError as exc:
            log.warning("leader lock unavailable (%s); not scheduling", type(exc).__name__)
            self.held = False
        if self.held != was:  # operators (and the failover test) read these two lines
            log.info("leading: this beat schedules" if self.held else "standing by: lost the lead")
        return self.held


def send_polls(app: Celery, claimed: Sequence[Claimed]) -> None:
    """Send the claimed polls as ``poll.instances`` messages of up to ``TASK_BATCH`` each.

    Neighbouring ids often share an OAuth app (one platform onboards a tenant batch at a
    time); shuffled batches spread each app's request budget over many worker threads
    instead of queueing one app's polls behind each other. A message expires after the
    shortest interval in it (at least :data:`MIN_TASK_EXPIRY_S`): by then its instances'
    next slots have come and beat has sent them again.
    """
    polls = list(claimed)
    random.shuffle(polls)
    with app.producer_or_acquire() as producer:
        for start in range(0, len(polls), TASK_BATCH):
            chunk = polls[start : start + TASK_BATCH]
            app.send_task(
                POLL_INSTANCES,
                args=[encode_polls(PollOrder(c.instance_id, c.due) for c in chunk)],
                queue=Queue.POLL.value,
                expires=max(min(c.interval_s for c in chunk), MIN_TASK_EXPIRY_S),
                producer=producer,
            )


class DueInstanceScheduler(Scheduler):
    """Static entries (the delivery sweeper) plus every due instance, leader only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        self.engine = create_engine(
            sync_url(settings.require("database_url")),
            pool_size=2,
            pool_pre_ping=True,
            hide_parameters=True,  # tenant values never reach a log through a SQL error
        )
        client = redis.Redis.from_url(settings.require("redis_url"))
        self.leader = LeaderLock(client, keys.beat_leader())
        self.wakeups = DueWakeups(libpq_url(settings.require("database_url")))
        self.announcer = liveness.SyncAnnouncer(client, "beat", liveness.member())
        self.polls_sent = 0
        # Standbys beat too: they are alive, and take over when the leader's lock expires.
        self.heartbeat = Heartbeat(settings.heartbeat_file) if settings.heartbeat_file else None
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.announcer.maybe_announce()
        if self.heartbeat is not None:
            self.heartbeat.beat()
        if not self.leader.ensure():
            self.wakeups.close()  # a standby holds no listening connection
            return POLL_TICK_S
        delay = float(super().tick(*args, **kwargs))
        try:
            self.dispatch_due()
        except Exception:  # a DB blip must not kill beat; the next tick retries
            log.exception("dispatching due polls failed")
        # The pause between ticks is spent here rather than in Celery's loop, listening: a
        # poll-now ends it, and the next tick claims that instance at once.
        self.wakeups.wait(min(delay, POLL_TICK_S))
        return 0.0

    def dispatch_due(self) -> int:
        """Claim every due instance and send its poll (in batched messages); how many."""
        sent = dispatch_due(self.engine, self._send, self.leader.client)
        self.polls_sent += sent
        return sent

    def _send(self, claimed: Sequence[Claimed]) -> None:
        send_polls(self.app, claimed)

    def close(self) -> None:
        super().close()
        self.wakeups.close()
        self.engine.dispose()


def main(argv: list[str]) -> int:
    """``pollinator beat``."""
    from app.logging import setup_logging
    from app.settings import load_settings_or_exit
    from workers.celery_app import create_celery

    settings = load_settings_or_exit()
    parser = argparse.ArgumentParser(prog="pollinator beat")
    parser.add_argument("--loglevel", default=settings.log_level)
    args = parser.parse_args(argv)
    setup_logging(args.loglevel, settings.log_format)
    # Once beat has started, what exists lives as long as the process.
    beat_init.connect(lambda **_: tune_gc(), weak=False)
    create_celery(settings, tasks=False).start(
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
