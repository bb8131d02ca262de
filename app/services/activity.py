"""Read models for the polling state, the event log and deliveries; redelivery requests.

Every function takes an instance already checked to belong to the caller's
organization (:func:`app.services.instances.get_instance`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Instance, PollState, utcnow


def iso(value: datetime | None) -> str | None:
    """UTC ISO-8601 with milliseconds and ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def polling_state(session: AsyncSession, instance: Instance) -> list[dict[str, Any]]:
    rows = (
        await session.execute(
            select(PollState)
            .where(col(PollState.instance_id) == instance.id)
            .order_by(col(PollState.resource))
        )
    ).scalars()
    return polling_view(instance, rows)


def polling_view(instance: Instance, rows: Iterable[PollState]) -> list[dict[str, Any]]:
    """``GET .../polling`` of ``instance`` from its poll-state rows (in resource order)."""
    # A quarantined instance is not polled: no next poll, and its reason is every
    # resource's lastError (it is the one thing the tenant needs to act on).
    quarantined = instance.quarantined_at is not None
    polling = instance.events_enabled and not quarantined
    return [
        {
            "resource": s.resource,
            "watermark": iso(s.watermark_at),
            "lastPolledAt": iso(s.last_polled_at),
            "lastSuccessAt": iso(s.last_success_at),
            "nextPollAt": iso(instance.next_poll_at) if polling else None,
            "consecutiveFailures": s.consecutive_failures,
            "lastError": f"quarantined: {instance.quarantine_reason}"
            if quarantined
            else s.last_error,
        }
        for s in rows
    ]


async def poll_now(session: AsyncSession, instance: Instance) -> None:
    """Make the instance due now; beat picks it up at its next tick (about a second)."""
    await session.execute(
        update(Instance).where(col(Instance.id) == instance.id).values(next_poll_at=utcnow())
    )


async def list_events(
    session: AsyncSession,
    instance: Instance,
    *,
    object_type: str | None,
    event_type: str | None,
    since: datetime | None,
    page: int,
    page_size: int,
) -> tuple[list[dict[str, Any]], int]:
    """The event log, newest first, each with its delivery's status."""
    where = [col(Event.instance_id) == instance.id]
    if object_type:
        where.append(col(Event.object_type) == object_type)
    if event_type:
        where.append(col(Event.event_type) == event_type.upper())
    if since is not None:
        where.append(col(Event.created_at) >= since)
    total = int(
        (await session.execute(select(func.count()).select_from(Event).where(*where))).scalar_one()
    )
    rows = (
        await session.execute(
            select(Event, col(Delivery.status))
            .outerjoin(Delivery, col(Delivery.id) == col(Event.delivery_id))
            .where(*where)
            .order_by(col(Event.created_at).desc(), col(Event.event_date).desc())
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
    ).all()
    return [event_view(event, status) for event, status in rows], total


def event_view(event: Event, delivery_status: str | None) -> dict[str, Any]:
    """One event as the API shows it; ``raw`` is the provider's record it was made from."""
    return {
        "eventId": str(event.id),
        "elementKey": "infusionsoftrest",
        "eventType": event.event_type,
        "objectType": event.object_type,
        "objectId": event.object_id,
        "date": iso(event.event_date),
        "pollDate": iso(event.poll_date),
        "createdDate": iso(event.created_at),
        "deliveryId": str(event.delivery_id) if event.delivery_id else None,
        "deliveryStatus": delivery_status,
        "raw": event.record,
    }


async def list_deliveries(
    session: AsyncSession, instance: Instance, *, status: str | None, page: int, page_size: int
) -> tuple[list[dict[str, Any]], int]:
    """Deliveries, newest first, with every attempt."""
    where = [col(Delivery.instance_id) == instance.id]
    if status:
        where.append(col(Delivery.status) == status)
    total = int(
        (
            await session.execute(select(func.count()).select_from(Delivery).where(*where))
        ).scalar_one()
    )
    deliveries = list(
        (
            await session.execute(
                select(Delivery)
                .where(*where)
                .order_by(col(Delivery.created_at).desc())
                .offset((page - 1) * page_size)
                .limit(page_size)
            )
        ).scalars()
    )
    attempts: dict[uuid.UUID, list[DeliveryAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in (
            await session.execute(
                select(DeliveryAttempt)
                .where(col(DeliveryAttempt.delivery_id).in_(list(attempts)))
                .order_by(col(DeliveryAttempt.attempt))
            )
        ).scalars():
            attempts[attempt.delivery_id].append(attempt)
    return [_delivery_view(d, attempts[d.id]) for d in deliveries], total


def _delivery_view(delivery: Delivery, attempts: list[DeliveryAttempt]) -> dict[str, Any]:
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
        "createdDate": iso(delivery.created_at),
        "deliveredDate": iso(delivery.delivered_at),
        "nextAttemptAt": iso(delivery.next_attempt_at)
        if delivery.status == DeliveryStatus.PENDING
        else None,
        "attempts": [
            {
                "attempt": a.attempt,
                "at": iso(a.at),
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


async def retry_delivery(session: AsyncSession, instance: Instance, delivery_id: uuid.UUID) -> bool:
    """Make one delivery pending and due now, whatever its status; ``False`` if not found.

    A delivery whose payload retention purged is not found: there is nothing to send.
    """
    result = await session.execute(
        update(Delivery)
        .where(
            col(Delivery.id) == delivery_id,
            col(Delivery.instance_id) == instance.id,
            func.octet_length(col(Delivery.body)) > 0,
        )
        .values(status=DeliveryStatus.PENDING, next_attempt_at=utcnow(), delivered_at=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def retry_deliveries(session: AsyncSession, instance: Instance, status: str) -> int:
    """Make every delivery of ``status`` that still has its payload pending and due now."""
    result = await session.execute(
        update(Delivery)
        .where(
            col(Delivery.instance_id) == instance.id,
            col(Delivery.status) == status,
            func.octet_length(col(Delivery.body)) > 0,
        )
        .values(status=DeliveryStatus.PENDING, next_attempt_at=utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
