"""Read-only, cross-organization queries for operators (``pollinator status|instances|events``).

Operators see every organization; these statements are never reachable from the
tenant API, whose queries are always scoped by organization. Each function takes
a psycopg connection and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from app.domain.rows import DUE_PREDICATE
from app.store.lifecycle import TABLE_SIZES_SQL

# Beat's due predicate (the one its partial index states): a quarantined instance is not
# pollable, or it would read as overdue forever. Its columns are the instances' only.
_POLLABLE = DUE_PREDICATE


@dataclass(frozen=True)
class Backlog:
    """What the schedule and the delivery queue owe right now."""

    pollable_instances: int
    overdue_instances: int
    schedule_lag_s: float
    pending_deliveries: int
    oldest_pending_age_s: float
    failed_deliveries: int


def backlog(conn: psycopg.Connection[Any]) -> Backlog:
    """What the schedule and the delivery queue owe, without a scan of the instances.

    The pollable count sums the organizations' trigger-kept counters (counting the rows
    read 890k index entries and their heap pages at 1M instances); the rest walks the due
    index from its oldest entry, so it costs what is overdue. The lag skips a non-finite
    slot (a stored '-infinity', quarantined by beat's next tick) rather than fail on it.
    """
    row = conn.execute(f"""
        SELECT
          (SELECT coalesce(sum(pollable_instances), 0) FROM organizations),
          (SELECT count(*) FROM instances WHERE {_POLLABLE}
             AND next_poll_at < now() - interval '10 seconds'),
          (SELECT coalesce(extract(epoch FROM now() - min(next_poll_at)), 0) FROM instances
             WHERE {_POLLABLE} AND next_poll_at <= now() AND isfinite(next_poll_at)),
          (SELECT count(*) FROM deliveries WHERE status = 'pending'),
          (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
             FROM deliveries WHERE status = 'pending'),
          (SELECT count(*) FROM deliveries WHERE status = 'failed')
    """).fetchone()
    assert row is not None
    return Backlog(
        pollable_instances=int(row[0]),
        overdue_instances=int(row[1]),
        schedule_lag_s=float(row[2]),
        pending_deliveries=int(row[3]),
        oldest_pending_age_s=float(row[4]),
        failed_deliveries=int(row[5]),
    )


def table_sizes(conn: psycopg.Connection[Any]) -> list[tuple[str, int, int, int]]:
    """``(table, estimated rows, table bytes, index bytes)`` of the log tables."""
    return [
        (str(r[0]), int(r[1]), int(r[2]), int(r[3]))
        for r in conn.execute(TABLE_SIZES_SQL).fetchall()
    ]


@dataclass(frozen=True)
class Vacuum:
    """Whether PostgreSQL cleans up after beat: it rewrites each instance row every interval."""

    autovacuum: bool  # the server's setting and the instances table's own option
    live_rows: int
    dead_rows: int


def vacuum_state(conn: psycopg.Connection[Any]) -> Vacuum:
    """Autovacuum for ``instances`` (server-wide and per table) and its live/dead rows.

    Each poll moves its instance's ``next_poll_at``: a new row version per instance per
    interval. Without autovacuum the dead versions pile up (532k of them in six minutes at
    40,000 instances) and PostgreSQL's CPU follows the table's size.
    """
    row = conn.execute("""
        SELECT current_setting('autovacuum') = 'on' AND NOT EXISTS (
                 SELECT 1 FROM unnest(c.reloptions) AS o
                 WHERE o ~* '^autovacuum_enabled=(false|off|no|n|f|0)$'),
               coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)
        FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
        WHERE c.oid = 'instances'::regclass
    """).fetchone()
    assert row is not None
    return Vacuum(autovacuum=bool(row[0]), live_rows=int(row[1]), dead_rows=int(row[2]))


@dataclass(frozen=True)
class FailingResource:
    instance_id: int
    organization_id: int
    resource: str
    error_class: str
    consecutive_failures: int
    last_error: str


def failing_resources(conn: psycopg.Connection[Any], limit: int = 50) -> list[FailingResource]:
    """Resources whose last poll failed, most failures first."""
    rows = conn.execute(
        f"""
        SELECT p.instance_id, i.organization_id, p.resource, p.consecutive_failures,
               coalesce(p.last_error, '')
        FROM poll_states p JOIN instances i ON i.id = p.instance_id
        WHERE p.consecutive_failures > 0 AND {_POLLABLE}
        ORDER BY p.consecutive_failures DESC, p.instance_id, p.resource
        LIMIT %s
        """,
        (limit,),
    ).fetchall()
    return [
        FailingResource(
            instance_id=int(r[0]),
            organization_id=int(r[1]),
            resource=str(r[2]),
            error_class=str(r[4]).split(":", 1)[0].strip() or "unknown",
            consecutive_failures=int(r[3]),
            last_error=str(r[4]),
        )
        for r in rows
    ]


def list_instances(
    conn: psycopg.Connection[Any], organization_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Instances (newest first) with their health: failing resources and delivery counts."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT i.id, i.organization_id, i.name, i.events_enabled, i.disabled,
                   i.refresh_interval_s, i.next_poll_at, i.created_at,
                   (SELECT count(*) FROM poll_states p
                      WHERE p.instance_id = i.id AND p.consecutive_failures > 0)
                     AS failing_resources,
                   (SELECT count(*) FROM deliveries d
                      WHERE d.instance_id = i.id AND d.status = 'pending') AS pending_deliveries,
                   (SELECT count(*) FROM deliveries d
                      WHERE d.instance_id = i.id AND d.status = 'failed') AS failed_deliveries
            FROM instances i
            WHERE i.deleted_at IS NULL
              AND (%(org)s::bigint IS NULL OR i.organization_id = %(org)s::bigint)
            ORDER BY i.id DESC
            LIMIT %(limit)s
            """,
            {"org": organization_id, "limit": limit},
        )
        return list(cur.fetchall())


def instance_detail(conn: psycopg.Connection[Any], instance_id: int) -> dict[str, Any] | None:
    """One instance's public columns and per-resource polling state (never its secrets)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT id, organization_id, name, tags, events_enabled, disabled, valid,
                   refresh_interval_s, next_poll_at, poll_failures, created_at, updated_at,
                   deleted_at
            FROM instances WHERE id = %s
            """,
            (instance_id,),
        )
        instance = cur.fetchone()
        if instance is None:
            return None
        cur.execute(
            """
            SELECT resource, watermark_at, last_polled_at, last_success_at,
                   consecutive_failures, last_error
            FROM poll_states WHERE instance_id = %s ORDER BY resource
            """,
            (instance_id,),
        )
        instance["resources"] = list(cur.fetchall())
        cur.execute(
            "SELECT status, count(*) AS n FROM deliveries WHERE instance_id = %s GROUP BY status",
            (instance_id,),
        )
        instance["deliveries"] = {r["status"]: r["n"] for r in cur.fetchall()}
        return dict(instance)


@dataclass(frozen=True)
class EventRow:
    """One event-log row in the order it was written (``seq`` is a cursor, not an id)."""

    created_at: datetime
    event_id: str
    event_type: str
    object_type: str
    object_id: str
    event_date: datetime
    delivery_status: str | None


def events_after(
    conn: psycopg.Connection[Any],
    instance_id: int,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[EventRow]:
    """Events of one instance written after the cursor ``(created_at, id)``, oldest first.

    Without a cursor: the newest ``limit`` events, still returned oldest first.
    """
    if after is None:
        rows = conn.execute(
            """
            SELECT * FROM (
              SELECT e.created_at, e.id::text, e.event_type, e.object_type, e.object_id,
                     e.event_date, d.status
              FROM events e LEFT JOIN deliveries d ON d.id = e.delivery_id
              WHERE e.instance_id = %s
              ORDER BY e.created_at DESC, e.id DESC LIMIT %s
            ) newest ORDER BY 1, 2
            """,
            (instance_id, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            """
            SELECT e.created_at, e.id::text, e.event_type, e.object_type, e.object_id,
                   e.event_date, d.status
            FROM events e LEFT JOIN deliveries d ON d.id = e.delivery_id
            WHERE e.instance_id = %s AND (e.created_at, e.id) > (%s, %s::uuid)
            ORDER BY e.created_at, e.id LIMIT %s
            """,
            (instance_id, after[0], after[1], limit),
        ).fetchall()
    return [EventRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]
