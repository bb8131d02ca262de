"""Tenant erasure (data-lifecycle issue, part 4): after ``DELETE /organizations/me`` or
``pollinator org delete ID``, no value of the organization is left anywhere in the
database — every text, JSON, bytea, uuid and id column of every table is searched."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from app import keys, orgs
from app.db import create_pg_pool
from app.services import lifecycle
from app.settings import Settings
from tests.conftest import ServiceUrls
from tests.integration.conftest import create_body
from tests.integration.lifecycle_data import Org, make_instance, make_org, seed_delivery

BASE = "/elements/api-v2"
DAY = timedelta(days=1)


@pytest.fixture
async def pool(service_urls: ServiceUrls) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pg_pool(service_urls.database_url, 4)
    yield pool
    await pool.close()


@dataclass
class Tenant:
    org: Org
    marker: str
    instances: list[int] = field(default_factory=list)
    uuids: list[uuid.UUID] = field(default_factory=list)


async def _populate(api: TestClient[Any, Any], pool: asyncpg.Pool, label: str) -> Tenant:
    """An organization with every kind of row, each carrying a recognizable marker."""
    marker = f"zq{label}{uuid.uuid4().hex[:12]}"
    async with pool.acquire() as conn:
        org = await make_org(conn, f"org-{marker}")
    tenant = Tenant(org, marker)
    # One instance through the real API (OAuth exchange, encrypted secrets, token hash)...
    body = create_body(**{"event.notification.callback.url": f"https://93.184.215.14/{marker}"})
    body["name"] = f"instance-{marker}"
    body["tags"] = [f"tag-{marker}"]
    resp = await api.post(f"{BASE}/instances", json=body, headers=org.headers)
    assert resp.status == 200, await resp.text()
    tenant.instances.append(int((await resp.json())["id"]))
    # ...and one written directly, with its log: events, deliveries, attempts, a replay job,
    # retention marks and a rewound watermark.
    async with pool.acquire() as conn:
        tenant.instances.append(
            await make_instance(conn, org.id, name=f"direct-{marker}", marker=marker)
        )
        for inst in tenant.instances:
            for age, status in ((40 * DAY, "delivered"), (2 * DAY, "failed"), (DAY, "pending")):
                seeded = await seed_delivery(
                    conn, inst, org.id, age=age, status=status, attempts=2, marker=marker
                )
                tenant.uuids += [seeded.delivery_id, *seeded.event_ids]
            tenant.uuids.append(
                await conn.fetchval(
                    """INSERT INTO replay_jobs (id, instance_id, since, until, only_failed)
                       VALUES (gen_random_uuid(), $1, now() - interval '1 day', now(), false)
                       RETURNING id""",
                    inst,
                )
            )
            await conn.execute(
                "UPDATE poll_states SET rewound_at = now() WHERE instance_id = $1", inst
            )
    return tenant


async def _columns(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch("""
        SELECT c.table_name, c.column_name, c.data_type
        FROM information_schema.columns c
        JOIN information_schema.tables t
          ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
        ORDER BY 1, 2
    """)
    return [(r[0], r[1], r[2]) for r in rows]


async def _find(pool: asyncpg.Pool, tenant: Tenant) -> list[str]:
    """Every (table.column) that still holds one of the tenant's values."""
    found: list[str] = []
    id_pattern = f'"organizationId": ?{tenant.org.id}[,}}]'
    async with pool.acquire() as conn:
        for table, column, kind in await _columns(conn):
            ref = f'"{table}"."{column}"'
            if kind in ("text", "character varying", "json", "jsonb"):
                sql = f'SELECT count(*) FROM "{table}" WHERE position($1 in {ref}::text) > 0'
                hits = await conn.fetchval(sql, tenant.marker)
                sql = f'SELECT count(*) FROM "{table}" WHERE {ref}::text ~ $1'
                hits += await conn.fetchval(sql, id_pattern)
            elif kind == "bytea":
                sql = (
                    f'SELECT count(*) FROM "{table}" WHERE position($1::bytea in {ref}) > 0'
                    f" OR encode({ref}, 'escape') ~ $2"
                )
                hits = await conn.fetchval(sql, tenant.marker.encode(), id_pattern)
            elif kind == "uuid":
                sql = f'SELECT count(*) FROM "{table}" WHERE {ref} = ANY($1::uuid[])'
                hits = await conn.fetchval(sql, tenant.uuids)
            elif (
                kind in ("bigint", "integer")
                and column == "organization_id"
                or (table == "organizations" and column == "id")
            ):
                sql = f'SELECT count(*) FROM "{table}" WHERE {ref} = $1'
                hits = await conn.fetchval(sql, tenant.org.id)
            elif (
                kind in ("bigint", "integer")
                and column == "instance_id"
                or (table == "instances" and column == "id")
            ):
                sql = f'SELECT count(*) FROM "{table}" WHERE {ref} = ANY($1::bigint[])'
                hits = await conn.fetchval(sql, tenant.instances)
            else:
                continue
            if hits:
                found.append(f"{table}.{column}")
    return found


async def _erase_all(pool: asyncpg.Pool) -> None:
    """What the workers' ``lifecycle.jobs`` ticks do, with tiny batches."""
    for _ in range(1000):
        await lifecycle.erase(pool, rows=5)
        if not await pool.fetchval(
            "SELECT count(*) FROM organizations WHERE erasing_since IS NOT NULL"
        ):
            return
    raise AssertionError("erasure did not finish")


async def test_delete_organization_me_leaves_nothing(
    api: TestClient[Any, Any], pool: asyncpg.Pool, service_urls: ServiceUrls
) -> None:
    victim = await _populate(api, pool, "victim")
    bystander = await _populate(api, pool, "bystander")
    # The search finds every kind of value before the erasure (it is able to fail).
    before = await _find(pool, victim)
    for where in (
        "organizations.name",
        "instances.configuration",
        "instances.tags",
        "events.record",
        "deliveries.body",
        "delivery_attempts.response_body",
        "replay_jobs.instance_id",
        "poll_states.instance_id",
    ):
        assert where in before
    redis = Redis.from_url(service_urls.redis_url)
    wm_key = keys.watermark(victim.instances[0], "contacts")
    await redis.set(wm_key, json.dumps({"at": "2026-01-01T00:00:00+00:00", "ids": []}))

    resp = await api.delete(f"{BASE}/organizations/me", headers=victim.org.headers)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["organizationId"] == victim.org.id
    # Its credentials stop working at once, before any row is deleted.
    assert (await api.get(f"{BASE}/instances", headers=victim.org.headers)).status == 401
    assert (await api.delete(f"{BASE}/organizations/me", headers=victim.org.headers)).status == 401
    assert await redis.get(wm_key) is None
    await redis.aclose()
    polling = await pool.fetchval(
        "SELECT count(*) FROM instances WHERE organization_id = $1 AND events_enabled",
        victim.org.id,
    )
    assert polling == 0

    await _erase_all(pool)
    assert await _find(pool, victim) == []
    # The other organization is untouched.
    assert set(await _find(pool, bystander)) == set(before)
    assert (await api.get(f"{BASE}/instances", headers=bystander.org.headers)).status == 200


async def test_operator_org_delete_leaves_nothing(
    api: TestClient[Any, Any], pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    tenant = await _populate(api, pool, "operator")
    assert await _find(pool, tenant)
    result = await orgs.delete(make_settings(purge_batch_rows=10), tenant.org.id)
    assert result is not None
    assert result["erased"] is True
    assert await _find(pool, tenant) == []
    assert (await api.get(f"{BASE}/instances", headers=tenant.org.headers)).status == 401
    assert await orgs.delete(make_settings(), tenant.org.id) is None  # gone: not found
