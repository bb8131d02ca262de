"""``GET /elements/api-v2/events``: the organization-wide event log.

The per-instance log (``/instances/{id}/events``) answers "what did this instance see";
SREs and the web console also need "what happened across the organization", filtered by
instance, resource, type and time. Same event shape as the per-instance route, plus
``instanceId``. Only the caller's live instances are ever read; an ``Element`` token
narrows the log to its own instance.
"""

from __future__ import annotations

from aiohttp import web

from app.api.auth import principal_of
from app.api.routes import BASE, ctx_of, int_param, paged, paging, query, since_param
from app.api.views import event_view
from app.domain.limits import MAX_INSTANCE_ID
from app.errors import BadInput, NotFound
from app.store import events as store

EVENT_TYPES = frozenset({"CREATED", "UPDATED"})


async def list_org_events(request: web.Request) -> web.Response:
    principal = principal_of(request)
    event_type = query(request, "eventType")
    if event_type and event_type.upper() not in EVENT_TYPES:
        raise BadInput("eventType: must be CREATED or UPDATED")
    instance_id: int | None = None
    if query(request, "instanceId") is not None:
        instance_id = int_param(request, "instanceId", 0, 1, MAX_INSTANCE_ID)
    if principal.instance_id is not None:
        if instance_id not in (None, principal.instance_id):
            raise NotFound(f"instance {instance_id} not found")
        instance_id = principal.instance_id
    wanted = store.EventFilter(
        organization_id=principal.organization_id,
        instance_id=instance_id,
        object_type=query(request, "objectType") or None,
        event_type=event_type,
        since=since_param(request),
    )
    page, page_size = paging(request)
    async with ctx_of(request).sessions() as session:
        if instance_id is not None and not await store.owns_live_instance(
            session, principal.organization_id, instance_id
        ):
            raise NotFound(f"instance {instance_id} not found")
        rows, total = await store.list_org_events(session, wanted, page=page, page_size=page_size)
    items = [
        {"instanceId": event.instance_id, **event_view(event, status)} for event, status in rows
    ]
    return paged(items, total)


def add_console_routes(app: web.Application) -> None:
    app.router.add_get(BASE + "/events", list_org_events)
