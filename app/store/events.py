"""The organization-wide event log (``GET /elements/api-v2/events``).

Every statement is scoped by organization through a join on ``instances``: an event is
listed only while its instance belongs to the caller's organization and is not deleted
(a deleted instance answers 404 on every route, so its events disappear with it).
Functions take a session and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import Delivery, Event, Instance


@dataclass(frozen=True)
class EventFilter:
    """What the caller asked for; ``None`` means "any"."""

    organization_id: int
    instance_id: int | None = None
    object_type: str | None = None
    event_type: str | None = None
    since: datetime | None = None


def _where(f: EventFilter) -> list[ColumnElement[bool]]:
    where = [
        col(Instance.organization_id) == f.organization_id,
        col(Instance.deleted_at).is_(None),
    ]
    if f.instance_id is not None:
        where.append(col(Event.instance_id) == f.instance_id)
    if f.object_type:
        where.append(col(Event.object_type) == f.object_type)
    if f.event_type:
        where.append(col(Event.event_type) == f.event_type.upper())
    if f.since is not None:
        where.append(col(Event.created_at) >= f.since)
    return where


async def list_org_events(
    session: AsyncSession, f: EventFilter, *, page: int, page_size: int
) -> tuple[list[tuple[Event, str | None]], int]:
    """One page of matching events, newest first, each with its delivery's status; and the total."""
    where = _where(f)
    joined = (
        select(func.count())
        .select_from(Event)
        .join(Instance, col(Instance.id) == col(Event.instance_id))
    )
    total = int((await session.execute(joined.where(*where))).scalar_one())
    rows = (
        await session.execute(
            select(Event, col(Delivery.status))
            .join(Instance, col(Instance.id) == col(Event.instance_id))
            .outerjoin(Delivery, col(Delivery.id) == col(Event.delivery_id))
            .where(*where)
            .order_by(col(Event.created_at).desc(), col(Event.event_date).desc())
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
    ).all()
    return [(event, status) for event, status in rows], total


async def owns_live_instance(session: AsyncSession, organization_id: int, instance_id: int) -> bool:
    """Whether ``instance_id`` is a live instance of the organization (else the caller gets 404)."""
    found = await session.execute(
        select(col(Instance.id)).where(
            col(Instance.id) == instance_id,
            col(Instance.organization_id) == organization_id,
            col(Instance.deleted_at).is_(None),
        )
    )
    return found.scalar_one_or_none() is not None
