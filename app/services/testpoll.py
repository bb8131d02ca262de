"""A test poll: run a poller configuration once against the provider and show what it finds.

A configuration copied from elsewhere (Open Connectors, another tenant, a guess at Keap's
field names) should be seen working before it is trusted with events. A test poll fetches
each resource exactly as a real poll would — same URL rendering, pages, tokens and budget,
same delta — and returns the events it *would* emit and the records it could not read. It
writes nothing: no watermark moves, no event or delivery is stored, nothing is sent. (The
provider may rotate the instance's OAuth tokens on the way; those are stored, as any
refresh's are.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from app.domain.delta import compute_delta
from app.domain.fieldpath import compile_path
from app.domain.isodate import format_ms
from app.domain.limits import MAX_PAGE_SIZE
from app.domain.pollconfig import ResourceConfig, resources_from_stored
from app.domain.timezones import resolve_timezone
from app.domain.watermark import Watermark, initial_watermark, lower_bound
from app.models import Instance, PollState
from app.providers.infusionsoft import InfusionsoftClient, ProviderError
from app.security import SecretBox
from app.services.polling import ProviderAccount, item_key, provider_client
from app.settings import Settings

#: Events listed per resource (all are counted).
MAX_LISTED_EVENTS = 100
MAX_LISTED_SKIPPED = 20


async def _one(
    client: InfusionsoftClient,
    cfg: ResourceConfig,
    watermark: Watermark,
    zone: tzinfo,
    now: datetime,
) -> dict[str, Any]:
    path = cfg.url.render(lower_bound(watermark, cfg), zone)
    result: dict[str, Any] = {
        "resource": cfg.name,
        "request": path,
        "since": format_ms(watermark.at),
    }
    try:
        fetched = await client.fetch_all(
            path, item_key(path), compile_path(cfg.id_field), cfg.page_size or MAX_PAGE_SIZE
        )
    except ProviderError as exc:
        return {**result, "error": str(exc), "records": 0, "eventCount": 0, "events": []}
    delta = compute_delta(fetched.records, cfg, watermark, now, default_tz=zone)
    return {
        **result,
        "error": None,
        "records": len(fetched.records),
        "requests": fetched.stats.requests,
        "eventCount": len(delta.changes),
        "events": [
            {"eventType": c.event_type, "objectId": c.object_id, "date": format_ms(c.date)}
            for c in delta.changes[:MAX_LISTED_EVENTS]
        ],
        "skippedCount": len(delta.skipped_unparseable),
        "skipped": [
            {"objectId": object_id, "reason": reason}
            for object_id, reason in delta.skipped_unparseable[:MAX_LISTED_SKIPPED]
        ],
    }


async def run_test_poll(
    settings: Settings,
    pg: asyncpg.Pool,
    redis: Redis,
    http: aiohttp.ClientSession,
    box: SecretBox,
    instance: Instance,
    states: Sequence[PollState],
    resources: dict[str, ResourceConfig] | None,
    since: datetime | None,
) -> list[dict[str, Any]]:
    """Each resource's would-be events. ``resources`` (a parsed poller configuration)
    replace the instance's for this run; ``since`` replaces each resource's
    watermark (otherwise: its watermark in ``states``, or one interval ago for a resource
    not polled yet). ``pg`` is for a token refresh, the one write a test poll can make.
    """
    assert instance.id is not None
    if resources is None:
        resources = resources_from_stored(instance.poller)
    zone = resolve_timezone(instance.timezone) if instance.timezone else UTC
    now = datetime.now(UTC)
    by_name = {s.resource: s for s in states}
    default_start = now - timedelta(minutes=instance.refresh_interval_minutes)

    def watermark(name: str) -> Watermark:
        if since is not None:
            return initial_watermark(since)
        state = by_name.get(name)
        if state is None:
            return initial_watermark(default_start)
        return Watermark(state.watermark_at, frozenset(state.watermark_ids))

    client = provider_client(
        settings,
        pg,
        redis,
        http,
        box,
        ProviderAccount(
            instance.id,
            instance.organization_id,
            instance.client_id,
            instance.tokens,
        ),
    )
    return list(
        await asyncio.gather(
            *(_one(client, cfg, watermark(name), zone, now) for name, cfg in resources.items())
        )
    )
