"""Event identity, chunking and callback payload bytes (SPEC §5)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from app.domain.events import (
    EventRecord,
    InstanceInfo,
    build_payload,
    chunk_events,
    delivery_id,
    event_id,
    format_ms,
)

T = datetime(2026, 11, 27, 9, 59, 58, tzinfo=UTC)
POLL_DATE = datetime(2026, 11, 27, 10, 0, 5, 123456, tzinfo=UTC)
INSTANCE = InstanceInfo(id=42, name="API Instance with Polling", tags=["crm"], organization_id=7)


def event(oid: int, object_type: str = "contacts", **record: Any) -> EventRecord:
    return EventRecord(
        id=event_id(42, object_type, str(oid), T),
        object_type=object_type,
        object_id=str(oid),
        event_type="UPDATED",
        date=T,
        record={"id": oid, **record},
    )


def test_event_id_is_deterministic_and_sensitive_to_every_part() -> None:
    base = event_id(42, "contacts", "123", T)
    assert base == event_id(42, "contacts", "123", T.astimezone(timezone(timedelta(hours=5))))
    assert base.version == 5
    others = {
        event_id(43, "contacts", "123", T),
        event_id(42, "orders", "123", T),
        event_id(42, "contacts", "124", T),
        event_id(42, "contacts", "123", T + timedelta(microseconds=1)),
        # No ambiguity between the parts: moving characters across them changes the id.
        event_id(42, "contacts1", "23", T),
    }
    assert base not in others
    assert len(others) == 5


def test_event_and_delivery_ids_are_pinned() -> None:
    """Literal values computed once (2026-12-01): a change to the namespaces, the hashed
    name or its date form would give every event a new id after an upgrade, and every
    receiver would get them all again."""
    contact = event_id(42, "contacts", "123", T)
    odd = event_id(42, "orders", "a:b/\u00fc", T)
    assert contact == uuid.UUID("d58dad53-3537-5353-93fc-4dc1070105e1")
    assert odd == uuid.UUID("ea514d61-e111-53f1-a338-1dfe070e693f")
    assert delivery_id([contact, odd]) == uuid.UUID("2f7a29bb-a127-511d-8d4d-d200d2c5dc65")


def test_event_id_refuses_naive_dates() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        event_id(1, "contacts", "1", datetime(2026, 1, 1))


def test_delivery_id_is_order_independent_and_needs_events() -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    assert delivery_id(ids) == delivery_id(list(reversed(ids)))
    assert delivery_id(ids) != delivery_id(ids[:4])
    with pytest.raises(ValueError, match="at least one"):
        delivery_id([])


def test_format_ms_truncates_to_milliseconds_in_utc() -> None:
    assert format_ms(POLL_DATE) == "2026-11-27T10:00:05.123Z"
    assert format_ms(POLL_DATE.astimezone(timezone(timedelta(hours=-8)))) == (
        "2026-11-27T10:00:05.123Z"
    )
    assert format_ms(T) == "2026-11-27T09:59:58.000Z"


def test_payload_shape_and_exact_bytes() -> None:
    events = [event(123, name="Ada"), event(124)]
    delivery, body = build_payload(INSTANCE, events, POLL_DATE)
    assert delivery == delivery_id([e.id for e in events])
    message = json.loads(body)["message"]
    assert list(message) == [
        "eventId",
        "instanceId",
        "instanceName",
        "instanceTags",
        "elementKey",
        "organizationId",
        "pollDate",
        "events",
        "raw",
    ]
    assert message["eventId"] == str(delivery)
    assert message["instanceId"] == 42
    assert message["instanceTags"] == ["crm"]
    assert message["elementKey"] == "infusionsoftrest"
    assert message["organizationId"] == 7
    assert message["pollDate"] == "2026-11-27T10:00:05.123Z"
    assert message["events"][0] == {
        "eventId": str(events[0].id),
        "elementKey": "infusionsoftrest",
        "eventType": "UPDATED",
        "objectType": "contacts",
        "objectId": "123",
        "date": "2026-11-27T09:59:58.000Z",
    }
    assert message["raw"] == {"contacts": [{"id": 123, "name": "Ada"}, {"id": 124}]}
    # Compact, UTF-8, and the same bytes every time.
    assert b": " not in body
    assert b", " not in body
    assert body.startswith(b'{"message":{"eventId":"')
    assert build_payload(INSTANCE, list(events), POLL_DATE) == (delivery, body)


def test_payload_keeps_provider_records_verbatim() -> None:
    record: dict[str, Any] = {"z": 1, "a": {"ü": "naïve"}, "n": None, "f": 1.5}
    (_, body) = build_payload(INSTANCE, [event(1, **record)], POLL_DATE)
    assert '"raw":{"contacts":[{"id":1,"z":1,"a":{"ü":"naïve"},"n":null,"f":1.5}]}'.encode() in body


def test_payload_limits() -> None:
    with pytest.raises(ValueError, match="1 to 10"):
        build_payload(INSTANCE, [event(i) for i in range(11)], POLL_DATE)
    with pytest.raises(ValueError, match="1 to 10"):
        build_payload(INSTANCE, [], POLL_DATE)
    with pytest.raises(ValueError, match="one object type"):
        build_payload(INSTANCE, [event(1), event(2, "orders")], POLL_DATE)
    build_payload(INSTANCE, [event(i) for i in range(10)], POLL_DATE)


def test_chunks_preserve_order_and_group_by_type() -> None:
    events = [event(i) for i in range(23)]
    chunks = chunk_events(events)
    assert [len(c) for c in chunks] == [10, 10, 3]
    assert [e for c in chunks for e in c] == events
    mixed = [event(1), event(2, "orders"), event(3), event(4, "orders")]
    assert [[e.object_id for e in c] for c in chunk_events(mixed)] == [["1", "3"], ["2", "4"]]
    assert [len(c) for c in chunk_events(events, size=4)] == [4, 4, 4, 4, 4, 3]
    assert chunk_events([]) == []
    with pytest.raises(ValueError, match="chunk size"):
        chunk_events(events, size=11)
    with pytest.raises(ValueError, match="chunk size"):
        chunk_events(events, size=0)


def test_each_chunk_payload_carries_only_its_records() -> None:
    events = [event(i, n=i) for i in range(25)]
    for chunk in chunk_events(events):
        _, body = build_payload(INSTANCE, chunk, POLL_DATE)
        message = json.loads(body)["message"]
        assert [r["id"] for r in message["raw"]["contacts"]] == [int(e.object_id) for e in chunk]
        assert [e["objectId"] for e in message["events"]] == [e.object_id for e in chunk]
