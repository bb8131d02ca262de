"""The API's statements on instances and their resources' poll states (``instances``,
``poll_states``), tenant-scoped: every read names the organization.

The API's client is SQLModel, so these functions take an :class:`AsyncSession`; they run
statements and flush (so generated ids exist), and never commit: the request handler,
or :func:`app.services.instances.create_instance` (which must not hold a connection
while the provider exchanges the grant code), owns the transaction. Decisions (what a
PATCH changes, when the next poll is) stay in :mod:`app.services.instances`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute, defer
from sqlmodel import col

from app.models import Delivery, DeliveryStatus, Instance, Organization, PollState


async def count_live(session: AsyncSession, organization_id: int) -> int:
    """The organization's instances that are not deleted (its instance limit counts these).

    Its trigger-kept counter (migration 0005), not a count of its rows.
    """
    stmt = select(col(Organization.live_instances)).where(col(Organization.id) == organization_id)
    return int((await session.execute(stmt)).scalar_one_or_none() or 0)


async def lock_organization(session: AsyncSession, organization_id: int) -> None:
    """Serialize the organization's creates until the transaction ends.

    FOR NO KEY UPDATE blocks another create's lock without blocking anything else that
    references the organization.
    """
    await session.execute(
        select(col(Organization.id))
        .where(col(Organization.id) == organization_id)
        .with_for_update(key_share=True)
    )


async def insert_instance(session: AsyncSession, instance: Instance) -> int:
    """Add a new instance; its id (assigned by the flush)."""
    session.add(instance)
    await session.flush()
    assert instance.id is not None
    return instance.id


async def save_instance(session: AsyncSession, instance: Instance) -> None:
    """Write the changed columns of a loaded instance."""
    session.add(instance)
    await session.flush()


async def add_poll_states(
    session: AsyncSession, instance_id: int, starts: Mapping[str, datetime]
) -> None:
    """A poll state per new resource, starting at its watermark."""
    for name, watermark_at in starts.items():
        session.add(PollState(instance_id=instance_id, resource=name, watermark_at=watermark_at))
    await session.flush()


async def get_live_instance(
    session: AsyncSession, organization_id: int, instance_id: int
) -> Instance | None:
    """The organization's instance unless it is deleted (another organization's is ``None``)."""
    stmt = select(Instance).where(
        col(Instance.id) == instance_id,
        col(Instance.organization_id) == organization_id,
        col(Instance.deleted_at).is_(None),
    )
    return (await session.execute(stmt)).scalar_one_or_none()


#: Columns a view never reads (app.api.views): the stored poller and both encrypted blobs.
_NOT_SHOWN = (Instance.poller, Instance.secrets, Instance.tokens)


async def list_live_instances(
    session: AsyncSession, organization_id: int, page: int, page_size: int
) -> tuple[Sequence[Instance], int]:
    """One page of the organization's instances (for views only), oldest first, and the total.

    The total is the organization's trigger-kept counter, and the page's ids are found in
    ``ix_instances_org_live`` alone before their rows are read: neither walks the rows of
    the organization (a deep page of 100k instances took seconds).
    """
    page_ids = (
        select(col(Instance.id))
        .where(col(Instance.organization_id) == organization_id, col(Instance.deleted_at).is_(None))
        .order_by(col(Instance.id))
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    stmt = (
        select(Instance)
        # Not even read: the stored poller is a large JSON document to decode.
        .options(*(defer(cast("QueryableAttribute[Any]", c)) for c in _NOT_SHOWN))
        .where(col(Instance.id).in_(page_ids))
        .order_by(col(Instance.id))
    )
    rows = (await session.execute(stmt)).scalars().all()
    return rows, await count_live(session, organization_id)


async def polled_resources(session: AsyncSession, instance_id: int) -> set[str]:
    """The resources the instance has a poll state for."""
    return set(
        (
            await session.execute(
                select(col(PollState.resource)).where(col(PollState.instance_id) == instance_id)
            )
        ).scalars()
    )


async def poll_states(session: AsyncSession, instance_id: int) -> Sequence[PollState]:
    """The instance's poll states, by resource name."""
    return (
        (
            await session.execute(
                select(PollState)
                .where(col(PollState.instance_id) == instance_id)
                .order_by(col(PollState.resource))
            )
        )
        .scalars()
        .all()
    )


async def delete_poll_states(
    session: AsyncSession, instance_id: int, resources: Iterable[str] | None = None
) -> set[str]:
    """Delete the instance's poll states (only ``resources`` when given); the names deleted."""
    stmt = delete(PollState).where(col(PollState.instance_id) == instance_id)
    if resources is not None:
        stmt = stmt.where(col(PollState.resource).in_(list(resources)))
    return set((await session.execute(stmt.returning(col(PollState.resource)))).scalars())


async def cancel_pending_deliveries(session: AsyncSession, instance_id: int) -> None:
    """Cancel the instance's deliveries that are still waiting to be sent."""
    await session.execute(
        update(Delivery)
        .where(
            col(Delivery.instance_id) == instance_id,
            col(Delivery.status) == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.CANCELLED, next_attempt_at=None)
    )
