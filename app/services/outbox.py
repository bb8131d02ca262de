"""The outbox of one poll: its events, their deliveries and the watermark checkpoint.

All of it is written in ONE PostgreSQL transaction (the caller's): the events, the
deliveries that carry them, and each resource's checkpoint
(:func:`app.store.watermarks.write_checkpoints`), so a checkpoint never covers events
that were not stored. This module shapes the rows; the statements are
:mod:`app.store.outbox` and :mod:`app.store.watermarks`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from app.domain.delta import DeltaResult
from app.domain.events import EventRecord, InstanceInfo, build_payload, chunk_events, event_id
from app.domain.schedule import retry_at
from app.store import Conn
from app.store import outbox as store
from app.store import polling as poll_store
from app.store.watermarks import CheckpointWrite, write_checkpoints


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
    inserted = await store.insert_events(conn, instance_id, events, poll_date)
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
    if rows.ids:
        await store.insert_deliveries(
            conn,
            info.id,
            lease_until,
            ids=rows.ids,
            bodies=rows.bodies,
            event_counts=rows.counts,
            event_ids=rows.event_ids,
            links=rows.links,
        )
    await write_checkpoints(
        conn,
        info.id,
        poll_date,
        [
            CheckpointWrite(r.resource, r.delta.watermark if r.delta else None, r.error)
            for r in results
        ],
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
        await poll_store.set_poll_failures(
            conn, instance_id, failures, retry_at(now, failures, interval_s)
        )
    elif failures_before:
        await poll_store.reset_poll_failures(conn, instance_id)
