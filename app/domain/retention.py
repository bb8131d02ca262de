"""Data-lifecycle rules: how long what is kept, and which time windows a tenant may ask for.

Pure functions over datetimes (stdlib only): the purge job, the replay and rewind
routes and the operator command all decide with these, so the rules live in one
place and are unit-tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Retention:
    """How long payloads and metadata are kept, in days (floats allowed)."""

    payload_days: float
    metadata_days: float

    @classmethod
    def effective(
        cls, default: Retention, payload_days: float | None, metadata_days: float | None
    ) -> Retention:
        """An organization's overrides where it has them, else the operator's defaults."""
        return cls(
            payload_days if payload_days is not None else default.payload_days,
            metadata_days if metadata_days is not None else default.metadata_days,
        )

    def payload_horizon(self, now: datetime) -> datetime:
        """The oldest moment whose payloads are still kept."""
        return now - timedelta(seconds=self.payload_days * SECONDS_PER_DAY)

    def metadata_horizon(self, now: datetime) -> datetime:
        """The oldest moment whose event, delivery and attempt rows are still kept."""
        return now - timedelta(seconds=self.metadata_days * SECONDS_PER_DAY)


@dataclass(frozen=True)
class Cutoffs:
    """Purge everything created strictly before these moments (``None``: nothing)."""

    payload_before: datetime
    metadata_before: datetime


def cutoffs(retention: Retention, now: datetime, oldest_pending: datetime | None) -> Cutoffs:
    """Where one instance's purge stops.

    Never past the instance's oldest pending delivery: a delivery still pending (or
    inside its retry schedule) keeps its payload and its rows, and so does everything
    created after it, until it is delivered or failed. Stopping there (instead of
    skipping it) keeps the purge a single moving mark per instance: everything before
    the mark is purged, nothing at or after it is.
    """
    payload = retention.payload_horizon(now)
    metadata = retention.metadata_horizon(now)
    if oldest_pending is not None:
        payload = min(payload, oldest_pending)
        metadata = min(metadata, oldest_pending)
    return Cutoffs(payload, metadata)


class WindowError(ValueError):
    """A time window a tenant asked for is unusable; the message names the field."""


def parse_instant(field: str, raw: object) -> datetime:
    """An ISO-8601 date-time from JSON (``Z`` accepted; naive means UTC)."""
    if not isinstance(raw, str) or not raw.strip():
        raise WindowError(f"{field}: must be an ISO-8601 date-time")
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise WindowError(f"{field}: must be an ISO-8601 date-time") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def check_replay_window(since: datetime, until: datetime) -> None:
    """A replay covers ``[since, until)``; an empty or inverted window is a mistake."""
    if until <= since:
        raise WindowError("until: must be after since")


def check_rewind(since: datetime, now: datetime, retention: Retention, watermark: datetime) -> None:
    """A watermark may move back, never forward, and not before the payload horizon.

    Before the horizon the changes would be re-read but their earlier deliveries'
    payloads are already gone, so the receiver could not tell old from new by
    comparing; the bound also caps how much one call can make a poll re-read.
    """
    if since > now:
        raise WindowError("since: must not be in the future")
    if since > watermark:
        raise WindowError("since: is after the resource's current watermark (rewind moves back)")
    horizon = retention.payload_horizon(now)
    if since < horizon:
        raise WindowError(
            f"since: is before the payload retention horizon ({horizon.isoformat()}; "
            f"payloads are kept {retention.payload_days:g} days)"
        )
