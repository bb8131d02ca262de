"""Retention purge (data-lifecycle issue, part 1): payloads and metadata go on their own
schedules, per-organization overrides win, a pending delivery is never touched, and the
purge's state is visible in /metrics and `pollinator status`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from app.db import create_pg_pool, libpq_url
from app.models import utcnow
from app.services import lifecycle
from app.settings import Settings
from tests.conftest import ServiceUrls
from tests.integration.lifecycle_data import make_instance, make_org, seed_delivery

BASE = "/elements/api-v2"
DAY = timedelta(days=1)


@pytest.fixture
async def pool(service_urls: ServiceUrls) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pg_pool(service_urls.database_url, 4)
    yield pool
    await pool.close()


async def _state(pool: asyncpg.Pool, delivery_id: uuid.UUID) -> dict[str, Any] | None:
    """What is left of one delivery: its body size, events' records and attempt count."""
    row = await pool.fetchrow(
        "SELECT status, octet_length(body) FROM deliveries WHERE id = $1", delivery_id
    )
    events = await pool.fetch("SELECT record::text FROM events WHERE delivery_id = $1", delivery_id)
    attempts = await pool.fetchval(
        "SELECT count(*) FROM delivery_attempts WHERE delivery_id = $1", delivery_id
    )
    if row is None:
        assert not events, "events outlived their delivery"
        assert attempts == 0, "attempts outlived their delivery"
        return None
    return {
        "status": row[0],
        "body": row[1],
        "records": sorted(r[0] for r in events),
        "attempts": attempts,
    }


async def test_purge_follows_both_periods_and_never_touches_pending(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(payload_retention_days=30, metadata_retention_days=90)
    async with pool.acquire() as conn:
        org = await make_org(conn, "retention")
        inst = await make_instance(conn, org.id)
        ancient = await seed_delivery(conn, inst, org.id, age=100 * DAY, attempts=3)
        pending = await seed_delivery(
            conn,
            inst,
            org.id,
            age=70 * DAY,
            status="pending",
            attempts=8,
            next_attempt_at=utcnow() + DAY,
        )
        behind_pending = await seed_delivery(conn, inst, org.id, age=60 * DAY, status="failed")
        recent = await seed_delivery(conn, inst, org.id, age=10 * DAY)
        # A second instance with no pending delivery: its 60-day payload goes at once.
        other = await make_instance(conn, org.id)
        other_old = await seed_delivery(conn, other, org.id, age=60 * DAY)
        pending_before = await _state(pool, pending.delivery_id)

    report = await lifecycle.purge(pool, settings)
    assert report is not None
    assert report.complete

    # Past the metadata period: every row gone (events, delivery, attempts).
    assert await _state(pool, ancient.delivery_id) is None
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", ancient.event_ids
        )
        == 0
    )
    # The pending delivery is untouched: body, events' records, attempts.
    assert await _state(pool, pending.delivery_id) == pending_before
    # Created after the oldest pending delivery: kept whole until that one is settled.
    kept = await _state(pool, behind_pending.delivery_id)
    assert kept is not None
    assert kept["body"] > 0
    assert "null" not in kept["records"]
    # Inside the payload period: untouched.
    fresh = await _state(pool, recent.delivery_id)
    assert fresh is not None
    assert fresh["body"] > 0
    # Past the payload period, inside the metadata period: the row stays, its payload goes.
    purged = await _state(pool, other_old.delivery_id)
    assert purged == {"status": "delivered", "body": 0, "records": ["null", "null"], "attempts": 1}

    # Once the pending delivery is settled, the purge moves past it.
    await pool.execute(
        "UPDATE deliveries SET status = 'delivered', next_attempt_at = NULL WHERE id = $1",
        pending.delivery_id,
    )
    assert await lifecycle.purge(pool, settings) is not None
    for seeded in (pending, behind_pending):
        state = await _state(pool, seeded.delivery_id)
        assert state is not None
        assert state["body"] == 0
        assert set(state["records"]) == {"null"}
    fresh = await _state(pool, recent.delivery_id)
    assert fresh is not None
    assert fresh["body"] > 0


async def test_a_delivery_retried_during_the_purge_keeps_its_payload(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """The status test is re-checked under the row lock of the purging statement."""
    settings = make_settings(payload_retention_days=30, metadata_retention_days=90)
    async with pool.acquire() as conn:
        org = await make_org(conn, "race")
        inst = await make_instance(conn, org.id)
        old = await seed_delivery(conn, inst, org.id, age=40 * DAY, status="failed")
    # A retry holds the row (uncommitted) while the purge runs; then commits.
    async with pool.acquire() as retry, retry.transaction():
        await retry.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = now() WHERE id = $1",
            old.delivery_id,
        )
        purge = asyncio.create_task(lifecycle.purge(pool, settings))
        await _wait_for_lock_wait(pool)
    assert await purge is not None
    state = await _state(pool, old.delivery_id)
    assert state is not None
    assert state["status"] == "pending"
    assert state["body"] > 0


async def _wait_for_lock_wait(pool: asyncpg.Pool) -> None:
    """Until some session waits on a row lock (the purge behind the open retry)."""
    for _ in range(500):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the purge never reached the locked row")


async def test_organization_override_wins_and_marks_make_reruns_free(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(payload_retention_days=30, metadata_retention_days=90)
    async with pool.acquire() as conn:
        strict = await make_org(conn, "strict")
        lax = await make_org(conn, "lax")
        await conn.execute(
            "UPDATE organizations SET payload_retention_days = 5, metadata_retention_days = 8"
            " WHERE id = $1",
            strict.id,
        )
        await conn.execute(
            "UPDATE organizations SET payload_retention_days = 0.5 WHERE id = $1", lax.id
        )
        s_inst = await make_instance(conn, strict.id)
        l_inst = await make_instance(conn, lax.id)
        s_mid = await seed_delivery(conn, s_inst, strict.id, age=6 * DAY)
        s_old = await seed_delivery(conn, s_inst, strict.id, age=9 * DAY)
        l_day = await seed_delivery(conn, l_inst, lax.id, age=1 * DAY)
        l_hour = await seed_delivery(conn, l_inst, lax.id, age=timedelta(hours=1))
    assert await lifecycle.purge(pool, settings) is not None
    state = await _state(pool, s_mid.delivery_id)
    assert state is not None
    assert state["body"] == 0
    assert await _state(pool, s_old.delivery_id) is None  # 9 days > its 8-day metadata
    state = await _state(pool, l_day.delivery_id)
    assert state is not None
    assert state["body"] == 0
    state = await _state(pool, l_hour.delivery_id)
    assert state is not None
    assert state["body"] > 0
    marks = await pool.fetchrow(
        "SELECT payload_before, metadata_before FROM retention_progress WHERE instance_id = $1",
        s_inst,
    )
    assert marks is not None
    assert marks[0] is not None
    assert marks[1] is not None
    # Everything due is purged; a second run finds nothing to do for these instances.
    again = await lifecycle.purge(pool, settings)
    assert again is not None
    assert again.rows == 0


async def test_small_batches_cover_everything(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """Slices of ten events, one poll writing 25 events at one instant: still all purged."""
    settings = make_settings(purge_batch_rows=10)
    async with pool.acquire() as conn:
        org = await make_org(conn, "batches")
        inst = await make_instance(conn, org.id)
        seeded = [
            await seed_delivery(conn, inst, org.id, age=(40 + n) * DAY, events=3) for n in range(12)
        ]
        wide = await seed_delivery(conn, inst, org.id, age=35 * DAY, events=25)
    report = await lifecycle.purge(pool, settings)
    assert report is not None
    assert report.complete
    assert report.batches >= 5
    for s in [*seeded, wide]:
        state = await _state(pool, s.delivery_id)
        assert state is not None
        assert state["body"] == 0
        assert set(state["records"]) == {"null"}


async def test_purged_delivery_is_shown_and_not_retried(
    api: TestClient[Any, Any], pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    async with pool.acquire() as conn:
        org = await make_org(conn, "shown")
        inst = await make_instance(conn, org.id)
        old = await seed_delivery(conn, inst, org.id, age=40 * DAY, status="failed")
    assert await lifecycle.purge(pool, make_settings()) is not None
    resp = await api.get(f"{BASE}/instances/{inst}/deliveries", headers=org.headers)
    assert resp.status == 200, await resp.text()
    (item,) = await resp.json()
    assert item["payloadPurged"] is True
    assert item["eventIds"] == []
    resp = await api.post(
        f"{BASE}/instances/{inst}/deliveries/{old.delivery_id}/retry", headers=org.headers
    )
    assert resp.status == 404
    resp = await api.post(
        f"{BASE}/instances/{inst}/deliveries/retry?status=failed", headers=org.headers
    )
    assert (await resp.json())["count"] == 0


async def test_metrics_and_status_show_sizes_oldest_payload_and_progress(
    api: TestClient[Any, Any],
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    service_urls: ServiceUrls,
) -> None:
    from workers.status import read_state, render

    async with pool.acquire() as conn:
        org = await make_org(conn, "visible")
        inst = await make_instance(conn, org.id)
        await seed_delivery(conn, inst, org.id, age=3 * DAY)
    redis = Redis.from_url(service_urls.redis_url)
    try:
        report = await lifecycle.purge(pool, make_settings(), redis=redis)
    finally:
        await redis.aclose()
    assert report is not None
    assert report.oldest_payload is not None
    text = await (await api.get("/metrics")).text()
    assert 'pollinator_table_bytes{kind="index",table="events"}' in text
    assert 'pollinator_table_rows{table="delivery_attempts"}' in text
    assert "pollinator_oldest_payload_age_seconds " in text
    assert "pollinator_purge_caught_up 1" in text
    state = read_state(make_settings())
    assert set(state["retention"]["tables"]) == {"events", "deliveries", "delivery_attempts"}
    assert state["retention"]["lastPurge"]["oldest_payload"] == report.oldest_payload
    assert "oldest payload kept:" in render(state)


def test_status_says_when_autovacuum_cannot_clean_up_after_beat(
    make_settings: Callable[..., Settings], service_urls: ServiceUrls
) -> None:
    from workers.status import read_state, render

    settings = make_settings()
    with psycopg.connect(libpq_url(service_urls.database_url), autocommit=True) as conn:
        server_on = conn.execute("SHOW autovacuum").fetchone() == ("on",)
        conn.execute("ALTER TABLE instances SET (autovacuum_enabled = false)")
        try:
            state = read_state(settings)
        finally:
            conn.execute("ALTER TABLE instances RESET (autovacuum_enabled)")
    assert state["database"]["autovacuum"] is False
    assert "AUTOVACUUM OFF" in render(state)
    state = read_state(settings)
    assert state["database"]["autovacuum"] is server_on  # the server's own setting decides
    assert ("AUTOVACUUM OFF" in render(state)) is not server_on


async def test_operator_sets_and_clears_organization_overrides(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    from app.orgs import set_retention

    settings = make_settings(payload_retention_days=30, metadata_retention_days=90)
    async with pool.acquire() as conn:
        org = await make_org(conn, "overrides")
    result = await set_retention(settings, org.id, "7.5", None)
    assert result is not None
    assert (result["payloadRetentionDays"], result["metadataRetentionDays"]) == (7.5, 90)
    result = await set_retention(settings, org.id, None, "14")
    assert result is not None
    assert result["overrides"] == {"payload": 7.5, "metadata": 14.0}
    result = await set_retention(settings, org.id, "default", None)
    assert result is not None
    assert (result["payloadRetentionDays"], result["metadataRetentionDays"]) == (30, 14.0)
    row = await pool.fetchrow(
        "SELECT payload_retention_days, metadata_retention_days FROM organizations WHERE id = $1",
        org.id,
    )
    assert tuple(row) == (None, 14.0)
    assert await set_retention(settings, 10**12, "1", None) is None


async def test_deleted_instances_payloads_follow_the_same_rules(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """DELETE /instances/{id} keeps a tombstone and its log; retention still applies to it."""
    async with pool.acquire() as conn:
        org = await make_org(conn, "tombstone")
        inst = await make_instance(conn, org.id)
        old = await seed_delivery(conn, inst, org.id, age=40 * DAY)
        fresh = await seed_delivery(conn, inst, org.id, age=DAY)
        await conn.execute(
            "UPDATE instances SET deleted_at = now(), secrets = NULL, events_enabled = false"
            " WHERE id = $1",
            inst,
        )
    assert await lifecycle.purge(pool, make_settings()) is not None
    state = await _state(pool, old.delivery_id)
    assert state is not None
    assert state["body"] == 0
    state = await _state(pool, fresh.delivery_id)
    assert state is not None
    assert state["body"] > 0
