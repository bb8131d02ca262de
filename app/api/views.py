"""Every JSON shape the API answers with, built from stored rows; nothing here decrypts.

An instance is stored in the engine's shape (:class:`app.models.Instance`); the Open
Connectors configuration a client sees is put back together here from the rest of the
body (``configuration``) and the engine's columns, and redacted from the stored names of
its secrets (``secret_keys``), so listing a page of instances opens no encrypted blob.
Dates are :func:`app.domain.isodate.format_ms` everywhere (SPEC: UTC, milliseconds, ``Z``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from app.domain.instanceconfig import ELEMENT_KEY, ELEMENT_NAME, REDACTED
from app.domain.isodate import format_ms, format_ms_or_none
from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Instance, PollState
from app.services.instances import polls, public_configuration


def instance_view(instance: Instance, token: str | None = None) -> dict[str, Any]:
    """The public JSON of an instance (SPEC §3): secrets redacted, token only on create."""
    configuration = public_configuration(instance)
    for key in instance.secret_keys:
        configuration[key] = REDACTED
    view: dict[str, Any] = {
        "id": instance.id,
        "name": instance.name,
        "element": {"key": ELEMENT_KEY, "name": ELEMENT_NAME},
        "tags": [{"name": t} for t in instance.tags],
        "valid": instance.valid,
        # SPEC §3 has no quarantine field: a quarantined instance does not poll, so it shows
        # as disabled; its resources' lastError (GET .../polling) says why. A 410 from the
        # callback disables events (SPEC §5): eventsEnabled reads false until a PATCH.
        "disabled": instance.disabled or instance.quarantined_at is not None,
        "eventsEnabled": instance.events_enabled and not instance.disabled,
        "configuration": configuration,
        "createdDate": format_ms(instance.created_at),
        "updatedDate": format_ms(instance.updated_at),
    }
    if token is not None:
        view["token"] = token
    return view


def polling_view(instance: Instance, states: Iterable[PollState]) -> list[dict[str, Any]]:
    """``GET …/polling``: one object per resource."""
    # A quarantined instance is not polled: no next poll, and its reason is every
    # resource's lastError (it is the one thing the tenant needs to act on).
    quarantined = instance.quarantined_at is not None
    next_poll = format_ms_or_none(instance.next_poll_at) if polls(instance) else None
    return [
        {
            "resource": s.resource,
            "watermark": format_ms(s.watermark_at),
            "lastPolledAt": format_ms_or_none(s.last_polled_at),
            "lastSuccessAt": format_ms_or_none(s.last_success_at),
            "nextPollAt": next_poll,
            "consecutiveFailures": s.consecutive_failures,
            "lastError": f"quarantined: {instance.quarantine_reason}"
            if quarantined
            else s.last_error,
        }
        for s in states
    ]


def event_view(event: Event, delivery_status: str | None) -> dict[str, Any]:
    """One event as the API shows it; ``raw`` is the provider's record it was made from."""
    return {
        "eventId": str(event.id),
        "elementKey": ELEMENT_KEY,
        "eventType": event.event_type,
        "objectType": event.object_type,
        "objectId": event.object_id,
        "date": format_ms(event.event_date),
        "pollDate": format_ms(event.poll_date),
        "createdDate": format_ms(event.created_at),
        "deliveryId": str(event.delivery_id) if event.delivery_id else None,
        "deliveryStatus": delivery_status,
        "raw": event.record,
    }


def delivery_view(delivery: Delivery, attempts: Iterable[DeliveryAttempt]) -> dict[str, Any]:
    """One delivery with every attempt and the body it POSTs."""
    # An empty body is a payload purged by retention (app.services.lifecycle).
    purged = not delivery.body
    body = None if purged else json.loads(delivery.body)
    message = {} if body is None else body.get("message", {})
    return {
        "id": str(delivery.id),
        "status": delivery.status,
        "eventCount": delivery.event_count,
        "eventIds": [e.get("eventId") for e in message.get("events", [])],
        "payloadPurged": purged,
        "createdDate": format_ms(delivery.created_at),
        "deliveredDate": format_ms_or_none(delivery.delivered_at),
        "nextAttemptAt": format_ms_or_none(delivery.next_attempt_at)
        if delivery.status == DeliveryStatus.PENDING
        else None,
        "attempts": [
            {
                "attempt": a.attempt,
                "at": format_ms(a.at),
                "statusCode": a.status_code,
                "durationMs": a.duration_ms,
                "error": a.error,
                "responseBody": a.response_body,
            }
            for a in attempts
        ],
        # The JSON POSTed to the callback (signatures cover its exact bytes, which
        # re-serializing here does not preserve: this is for reading, not verifying).
        "body": body,
    }
