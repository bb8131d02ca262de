"""``pollinator org create NAME``, ``org delete ID``, ``org retention ID``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from app.db import create_engine, create_pg_pool, create_redis, session_factory, transaction
from app.services import lifecycle
from app.services.orgs import NewOrganization, create_organization
from app.settings import Settings
from app.store import lifecycle as lifecycle_store

ERASE_BATCH_BUDGET_S = 5.0


async def create(database_url: str, name: str) -> NewOrganization:
    """Create an organization and its first user in one transaction."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with transaction(session_factory(engine)) as session:
            return await create_organization(session, name)
    finally:
        await engine.dispose()


async def delete(settings: Settings, organization_id: int) -> dict[str, object] | None:
    """Revoke the organization, then delete all of its rows here, batch by batch.

    The same erasure the API's ``DELETE /organizations/me`` starts (there the workers
    finish it); the command finishes it itself, so it works with no worker running.
    """
    pool = await create_pg_pool(settings.require("database_url"), 2)
    redis = create_redis(settings.redis_url) if settings.redis_url else None
    try:
        if not await lifecycle.request_erasure(pool, redis, organization_id):
            return None
        deleted = 0
        while True:
            count = await lifecycle.erase(
                pool,
                settings.purge_batch_rows,
                budget_s=ERASE_BATCH_BUDGET_S,
                only=organization_id,
            )
            deleted += count or 0
            async with pool.acquire() as conn:
                if organization_id not in await lifecycle_store.organizations_erasing(conn):
                    break
            if count is None:  # a worker's erasure holds the lock: it finishes the job
                await asyncio.sleep(1.0)
        return {"organizationId": organization_id, "erased": True, "rowsDeleted": deleted}
    finally:
        if redis is not None:
            await redis.aclose(close_connection_pool=True)
        await pool.close()


def _days(raw: str) -> float | None:
    """``default`` clears an override; otherwise a positive number of days."""
    if raw == "default":
        return None
    value = float(raw)
    if not 0 < value <= 36500:
        raise ValueError(raw)
    return value


async def set_retention(
    settings: Settings, organization_id: int, payload: str | None, metadata: str | None
) -> dict[str, object] | None:
    """Set or clear an organization's overrides; returns its effective retention."""
    pool = await create_pg_pool(settings.require("database_url"), 1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            current = await lifecycle_store.retention_of(conn, organization_id)
            new_payload = current[0] if payload is None else _days(payload)
            new_metadata = current[1] if metadata is None else _days(metadata)
            if not await lifecycle_store.set_retention(
                conn, organization_id, new_payload, new_metadata
            ):
                return None
    finally:
        await pool.close()
    default = lifecycle.default_retention(settings)
    return {
        "organizationId": organization_id,
        "payloadRetentionDays": new_payload if new_payload is not None else default.payload_days,
        "metadataRetentionDays": new_metadata
        if new_metadata is not None
        else default.metadata_days,
        "overrides": {"payload": new_payload, "metadata": new_metadata},
    }


def main(argv: list[str]) -> int:
    """``org create`` prints ``{"organizationId", "organizationSecret", "userSecret"}``."""
    from app.settings import command_settings_or_exit

    parser = argparse.ArgumentParser(prog="pollinator org")
    sub = parser.add_subparsers(dest="action", required=True)
    create_p = sub.add_parser("create", help="create an organization with one user")
    create_p.add_argument("name")
    delete_p = sub.add_parser(
        "delete", help="erase an organization and all of its data (irreversible)"
    )
    delete_p.add_argument("id", type=int)
    retention_p = sub.add_parser(
        "retention", help="set an organization's retention (days, or 'default')"
    )
    retention_p.add_argument("id", type=int)
    retention_p.add_argument("--payload-days", metavar="DAYS")
    retention_p.add_argument("--metadata-days", metavar="DAYS")
    args = parser.parse_args(argv)
    settings, database_url = command_settings_or_exit()
    if args.action == "delete":
        return _print_or_missing(asyncio.run(delete(settings, args.id)), args.id)
    if args.action == "retention":
        try:
            for raw in (args.payload_days, args.metadata_days):
                if raw is not None:
                    _days(raw)
        except ValueError:
            print("pollinator: DAYS must be a number in (0, 36500] or 'default'", file=sys.stderr)
            return 2
        changed = asyncio.run(
            set_retention(settings, args.id, args.payload_days, args.metadata_days)
        )
        return _print_or_missing(changed, args.id)
    name = args.name.strip()
    if not name or len(name) > 200:
        print("pollinator: NAME must be 1-200 characters", file=sys.stderr)
        return 2
    result = asyncio.run(create(database_url, name))
    print(json.dumps(result.as_json()))
    return 0


def _print_or_missing(result: dict[str, object] | None, organization_id: int) -> int:
    if result is None:
        print(f"pollinator: organization {organization_id} not found", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
