"""Helpers for the engine tests: resource configurations built through the real parser."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.domain.pollconfig import ResourceConfig, parse_poller_configuration

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def resource(
    *,
    updated: str | None = "last_updated",
    created: str | None = "date_created",
    fmt: str = "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
    id_field: str = "id",
    **extra: Any,
) -> ResourceConfig:
    """A ``contacts`` resource; ``extra`` are Open Connectors keys (pollDelay, ...)."""
    dates: dict[str, Any] = {}
    if updated is not None:
        dates |= {"updatedDateField": updated, "updatedDateFormat": fmt}
    if created is not None:
        dates |= {"createdDateField": created, "createdDateFormat": fmt}
    body = {"url": "/contacts?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}", "idField": id_field}
    body |= {"datesConfiguration": dates} | extra
    return parse_poller_configuration({"contacts": body})["contacts"]


def keap(dt: datetime) -> str:
    """Keap's rendering: ``2024-11-07T20:35:13.000+0000``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"
