"""The one way the API and the callbacks write a date: UTC, milliseconds, a literal ``Z``.

SPEC §5 shows ``"pollDate": "2026-11-27T10:00:05.123Z"``, and every date the API returns
(instance, polling state, events, deliveries, replay jobs, rewinds) uses the same form, so
a client parses one format. Milliseconds are truncated, never rounded up, so a written date
is never later than the instant it stands for.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_ms", "format_ms_or_none"]


def format_ms(dt: datetime) -> str:
    """``2026-11-27T10:00:05.123Z`` for an aware datetime (``ValueError`` for a naive one)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {dt!r}")
    utc = dt if dt.tzinfo is UTC else dt.astimezone(UTC)
    # isoformat of a UTC datetime always ends in "+00:00"; swapping it is the cheapest form
    # (this runs for every event of every callback body).
    return utc.isoformat(timespec="milliseconds")[:-6] + "Z"


def format_ms_or_none(dt: datetime | None) -> str | None:
    """:func:`format_ms`, with ``None`` (a date not set yet) passed through as JSON ``null``."""
    return None if dt is None else format_ms(dt)
