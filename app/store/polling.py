"""SQL of the poll path: the snapshot a poll reads, and the instance's poll counters.

Functions take a connection and never commit; :mod:`app.services.polling` owns the
transactions. The events, deliveries and checkpoints a poll writes are
:mod:`app.store.outbox` and :mod:`app.store.watermarks`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import lru_cache

from asyncpg import Record

from app.domain.events import InstanceInfo
from app.domain.instanceconfig import ELEMENT_KEY
from app.domain.pollconfig import ResourceConfig, resources_from_stored
from app.domain.timezones import resolve_timezone
from app.domain.watermark import Watermark, decode_ids
from app.store import Conn

#: One instance's rows of the snapshot query (one per poll state; one with NULL state
#: columns when it has none).
SnapshotRows = list[Record]

# Instances and every resource's checkpoint, in one query for a whole batch of polls.
# The engine reads the instance's columns (app.models.Instance), never the Open
# Connectors body in ``configuration``; the instance must still be polling: not deleted,
# events on, not disabled by a 410, not quarantined.
_SNAPSHOTS = """
    SELECT i.id, i.name, CAST(i.tags AS text), i.organization_id, i.client_id,
           CAST(i.poller AS text), i.tokens, i.poll_failures, i.refresh_interval_s,
           i.poll_crashes,
           p.resource, p.watermark_at, CAST(p.watermark_ids AS text), p.last_success_at,
           coalesce(p.rewound_at > coalesce(p.last_polled_at, '-infinity'), false),
           i.timezone
    FROM instances AS i LEFT JOIN poll_states AS p ON p.instance_id = i.id
    WHERE i.id = ANY($1::bigint[]) AND i.deleted_at IS NULL AND i.events_enabled AND NOT i.disabled
      AND i.quarantined_at IS NULL
"""
_FAILED = """
    UPDATE instances SET poll_failures = $2, next_poll_at = greatest(next_poll_at, $3)
    WHERE id = $1
"""
_RESET_FAILURES = "UPDATE instances SET poll_failures = 0 WHERE id = $1"
_RESET_CRASHES = "UPDATE instances SET poll_crashes = 0 WHERE id = $1"
# Counts a crash; the one that reaches the limit quarantines (later ones match no row).
_CRASHED = """
    UPDATE instances SET
        poll_crashes = poll_crashes + 1,
        quarantined_at = CASE WHEN poll_crashes + 1 >= $2::int THEN $3::timestamptz END,
        quarantine_reason = CASE WHEN poll_crashes + 1 >= $2::int THEN $4::text END
    WHERE id = $1 AND deleted_at IS NULL AND quarantined_at IS NULL
    RETURNING quarantined_at IS NOT NULL
"""
# A poll that found its instance's lease held comes back when that lease would have
# expired, not a whole interval later: if the holder died, its instances are polled
# again within the lease TTL (a live holder renews, and the retry is a cheap skip).
_REARM_BUSY = """
    UPDATE instances SET next_poll_at = LEAST(next_poll_at, now() + make_interval(secs => $2))
    WHERE id = ANY($1::bigint[]) AND deleted_at IS NULL
"""


@dataclass(frozen=True)
class ResourceState:
    """One polled resource as the snapshot read it (its checkpoint row)."""

    resource: str
    checkpoint: Watermark
    last_success_at: datetime | None
    # Rewound (POST …/polling/rewind) and not polled since: the checkpoint wins over any
    # Redis copy, even one a poll that ended just before the rewind wrote late.
    rewound: bool = False


@dataclass(frozen=True)
class Snapshot:
    """What a poll reads about its instance, in one query."""

    info: InstanceInfo
    client_id: str
    resources: dict[str, ResourceConfig]
    tokens: bytes | None  # sealed; opened when the provider client is made
    poll_failures: int
    interval_s: float
    poll_crashes: int
    states: list[ResourceState]
    # The instance's zone (``event.poller.timezone``): ``${date:…}`` renders in it and
    # date values without a zone of their own or of their field are read in it.
    timezone: tzinfo = UTC


@lru_cache(maxsize=1024)
def _instance_timezone(name: str | None) -> tzinfo:
    return UTC if not name else resolve_timezone(name)


@lru_cache(maxsize=4096)
def resources_from(poller_json: str) -> dict[str, ResourceConfig]:
    """The instance's resources from its stored poller (``instances.poller`` as JSON text).

    The API stored what the domain parser produced; loading it is pure and deterministic,
    so it is cached by that text: a worker decodes and builds each distinct configuration
    once, not once per poll, and never runs the Open Connectors parsing rules.
    """
    return resources_from_stored(json.loads(poller_json))


async def snapshot_rows(conn: Conn, instance_ids: Sequence[int]) -> dict[int, SnapshotRows]:
    """The rows of every listed instance that is still polling (one statement), by id;
    :func:`build_snapshot` turns one instance's rows into its :class:`Snapshot`.

    Reading and building are apart so that a batch of polls reads once while a stored
    row that cannot be built (a configuration from an older release) fails only its own
    poll, where it is counted towards quarantine.
    """
    by_instance: dict[int, SnapshotRows] = {}
    for row in await conn.fetch(_SNAPSHOTS, list(instance_ids)):
        by_instance.setdefault(row[0], []).append(row)
    return by_instance


def build_snapshot(instance_id: int, rows: SnapshotRows) -> Snapshot:
    """One instance's :class:`Snapshot` from its rows (:func:`snapshot_rows`, not empty)."""
    first = rows[0]
    resources = resources_from(first[5])
    states = [
        ResourceState(r[10], Watermark(r[11], decode_ids(r[12])), r[13], r[14])
        for r in rows
        if r[10] is not None and r[10] in resources
    ]
    return Snapshot(
        info=InstanceInfo(instance_id, first[1], json.loads(first[2]), first[3], ELEMENT_KEY),
        client_id=first[4],
        resources=resources,
        tokens=first[6],
        poll_failures=first[7],
        interval_s=first[8],
        poll_crashes=first[9],
        states=states,
        timezone=_instance_timezone(first[15]),
    )


async def load_snapshot(conn: Conn, instance_id: int) -> Snapshot | None:
    """The instance and its resources' state, or ``None`` if it is gone or not polling."""
    rows = (await snapshot_rows(conn, [instance_id])).get(instance_id)
    return None if rows is None else build_snapshot(instance_id, rows)


async def set_poll_failures(
    conn: Conn, instance_id: int, failures: int, not_before: datetime
) -> None:
    """Count a failed poll, and keep the next poll no sooner than ``not_before``."""
    await conn.execute(_FAILED, instance_id, failures, not_before)


async def reset_poll_failures(conn: Conn, instance_id: int) -> None:
    await conn.execute(_RESET_FAILURES, instance_id)


async def reset_crashes(conn: Conn, instance_id: int) -> None:
    await conn.execute(_RESET_CRASHES, instance_id)


async def count_crash(
    conn: Conn, instance_id: int, limit: int, now: datetime, reason: str
) -> bool | None:
    """Count a crashed poll; quarantine at ``limit`` crashes in a row.

    ``True`` when this crash quarantined the instance, ``None`` when it is gone or
    already quarantined.
    """
    quarantined: bool | None = await conn.fetchval(_CRASHED, instance_id, limit, now, reason)
    return quarantined


async def rearm_busy(conn: Conn, instance_ids: list[int], within_s: float) -> None:
    """Bring the next poll of instances whose lease was held forward to ``within_s``."""
    await conn.execute(_REARM_BUSY, instance_ids, within_s)
