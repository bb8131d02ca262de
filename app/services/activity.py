"""Reads of the polling state, the event log and deliveries; poll-now and redelivery requests.

Every function takes an instance already checked to belong to the caller's
organization (:func:`app.services.instances.get_instance`) and returns rows;
:mod:`app.api.views` shapes them. The statements are :mod:`app.store.activity` and
:mod:`app.store.instances`; the request handler owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.schedule import latest_tick_at_or_before
from app.models import Delivery, DeliveryAttempt, Event, Instance, PollState, utcnow
from app.store import activity as store
from app.store.instances import poll_states


async def polling_states(session: AsyncSession, instance: Instance) -> Sequence[PollState]:
    """The instance's resources, by name."""
    assert instance.id is not None
    return await poll_states(session, instance.id)


async def poll_now(session: AsyncSession, instance: Instance) -> None:
    """Make the instance due now without moving its schedule.

    The next poll time becomes the latest tick of the instance's grid that is not in the
    future: the statement wakes beat (:mod:`app.store.wakeups`; without its listener, at
    its next tick), which claims it and reschedules it from that tick, i.e. back onto the
    same grid, so the instance keeps the phase that spreads it among the others
    (:mod:`app.domain.schedule`). The statement only ever moves the time earlier: a poll
    already due stays as due as it was.
    """
    now = utcnow()
    scheduled = instance.next_poll_at
    interval_s = instance.refresh_interval_s
    due = (
        now
        if scheduled is None or interval_s is None
        else latest_tick_at_or_before(scheduled, interval_s, now)
    )
    assert instance.id is not None
    await store.make_due_by(session, instance.id, due)


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
    assert instance.id is not None
    return await store.list_events(
        session,
        instance.id,
        object_type=object_type,
        event_type=event_type,
        since=since,
        page=page,
        page_size=page_size,
    )


async def list_deliveries(
    session: AsyncSession, instance: Instance, *, status: str | None, page: int, page_size: int
) -> tuple[list[tuple[Delivery, list[DeliveryAttempt]]], int]:
    """Deliveries, newest first, with every attempt."""
    assert instance.id is not None
    return await store.list_deliveries(
        session, instance.id, status=status, page=page, page_size=page_size
    )


async def retry_delivery(session: AsyncSession, instance: Instance, delivery_id: uuid.UUID) -> bool:
    """Make one delivery pending and due now, whatever its status; ``False`` if not found.

    A delivery whose payload retention purged is not found: there is nothing to send.
    """
    assert instance.id is not None
    return await store.retry_delivery(session, instance.id, delivery_id, utcnow())


async def retry_deliveries(session: AsyncSession, instance: Instance, status: str) -> int:
    """Make every delivery of ``status`` that still has its payload pending and due now."""
    assert instance.id is not None
    return await store.retry_deliveries(session, instance.id, status, utcnow())
