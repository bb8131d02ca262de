"""Organizations and users: creation and authentication by secret (statements:
:mod:`app.store.orgs`; the caller owns the transaction)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.security import hash_secret, new_secret
from app.store import orgs as store


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
    org_id = await store.insert_organization(
        session, name, hash_secret(org_secret), hash_secret(user_secret)
    )
    return NewOrganization(org_id, org_secret, user_secret)


async def authenticate(
    session: AsyncSession, user_secret: str, org_secret: str, element_token: str | None
) -> Principal | None:
    """The principal for these secrets, or ``None`` when any of them is wrong."""
    found = await store.user_by_secrets(session, hash_secret(user_secret), hash_secret(org_secret))
    if found is None:
        return None
    user_id, org_id = found
    if element_token is None:
        return Principal(org_id, user_id)
    instance_id = await store.live_instance_by_token(session, org_id, hash_secret(element_token))
    if instance_id is None:
        return None
    return Principal(org_id, user_id, instance_id)
