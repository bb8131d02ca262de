"""Watermark round trip: read (Redis hot copy + PostgreSQL checkpoint) and write, per poll.

Per simulated quiet poll of an instance with two resources:

* read — ``load_snapshot`` (one PostgreSQL query: instance + checkpoints) and
  ``WatermarkStore.starts`` (one Redis MGET, which copy wins);
* write — ``store_poll`` with no changes (the single checkpoint statement) and
  ``WatermarkStore.mirror`` of both resources (one script call, never backwards).

Baselines, same run, same servers: a bare ``SELECT 1`` and a bare Redis ``GET``.

Usage: .venv/bin/python bench/bench_watermark.py [--quick]
(uses POLLINATOR_DATABASE_URL / POLLINATOR_REDIS_URL when set, else embedded servers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from app import keys
from app.db import create_pg_pool, create_redis
from app.domain.delta import DeltaResult
from app.domain.events import InstanceInfo
from app.domain.pollconfig import parse_poller_configuration, stored_resources
from app.domain.watermark import Mirror, Watermark
from app.embedded import drop_database, ensure_services, scratch_database
from app.migrate import upgrade
from app.models import utcnow
from app.services.outbox import ResourceResult, store_poll
from app.store.polling import load_snapshot
from app.store.watermarks import WatermarkStore

INSTANCES = 200


async def _timed(n: int, op: Callable[[int], Awaitable[object]]) -> float:
    """Microseconds per call, sequential (latency, not throughput)."""
    started = time.perf_counter()
    for i in range(n):
        await op(i)
    return (time.perf_counter() - started) * 1e6 / n


async def run(database_url: str, redis_url: str, n: int) -> list[tuple[str, float]]:
    pg = await create_pg_pool(database_url, 4)
    redis = create_redis(redis_url)
    async with pg.acquire() as conn:
        org = await conn.fetchval(
            "INSERT INTO organizations (name, secret_hash) VALUES ('b', md5(random()::text))"
            " RETURNING id"
        )
        poller = json.dumps(
            stored_resources(
                parse_poller_configuration(
                    {
                        "contacts": {"url": "/contacts", "idField": "id"},
                        "orders": {"url": "/orders", "idField": "id"},
                    }
                )
            )
        )
        ids = [
            await conn.fetchval(
                "INSERT INTO instances (organization_id, name, token_hash, configuration,"
                " client_id, poller, events_enabled, disabled, valid, refresh_interval_minutes)"
                " VALUES ($1, 'b', md5(random()::text), '{}', 'b', $2::jsonb,"
                " true, false, true, 1) RETURNING id",
                org,
                poller,
            )
            for _ in range(INSTANCES)
        ]
        for instance_id in ids:
            for resource in ("contacts", "orders"):
                await conn.execute(
                    "INSERT INTO poll_states (instance_id, resource, watermark_at, watermark_ids)"
                    ' VALUES ($1, $2, now(), \'["1", "2"]\')',
                    instance_id,
                    resource,
                )
    wm = Watermark(utcnow() - timedelta(seconds=5), frozenset({"1", "2"}))
    watermarks = WatermarkStore(redis)
    both = [(r, wm, Mirror.KEEP) for r in ("contacts", "orders")]
    for instance_id in ids:
        await watermarks.mirror(instance_id, both)

    async def read(i: int) -> None:
        async with pg.acquire() as conn:
            snap = await load_snapshot(conn, ids[i % INSTANCES])
        assert snap is not None
        await watermarks.starts(snap.info.id, snap.states)

    async def write(i: int) -> None:
        instance_id = ids[i % INSTANCES]
        delta = DeltaResult([], wm, [])
        results = [ResourceResult(r, delta, None) for r in ("contacts", "orders")]
        async with pg.acquire() as conn:
            await store_poll(
                conn, InstanceInfo(instance_id, "b", [], org), results, utcnow(), utcnow()
            )
        await watermarks.mirror(instance_id, both)

    async def select_one(_: int) -> None:
        await pg.fetchval("SELECT 1")

    async def redis_get(i: int) -> None:
        await redis.get(keys.watermark(ids[i % INSTANCES], "contacts"))

    rows = [
        ("baseline: PostgreSQL SELECT 1", await _timed(n, select_one)),
        ("baseline: Redis GET", await _timed(n, redis_get)),
        ("read: snapshot + watermarks", await _timed(n, read)),
        ("write: checkpoint + Redis watermarks", await _timed(n, write)),
    ]
    await redis.aclose()
    await pg.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 500 if args.quick else 3000
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"),
        os.environ.get("POLLINATOR_REDIS_URL"),
        Path(".data/bench"),
    )
    url, name = scratch_database(services.database_url, "pollinator_bench")
    try:
        upgrade(url)
        rows = asyncio.run(run(url, services.redis_url, n))
    finally:
        drop_database(services.database_url, name)
        services.stop()
    base = rows[0][1] + rows[1][1]
    print(f"watermark round trip of one quiet poll, two resources ({n} sequential calls each)")
    print(f"{'':38} {'µs/call':>8} {'vs SELECT 1 + GET':>18}")
    for label, micros in rows:
        print(f"{label:38} {micros:>8.0f} {micros / base:>17.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
