"""The API's statements on one instance's activity: its event log, its deliveries with their
attempts, redelivery requests and poll-now (``events``, ``deliveries``,
``delivery_attempts``, ``instances.next_poll_at``).

Callers pass an instance already checked to belong to the caller's organization
(:func:`app.services.instances.get_instance`). Functions take a session and never
commit; the request handler owns the transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Instance
from app.store.schedule import NOTIFY_DUE


async def make_due_by(session: AsyncSession, instance_id: int, due: datetime) -> None:
    """Move the instance's next poll to ``due`` unless it is already earlier, and wake beat
    (the notification is delivered when the transaction commits)."""
    await session.execute(
        update(Instance)
        .where(col(Instance.id) == instance_id)
        .values(next_poll_at=func.least(col(Instance.next_poll_at), due))
    )
    await session.execute(NOTIFY_DUE)


async def list_events(
    session: AsyncSession,
    instance_id: int,
    *,
    object_type: str | None,
    event_type: str | None,
    since: datetime | None,
    page: int,
    page_size: int,
) -> tuple[list[tuple[Event, str | None]], int]:
    """The event log, newest first, each with its delivery's status; and the total."""
    where = [col(Event.instance_id) == instance_id]
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
    return [(event, status) for event, status in rows], total


async def list_deliveries(
    session: AsyncSession, instance_id: int, *, status: str | None, page: int, page_size: int
) -> tuple[list[tuple[Delivery, list[DeliveryAttempt]]], int]:
    """Deliveries, newest first, with every attempt; and the total."""
    where = [col(Delivery.instance_id) == instance_id]
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
    return [(d, attempts[d.id]) for d in deliveries], total


async def retry_delivery(
    session: AsyncSession, instance_id: int, delivery_id: uuid.UUID, now: datetime
) -> bool:
    """Make one delivery that still has its payload pending and due ``now``; ``False`` if none."""
    result = await session.execute(
        update(Delivery)
        .where(
            col(Delivery.id) == delivery_id,
            col(Delivery.instance_id) == instance_id,
            func.octet_length(col(Delivery.body)) > 0,
        )
        .values(status=DeliveryStatus.PENDING, next_attempt_at=now, delivered_at=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def retry_deliveries(
    session: AsyncSession, instance_id: int, status: str, now: datetime
) -> int:
    """Make every delivery of ``status`` that still has its payload pending and due ``now``."""
    result = await session.execute(
        update(Delivery)
        .where(
            col(Delivery.instance_id) == instance_id,
            col(Delivery.status) == status,
            func.octet_length(col(Delivery.body)) > 0,
        )
        .values(status=DeliveryStatus.PENDING, next_attempt_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
