"""Probes, metrics and the OpenAPI document (no base path, no auth)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from app import keys
from app.api.context import CTX
from app.api.openapi import build_openapi
from app.metrics import exposition, gauge_family, shared_families
from app.models import DUE_PREDICATE, utcnow
from app.services import lifecycle
from app.store.lifecycle import TABLE_SIZES_SQL

PROBE_TIMEOUT_S = 3.0


async def healthz(request: web.Request) -> web.Response:
    """200 while the process runs; ``run`` lets ``pollinator up`` know the API is its own."""
    body = {"status": "ok"}
    run_id = request.app[CTX].settings.run_id
    if run_id:
        body["run"] = run_id
    return web.json_response(body)


def _check_broker(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=PROBE_TIMEOUT_S) as conn:
        conn.ensure_connection(max_retries=1, timeout=int(PROBE_TIMEOUT_S))


async def readyz(request: web.Request) -> web.Response:
    """200 when PostgreSQL, Redis and the broker answer; 503 naming what is down."""
    ctx = request.app[CTX]
    down: dict[str, str] = {}

    async def database() -> None:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await ctx.redis.ping()

    async def broker() -> None:
        url = ctx.settings.effective_broker_url
        if url != ctx.settings.redis_url:
            await asyncio.to_thread(_check_broker, url)

    for name, probe in (("postgres", database), ("redis", redis), ("broker", broker)):
        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
        except Exception as exc:  # any failure means "not ready"; say which
            down[name] = type(exc).__name__
    if down:
        return web.json_response({"status": "unavailable", "down": down}, status=503)
    return web.json_response({"status": "ready"})


# Polling gauges use beat's due predicate: a quarantined instance stays overdue forever
# and would otherwise read as a stuck scheduler; it is counted on its own instead. The
# pollable and quarantined counts are the organizations' trigger-kept counters (migration
# 0005); the overdue ones walk the due index from its oldest entry (what is overdue).
_GAUGES = text(f"""
    SELECT
      (SELECT count(*) FROM deliveries WHERE status = 'pending'),
      (SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
         FROM deliveries WHERE status = 'pending' AND next_attempt_at <= now()),
      (SELECT coalesce(sum(pollable_instances), 0) FROM organizations),
      (SELECT count(*) FROM instances
         WHERE {DUE_PREDICATE} AND next_poll_at < now() - interval '10 seconds'),
      (SELECT coalesce(extract(epoch FROM now() - min(next_poll_at)), 0) FROM instances
         WHERE {DUE_PREDICATE} AND next_poll_at <= now()),
      (SELECT coalesce(sum(quarantined_instances), 0) FROM organizations)
""")


# Error classes are our own ("http_5xx", "timeout", ...: the part of lastError before the
# colon), a small fixed set; a class longer than 40 characters is not one of them.
_FAILING = text(f"""
    SELECT left(split_part(p.last_error, ':', 1), 40), count(DISTINCT p.instance_id)
    FROM poll_states AS p JOIN instances AS i ON i.id = p.instance_id
    WHERE p.consecutive_failures > 0 AND {DUE_PREDICATE}  -- its columns are instances' only
    GROUP BY 1
""")


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics, the workers' (from Redis) and backlog gauges (PostgreSQL)."""
    ctx = request.app[CTX]
    families = await shared_families(ctx.redis)
    async with ctx.engine.connect() as conn:
        row = (await conn.execute(_GAUGES)).one()
        failing = (await conn.execute(_FAILING)).all()
        sizes = [
            lifecycle.TableSize(str(r[0]), int(r[1]), int(r[2]), int(r[3]))
            for r in (await conn.execute(text(TABLE_SIZES_SQL))).all()
        ]
    for name, help_, samples in lifecycle.lifecycle_gauges(
        sizes, await lifecycle.last_report(ctx.redis), utcnow()
    ):
        families.append(gauge_family(name, help_, samples))
    pending, overdue_s, polling, late, late_s, quarantined = (float(v or 0) for v in row)
    families.append(
        gauge_family(
            "pollinator_deliveries_pending",
            "Deliveries not yet delivered or failed",
            [({}, pending)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_delivery_backlog_seconds",
            "How overdue the oldest due pending delivery is",
            [({}, overdue_s)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_instances_polling",
            "Instances beat schedules (events enabled, not disabled, not quarantined)",
            [({}, polling)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_polls_overdue",
            "Instances more than 10 s past their poll time",
            [({}, late)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_poll_overdue_seconds",
            "How late the most overdue instance is",
            [({}, late_s)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_instances_quarantined",
            "Instances not polled because their schedule failed or their polls kept crashing",
            [({}, quarantined)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_instances_failing",
            "Polling instances whose last poll of some resource failed, by error class",
            [({"error_class": str(kind)}, float(count)) for kind, count in failing],
        )
    )
    open_breakers = await ctx.redis.zcount(keys.breakers_open(), time.time(), "+inf")
    families.append(
        gauge_family(
            "pollinator_breakers_open",
            "Callback origins whose circuit breaker is open (their deliveries wait)",
            [({}, float(open_breakers))],
        )
    )
    body = await asyncio.to_thread(exposition, families)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app[CTX].settings.min_refresh_minutes))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
