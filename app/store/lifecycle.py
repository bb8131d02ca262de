"""SQL of the data lifecycle: purge, replay jobs, rewind and erasure.

Every function takes an asyncpg connection and never commits: the service decides
the transaction boundaries, and keeps each one to one bounded batch so that no
lock is held for long (see :mod:`app.services.lifecycle`).

Batches are *time slices* of one instance's rows in ``created_at`` order, found
through the ``(instance_id, created_at)`` indexes that the event-log routes
already use: no new index on the big tables, no sequential scan, and events and
the deliveries of the same poll (which share their ``created_at``, the poll
transaction's start) fall in the same slice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# A purged payload: delivery bodies become empty (a real body is never empty JSON) and
# events' raw records JSON null. ``octet_length`` of a bytea reads the TOAST header
# only, so testing for a purged body does not fetch the body.
PURGED_BODY = b""

# -- retention ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRetention:
    instance_id: int
    payload_days: float | None  # the organization's override, if any
    metadata_days: float | None
    payload_before: datetime | None  # the purge marks so far
    metadata_before: datetime | None


async def instances_to_purge(conn: Conn) -> list[InstanceRetention]:
    """Every instance (tombstones included) of organizations not being erased."""
    rows = await conn.fetch("""
        SELECT i.id, o.payload_retention_days, o.metadata_retention_days,
               r.payload_before, r.metadata_before
        FROM instances i
        JOIN organizations o ON o.id = i.organization_id
        LEFT JOIN retention_progress r ON r.instance_id = i.id
        WHERE o.erasing_since IS NULL
        ORDER BY i.id
    """)
    return [InstanceRetention(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def oldest_pending(conn: Conn) -> dict[int, datetime]:
    """Per instance, the creation time of its oldest pending delivery.

    Reads only pending rows (the partial index ``ix_deliveries_due``), which are few.
    """
    rows = await conn.fetch("""
        SELECT instance_id, min(created_at) FROM deliveries
        WHERE status = 'pending' GROUP BY instance_id
    """)
    return {r[0]: r[1] for r in rows}


async def slice_end(
    conn: Conn, instance_id: int, after: datetime | None, before: datetime, rows: int
) -> datetime:
    """The end of the next slice of about ``rows`` events in ``[after, before)``.

    One index probe in the common case. A slice never ends at its start (one poll may
    have written more than ``rows`` events at the same instant): then it ends at the
    next distinct instant, so every slice makes progress.
    """
    floor = after or datetime.min.replace(tzinfo=before.tzinfo)
    end: datetime | None = await conn.fetchval(
        """SELECT created_at FROM events WHERE instance_id = $1 AND created_at >= $2
           AND created_at < $3 ORDER BY created_at OFFSET $4 LIMIT 1""",
        instance_id,
        floor,
        before,
        rows,
    )
    if end is None:
        return before
    if end == floor:
        end = await conn.fetchval(
            """SELECT min(created_at) FROM events WHERE instance_id = $1
               AND created_at > $2 AND created_at < $3""",
            instance_id,
            floor,
            before,
        )
        return end or before
    return end


async def purge_payload_slice(
    conn: Conn, instance_id: int, after: datetime | None, before: datetime
) -> tuple[int, int]:
    """Drop the payloads created in ``[after, before)``; returns (events, deliveries).

    Slices never overlap (``after`` is the mark the previous slice saved), so events
    are updated without testing their record (which would read it out of TOAST).
    The status test is re-checked under the row lock (a concurrent retry or replay
    that made a delivery pending wins: its payload stays).
    """
    floor = after or datetime.min.replace(tzinfo=before.tzinfo)
    events = await conn.fetchval(
        """WITH done AS (
             UPDATE events SET record = 'null'::jsonb
             WHERE instance_id = $1 AND created_at >= $2 AND created_at < $3
             RETURNING 1)
           SELECT count(*) FROM done""",
        instance_id,
        floor,
        before,
    )
    deliveries = await conn.fetchval(
        """WITH done AS (
             UPDATE deliveries SET body = $4
             WHERE instance_id = $1 AND created_at >= $2 AND created_at < $3
               AND status <> 'pending' AND octet_length(body) > 0
             RETURNING 1)
           SELECT count(*) FROM done""",
        instance_id,
        floor,
        before,
        PURGED_BODY,
    )
    return int(events), int(deliveries)


async def purge_metadata_slice(
    conn: Conn, instance_id: int, before: datetime
) -> tuple[int, int, int]:
    """Delete event, delivery and attempt rows created before ``before``.

    Returns (events, deliveries, attempts). Everything older is already gone, so the
    index range starts at the instance's oldest row. Events go first: a delivery's
    deletion would otherwise update each of its events (``ON DELETE SET NULL``). A
    delivery row locked by a concurrent retry is waited for (one short statement) and
    re-checked, not skipped: a skipped row would sit behind the mark for good.
    """
    events = await conn.fetchval(
        """WITH gone AS (
             DELETE FROM events WHERE instance_id = $1 AND created_at < $2 RETURNING 1)
           SELECT count(*) FROM gone""",
        instance_id,
        before,
    )
    row = await conn.fetchrow(
        """WITH victims AS (
             SELECT id FROM deliveries
             WHERE instance_id = $1 AND created_at < $2 AND status <> 'pending'
             FOR UPDATE
           ), attempts AS (
             DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM victims)
             RETURNING 1
           ), gone AS (
             DELETE FROM deliveries WHERE id IN (SELECT id FROM victims) RETURNING 1
           )
           SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM attempts)""",
        instance_id,
        before,
    )
    assert row is not None
    return int(events), int(row[0]), int(row[1])


async def save_progress(
    conn: Conn,
    instance_id: int,
    payload_before: datetime | None = None,
    metadata_before: datetime | None = None,
) -> None:
    """Move an instance's purge marks forward (never back)."""
    await conn.execute(
        """INSERT INTO retention_progress (instance_id, payload_before, metadata_before)
           VALUES ($1, $2, $3)
           ON CONFLICT (instance_id) DO UPDATE SET
             payload_before = greatest(retention_progress.payload_before,
                                       EXCLUDED.payload_before),
             metadata_before = greatest(retention_progress.metadata_before,
                                        EXCLUDED.metadata_before),
             updated_at = now()""",
        instance_id,
        payload_before,
        metadata_before,
    )


async def oldest_retained_payload(conn: Conn) -> datetime | None:
    """The creation time of the oldest delivery that still has its payload.

    One index probe per instance at its purge mark (everything before the mark is
    purged), so it stays cheap at any table size.
    """
    value: datetime | None = await conn.fetchval("""
        SELECT min(first.created_at)
        FROM instances i
        LEFT JOIN retention_progress r ON r.instance_id = i.id
        CROSS JOIN LATERAL (
            SELECT d.created_at FROM deliveries d
            WHERE d.instance_id = i.id
              AND d.created_at >= coalesce(r.payload_before, '-infinity')
              AND octet_length(d.body) > 0
            ORDER BY d.created_at LIMIT 1
        ) AS first
    """)
    return value


# -- replay -----------------------------------------------------------------------------------


async def owns_live_instance(conn: Conn, organization_id: int, instance_id: int) -> bool:
    """Whether ``instance_id`` is a live (not deleted) instance of the organization."""
    found = await conn.fetchval(
        "SELECT 1 FROM instances WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL",
        instance_id,
        organization_id,
    )
    return found is not None


REPLAYABLE_ALL = ["delivered", "failed"]
REPLAYABLE_FAILED = ["failed"]


@dataclass(frozen=True)
class ReplayJob:
    id: uuid.UUID
    instance_id: int
    since: datetime
    until: datetime
    only_failed: bool
    state: str
    selected: int
    sent: int
    cursor_at: datetime | None
    cursor_id: uuid.UUID | None

    @property
    def statuses(self) -> list[str]:
        return REPLAYABLE_FAILED if self.only_failed else REPLAYABLE_ALL


_JOB_COLUMNS = (
    "id, instance_id, since, until, only_failed, state, selected, sent, cursor_at, cursor_id"
)


def _job(row: asyncpg.Record) -> ReplayJob:
    return ReplayJob(*row)


async def create_replay_job(
    conn: Conn, instance_id: int, since: datetime, until: datetime, only_failed: bool
) -> uuid.UUID:
    job_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO replay_jobs (id, instance_id, since, until, only_failed, state)
           VALUES ($1, $2, $3, $4, $5, 'queued')""",
        job_id,
        instance_id,
        since,
        until,
        only_failed,
    )
    return job_id


async def get_replay_job(conn: Conn, instance_id: int, job_id: uuid.UUID) -> ReplayJob | None:
    row = await conn.fetchrow(
        f"SELECT {_JOB_COLUMNS} FROM replay_jobs WHERE id = $1 AND instance_id = $2",
        job_id,
        instance_id,
    )
    return None if row is None else _job(row)


async def claim_replay_job(conn: Conn, stale_before: datetime) -> ReplayJob | None:
    """Take the oldest queued job, a paused one, or one whose worker stopped heartbeating."""
    row = await conn.fetchrow(
        f"""UPDATE replay_jobs SET state = 'running', heartbeat_at = now()
            WHERE id = (
              SELECT id FROM replay_jobs
              WHERE state = 'queued'
                 OR (state = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < $1))
              ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {_JOB_COLUMNS}""",
        stale_before,
    )
    return None if row is None else _job(row)


async def count_replayable(conn: Conn, job: ReplayJob) -> int:
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM deliveries
               WHERE instance_id = $1 AND created_at >= $2 AND created_at < $3
                 AND status = ANY($4::text[]) AND octet_length(body) > 0""",
            job.instance_id,
            job.since,
            job.until,
            job.statuses,
        )
    )


async def set_selected(conn: Conn, job_id: uuid.UUID, selected: int) -> None:
    await conn.execute(
        "UPDATE replay_jobs SET selected = $2, heartbeat_at = now() WHERE id = $1",
        job_id,
        selected,
    )


async def rearm_page(
    conn: Conn, job: ReplayJob, lease_until: datetime, rows: int
) -> tuple[list[uuid.UUID], tuple[datetime, uuid.UUID] | None]:
    """Re-arm the next page of the job's deliveries; returns (re-armed ids, new cursor).

    A delivery is re-armed only if it is still delivered/failed with its payload: one
    that is pending (in flight, or already re-armed by a retry or another replay) is
    skipped, so it is never sent twice at once. Re-armed deliveries carry a lease
    (``next_attempt_at = lease_until``) that is also their ticket, exactly as a poll's
    new deliveries: the enqueued message claims it once; if the message is lost the
    sweeper sends it when the lease runs out.
    """
    page = await conn.fetch(
        """SELECT id, created_at FROM deliveries
           WHERE instance_id = $1 AND created_at >= $2 AND created_at < $3
             AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid))
           ORDER BY created_at, id LIMIT $6""",
        job.instance_id,
        job.since,
        job.until,
        job.cursor_at,
        job.cursor_id,
        rows,
    )
    if not page:
        return [], None
    armed = await conn.fetch(
        """UPDATE deliveries SET status = 'pending', next_attempt_at = $2, delivered_at = NULL
           WHERE id = ANY($1::uuid[]) AND status = ANY($3::text[]) AND octet_length(body) > 0
           RETURNING id""",
        [r[0] for r in page],
        lease_until,
        job.statuses,
    )
    last = page[-1]
    cursor = (last[1], last[0])
    await conn.execute(
        """UPDATE replay_jobs SET sent = sent + $2, cursor_at = $3, cursor_id = $4,
                  heartbeat_at = now() WHERE id = $1""",
        job.id,
        len(armed),
        cursor[0],
        cursor[1],
    )
    return [r[0] for r in armed], cursor


async def release_replay_job(conn: Conn, job_id: uuid.UUID) -> None:
    """A running job paused by its worker's budget: the next claim resumes it at once."""
    await conn.execute("UPDATE replay_jobs SET heartbeat_at = NULL WHERE id = $1", job_id)


async def finish_replay_job(conn: Conn, job_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE replay_jobs SET state = 'done', finished_at = now() WHERE id = $1", job_id
    )


# -- erasure ----------------------------------------------------------------------------------


async def begin_erasure(conn: Conn, organization_id: int, revoked_hash: str) -> list[int] | None:
    """Revoke an organization at once; its rows are deleted in batches afterwards.

    Its users (and so every credential: a call needs a user and the organization's
    secret) are deleted, the organization's secret hash replaced by ``revoked_hash``
    (a hash of a secret nobody knows), its name blanked, and its instances stopped and
    tombstoned: no poll starts, and the delivery worker cancels a pending delivery of a
    tombstoned instance instead of sending it. Returns its instance ids (``None``: no
    such organization).
    """
    found = await conn.fetchval(
        """UPDATE organizations SET erasing_since = coalesce(erasing_since, now()),
                  secret_hash = $2, name = ''
           WHERE id = $1 RETURNING id""",
        organization_id,
        revoked_hash,
    )
    if found is None:
        return None
    await conn.execute("DELETE FROM users WHERE organization_id = $1", organization_id)
    rows = await conn.fetch(
        """UPDATE instances SET events_enabled = false, next_poll_at = NULL, secrets = NULL,
                  tokens = NULL, secret_keys = '{}', callback_url = NULL, client_id = '',
                  poller = '{}'::jsonb, timezone = NULL,
                  name = '', tags = '[]'::jsonb, configuration = '{}'::jsonb,
                  deleted_at = coalesce(deleted_at, now()), updated_at = now()
           WHERE organization_id = $1 RETURNING id""",
        organization_id,
    )
    return [r[0] for r in rows]


async def organizations_erasing(conn: Conn) -> list[int]:
    rows = await conn.fetch(
        "SELECT id FROM organizations WHERE erasing_since IS NOT NULL ORDER BY erasing_since"
    )
    return [r[0] for r in rows]


async def polled_resources(conn: Conn, instance_id: int) -> list[str]:
    rows = await conn.fetch("SELECT resource FROM poll_states WHERE instance_id = $1", instance_id)
    return [r[0] for r in rows]


async def erase_batch(conn: Conn, organization_id: int, rows: int) -> tuple[int, bool]:
    """Delete up to about ``rows`` rows of an erasing organization; (deleted, finished).

    Big tables go first, one instance at a time and ``rows`` at a time; an instance is
    deleted once its log is empty (its small rows go with it by cascade), and the
    organization last.
    """
    instance_id = await conn.fetchval(
        "SELECT id FROM instances WHERE organization_id = $1 ORDER BY id LIMIT 1",
        organization_id,
    )
    if instance_id is None:
        gone = await conn.fetchval(
            "WITH g AS (DELETE FROM organizations WHERE id = $1 RETURNING 1) "
            "SELECT count(*) FROM g",
            organization_id,
        )
        return int(gone), True
    events = await conn.fetchval(
        """WITH g AS (DELETE FROM events WHERE id IN (
             SELECT id FROM events WHERE instance_id = $1 LIMIT $2) RETURNING 1)
           SELECT count(*) FROM g""",
        instance_id,
        rows,
    )
    if events:
        return int(events), False
    row = await conn.fetchrow(
        """WITH victims AS (
             SELECT id FROM deliveries WHERE instance_id = $1 LIMIT $2
           ), attempts AS (
             DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM victims)
             RETURNING 1
           ), gone AS (
             DELETE FROM deliveries WHERE id IN (SELECT id FROM victims) RETURNING 1
           )
           SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM attempts)""",
        instance_id,
        max(rows // 4, 1),  # a delivery carries a few attempts
    )
    assert row is not None
    if row[0]:
        return int(row[0]) + int(row[1]), False
    await conn.execute("DELETE FROM instances WHERE id = $1", instance_id)
    return 1, False


async def watermark_keys_of(conn: Conn, organization_id: int) -> list[tuple[int, str]]:
    """(instance, resource) of every watermark of an organization (for its Redis copies)."""
    rows = await conn.fetch(
        """SELECT p.instance_id, p.resource FROM poll_states p
           JOIN instances i ON i.id = p.instance_id WHERE i.organization_id = $1""",
        organization_id,
    )
    return [(r[0], r[1]) for r in rows]


async def set_retention(
    conn: Conn, organization_id: int, payload_days: float | None, metadata_days: float | None
) -> bool:
    """Set (or clear, with ``None``) an organization's retention overrides."""
    found = await conn.fetchval(
        """UPDATE organizations SET payload_retention_days = $2, metadata_retention_days = $3
           WHERE id = $1 AND erasing_since IS NULL RETURNING id""",
        organization_id,
        payload_days,
        metadata_days,
    )
    return found is not None


async def retention_of(conn: Conn, organization_id: int) -> tuple[float | None, float | None]:
    row = await conn.fetchrow(
        """SELECT payload_retention_days, metadata_retention_days FROM organizations
           WHERE id = $1""",
        organization_id,
    )
    return (None, None) if row is None else (row[0], row[1])


# Sizes of the log tables, read from the catalog (no scan): rows are the planner's
# estimate (``reltuples``, kept by ANALYZE/autovacuum), bytes are exact.
TABLE_SIZES_SQL = """
    SELECT c.relname, greatest(c.reltuples, 0)::bigint, pg_table_size(c.oid),
           pg_indexes_size(c.oid)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema()
      AND c.relname IN ('events', 'deliveries', 'delivery_attempts')
    ORDER BY c.relname
"""


async def try_advisory_lock(conn: Conn, key: int) -> bool:
    """Take the session-level advisory lock ``key`` if it is free (one runner of a job)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def advisory_unlock(conn: Conn, key: int) -> None:
    """Release ``key``. The pools do not reset sessions (:func:`app.db.create_pg_pool`), so
    a connection whose unlock did not complete (cancelled, failed) is closed rather than
    going back to the pool still holding the lock."""
    unlocked = False
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
        unlocked = True
    finally:
        if not unlocked:
            conn.terminate()


async def database_now(conn: Conn) -> datetime:
    """The database's clock (the one the rows' timestamps were written with)."""
    moment: datetime = await conn.fetchval("SELECT now()")
    return moment
