"""Beat's statements: claim the due instances, move them to their next slot, quarantine.

Each function takes beat's synchronous SQLAlchemy connection and never commits:
:func:`workers.beat.claim_due` owns the transaction (and the savepoints that let one
refused row fail alone).

The claim's ``WHERE`` is :data:`app.domain.rows.DUE_PREDICATE`, the partial index's own
predicate, followed by ``next_poll_at <= :now``: the planner walks that index only
when the claim's predicate implies the index's, which the constant guarantees
(``tests/integration/test_due_predicate.py`` checks the migrated index states it too).
A stored slot outside ``SLOT_MIN .. SLOT_MAX`` (PostgreSQL stores up to 294276 AD and
±infinity) comes back as ``None`` instead of failing the driver's conversion to a
Python ``datetime``, which would fail the whole batch.

Whoever makes an instance due before its slot (poll-now) also notifies :data:`DUE_CHANNEL`;
beat's leader listens on it (:class:`app.store.wakeups.DueWakeups`) and claims at once
instead of at its next tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Row, text

from app.domain.rows import DUE_PREDICATE
from app.domain.schedule import SLOT_MAX, SLOT_MIN

#: The channel poll-now notifies (no payload: beat only needs to wake, and a payload
#: would tell every listener which tenant asked).
DUE_CHANNEL = "pollinator_due"
NOTIFY_DUE = text(f"SELECT pg_notify('{DUE_CHANNEL}', '')")

CLAIM = text(f"""
    SELECT id,
           CASE WHEN next_poll_at BETWEEN :slot_min AND :slot_max THEN next_poll_at END,
           refresh_interval_s
    FROM instances
    WHERE {DUE_PREDICATE} AND next_poll_at <= :now
    ORDER BY next_poll_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
""")
_RESCHEDULE = text("""
    UPDATE instances AS i SET next_poll_at = u.next_at
    FROM unnest(CAST(:ids AS bigint[]), CAST(:nexts AS timestamptz[])) AS u(id, next_at)
    WHERE i.id = u.id
""")
# A stored slot Python cannot read is cleared as well: the API reads the row (GET, and the
# PATCH that lifts the quarantine, which gives a cleared row a fresh first slot).
_QUARANTINE = text("""
    UPDATE instances AS i SET
        quarantined_at = :now,
        quarantine_reason = u.reason,
        next_poll_at = CASE WHEN i.next_poll_at BETWEEN :slot_min AND :slot_max
                            THEN i.next_poll_at END
    FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[])) AS u(id, reason)
    WHERE i.id = u.id
""")


def claim_rows(
    conn: Connection, now: datetime, batch: int
) -> Sequence[Row[tuple[int, datetime | None, float]]]:
    """Lock up to ``batch`` due rows, oldest slot first: ``(id, due slot or None, interval)``.

    ``SKIP LOCKED``: rows another transaction holds (a second beat in a split-brain
    moment) are skipped, never claimed twice.
    """
    return conn.execute(
        CLAIM, {"now": now, "batch": batch, "slot_min": SLOT_MIN, "slot_max": SLOT_MAX}
    ).all()


def reschedule(conn: Connection, ids: Sequence[int], slots: Sequence[datetime]) -> None:
    """Move each instance to its next slot (``ids[i]`` to ``slots[i]``), in one statement."""
    conn.execute(_RESCHEDULE, {"ids": list(ids), "nexts": list(slots)})


def quarantine(conn: Connection, now: datetime, ids: Sequence[int], reasons: Sequence[str]) -> None:
    """Stop scheduling each instance (``ids[i]`` because of ``reasons[i]``), in one statement."""
    conn.execute(
        _QUARANTINE,
        {
            "now": now,
            "ids": list(ids),
            "reasons": list(reasons),
            "slot_min": SLOT_MIN,
            "slot_max": SLOT_MAX,
        },
    )
