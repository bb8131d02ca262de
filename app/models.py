"""SQLModel tables: the whole persistent data model.

Secrets never sit in plain columns: organization and user secrets and instance
tokens are stored as SHA-256 digests (they are 256-bit random values, so a fast
hash is enough and allows an indexed lookup); the OAuth client secret and the
callback signature key are Fernet-encrypted in ``Instance.secrets``, and the
provider tokens in ``Instance.tokens``, with ``POLLINATOR_SECRET_KEY``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

from app.domain.rows import DUE_PREDICATE as DUE_PREDICATE
from app.domain.rows import DeliveryStatus as DeliveryStatus
from app.domain.rows import utcnow as utcnow

# Deterministic constraint names so autogenerate and `alembic check` are stable.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


def _ts(*, nullable: bool = False, index: bool = False, default: bool = False) -> Any:
    return Field(
        default_factory=utcnow if default else None,
        sa_column=Column(
            DateTime(timezone=True),
            nullable=nullable,
            index=index,
            server_default=text("now()") if default else None,
        ),
    )


class Organization(SQLModel, table=True):
    """A tenant. Every instance belongs to exactly one."""

    __tablename__ = "organizations"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    secret_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    created_at: datetime = _ts(default=True)
    # Data lifecycle: per-organization retention overrides (days; NULL = the operator's
    # POLLINATOR_*_RETENTION_DAYS), and when its erasure was requested (its credentials
    # are revoked at that moment; the rows go in bounded batches afterwards).
    payload_retention_days: float | None = Field(default=None, nullable=True)
    metadata_retention_days: float | None = Field(default=None, nullable=True)
    erasing_since: datetime | None = _ts(nullable=True)
    # Its instances that are not deleted, those beat schedules (DUE_PREDICATE) and the
    # quarantined ones, kept by triggers on ``instances`` (migration 0005): counts
    # without counting rows.
    live_instances: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    pollable_instances: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    quarantined_instances: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )


class User(SQLModel, table=True):
    """A user of an organization; authenticates with its own secret plus the organization's."""

    __tablename__ = "users"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    organization_id: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    name: str = Field(sa_column=Column(String(200), nullable=False))
    secret_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    created_at: datetime = _ts(default=True)


class Instance(SQLModel, table=True):
    """A connector instance: one tenant's authenticated Infusionsoft account plus its events setup.

    Stored in the engine's shape: what the engine reads has a column of its own (the OAuth
    client id, the callback URL, the interval, the instance time zone, and ``poller``, the
    poller configuration as the domain parser produced it), so no worker reads the Open
    Connectors body or parses the tenant's configuration again. ``configuration`` keeps the
    rest of the body as given, for the API to show back (:mod:`app.api.views` puts the
    columns back into it). Secrets are encrypted in two blobs that are opened only where
    they are used: ``secrets`` (the configuration's secret keys, whose names are in
    ``secret_keys`` so a view can redact them without decrypting) and ``tokens`` (the
    provider's OAuth tokens). Deleted instances are kept as tombstones (``deleted_at``) so
    their event log stays consistent, but lose both blobs.
    """

    __tablename__ = "instances"
    # The generated interval in seconds is read back after every INSERT and UPDATE
    # (RETURNING), so it is never stale on a loaded instance.
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        # Beat's claim predicate (app/store/schedule.py) must imply this one word for word, or
        # the planner cannot use the index and every tick scans the whole table.
        Index(
            "ix_instances_due",
            "next_poll_at",
            postgresql_where=text(DUE_PREDICATE),
        ),
        # One organization's page in id order; its OFFSET is walked in the index alone.
        Index(
            "ix_instances_org_live",
            "organization_id",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    organization_id: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    name: str = Field(sa_column=Column(String(200), nullable=False))
    token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    tags: list[str] = Field(
        default_factory=list, sa_column=Column(JSONB, nullable=False, server_default="[]")
    )
    configuration: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    # ``oauth.api.key``: the OAuth app the tokens belong to (and whose request budget a
    # poll spends).
    client_id: str = Field(sa_column=Column(Text, nullable=False))
    # ``event.notification.callback.url`` as validated; NULL when none was given.
    callback_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # ``event.poller.timezone`` as validated; NULL means UTC.
    timezone: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # ``event.poller.refresh_interval`` exactly as the API takes and shows it; the engine
    # reads the seconds PostgreSQL derives from it (one stored value, nothing to drift).
    refresh_interval_minutes: float = Field(sa_column=Column(Float, nullable=False))
    refresh_interval_s: float | None = Field(
        default=None,
        sa_column=Column(
            Float, Computed("refresh_interval_minutes * 60", persisted=True), nullable=False
        ),
    )
    # app.domain.pollconfig.stored_resources of the parsed configuration.
    poller: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    secrets: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    secret_keys: list[str] = Field(
        default_factory=list,
        sa_column=Column(ARRAY(Text), nullable=False, server_default="{}"),
    )
    tokens: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    token_version: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    # The tenant's ``event.notification.enabled``. ``disabled`` is the system's word: set
    # when the callback answers 410 Gone (SPEC §5), cleared by the next accepted PATCH.
    events_enabled: bool = Field(default=False, nullable=False)
    disabled: bool = Field(default=False, nullable=False)
    valid: bool = Field(default=True, nullable=False)
    next_poll_at: datetime | None = _ts(nullable=True)
    poll_failures: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    # Polls in a row that crashed (an unexpected error, not provider weather); at
    # app.services.polling.QUARANTINE_AFTER_CRASHES the instance is quarantined.
    poll_crashes: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    # Set when the scheduler isolated this instance (its next poll time cannot be computed
    # or its polls keep crashing): beat no longer claims it, the reason is every resource's
    # lastError, and any PATCH of the instance lifts it.
    quarantined_at: datetime | None = _ts(nullable=True)
    quarantine_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = _ts(default=True)
    updated_at: datetime = _ts(default=True)
    deleted_at: datetime | None = _ts(nullable=True)


class PollState(SQLModel, table=True):
    """Per (instance, resource) polling state; the durable checkpoint of the Redis watermark."""

    __tablename__ = "poll_states"
    __table_args__ = (
        UniqueConstraint("instance_id", "resource"),
        # The failing few, most failures first: status and /metrics scan no other row.
        Index(
            "ix_poll_states_failing",
            text("consecutive_failures DESC"),
            "instance_id",
            "resource",
            postgresql_where=text("consecutive_failures > 0"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    instance_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("instances.id", ondelete="CASCADE"), nullable=False)
    )
    resource: str = Field(sa_column=Column(String(200), nullable=False))
    # Watermark: the newest updated date covered, plus the ids already seen at
    # exactly that date (so the next query can use >= without duplicates).
    watermark_at: datetime = _ts()
    watermark_ids: list[str] = Field(
        default_factory=list, sa_column=Column(JSONB, nullable=False, server_default="[]")
    )
    last_polled_at: datetime | None = _ts(nullable=True)
    last_success_at: datetime | None = _ts(nullable=True)
    consecutive_failures: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Set by a rewind (``POST …/polling/rewind``): events first stored before this moment
    # and read again by a later poll are emitted again (same event ids, new deliveries).
    rewound_at: datetime | None = _ts(nullable=True)


class Event(SQLModel, table=True):
    """One standardized change event. ``id`` is deterministic, so a re-seen record is a no-op."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_instance_created", "instance_id", "created_at"),)

    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    instance_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("instances.id", ondelete="CASCADE"), nullable=False)
    )
    object_type: str = Field(sa_column=Column(String(200), nullable=False))
    object_id: str = Field(sa_column=Column(String(500), nullable=False))
    event_type: str = Field(sa_column=Column(String(16), nullable=False))
    event_date: datetime = _ts()
    poll_date: datetime = _ts()
    delivery_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(
            UUID(as_uuid=True),
            ForeignKey("deliveries.id", ondelete="SET NULL"),
            nullable=True,
            index=True,
        ),
    )
    record: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _ts(default=True)


class Delivery(SQLModel, table=True):
    """One callback POST carrying up to 10 events; ``body`` is the exact bytes signed and sent."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_instance_created", "instance_id", "created_at"),
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    instance_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("instances.id", ondelete="CASCADE"), nullable=False)
    )
    status: str = Field(
        default=DeliveryStatus.PENDING,
        sa_column=Column(String(16), nullable=False, server_default="pending"),
    )
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    event_count: int = Field(sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(default=True)
    delivered_at: datetime | None = _ts(nullable=True)


class DeliveryAttempt(SQLModel, table=True):
    """One try at a delivery; the attempt count of a delivery is the number of these rows."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "attempt"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    delivery_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False
        )
    )
    attempt: int = Field(sa_column=Column(Integer, nullable=False))
    at: datetime = _ts(default=True)
    status_code: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    duration_ms: int = Field(sa_column=Column(Integer, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    error_detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    response_body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class RetentionProgress(SQLModel, table=True):
    """How far the purge has got for one instance: everything older is already purged.

    The purge never moves a mark past the instance's oldest pending delivery, so a
    pending delivery (and every row after it) is never purged.
    """

    __tablename__ = "retention_progress"

    instance_id: int = Field(
        sa_column=Column(
            BigInteger, ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
        )
    )
    payload_before: datetime | None = _ts(nullable=True)
    metadata_before: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts(default=True)


class ReplayJob(SQLModel, table=True):
    """A replay of an instance's deliveries in a time range (``POST …/deliveries/replay``)."""

    __tablename__ = "replay_jobs"
    __table_args__ = (
        Index("ix_replay_jobs_open", "created_at", postgresql_where=text("state <> 'done'")),
    )

    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    instance_id: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("instances.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    since: datetime = _ts()
    until: datetime = _ts()
    only_failed: bool = Field(default=False, nullable=False)
    state: str = Field(sa_column=Column(String(16), nullable=False, server_default="queued"))
    selected: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    sent: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # Keyset cursor (created_at, id) of the last delivery re-armed: a job resumed after a
    # crash continues after it and never re-arms a delivery twice.
    cursor_at: datetime | None = _ts(nullable=True)
    cursor_id: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), nullable=True)
    )
    created_at: datetime = _ts(default=True)
    heartbeat_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)
