"""The outbox transaction of one poll: events, their deliveries and the watermark checkpoint.

Everything here runs inside ONE PostgreSQL transaction, on a raw asyncpg
connection: this is the hottest write path of the system, and each statement
is one prepared round trip that takes whole arrays (``unnest``) instead of a
row at a time. Events are inserted ``ON CONFLICT (id)``: an event id is a
function of (instance, resource, record, updated date), so a record seen
again is skipped here and never becomes a second event — unless its resource was
rewound (``poll_states.rewound_at``, ``POST …/polling/rewind``) after the event was
stored: then the re-read change is emitted again, with the same event id (so the
receiver can tell it has seen it) in a new delivery, and the event row takes the new
poll's date.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app.domain.delta import DeltaResult
from app.domain.events import EventRecord, InstanceInfo, build_payload, chunk_events, event_id
from app.domain.schedule import retry_at
from app.models import DeliveryStatus

# A pooled connection or a plain one: both run the same prepared statements.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

_INSERT_EVENTS = """
    INSERT INTO events (id, instance_id, object_type, object_id, event_type, event_date,
                        poll_date, record)
    SELECT u.id, $1, u.object_type, u.object_id, u.event_type, u.event_date, $2,
           CAST(u.record AS jsonb)
    FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[])
         AS u(id, object_type, object_id, event_type, event_date, record)
    ON CONFLICT (id) DO UPDATE SET poll_date = EXCLUDED.poll_date, record = EXCLUDED.record,
                                   created_at = now(), delivery_id = NULL
    WHERE events.created_at < (
        SELECT p.rewound_at FROM poll_states AS p
        WHERE p.instance_id = events.instance_id AND p.resource = events.object_type)
    RETURNING id
"""
# Deliveries, their links to events and every resource's checkpoint in ONE statement
# (data-modifying CTEs); a failed resource keeps its watermark.
_DELIVER_AND_CHECKPOINT = f"""
    WITH new_deliveries AS (
        INSERT INTO deliveries (id, instance_id, status, body, event_count, next_attempt_at)
        SELECT d.id, $2, '{DeliveryStatus.PENDING.value}', d.body, d.event_count, $8
        FROM unnest($9::uuid[], $10::bytea[], $11::int[]) AS d(id, body, event_count)
    ), links AS (
        UPDATE events AS e SET delivery_id = l.delivery_id
        FROM unnest($12::uuid[], $13::uuid[]) AS l(event_id, delivery_id)
        WHERE e.id = l.event_id
    )
    UPDATE poll_states AS p SET
        last_polled_at = $1,
        watermark_at = coalesce(u.wm_at, p.watermark_at),
        watermark_ids = coalesce(CAST(u.wm_ids AS jsonb), p.watermark_ids),
        last_success_at = CASE WHEN u.ok THEN $1 ELSE p.last_success_at END,
        consecutive_failures = CASE WHEN u.ok THEN 0 ELSE p.consecutive_failures + 1 END,
        last_error = u.err
    FROM unnest($3::text[], $4::boolean[], $5::timestamptz[], $6::text[], $7::text[])
         AS u(resource, ok, wm_at, wm_ids, err)
    WHERE p.instance_id = $2 AND p.resource = u.resource
"""
_FAILED = """
    UPDATE instances SET poll_failures = $2, next_poll_at = greatest(next_poll_at, $3)
    WHERE id = $1
"""
_RESET = "UPDATE instances SET poll_failures = 0 WHERE id = $1"


@dataclass(frozen=True)
class ResourceResult:
    """A resource's poll result as the outbox needs it: a delta, or an error."""

    resource: str
    delta: DeltaResult | None
    error: str | None  # with a delta: a warning shown as lastError (the poll succeeded)


def event_records(instance_id: int, resource: str, delta: DeltaResult) -> list[EventRecord]:
    """The standardized events of one resource's changes."""
    return [
        EventRecord(
            id=event_id(instance_id, resource, change.object_id, change.date),
            object_type=resource,
            object_id=change.object_id,
            event_type=change.event_type,
            date=change.date,
            record=dict(change.record),
        )
        for change in delta.changes
    ]


async def insert_new_events(
    conn: Conn,
    instance_id: int,
    events: Sequence[EventRecord],
    poll_date: datetime,
) -> list[EventRecord]:
    """Insert events; return only those that were not stored already (or were rewound).

    Duplicate ids within one call are dropped first: ``ON CONFLICT DO UPDATE`` may not
    touch a row twice in one statement.
    """
    unique: dict[uuid.UUID, EventRecord] = {}
    for e in events:
        unique.setdefault(e.id, e)
    events = list(unique.values())
    if not events:
        return []
    rows = await conn.fetch(
        _INSERT_EVENTS,
        instance_id,
        poll_date,
        [e.id for e in events],
        [e.object_type for e in events],
        [e.object_id for e in events],
        [e.event_type for e in events],
        [e.date for e in events],
        [json.dumps(e.record, separators=(",", ":")) for e in events],
    )
    inserted = {row[0] for row in rows}
    return [e for e in events if e.id in inserted]


@dataclass
class DeliveryRows:
    """New deliveries of one poll, as columns for the insert."""

    ids: list[uuid.UUID] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    event_ids: list[uuid.UUID] = field(default_factory=list)
    links: list[uuid.UUID] = field(default_factory=list)

    def add(self, info: InstanceInfo, events: Sequence[EventRecord], poll_date: datetime) -> None:
        """Chunk new events into deliveries of ≤ 10 (same instance, resource and poll)."""
        for chunk in chunk_events(sorted(events, key=lambda e: (e.date, e.object_id))):
            delivery_id, body = build_payload(info, chunk, poll_date)
            self.ids.append(delivery_id)
            self.bodies.append(body)
            self.counts.append(len(chunk))
            self.event_ids += [e.id for e in chunk]
            self.links += [delivery_id] * len(chunk)


async def store_poll(
    conn: Conn,
    info: InstanceInfo,
    results: Sequence[ResourceResult],
    poll_date: datetime,
    lease_until: datetime,
) -> tuple[int, list[tuple[uuid.UUID, datetime]]]:
    """Events, deliveries and checkpoints of one poll; returns (new events, deliveries).

    Returned deliveries are (id, ticket) pairs; the ticket is the lease the delivery
    was created with (see :func:`app.services.delivery.claim`).
    """
    new_events = 0
    rows = DeliveryRows()
    for res in results:
        if res.delta is None or not res.delta.changes:
            continue
        new = await insert_new_events(
            conn, info.id, event_records(info.id, res.resource, res.delta), poll_date
        )
        new_events += len(new)
        rows.add(info, new, poll_date)
    if results:
        await conn.execute(
            _DELIVER_AND_CHECKPOINT,
            poll_date,
            info.id,
            [r.resource for r in results],
            [r.delta is not None for r in results],
            [r.delta.watermark.at if r.delta else None for r in results],
            [json.dumps(sorted(r.delta.watermark.ids)) if r.delta else None for r in results],
            [r.error for r in results],
            lease_until,
            rows.ids,
            rows.bodies,
            rows.counts,
            rows.event_ids,
            rows.links,
        )
    return new_events, [(delivery_id, lease_until) for delivery_id in rows.ids]


async def record_failures(
    conn: Conn,
    instance_id: int,
    failures_before: int,
    failed: bool,
    interval_s: float,
    now: datetime,
) -> None:
    """A failed poll backs off (beat's next slot may be too soon); a success resets the count."""
    if failed:
        failures = failures_before + 1
        await conn.execute(_FAILED, instance_id, failures, retry_at(now, failures, interval_s))
    elif failures_before:
        await conn.execute(_RESET, instance_id)
