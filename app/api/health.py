"""Probes, metrics and the OpenAPI document (no base path, no auth)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.openapi import build_openapi
from app.api.routes import CTX

PROBE_TIMEOUT_S = 3.0


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


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


async def metrics(_: web.Request) -> web.Response:
    body = await asyncio.to_thread(generate_latest)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(build_openapi())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
