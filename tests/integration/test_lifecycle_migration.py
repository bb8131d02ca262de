"""The data-lifecycle revision upgrades a database populated by the initial schema.

It adds only nullable columns and two small tables, so existing rows are kept as they
are and the purge works on them right after the upgrade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import asyncpg
import pytest

from alembic import command
from app.db import create_pg_pool
from app.embedded import drop_database, scratch_database
from app.migrate import alembic_config, check, upgrade
from app.services import lifecycle
from app.settings import Settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.lifecycle_data import make_instance_before_0004, make_org, seed_delivery

DAY = timedelta(days=1)


@pytest.fixture
def old_database(service_urls: ServiceUrls) -> Iterator[str]:
    url, name = scratch_database(service_urls.database_url, "pollinator_mig")
    try:
        command.upgrade(alembic_config(url), "0001")
        yield url
    finally:
        drop_database(service_urls.database_url, name)


async def test_upgrade_keeps_rows_and_purge_works_after(
    old_database: str, make_settings: Callable[..., Settings]
) -> None:
    conn = await asyncpg.connect(old_database)
    try:
        org = await make_org(conn, "before-upgrade")
        inst = await make_instance_before_0004(conn, org.id)
        old = await seed_delivery(conn, inst, org.id, age=40 * DAY)
        fresh = await seed_delivery(conn, inst, org.id, age=DAY)
    finally:
        await conn.close()

    upgrade(old_database, SECRET_KEY)
    check(old_database)  # the upgraded schema is exactly the models'

    pool = await create_pg_pool(old_database, 2)
    try:
        assert await pool.fetchval("SELECT count(*) FROM deliveries") == 2
        assert await pool.fetchval("SELECT count(*) FROM events") == 4
        retention = await pool.fetchrow(
            "SELECT payload_retention_days, erasing_since FROM organizations WHERE id = $1",
            org.id,
        )
        assert tuple(retention) == (None, None)
        report = await lifecycle.purge(pool, make_settings(database_url=old_database))
        assert report is not None
        assert report.payload_deliveries == 1
        sizes = {
            r[0]: r[1]
            for r in await pool.fetch(
                "SELECT id, octet_length(body) FROM deliveries WHERE id = ANY($1::uuid[])",
                [old.delivery_id, fresh.delivery_id],
            )
        }
        assert sizes[old.delivery_id] == 0
        assert sizes[fresh.delivery_id] > 0
    finally:
        await pool.close()
