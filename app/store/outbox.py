"""SQL of a poll's outbox: its events and their deliveries.

Hot path: each statement is one prepared round trip that takes whole arrays
(``unnest``) instead of a row at a time. Functions take a connection and never commit:
:func:`app.services.outbox.store_poll` runs them, with the watermark checkpoint
(:func:`app.store.watermarks.write_checkpoints`), in the poll's one transaction.

Events are inserted ``ON CONFLICT (id)``: an event id is a function of (instance,
resource, record, updated date), so a record seen again is skipped here and never
becomes a second event — unless its resource was rewound (``poll_states.rewound_at``,
``POST …/polling/rewind``) after the event was stored: then the re-read change is
emitted again, with the same event id (so the receiver can tell it has seen it) in a new
delivery, and the event row takes the new poll's date.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime

from app.domain.events import EventRecord
from app.domain.rows import DeliveryStatus
from app.store import Conn

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
# The deliveries and their links to events in ONE statement (a data-modifying CTE).
_INSERT_DELIVERIES = f"""
    WITH new_deliveries AS (
        INSERT INTO deliveries (id, instance_id, status, body, event_count, next_attempt_at)
        SELECT d.id, $1, '{DeliveryStatus.PENDING.value}', d.body, d.event_count, $2
        FROM unnest($3::uuid[], $4::bytea[], $5::int[]) AS d(id, body, event_count)
    )
    UPDATE events AS e SET delivery_id = l.delivery_id
    FROM unnest($6::uuid[], $7::uuid[]) AS l(event_id, delivery_id)
    WHERE e.id = l.event_id
"""


async def insert_events(
    conn: Conn, instance_id: int, events: Sequence[EventRecord], poll_date: datetime
) -> set[uuid.UUID]:
    """Insert events (their ids unique); returns the ids that were new (or rewound)."""
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
    return {row[0] for row in rows}


async def insert_deliveries(
    conn: Conn,
    instance_id: int,
    lease_until: datetime,
    *,
    ids: Sequence[uuid.UUID],
    bodies: Sequence[bytes],
    event_counts: Sequence[int],
    event_ids: Sequence[uuid.UUID],
    links: Sequence[uuid.UUID],
) -> None:
    """Pending deliveries leased until ``lease_until``, and their events' links to them
    (``event_ids[i]`` is delivered by ``links[i]``)."""
    await conn.execute(
        _INSERT_DELIVERIES,
        instance_id,
        lease_until,
        ids,
        bodies,
        event_counts,
        event_ids,
        links,
    )
