"""Organizations, their users and the secrets that authenticate them (``organizations``,
``users``, ``instances.token_hash``).

Only hashes are stored or compared here; hashing the caller's secrets is
:mod:`app.services.orgs`. Functions take a session and never commit; the request
handler or command that creates an organization owns the transaction.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import Instance, Organization, User


async def insert_organization(
    session: AsyncSession, name: str, org_secret_hash: str, user_secret_hash: str
) -> int:
    """A new organization with its one user; the organization's id."""
    org = Organization(name=name, secret_hash=org_secret_hash)
    session.add(org)
    await session.flush()
    assert org.id is not None
    session.add(User(organization_id=org.id, name=f"{name} admin", secret_hash=user_secret_hash))
    await session.flush()
    return org.id


async def user_by_secrets(
    session: AsyncSession, user_secret_hash: str, org_secret_hash: str
) -> tuple[int, int] | None:
    """``(user id, organization id)`` of the user whose secret and organization's match."""
    stmt = (
        select(col(User.id), col(User.organization_id))
        .join(Organization, col(Organization.id) == col(User.organization_id))
        .where(
            col(User.secret_hash) == user_secret_hash,
            col(Organization.secret_hash) == org_secret_hash,
        )
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    return int(row[0] or 0), int(row[1])


async def live_instance_by_token(
    session: AsyncSession, organization_id: int, token_hash: str
) -> int | None:
    """The organization's live instance whose Element token hashes to ``token_hash``."""
    found = (
        await session.execute(
            select(col(Instance.id)).where(
                col(Instance.token_hash) == token_hash,
                col(Instance.organization_id) == organization_id,
                col(Instance.deleted_at).is_(None),
            )
        )
    ).scalar_one_or_none()
    return None if found is None else int(found)
