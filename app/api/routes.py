"""Handlers for ``/elements/api-v2``: thin shells around :mod:`app.services`."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import views
from app.api.auth import principal_of
from app.api.context import CTX, ApiContext
from app.db import transaction
from app.domain.instanceconfig import ELEMENT_KEY
from app.domain.jsonsafety import check_value, loads_checked
from app.domain.limits import MAX_API_PAGE, MAX_API_PAGE_SIZE, MAX_INSTANCE_ID
from app.domain.pollconfig import (
    CONFIGURATION_KEY,
    ConfigError,
    parse_poller_configuration,
)
from app.errors import BadInput, Conflict, NotFound
from app.models import DeliveryStatus, Instance
from app.providers.oauth import authorize_url
from app.services import activity
from app.services import instances as svc
from app.services.orgs import Principal
from app.services.testpoll import run_test_poll

BASE = "/elements/api-v2"
# A test poll reads from at most this far back (and never past now: dates must stay
# inside the calendar once pollDelay is subtracted).
TEST_POLL_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
# Bodies up to this size parse inline (well under a millisecond); larger ones in a thread.
INLINE_PARSE_BYTES = 16 * 1024
_DIGITS = re.compile(r"^[0-9]{1,19}$")


def ctx_of(request: web.Request) -> ApiContext:
    return request.app[CTX]


def query(request: web.Request, name: str) -> str | None:
    """A query parameter that can be stored, compared and echoed (no NUL, no lone surrogate)."""
    value = request.query.get(name)
    if value is not None:
        check_value(value, name)
    return value


async def json_body(request: web.Request) -> Any:
    """The body, read so that NUL, lone surrogates and deep nesting are a 400 naming the field."""
    if not request.can_read_body:
        raise BadInput("body: a JSON body is required")
    raw = await request.read()
    if len(raw) > INLINE_PARSE_BYTES:  # a large body parses in a thread: no loop stall
        return await asyncio.to_thread(loads_checked, raw)
    return loads_checked(raw)


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = query(request, name)
    if raw is None:
        return default
    # Plain ASCII digits only: int() would also take "1_000", " 7" and non-ASCII digits.
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise BadInput(f"{name}: must be an integer between {lo} and {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadInput(f"{name}: must be between {lo} and {hi}")
    return value


def paging(request: web.Request) -> tuple[int, int]:
    return (
        int_param(request, "page", 1, 1, MAX_API_PAGE),
        int_param(request, "pageSize", 100, 1, MAX_API_PAGE_SIZE),
    )


def instance_id_of(request: web.Request, principal: Principal) -> int:
    """The path's instance id; anything that cannot be an instance of the caller is a 404."""
    raw = request.match_info["id"]
    if not _DIGITS.match(raw) or int(raw) > MAX_INSTANCE_ID:
        raise NotFound("instance not found")
    instance_id = int(raw)
    if principal.instance_id is not None and principal.instance_id != instance_id:
        raise NotFound(f"instance {instance_id} not found")
    return instance_id


async def oauth_url(request: web.Request) -> web.Response:
    """``GET /elements/infusionsoftrest/oauth/url``: where to send the user for consent."""
    if request.match_info["key"] != ELEMENT_KEY:
        raise NotFound("element not found")
    api_key = (query(request, "apiKey") or "").strip()
    callback = (query(request, "callbackUrl") or "").strip()
    if not api_key:
        raise BadInput("apiKey: is required")
    if not callback:
        raise BadInput("callbackUrl: is required")
    url = authorize_url(
        ctx_of(request).settings.infusionsoft_authorize_url,
        api_key,
        callback,
        query(request, "state") or None,
    )
    return web.json_response({"element": ELEMENT_KEY, "oauthUrl": url})


async def create_instance(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = await json_body(request)
    ctx = ctx_of(request)
    instance, token = await svc.create_instance(
        ctx.sessions, ctx.http, ctx.box, ctx.settings, principal.organization_id, body
    )
    return web.json_response(views.instance_view(instance, token=token))


async def list_instances(request: web.Request) -> web.Response:
    principal = principal_of(request)
    page, page_size = paging(request)
    ctx = ctx_of(request)
    async with ctx.sessions() as session:
        rows, total = await svc.list_instances(session, principal.organization_id, page, page_size)
    response = web.json_response([views.instance_view(i) for i in rows])
    response.headers["Elements-Total-Count"] = str(total)
    return response


async def get_instance(request: web.Request) -> web.Response:
    principal = principal_of(request)
    return await _instance_response(request, principal, instance_id_of(request, principal))


async def get_token_instance(request: web.Request) -> web.Response:
    """``GET /instance``: the instance of the ``Element`` token (Open Connectors' route)."""
    principal = principal_of(request)
    if principal.instance_id is None:
        raise BadInput("Authorization: this route needs an Element <instance token>")
    return await _instance_response(request, principal, principal.instance_id)


async def _instance_response(
    request: web.Request, principal: Principal, instance_id: int
) -> web.Response:
    ctx = ctx_of(request)
    async with ctx.sessions() as session:
        try:
            instance = await svc.get_instance(session, principal.organization_id, instance_id)
        except LookupError as exc:
            raise NotFound(str(exc)) from exc
    return web.json_response(views.instance_view(instance))


async def patch_instance(request: web.Request) -> web.Response:
    principal = principal_of(request)
    instance_id = instance_id_of(request, principal)
    body = await json_body(request)
    ctx = ctx_of(request)
    async with transaction(ctx.sessions) as session:
        try:
            instance = await svc.get_instance(session, principal.organization_id, instance_id)
        except LookupError as exc:
            raise NotFound(str(exc)) from exc
        _, removed = await svc.patch_instance(
            session, ctx.http, ctx.box, ctx.settings, instance, body
        )
    await svc.forget_watermarks(ctx.redis, instance_id, removed)
    return web.json_response(views.instance_view(instance))


async def delete_instance(request: web.Request) -> web.Response:
    principal = principal_of(request)
    instance_id = instance_id_of(request, principal)
    ctx = ctx_of(request)
    async with transaction(ctx.sessions) as session:
        try:
            instance = await svc.get_instance(session, principal.organization_id, instance_id)
        except LookupError as exc:
            raise NotFound(str(exc)) from exc
        polled = await svc.delete_instance(session, instance)
    await svc.forget_watermarks(ctx.redis, instance_id, polled)
    return web.json_response({"id": instance_id, "deleted": True})


async def _owned_instance(request: web.Request, session: AsyncSession) -> Instance:
    principal = principal_of(request)
    instance_id = instance_id_of(request, principal)
    try:
        return await svc.get_instance(session, principal.organization_id, instance_id)
    except LookupError as exc:
        raise NotFound(str(exc)) from exc


def since_param(request: web.Request) -> datetime | None:
    raw = query(request, "since")
    if raw is None:
        return None
    return _parse_since(raw, "since")


def _parse_since(raw: object, name: str) -> datetime:
    if not isinstance(raw, str):
        raise BadInput(f"{name}: must be an ISO-8601 date-time")
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        # In UTC now: a far-off offset near year 1 or 9999 must fail here, not in the driver.
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise BadInput(f"{name}: must be an ISO-8601 date-time") from exc


def paged(items: list[dict[str, Any]], total: int) -> web.Response:
    response = web.json_response(items)
    response.headers["Elements-Total-Count"] = str(total)
    return response


async def get_polling(request: web.Request) -> web.Response:
    async with ctx_of(request).sessions() as session:
        instance = await _owned_instance(request, session)
        states = await activity.polling_states(session, instance)
    return web.json_response(views.polling_view(instance, states))


async def run_polling(request: web.Request) -> web.Response:
    async with transaction(ctx_of(request).sessions) as session:
        instance = await _owned_instance(request, session)
        if not instance.events_enabled:
            raise Conflict("configuration.event.notification.enabled: events are not enabled")
        if instance.disabled:
            raise Conflict(
                "disabled: the callback answered 410 Gone; PATCH the instance to enable it"
            )
        await activity.poll_now(session, instance)
    return web.json_response({"id": instance.id, "scheduled": True}, status=202)


async def test_polling(request: web.Request) -> web.Response:
    """Run a poller configuration once and show what it would emit; nothing is stored."""
    body: Any = await json_body(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise BadInput("body: must be an object")
    unknown = set(body) - {"configuration", "since"}
    if unknown:
        raise BadInput(f"{sorted(unknown)[0]}: unknown key (use configuration and since)")
    resources = None
    if body.get("configuration") is not None:
        try:
            resources = parse_poller_configuration(body["configuration"])
        except ConfigError as exc:
            field = exc.field.replace(CONFIGURATION_KEY, "configuration", 1)
            raise BadInput(f"{field}: {exc.detail}") from exc
    since = None
    if body.get("since") is not None:
        since = _parse_since(body["since"], "since")
        if not TEST_POLL_EARLIEST <= since <= datetime.now(UTC):
            raise BadInput("since: must be between 1970-01-01 and now")
    ctx = ctx_of(request)
    async with ctx.sessions() as session:
        instance = await _owned_instance(request, session)
        states = await activity.polling_states(session, instance)
    results = await run_test_poll(
        ctx.settings,
        request.app[CTX].pg,
        ctx.redis,
        ctx.http,
        ctx.box,
        instance,
        states,
        resources,
        since,
    )
    return web.json_response({"id": instance.id, "stored": False, "resources": results})


async def list_events(request: web.Request) -> web.Response:
    event_type = query(request, "eventType")
    if event_type is not None and event_type.upper() not in {"CREATED", "UPDATED"}:
        raise BadInput("eventType: must be CREATED or UPDATED")
    object_type = query(request, "objectType") or None
    since = since_param(request)
    page, page_size = paging(request)
    async with ctx_of(request).sessions() as session:
        instance = await _owned_instance(request, session)
        rows, total = await activity.list_events(
            session,
            instance,
            object_type=object_type,
            event_type=event_type,
            since=since,
            page=page,
            page_size=page_size,
        )
    return paged([views.event_view(event, status) for event, status in rows], total)


def _status_param(request: web.Request, required: bool = False) -> str | None:
    status = query(request, "status")
    if status is None and required:
        raise BadInput("status: is required (pending, delivered, failed or cancelled)")
    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise BadInput("status: must be pending, delivered, failed or cancelled")
    return status


async def list_deliveries(request: web.Request) -> web.Response:
    status = _status_param(request)
    page, page_size = paging(request)
    async with ctx_of(request).sessions() as session:
        instance = await _owned_instance(request, session)
        rows, total = await activity.list_deliveries(
            session, instance, status=status, page=page, page_size=page_size
        )
    return paged([views.delivery_view(d, attempts) for d, attempts in rows], total)


async def retry_delivery(request: web.Request) -> web.Response:
    try:
        delivery_id = uuid.UUID(request.match_info["deliveryId"])
    except ValueError as exc:
        raise NotFound("delivery not found") from exc
    async with transaction(ctx_of(request).sessions) as session:
        instance = await _owned_instance(request, session)
        if not await activity.retry_delivery(session, instance, delivery_id):
            raise NotFound(f"delivery {delivery_id} not found")
    return web.json_response({"id": str(delivery_id), "status": "pending"}, status=202)


async def retry_deliveries(request: web.Request) -> web.Response:
    status = _status_param(request, required=True)
    assert status is not None
    async with transaction(ctx_of(request).sessions) as session:
        instance = await _owned_instance(request, session)
        count = await activity.retry_deliveries(session, instance, status)
    return web.json_response({"count": count}, status=202)


def add_routes(app: web.Application) -> None:
    """Every route under :data:`BASE`; :func:`app.api.auth.auth_middleware` authenticates them."""
    app.router.add_get(BASE + "/elements/{key}/oauth/url", oauth_url)
    app.router.add_post(BASE + "/instances", create_instance)
    app.router.add_get(BASE + "/instances", list_instances)
    app.router.add_get(BASE + "/instances/{id}", get_instance)
    app.router.add_get(BASE + "/instance", get_token_instance)
    app.router.add_patch(BASE + "/instances/{id}", patch_instance)
    app.router.add_delete(BASE + "/instances/{id}", delete_instance)
    app.router.add_get(BASE + "/instances/{id}/polling", get_polling)
    app.router.add_post(BASE + "/instances/{id}/polling/run", run_polling)
    app.router.add_post(BASE + "/instances/{id}/polling/test", test_polling)
    app.router.add_get(BASE + "/instances/{id}/events", list_events)
    app.router.add_get(BASE + "/instances/{id}/deliveries", list_deliveries)
    app.router.add_post(BASE + "/instances/{id}/deliveries/retry", retry_deliveries)
    app.router.add_post(BASE + "/instances/{id}/deliveries/{deliveryId}/retry", retry_delivery)
