"""Reads of the polling state, the event log and deliveries; poll-now and redelivery requests.

Every function takes an instance already checked to belong to the caller's
organization (:func:`app.services.instances.get_instance`) and returns rows;
:mod:`app.api.views` shapes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.domain.schedule import latest_tick_at_or_before
from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Instance, PollState, utcnow


async def polling_states(session: AsyncSession, instance: Instance) -> Sequence[PollState]:
    """The instance's resources, by name."""
    return (
        (
            await session.execute(
                select(PollState)
                .where(col(PollState.instance_id) == instance.id)
                .order_by(col(PollState.resource))
            )
        )
        .scalars()
        .all()
    )


async def poll_now(session: AsyncSession, instance: Instance) -> None:
    """Make the instance due now without moving its schedule.

    The next poll time becomes the latest tick of the instance's grid that is not in the
    future: beat claims it at its next tick (about a second) and reschedules it from that
    tick, i.e. back onto the same grid, so the instance keeps the phase that spreads it
    among the others (:mod:`app.domain.schedule`). The statement only ever moves the time
    earlier: a poll already due stays as due as it was.
    """
    now = utcnow()
    scheduled = instance.next_poll_at
    interval_s = instance.refresh_interval_s
    due = (
        now
        if scheduled is None or interval_s is None
        else latest_tick_at_or_before(scheduled, interval_s, now)
    )
    await session.execute(
        update(Instance)
        .where(col(Instance.id) == instance.id)
        .values(next_poll_at=func.least(col(Instance.next_poll_at), due))
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
) -> tuple[list[tuple[Event, str | None]], int]:
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
    return [(event, status) for event, status in rows], total


async def list_deliveries(
    session: AsyncSession, instance: Instance, *, status: str | None, page: int, page_size: int
) -> tuple[list[tuple[Delivery, list[DeliveryAttempt]]], int]:
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
    return [(d, attempts[d.id]) for d in deliveries], total


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
