"""``GET /ui/api/instances``: one page of the console's instance list in one request.

The list shows each instance with its per-resource polling state and a failed-deliveries
badge. Through the public API that is ``GET /instances`` plus, per instance,
``GET .../polling`` and ``GET .../deliveries?status=failed`` (2N+1 requests, each spending
the organization's request budget); this console-only route answers the same page with
both added to each instance, from four statements. The public shapes are reused
unchanged: each item is the SPEC instance (``GET /instances``) plus ``polling`` (exactly
``GET .../polling``) and ``failedDeliveries``.

It lives under the console's prefix, not the API's base path, so the public API and its
OpenAPI document stay as SPEC states them; it is authenticated and rate limited like the
API (:data:`app.api.auth.CONSOLE_API`).
"""

from __future__ import annotations

from typing import Any

from app.api import views
from app.api.context import ApiContext
from app.services import instances as svc
from app.store import console as store


async def instance_page(
    ctx: ApiContext, organization_id: int, page: int, page_size: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the organization's instances with their polling state, and the total."""
    async with ctx.sessions() as session:
        rows, total = await svc.list_instances(session, organization_id, page, page_size)
        ids = [instance.id for instance in rows if instance.id is not None]
        states = await store.poll_states(session, ids)
        failed = await store.failed_deliveries(session, ids)
    items = []
    for instance in rows:
        assert instance.id is not None  # a stored row
        view = views.instance_view(instance)
        view["polling"] = views.polling_view(instance, states.get(instance.id, []))
        view["failedDeliveries"] = failed.get(instance.id, 0)
        items.append(view)
    return items, total
