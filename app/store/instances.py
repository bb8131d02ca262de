"""What the engine reads of an instance: one statement per question, never a commit.

The engine reads columns (``client_id``, ``poller``, ``timezone``, ``refresh_interval_s``,
``tokens``), never the Open Connectors body in ``configuration``: that is the API's, to
show back. JSON values come back as text so the caller decodes each once (and can cache
what it builds from them by that text).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn: TypeAlias = (
    "asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[asyncpg.Record]"
    " | PoolConnectionProxy[asyncpg.Record]"
)

# One row per polled resource (one row with NULL resource columns when there is none).
# The instance must still be polling: not deleted, events on, not disabled by a 410, not
# quarantined (a poll message sent before any of those happened polls nothing).
_POLL_SNAPSHOT = """
    SELECT i.name, CAST(i.tags AS text), i.organization_id, i.client_id,
           CAST(i.poller AS text), i.tokens, i.poll_failures, i.refresh_interval_s,
           i.poll_crashes, i.timezone,
           p.resource, p.watermark_at, CAST(p.watermark_ids AS text), p.last_success_at,
           coalesce(p.rewound_at > coalesce(p.last_polled_at, '-infinity'), false)
    FROM instances AS i LEFT JOIN poll_states AS p ON p.instance_id = i.id
    WHERE i.id = $1 AND i.deleted_at IS NULL AND i.events_enabled AND NOT i.disabled
      AND i.quarantined_at IS NULL
"""


@dataclass(frozen=True)
class PollInstance:
    """The instance columns a poll reads."""

    name: str
    tags_json: str
    organization_id: int
    client_id: str
    poller_json: str  # app.domain.pollconfig.stored_resources, as JSON text
    sealed_tokens: bytes | None
    poll_failures: int
    interval_s: float
    poll_crashes: int
    timezone: str | None


@dataclass(frozen=True)
class PollStateRow:
    """One resource's checkpoint as stored."""

    resource: str
    watermark_at: datetime
    watermark_ids_json: str
    last_success_at: datetime | None
    rewound: bool  # rewound since its last poll


async def poll_snapshot(
    conn: Conn, instance_id: int
) -> tuple[PollInstance, list[PollStateRow]] | None:
    """The instance and its resources' checkpoints, or ``None`` when it is not polling."""
    rows = await conn.fetch(_POLL_SNAPSHOT, instance_id)
    if not rows:
        return None
    first = rows[0]
    instance = PollInstance(
        name=first[0],
        tags_json=first[1],
        organization_id=first[2],
        client_id=first[3],
        poller_json=first[4],
        sealed_tokens=first[5],
        poll_failures=first[6],
        interval_s=first[7],
        poll_crashes=first[8],
        timezone=first[9],
    )
    states = [PollStateRow(r[10], r[11], r[12], r[13], r[14]) for r in rows if r[10] is not None]
    return instance, states
