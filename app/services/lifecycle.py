"""The data lifecycle: retention purge, replay by time range, rewind, tenant erasure.

Why batches and not partitions: the log tables are keyed by deterministic ids
(``events.id`` is what makes a re-read record one event), and a unique key on a
partitioned table must contain the partition key, so time partitions would lose
that guarantee. Instead each purge step is one short transaction over one time
slice of one instance (about ``POLLINATOR_PURGE_BATCH_ROWS`` events and their
deliveries), found through the ``(instance_id, created_at)`` indexes: row locks
are held for one slice only, reads never wait on them (only a retry or replay of a
delivery being purged waits, for that one slice), and the dead tuples arrive at a
steady rate that autovacuum absorbs. ``bench/bench_retention.py`` measures it at ten
million events (``bench/results/retention-*.txt``).

Every runner takes a PostgreSQL advisory lock, so overlapping beat ticks or a
second worker never run the same purge or erasure twice at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets as pysecrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import asyncpg
from redis.asyncio import Redis

from app import keys
from app.domain.retention import Retention, check_rewind, cutoffs
from app.domain.rows import utcnow
from app.errors import BadInput, Conflict
from app.security import hash_secret
from app.services.leases import Lease
from app.settings import Settings
from app.store import lifecycle as store
from app.store.watermarks import WatermarkStore, checkpoint_at

log = logging.getLogger(__name__)

# Advisory lock keys (any constants unique to Pollinator).
PURGE_LOCK = 0x504F4C4C0001
ERASE_LOCK = 0x504F4C4C0002
# An instance's marks move only when the horizon has moved this far: a purge every
# minute over 10,000 instances would otherwise spend its time on empty slices.
PURGE_STEP = timedelta(minutes=10)
# Rest after each batch as long as it took: at most half of one connection's time.
PURGE_REST_RATIO = 1.0
REPLAY_PAGE = 500
# A running replay whose worker has not written for this long is taken over.
REPLAY_STALE = timedelta(minutes=5)
REWIND_LOCK_WAIT_S = 10.0

Enqueue = Callable[[list[tuple[uuid.UUID, datetime]]], None]


def default_retention(settings: Settings) -> Retention:
    return Retention(settings.payload_retention_days, settings.metadata_retention_days)


# -- retention purge ------------------------------------------------------------------------


@dataclass
class PurgeReport:
    """What one purge run did; published to Redis for ``/metrics`` and ``status``."""

    started_at: str = ""
    finished_at: str = ""
    complete: bool = False  # every instance reached its cutoffs (not cut short by the budget)
    instances: int = 0
    payload_events: int = 0
    payload_deliveries: int = 0
    deleted_events: int = 0
    deleted_deliveries: int = 0
    deleted_attempts: int = 0
    batches: int = 0
    longest_batch_s: float = 0.0
    seconds: float = 0.0
    oldest_payload: str | None = None
    batch_seconds: list[float] = field(default_factory=list, repr=False)

    @property
    def rows(self) -> int:
        return (
            self.payload_events
            + self.payload_deliveries
            + self.deleted_events
            + self.deleted_deliveries
            + self.deleted_attempts
        )

    def public(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("batch_seconds")
        data["rows"] = self.rows
        return data


class _Batches:
    """Times every batch transaction: the longest is the upper bound of any lock held.

    After each batch the purge rests ``rest_ratio`` times as long as the batch took, so
    it never takes more than its share of the database (and of the WAL and vacuum work
    it leaves behind), however large its backlog.
    """

    def __init__(self, report: PurgeReport, deadline: float, rest_ratio: float) -> None:
        self.report = report
        self.deadline = deadline
        self.rest_ratio = rest_ratio

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    async def record(self, started: float) -> None:
        took = time.monotonic() - started
        self.report.batches += 1
        self.report.batch_seconds.append(took)
        self.report.longest_batch_s = max(self.report.longest_batch_s, took)
        if self.rest_ratio > 0:
            await asyncio.sleep(took * self.rest_ratio)


async def purge(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    budget_s: float = 50.0,
    now: datetime | None = None,
    step: timedelta = PURGE_STEP,
    redis: Redis | None = None,
    rest_ratio: float = PURGE_REST_RATIO,
) -> PurgeReport | None:
    """One purge run over every instance, within ``budget_s``; ``None`` if one is running.

    A run cut short by its budget resumes where it stopped (the marks are saved with
    every batch), so it can be scheduled often with a small budget.
    """
    report = PurgeReport(started_at=(now or utcnow()).isoformat())
    started = time.monotonic()
    async with pool.acquire() as conn:
        if not await store.try_advisory_lock(conn, PURGE_LOCK):
            return None
        try:
            batches = _Batches(report, started + budget_s, rest_ratio)
            await _purge_locked(conn, settings, batches, now, step)
            report.oldest_payload = _iso(await store.oldest_retained_payload(conn))
        finally:
            await store.advisory_unlock(conn, PURGE_LOCK)
    report.seconds = round(time.monotonic() - started, 3)
    report.finished_at = utcnow().isoformat()
    if redis is not None:
        await publish(redis, report)
    return report


async def _purge_locked(
    conn: store.Conn,
    settings: Settings,
    batches: _Batches,
    now: datetime | None,
    step: timedelta,
) -> None:
    report = batches.report
    default = default_retention(settings)
    rows = settings.purge_batch_rows
    moment = now or await store.database_now(conn)
    pending = await store.oldest_pending(conn)
    for item in await store.instances_to_purge(conn):
        if batches.expired():
            return
        retention = Retention.effective(default, item.payload_days, item.metadata_days)
        cut = cutoffs(retention, moment, pending.get(item.instance_id))
        report.instances += 1
        # Metadata first: rows it deletes need no payload purge. The payload slices then
        # start where the deleted rows end.
        deleted_to = item.metadata_before
        if _due(item.metadata_before, cut.metadata_before, step):
            await _purge_metadata(conn, item, cut.metadata_before, rows, batches)
            if batches.expired():
                return
            deleted_to = cut.metadata_before
        payload_from = _latest(item.payload_before, deleted_to)
        if _due(payload_from, cut.payload_before, step):
            await _purge_payloads(conn, item, payload_from, cut.payload_before, rows, batches)
    report.complete = not batches.expired()


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _due(mark: datetime | None, cut: datetime, step: timedelta) -> bool:
    return mark is None or cut - mark >= step


async def _purge_payloads(
    conn: store.Conn,
    item: store.InstanceRetention,
    lo: datetime | None,
    cut: datetime,
    rows: int,
    batches: _Batches,
) -> None:
    while not batches.expired():
        end = await store.slice_end(conn, item.instance_id, lo, cut, rows)
        started = time.monotonic()
        async with conn.transaction():
            events, deliveries = await store.purge_payload_slice(conn, item.instance_id, lo, end)
            await store.save_progress(conn, item.instance_id, payload_before=end)
        await batches.record(started)
        batches.report.payload_events += events
        batches.report.payload_deliveries += deliveries
        if end >= cut:
            return
        lo = end


async def _purge_metadata(
    conn: store.Conn,
    item: store.InstanceRetention,
    cut: datetime,
    rows: int,
    batches: _Batches,
) -> None:
    lo = item.metadata_before
    while not batches.expired():
        end = await store.slice_end(conn, item.instance_id, lo, cut, rows)
        started = time.monotonic()
        async with conn.transaction():
            events, deliveries, attempts = await store.purge_metadata_slice(
                conn, item.instance_id, end
            )
            await store.save_progress(conn, item.instance_id, metadata_before=end)
        await batches.record(started)
        batches.report.deleted_events += events
        batches.report.deleted_deliveries += deliveries
        batches.report.deleted_attempts += attempts
        if end >= cut:
            return
        lo = end


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def publish(redis: Redis, report: PurgeReport) -> None:
    """The last run's report, for ``/metrics`` and ``pollinator status``."""
    await redis.set(keys.retention_report(), json.dumps(report.public()))


async def last_report(redis: Redis) -> dict[str, object] | None:
    raw = await redis.get(keys.retention_report())
    return None if raw is None else dict(json.loads(raw))


@dataclass(frozen=True)
class TableSize:
    table: str
    rows: int  # the planner's estimate
    table_bytes: int
    index_bytes: int


def lifecycle_gauges(
    sizes: list[TableSize], report: dict[str, object] | None, now: datetime
) -> list[tuple[str, str, list[tuple[dict[str, str], float]]]]:
    """``/metrics`` gauges of the data lifecycle: (name, help, samples)."""
    gauges: list[tuple[str, str, list[tuple[dict[str, str], float]]]] = [
        (
            "pollinator_table_rows",
            "Estimated rows of the log tables (pg_class.reltuples)",
            [({"table": s.table}, float(s.rows)) for s in sizes],
        ),
        (
            "pollinator_table_bytes",
            "On-disk size of the log tables (kind=table incl. TOAST, or index)",
            [({"table": s.table, "kind": "table"}, float(s.table_bytes)) for s in sizes]
            + [({"table": s.table, "kind": "index"}, float(s.index_bytes)) for s in sizes],
        ),
    ]
    if report is None:
        return gauges
    oldest = report.get("oldest_payload")
    if isinstance(oldest, str):
        age = (now - datetime.fromisoformat(oldest)).total_seconds()
        gauges.append(
            (
                "pollinator_oldest_payload_age_seconds",
                "Age of the oldest delivery payload still kept (at the last purge)",
                [({}, max(age, 0.0))],
            )
        )
    finished = report.get("finished_at")
    if isinstance(finished, str):
        gauges.append(
            (
                "pollinator_purge_last_run_timestamp_seconds",
                "When the last retention purge run finished (Unix time)",
                [({}, datetime.fromisoformat(finished).timestamp())],
            )
        )
    rows = report.get("rows")
    gauges.append(
        (
            "pollinator_purge_last_run_rows",
            "Rows the last retention purge run purged or deleted",
            [({}, float(rows) if isinstance(rows, int | float) else 0.0)],
        )
    )
    gauges.append(
        (
            "pollinator_purge_caught_up",
            "1 when the last purge run reached every instance's cutoffs",
            [({}, 1.0 if report.get("complete") else 0.0)],
        )
    )
    return gauges


# -- replay -----------------------------------------------------------------------------------


async def run_replay_jobs(
    pool: asyncpg.Pool,
    settings: Settings,
    enqueue: Enqueue,
    *,
    budget_s: float = 20.0,
    page: int = REPLAY_PAGE,
) -> int:
    """Work queued replay jobs for up to ``budget_s``; returns deliveries re-armed.

    A job counts its selection once, then re-arms it a page at a time in
    ``(created_at, id)`` order, saving its cursor with each page, so a job taken
    over after a crash re-arms nothing twice. A job cut short by the budget stays
    ``running`` and is released for the next tick to resume at once.
    """
    deadline = time.monotonic() + budget_s
    armed_total = 0
    async with pool.acquire() as conn:
        while True:
            job = await store.claim_replay_job(conn, utcnow() - REPLAY_STALE)
            if job is None:
                return armed_total
            if job.cursor_at is None and job.sent == 0:
                await store.set_selected(conn, job.id, await store.count_replayable(conn, job))
            while True:
                lease_until = utcnow() + timedelta(seconds=settings.delivery_lease_seconds)
                async with conn.transaction():
                    armed, cursor = await store.rearm_page(conn, job, lease_until, page)
                if armed:
                    enqueue([(delivery_id, lease_until) for delivery_id in armed])
                    armed_total += len(armed)
                if cursor is None:
                    await store.finish_replay_job(conn, job.id)
                    break
                job = _advance(job, cursor, len(armed))
                if time.monotonic() >= deadline:
                    await store.release_replay_job(conn, job.id)
                    return armed_total
            if time.monotonic() >= deadline:
                return armed_total


def _advance(
    job: store.ReplayJob, cursor: tuple[datetime, uuid.UUID], armed: int
) -> store.ReplayJob:
    return store.ReplayJob(
        job.id,
        job.instance_id,
        job.since,
        job.until,
        job.only_failed,
        job.state,
        job.selected,
        job.sent + armed,
        cursor[0],
        cursor[1],
    )


# -- rewind -----------------------------------------------------------------------------------


async def rewind(
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    organization_id: int,
    instance_id: int,
    resource: str,
    since: datetime,
) -> None:
    """Move one resource's watermark back to ``since`` so its changes are read again.

    Done under the instance's poll lock, so no poll in flight can write its (newer)
    checkpoint over the rewound one; the move itself is
    :meth:`app.store.watermarks.WatermarkStore.rewind`, and until the next poll the
    checkpoint wins over any Redis copy (:func:`app.domain.watermark.choose`).
    """
    lease = Lease(redis, keys.poll_lock(instance_id), ttl_ms=int(REWIND_LOCK_WAIT_S * 3000))
    if not await lease.acquire_within(REWIND_LOCK_WAIT_S, retry_every_s=0.2):
        raise Conflict("a poll of this instance is running; try again")
    try:
        async with pool.acquire() as conn, conn.transaction():
            watermark = await checkpoint_at(conn, instance_id, resource)
            if watermark is None:
                raise BadInput(f"{resource!r} is not polled by this instance", field="resource")
            payload_days, metadata_days = await store.retention_of(conn, organization_id)
            retention = Retention.effective(
                default_retention(settings), payload_days, metadata_days
            )
            try:
                check_rewind(since, utcnow(), retention, watermark)
            except ValueError as exc:
                raise BadInput(str(exc)) from exc
            await WatermarkStore(redis).rewind(conn, instance_id, resource, since)
    finally:
        await lease.release()


# -- erasure ----------------------------------------------------------------------------------


async def request_erasure(pool: asyncpg.Pool, redis: Redis | None, organization_id: int) -> bool:
    """Revoke the organization now (its next call is a 401); batches delete the rest.

    ``False`` when there is no such organization.
    """
    async with pool.acquire() as conn, conn.transaction():
        watermarks = await store.watermark_keys_of(conn, organization_id)
        revoked = hash_secret("erased:" + pysecrets.token_hex(32))
        if await store.begin_erasure(conn, organization_id, revoked) is None:
            return False
    if redis is not None:
        await WatermarkStore(redis).forget_all(watermarks)
    return True


async def erase(
    pool: asyncpg.Pool, rows: int, *, budget_s: float = 20.0, only: int | None = None
) -> int | None:
    """Delete erasing organizations' rows for up to ``budget_s``; returns rows deleted.

    ``None`` if another erasure runner holds the lock. ``only`` limits it to one
    organization (the operator command).
    """
    deadline = time.monotonic() + budget_s
    deleted = 0
    async with pool.acquire() as conn:
        if not await store.try_advisory_lock(conn, ERASE_LOCK):
            return None
        try:
            for org_id in await store.organizations_erasing(conn):
                if only is not None and org_id != only:
                    continue
                finished = False
                while not finished and time.monotonic() < deadline:
                    async with conn.transaction():
                        count, finished = await store.erase_batch(conn, org_id, rows)
                    deleted += count
                if finished:
                    log.info("organization %s erased", org_id)
        finally:
            await store.advisory_unlock(conn, ERASE_LOCK)
    return deleted
