"""SQL of callback delivery: lease a batch, record a batch of attempts, defer, sweep.

Functions take an asyncpg connection and never commit. Each is one statement, so
with the connection in autocommit (the delivery service's choice) each is its own
transaction: a claim or a group of attempt records is durable once the call returns.

The unit of work is a *batch*: a Celery message carries up to ``TASK_BATCH``
deliveries, which are leased in one statement, and attempts are recorded in groups
(whatever finished while the previous group was being written) — one round trip
and one commit per group instead of three per delivery.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.store import Conn

# Where the engine reads an instance's callback URL: this statement is the only reader.
_CLAIM = """
    WITH m AS (
        SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) AS m(id, ticket)
    ), leasable AS (
        SELECT d.id FROM deliveries AS d JOIN m ON m.id = d.id
        WHERE d.status = 'pending' AND (m.ticket IS NULL OR d.next_attempt_at = m.ticket)
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE deliveries AS d SET
        status = CASE WHEN i.deleted_at IS NULL THEN d.status ELSE 'cancelled' END,
        next_attempt_at = CASE WHEN i.deleted_at IS NULL THEN $3::timestamptz END
    FROM leasable, instances AS i
    WHERE d.id = leasable.id AND i.id = d.instance_id
    RETURNING d.id, d.instance_id, i.deleted_at IS NOT NULL,
              CASE WHEN i.deleted_at IS NULL THEN d.body END,
              i.callback_url,
              CASE WHEN 'event.notification.signature.key' = ANY(i.secret_keys)
                   THEN i.secrets END,
              (SELECT count(*) FROM delivery_attempts AS a WHERE a.delivery_id = d.id)
"""
# Each attempt row and its delivery's new state in one statement; an attempt's number is
# one more than the highest recorded (retry counts come from the database). A 410 Gone
# disables the instance in the same statement (the system's flag: the tenant's own
# events_enabled stays as they set it, and their next accepted PATCH clears it).
_RECORD = """
    WITH r AS (
        SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::int[], $4::int[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::float8[])
            AS r(id, at, status_code, duration_ms, error, detail, response_body, status, delay_s)
    ), attempt AS (
        INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, duration_ms,
                                       error, error_detail, response_body)
        SELECT r.id,
               coalesce((SELECT max(a.attempt) FROM delivery_attempts AS a
                         WHERE a.delivery_id = r.id), 0) + 1,
               r.at, r.status_code, r.duration_ms, r.error, r.detail, r.response_body
        FROM r
        ON CONFLICT (delivery_id, attempt) DO NOTHING
    ), gone AS (
        UPDATE instances SET disabled = true, updated_at = now()
        WHERE id = ANY($10::bigint[])
    )
    UPDATE deliveries AS d SET
        status = coalesce(r.status, d.status),
        next_attempt_at = CASE WHEN r.status IS NULL
            THEN r.at + make_interval(secs => r.delay_s) END,
        delivered_at = CASE WHEN r.status = 'delivered' THEN r.at ELSE d.delivered_at END
    FROM r
    WHERE d.id = r.id AND d.status = 'pending'
"""
_DEFER = """
    UPDATE deliveries AS d SET next_attempt_at = m.at
    FROM unnest($1::uuid[], $2::timestamptz[]) AS m(id, at)
    WHERE d.id = m.id AND d.status = 'pending'
"""
_DUE = """
    WITH due AS (
        SELECT id FROM deliveries
        WHERE status = 'pending' AND next_attempt_at <= $1
        ORDER BY next_attempt_at LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    UPDATE deliveries AS d SET next_attempt_at = $2 FROM due WHERE d.id = due.id
    RETURNING d.id
"""


class Refusal(enum.StrEnum):
    """Why a claim leased nothing."""

    NOT_PENDING = "not-pending"  # sent, rescheduled or re-enqueued since: a stale message
    CANCELLED = "cancelled"  # its instance was deleted; the claim cancelled the delivery


@dataclass(frozen=True)
class Claimed:
    """A delivery leased for one attempt, with what the attempt needs."""

    id: uuid.UUID
    instance_id: int
    body: bytes
    url: str
    # The instance's encrypted secrets when they hold a signature key, else None (the
    # row's secret_keys say so without decrypting).
    sealed_secrets: bytes | None
    attempts_made: int  # attempt rows recorded before this attempt


@dataclass(frozen=True)
class Refused:
    """A claim that leased nothing, and why."""

    id: uuid.UUID
    reason: Refusal


Claim = Claimed | Refused


async def claim(
    conn: Conn, tickets: Sequence[tuple[uuid.UUID, datetime | None]], lease_until: datetime
) -> list[Claim]:
    """Lease the pending deliveries of a batch until ``lease_until``; one claim per ticket.

    A ticket is ``(delivery id, next_attempt_at when it was enqueued)``: a message whose
    ticket no longer matches is stale (the delivery was sent, rescheduled or re-enqueued
    since) and claims nothing, so duplicate messages never become duplicate POSTs; a
    ``None`` ticket claims any pending delivery. A delivery named twice is claimed once
    (the later copies are refused). A delivery being claimed by another worker at this
    moment is skipped rather than waited for: that worker sends it.
    """
    rows = await conn.fetch(_CLAIM, [t[0] for t in tickets], [t[1] for t in tickets], lease_until)
    found: dict[uuid.UUID, Claim] = {}
    for delivery_id, instance_id, deleted, body, url, secrets, attempts in rows:
        found[delivery_id] = (
            Refused(delivery_id, Refusal.CANCELLED)
            if deleted
            else Claimed(delivery_id, instance_id, body, url or "", secrets, int(attempts))
        )
    # pop: the first copy of a delivery named twice gets the claim, later copies nothing.
    return [found.pop(d, Refused(d, Refusal.NOT_PENDING)) for d, _ in tickets]


@dataclass(frozen=True)
class AttemptRecord:
    """One finished attempt and the delivery state it leads to."""

    delivery_id: uuid.UUID
    instance_id: int
    at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None
    detail: str | None
    response_body: str | None
    status: str | None  # the delivery's new status; ``None`` keeps it pending ...
    delay_s: float  # ... with its next attempt this long after ``at``

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver asks us to stop; the instance's events are turned off."""
        return self.status_code == 410


async def record_attempts(conn: Conn, records: Sequence[AttemptRecord]) -> None:
    """Store a group of attempts, each delivery's new state, and 410s' instances disabled."""
    await conn.execute(
        _RECORD,
        [r.delivery_id for r in records],
        [r.at for r in records],
        [r.status_code for r in records],
        [r.duration_ms for r in records],
        [r.error for r in records],
        [r.detail for r in records],
        [r.response_body for r in records],
        [r.status for r in records],
        [r.delay_s for r in records],
        sorted({r.instance_id for r in records if r.gone}),
    )


async def defer(conn: Conn, until: Sequence[tuple[uuid.UUID, datetime]]) -> None:
    """Move pending deliveries' next attempt to the given times without spending an attempt."""
    await conn.execute(_DEFER, [u[0] for u in until], [u[1] for u in until])


async def lease_due(
    conn: Conn, now: datetime, lease_until: datetime, limit: int
) -> list[uuid.UUID]:
    """Lease up to ``limit`` pending deliveries due by ``now`` (for the sweeper to enqueue)."""
    return [row[0] for row in await conn.fetch(_DUE, now, lease_until, limit)]
