"""Row vocabulary shared by the ORM models (:mod:`app.models`) and the raw-SQL stores.

It lives apart from the models so that the workers, which talk to PostgreSQL through
asyncpg only, never load SQLModel and SQLAlchemy: about 25 MB of resident memory per
worker process (128–133 → 104–108 MB at 2,000 instances; a test keeps the workers'
imports free of them).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Aware UTC now; every timestamp in the database is ``timestamptz``."""
    return datetime.now(UTC)


class DeliveryStatus(enum.StrEnum):
    """Lifecycle of one callback POST."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Instances beat schedules. Quarantined ones are left out so their stuck (overdue) rows
#: neither sit at the head of the due index nor are claimed again every tick.
DUE_PREDICATE = "events_enabled AND NOT disabled AND deleted_at IS NULL AND quarantined_at IS NULL"
