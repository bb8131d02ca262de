"""Organizations and users: creation and authentication by secret."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models import Instance, Organization, User
from app.security import hash_secret, new_secret


@dataclass(frozen=True)
class NewOrganization:
    organization_id: int
    organization_secret: str
    user_secret: str

    def as_json(self) -> dict[str, object]:
        return {
            "organizationId": self.organization_id,
            "organizationSecret": self.organization_secret,
            "userSecret": self.user_secret,
        }


@dataclass(frozen=True)
class Principal:
    """Who is calling: the organization, the user, and the instance of an Element token."""

    organization_id: int
    user_id: int
    instance_id: int | None = None


async def create_organization(session: AsyncSession, name: str) -> NewOrganization:
    """Create an organization with one user. The secrets are returned once, stored hashed."""
    org_secret, user_secret = new_secret(), new_secret()
    org = Organization(name=name, secret_hash=hash_secret(org_secret))
    session.add(org)
    await session.flush()
    assert org.id is not None
    session.add(
        User(organization_id=org.id, name=f"{name} admin", secret_hash=hash_secret(user_secret))
    )
    await session.flush()
    return NewOrganization(org.id, org_secret, user_secret)


async def authenticate(
    session: AsyncSession, user_secret: str, org_secret: str, element_token: str | None
) -> Principal | None:
    """The principal for these secrets, or ``None`` when any of them is wrong."""
    stmt = (
        select(col(User.id), col(User.organization_id))
        .join(Organization, col(Organization.id) == col(User.organization_id))
        .where(
            col(User.secret_hash) == hash_secret(user_secret),
            col(Organization.secret_hash) == hash_secret(org_secret),
        )
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    user_id, org_id = int(row[0] or 0), int(row[1])
    if element_token is None:
        return Principal(org_id, user_id)
    inst = (
        await session.execute(
            select(col(Instance.id)).where(
                col(Instance.token_hash) == hash_secret(element_token),
                col(Instance.organization_id) == org_id,
                col(Instance.deleted_at).is_(None),
            )
        )
    ).scalar_one_or_none()
    if inst is None:
        return None
    return Principal(org_id, user_id, int(inst))
