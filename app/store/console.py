"""Batched reads for the web console's instance list (``GET /ui/api/instances``).

The list shows, beside each instance, its per-resource polling state and how many of its
deliveries failed; these statements fetch both for a whole page of instances at once.
Functions take a session and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import Delivery, DeliveryStatus, PollState


async def poll_states(
    session: AsyncSession, instance_ids: Sequence[int]
) -> dict[int, list[PollState]]:
    """Each instance's poll-state rows, in resource order (absent: no resource polled yet)."""
    rows = await session.execute(
        select(PollState)
        .where(col(PollState.instance_id).in_(instance_ids))
        .order_by(col(PollState.instance_id), col(PollState.resource))
    )
    states: dict[int, list[PollState]] = {}
    for state in rows.scalars():
        states.setdefault(state.instance_id, []).append(state)
    return states


async def failed_deliveries(session: AsyncSession, instance_ids: Sequence[int]) -> dict[int, int]:
    """How many deliveries of each instance are ``failed`` (absent: none)."""
    rows = await session.execute(
        select(col(Delivery.instance_id), func.count())
        .where(
            col(Delivery.instance_id).in_(instance_ids),
            col(Delivery.status) == DeliveryStatus.FAILED,
        )
        .group_by(col(Delivery.instance_id))
    )
    return dict(rows.all())
