"""Event identity and callback payloads (SPEC §5).

Ids are UUIDv5, i.e. pure functions of their inputs. That is what makes at-least-once polling
deliver each change once: a record re-read with the same updated date (look-back, a retried
poll, a page that shifted) yields the same event id and the outbox insert deduplicates it; a
retried poll that inserts the same events yields the same delivery id.

Payload bytes are produced here, once, and are the bytes that are signed and sent: receivers
verify signatures over raw bytes, so nothing downstream may re-serialize them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.domain.isodate import format_ms

__all__ = [
    "DELIVERY_NAMESPACE",
    "EVENT_NAMESPACE",
    "MAX_EVENTS_PER_DELIVERY",
    "EventRecord",
    "InstanceInfo",
    "build_payload",
    "chunk_events",
    "delivery_id",
    "event_id",
    "format_ms",
]

# Fixed forever: changing either renames every event and delivery (and re-delivers them).
EVENT_NAMESPACE = uuid.UUID("6f1d3c52-52a4-4a8b-9a55-2f0e5d0c7a11")
DELIVERY_NAMESPACE = uuid.UUID("0b7e8c4e-2d1a-4f6e-8b3c-9d5a1e7f4c22")
MAX_EVENTS_PER_DELIVERY = 10
ELEMENT_KEY = "infusionsoftrest"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {dt!r}")
    return dt if dt.tzinfo is UTC else dt.astimezone(UTC)


def _uuid5(namespace: uuid.UUID, name: bytes) -> uuid.UUID:
    # uuid.uuid5 without its str round trip; same result (RFC 4122 §4.3).
    return uuid.UUID(bytes=hashlib.sha1(namespace.bytes + name).digest()[:16], version=5)


def event_id(instance_id: int, object_type: str, object_id: str, date: datetime) -> uuid.UUID:
    """The id of the change of ``object_id`` to its state dated ``date``.

    The hashed name is ``<instance>:<len>:<type>:<len>:<id>:<ISO date>``: the length prefixes
    make it unambiguous whatever characters ids contain, and the date is UTC with
    microseconds, so the same instant written in any zone is the same event. Frozen: a
    change would rename every event and re-deliver them.
    """
    iso = _utc(date).isoformat(timespec="microseconds")
    name = f"{instance_id}:{len(object_type)}:{object_type}:{len(object_id)}:{object_id}:{iso}"
    return _uuid5(EVENT_NAMESPACE, name.encode("utf-8"))


def delivery_id(event_ids: Sequence[uuid.UUID]) -> uuid.UUID:
    """The id of the delivery carrying exactly ``event_ids`` (order does not matter)."""
    if not event_ids:
        raise ValueError("a delivery carries at least one event")
    return _uuid5(DELIVERY_NAMESPACE, b"".join(sorted(e.bytes for e in event_ids)))


@dataclass(frozen=True)
class EventRecord:
    """One event as stored in the outbox: identity, what happened, and the provider record."""

    id: uuid.UUID
    object_type: str
    object_id: str
    event_type: str
    date: datetime
    record: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class InstanceInfo:
    """The instance fields a payload names."""

    id: int
    name: str
    tags: list[str]
    organization_id: int
    element_key: str = ELEMENT_KEY


def chunk_events(
    events: Sequence[EventRecord], size: int = MAX_EVENTS_PER_DELIVERY
) -> list[list[EventRecord]]:
    """Split one poll's events of one instance into deliveries of at most ``size`` events.

    Order is preserved. A delivery names one resource (its ``raw`` has one key), so events
    are grouped by object type first, types in order of first appearance.
    """
    if not 1 <= size <= MAX_EVENTS_PER_DELIVERY:
        raise ValueError(f"chunk size must be from 1 to {MAX_EVENTS_PER_DELIVERY}, got {size}")
    by_type: dict[str, list[EventRecord]] = {}
    for event in events:
        by_type.setdefault(event.object_type, []).append(event)
    return [group[i : i + size] for group in by_type.values() for i in range(0, len(group), size)]


def build_payload(
    instance: InstanceInfo, events: Sequence[EventRecord], poll_date: datetime
) -> tuple[uuid.UUID, bytes]:
    """The delivery id and the exact JSON bytes of one callback (SPEC §5 shape).

    Compact separators, UTF-8, keys in the documented order; provider records are embedded
    as returned (their own key order). The same inputs always give the same bytes. Raises
    ValueError for no events, more than 10, or events of more than one object type.
    """
    if not 1 <= len(events) <= MAX_EVENTS_PER_DELIVERY:
        raise ValueError(
            f"a delivery carries 1 to {MAX_EVENTS_PER_DELIVERY} events, got {len(events)}"
        )
    object_type = events[0].object_type
    if any(event.object_type != object_type for event in events):
        raise ValueError("a delivery carries events of one object type")
    delivery = delivery_id([event.id for event in events])
    element_key = instance.element_key
    message = {
        "eventId": str(delivery),
        "instanceId": instance.id,
        "instanceName": instance.name,
        "instanceTags": list(instance.tags),
        "elementKey": element_key,
        "organizationId": instance.organization_id,
        "pollDate": format_ms(poll_date),
        "events": [
            {
                "eventId": str(event.id),
                "elementKey": element_key,
                "eventType": event.event_type,
                "objectType": event.object_type,
                "objectId": event.object_id,
                "date": format_ms(event.date),
            }
            for event in events
        ],
        "raw": {object_type: [event.record for event in events]},
    }
    return delivery, _dumps({"message": message}).encode("utf-8")
