"""Response shapes: built from stored rows alone (no key, no decryption), dates in one format."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.api.views import delivery_view, event_view, instance_view, polling_view
from app.models import Delivery, DeliveryAttempt, Event, Instance, PollState

CREATED = datetime(2026, 11, 27, 10, 0, 5, 123_456, tzinfo=UTC)


def _instance(**overrides: Any) -> Instance:
    values: dict[str, Any] = {
        "id": 7,
        "organization_id": 1,
        "name": "shop",
        "token_hash": "h",
        "tags": ["crm"],
        "configuration": {
            "oauth.callback.url": "https://app.example.com/oauth",
            "event.vendor.type": "polling",
            "event.poller.configuration": {"contacts": {"url": "/contacts", "idField": "id"}},
        },
        "client_id": "client-1",
        "callback_url": "https://app.example.com/events",
        "timezone": None,
        "refresh_interval_minutes": 0.03,
        "poller": {},
        # Blobs no key opens: a view that tried would fail.
        "secrets": b"not a fernet token",
        "tokens": b"not a fernet token either",
        "secret_keys": ["oauth.api.secret", "oauth.user.token"],
        "events_enabled": True,
        "created_at": CREATED,
        "updated_at": CREATED + timedelta(minutes=1),
        "next_poll_at": CREATED + timedelta(minutes=2),
    }
    return Instance(**{**values, **overrides})


def test_instance_view_puts_the_engine_columns_back_and_redacts_by_name() -> None:
    view = instance_view(_instance(), token="tok")
    assert view["configuration"] == {
        "oauth.api.key": "client-1",
        "oauth.api.secret": "********",
        "oauth.user.token": "********",
        "oauth.callback.url": "https://app.example.com/oauth",
        "event.vendor.type": "polling",
        "event.notification.enabled": True,
        "event.notification.callback.url": "https://app.example.com/events",
        "event.poller.refresh_interval": 0.03,  # as given, not 1.8 s / 60
        "event.poller.configuration": {"contacts": {"url": "/contacts", "idField": "id"}},
    }
    assert view["createdDate"] == "2026-11-27T10:00:05.123Z"  # milliseconds, like every date
    assert view["updatedDate"] == "2026-11-27T10:01:05.123Z"
    assert (view["token"], view["eventsEnabled"], view["disabled"]) == ("tok", True, False)
    assert "token" not in instance_view(_instance())


def test_optional_engine_keys_appear_only_when_set() -> None:
    config = instance_view(_instance(callback_url=None, timezone="Europe/Paris"))["configuration"]
    assert "event.notification.callback.url" not in config
    assert config["event.poller.timezone"] == "Europe/Paris"


def test_a_410_disables_events_and_a_quarantine_shows_as_disabled() -> None:
    gone = instance_view(_instance(disabled=True))
    assert (gone["eventsEnabled"], gone["disabled"]) == (False, True)
    assert gone["configuration"]["event.notification.enabled"] is True  # the tenant's switch
    stuck = instance_view(_instance(quarantined_at=CREATED))
    assert (stuck["eventsEnabled"], stuck["disabled"]) == (True, True)


def test_polling_view_shows_the_next_poll_only_while_the_instance_polls() -> None:
    state = PollState(
        instance_id=7,
        resource="contacts",
        watermark_at=CREATED,
        last_polled_at=None,
        last_success_at=CREATED,
        consecutive_failures=0,
        last_error=None,
    )
    [shown] = polling_view(_instance(), [state])
    assert shown == {
        "resource": "contacts",
        "watermark": "2026-11-27T10:00:05.123Z",
        "lastPolledAt": None,
        "lastSuccessAt": "2026-11-27T10:00:05.123Z",
        "nextPollAt": "2026-11-27T10:02:05.123Z",
        "consecutiveFailures": 0,
        "lastError": None,
    }
    assert polling_view(_instance(disabled=True), [state])[0]["nextPollAt"] is None
    quarantined = _instance(quarantined_at=CREATED, quarantine_reason="stuck")
    [stuck] = polling_view(quarantined, [state])
    assert (stuck["nextPollAt"], stuck["lastError"]) == (None, "quarantined: stuck")


def test_event_and_delivery_views_write_dates_in_the_one_format() -> None:
    event = Event(
        id=uuid.UUID(int=1),
        instance_id=7,
        object_type="contacts",
        object_id="42",
        event_type="CREATED",
        event_date=CREATED,
        poll_date=CREATED,
        delivery_id=uuid.UUID(int=2),
        record={"id": 42},
        created_at=CREATED,
    )
    shown = event_view(event, "pending")
    assert {shown["date"], shown["pollDate"], shown["createdDate"]} == {"2026-11-27T10:00:05.123Z"}
    body = {"message": {"events": [{"eventId": str(event.id)}]}}
    delivery = Delivery(
        id=uuid.UUID(int=2),
        instance_id=7,
        status="pending",
        body=json.dumps(body).encode(),
        event_count=1,
        next_attempt_at=CREATED,
        created_at=CREATED,
        delivered_at=None,
    )
    attempt = DeliveryAttempt(
        delivery_id=delivery.id, attempt=1, at=CREATED, status_code=500, duration_ms=3
    )
    view = delivery_view(delivery, [attempt])
    assert view["eventIds"] == [str(event.id)]
    assert (view["createdDate"], view["deliveredDate"]) == ("2026-11-27T10:00:05.123Z", None)
    assert view["nextAttemptAt"] == "2026-11-27T10:00:05.123Z"
    assert view["attempts"][0]["at"] == "2026-11-27T10:00:05.123Z"
    purged = delivery_view(
        Delivery(
            id=uuid.UUID(int=3),
            instance_id=7,
            status="delivered",
            body=b"",
            event_count=1,
            created_at=CREATED,
            delivered_at=CREATED,
        ),  # fmt: skip
        [],
    )
    assert (purged["payloadPurged"], purged["body"], purged["nextAttemptAt"]) == (True, None, None)
