"""The statements behind ``/readyz`` and the backlog gauges of ``/metrics`` (read-only).

They run on the API's SQLAlchemy engine (:class:`AsyncConnection`, no transaction worth
owning: each is one read). Shaping the gauges is :mod:`app.api.health`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.rows import DUE_PREDICATE
from app.store.lifecycle import TABLE_SIZES_SQL

# Polling gauges use beat's due predicate: a quarantined instance stays overdue forever
# and would otherwise read as a stuck scheduler; it is counted on its own instead. The
# pollable and quarantined counts are the organizations' trigger-kept counters (migration
# 0005); the overdue ones walk the due index from its oldest entry (what is overdue). Lags
# skip non-finite slots: a stored '-infinity' (beat quarantines it on its next tick)
# would make the subtraction fail and take /metrics down with it.
_GAUGES = text(f"""
    SELECT
      (SELECT count(*) FROM deliveries WHERE status = 'pending'),
      (SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
         FROM deliveries
         WHERE status = 'pending' AND next_attempt_at <= now() AND isfinite(next_attempt_at)),
      (SELECT coalesce(sum(pollable_instances), 0) FROM organizations),
      (SELECT count(*) FROM instances
         WHERE {DUE_PREDICATE} AND next_poll_at < now() - interval '10 seconds'),
      (SELECT coalesce(extract(epoch FROM now() - min(next_poll_at)), 0) FROM instances
         WHERE {DUE_PREDICATE} AND next_poll_at <= now() AND isfinite(next_poll_at)),
      (SELECT coalesce(sum(quarantined_instances), 0) FROM organizations)
""")

# Error classes are our own ("http_5xx", "timeout", ...: the part of lastError before the
# colon), a small fixed set; a class longer than 40 characters is not one of them.
_FAILING = text(f"""
    SELECT left(split_part(p.last_error, ':', 1), 40), count(DISTINCT p.instance_id)
    FROM poll_states AS p JOIN instances AS i ON i.id = p.instance_id
    WHERE p.consecutive_failures > 0 AND {DUE_PREDICATE}  -- its columns are instances' only
    GROUP BY 1
""")

_TABLE_SIZES = text(TABLE_SIZES_SQL)


@dataclass(frozen=True)
class Gauges:
    """The delivery queue's and the schedule's backlog right now."""

    deliveries_pending: float
    delivery_backlog_s: float
    instances_polling: float
    polls_overdue: float
    poll_overdue_s: float
    instances_quarantined: float


async def ping(conn: AsyncConnection) -> None:
    """A round trip (readiness)."""
    await conn.execute(text("SELECT 1"))


async def gauges(conn: AsyncConnection) -> Gauges:
    row = (await conn.execute(_GAUGES)).one()
    return Gauges(*(float(v or 0) for v in row))


async def failing_by_class(conn: AsyncConnection) -> list[tuple[str, int]]:
    """Polling instances whose last poll of some resource failed, per error class."""
    return [(str(kind), int(count)) for kind, count in (await conn.execute(_FAILING)).all()]


async def table_sizes(conn: AsyncConnection) -> list[tuple[str, int, int, int]]:
    """``(table, estimated rows, table bytes, index bytes)`` of the log tables."""
    return [
        (str(r[0]), int(r[1]), int(r[2]), int(r[3]))
        for r in (await conn.execute(_TABLE_SIZES)).all()
    ]
