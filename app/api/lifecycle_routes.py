"""Data-lifecycle routes (SPEC §8): replay by time range, rewind, organization erasure.

Registered by :func:`add_routes` from ``create_app`` with one line. Handlers are
thin: authentication through the shared helpers of :mod:`app.api.routes`, input
rules in :mod:`app.domain.retention`, work in :mod:`app.services.lifecycle`, SQL in
:mod:`app.store.lifecycle`, run on the API's shared asyncpg pool (``ApiContext.pg``).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from app.api.auth import principal_of
from app.api.context import CTX
from app.api.routes import BASE, instance_id_of, json_body
from app.domain.isodate import format_ms
from app.domain.retention import WindowError, check_replay_window, parse_instant
from app.errors import BadInput, NotFound
from app.services import lifecycle
from app.store import lifecycle as store


async def _body(request: web.Request) -> dict[str, Any]:
    value = await json_body(request)
    if not isinstance(value, dict):
        raise BadInput("body: must be a JSON object")
    return value


async def _owned_live_instance(
    request: web.Request, organization_id: int, instance_id: int
) -> None:
    async with request.app[CTX].pg.acquire() as conn:
        found = await store.owns_live_instance(conn, organization_id, instance_id)
    if not found:
        raise NotFound(f"instance {instance_id} not found")


async def start_replay(request: web.Request) -> web.Response:
    """``POST /instances/{id}/deliveries/replay`` → 202 ``{"jobId"}``."""
    principal = principal_of(request)
    instance_id = instance_id_of(request, principal)
    body = await _body(request)
    status = body.get("status", "all")
    if status not in ("all", "failed"):
        raise BadInput("status: must be all or failed")
    try:
        since = parse_instant("since", body.get("since"))
        until = parse_instant("until", body.get("until"))
        check_replay_window(since, until)
    except WindowError as exc:
        raise BadInput(str(exc)) from exc
    await _owned_live_instance(request, principal.organization_id, instance_id)
    async with request.app[CTX].pg.acquire() as conn:
        job_id = await store.create_replay_job(
            conn, instance_id, since, until, only_failed=status == "failed"
        )
    return web.json_response({"jobId": str(job_id)}, status=202)


async def replay_status(request: web.Request) -> web.Response:
    """``GET /instances/{id}/deliveries/replay/{jobId}``."""
    principal = principal_of(request)
    instance_id = instance_id_of(request, principal)
    try:
        job_id = uuid.UUID(request.match_info["jobId"])
    except ValueError as exc:
        raise NotFound("replay job not found") from exc
    await _owned_live_instance(request, principal.organization_id, instance_id)
    async with request.app[CTX].pg.acquire() as conn:
        job = await store.get_replay_job(conn, instance_id, job_id)
    if job is None:
        raise NotFound(f"replay job {job_id} not found")
    return web.json_response(
        {
            "jobId": str(job.id),
            "status": job.state,
            "selected": job.selected,
            "sent": job.sent,
            "since": format_ms(job.since),
            "until": format_ms(job.until),
            "onlyFailed": job.only_failed,
        }
    )


async def rewind(request: web.Request) -> web.Response:
    """``POST /instances/{id}/polling/rewind`` → 202: the watermark moved back."""
    principal = principal_of(request)
    instance_id = instance_id_of(request, principal)
    body = await _body(request)
    resource = body.get("resource")
    if not isinstance(resource, str) or not resource:
        raise BadInput("resource: is required")
    try:
        since = parse_instant("since", body.get("since"))
    except WindowError as exc:
        raise BadInput(str(exc)) from exc
    await _owned_live_instance(request, principal.organization_id, instance_id)
    ctx = request.app[CTX]
    await lifecycle.rewind(
        ctx.pg,
        ctx.redis,
        ctx.settings,
        principal.organization_id,
        instance_id,
        resource,
        since,
    )
    return web.json_response(
        {"id": instance_id, "resource": resource, "watermark": format_ms(since)}, status=202
    )


async def erase_organization(request: web.Request) -> web.Response:
    """``DELETE /organizations/me`` → 202; the organization's credentials stop working now."""
    principal = principal_of(request)
    ctx = request.app[CTX]
    await lifecycle.request_erasure(ctx.pg, ctx.redis, principal.organization_id)
    return web.json_response(
        {"organizationId": principal.organization_id, "status": "erasing"}, status=202
    )


def add_routes(app: web.Application) -> None:
    """Register the data-lifecycle routes."""
    app.router.add_post(BASE + "/instances/{id}/deliveries/replay", start_replay)
    app.router.add_get(BASE + "/instances/{id}/deliveries/replay/{jobId}", replay_status)
    app.router.add_post(BASE + "/instances/{id}/polling/rewind", rewind)
    app.router.add_delete(BASE + "/organizations/me", erase_organization)
