"""Probes, metrics and the OpenAPI document (no base path, no auth)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from app import keys
from app.api.context import CTX
from app.api.openapi import build_openapi
from app.domain.rows import utcnow
from app.metrics import exposition, gauge_family, shared_families
from app.services import lifecycle
from app.store import health as store

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
            await store.ping(conn)

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


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics, the workers' (from Redis) and backlog gauges (PostgreSQL)."""
    ctx = request.app[CTX]
    families = await shared_families(ctx.redis)
    async with ctx.engine.connect() as conn:
        g = await store.gauges(conn)
        failing = await store.failing_by_class(conn)
        sizes = [lifecycle.TableSize(*size) for size in await store.table_sizes(conn)]
    for name, help_, samples in lifecycle.lifecycle_gauges(
        sizes, await lifecycle.last_report(ctx.redis), utcnow()
    ):
        families.append(gauge_family(name, help_, samples))
    families.append(
        gauge_family(
            "pollinator_deliveries_pending",
            "Deliveries not yet delivered or failed",
            [({}, g.deliveries_pending)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_delivery_backlog_seconds",
            "How overdue the oldest due pending delivery is",
            [({}, g.delivery_backlog_s)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_instances_polling",
            "Instances beat schedules (events enabled, not disabled, not quarantined)",
            [({}, g.instances_polling)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_polls_overdue",
            "Instances more than 10 s past their poll time",
            [({}, g.polls_overdue)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_poll_overdue_seconds",
            "How late the most overdue instance is",
            [({}, g.poll_overdue_s)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_instances_quarantined",
            "Instances not polled because their schedule failed or their polls kept crashing",
            [({}, g.instances_quarantined)],
        )
    )
    families.append(
        gauge_family(
            "pollinator_instances_failing",
            "Polling instances whose last poll of some resource failed, by error class",
            [({"error_class": kind}, float(count)) for kind, count in failing],
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
