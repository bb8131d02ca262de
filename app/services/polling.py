"""One poll of one instance: fetch, delta, outbox, then the watermark.

Order matters for at-least-once: events and their deliveries are inserted and
the PostgreSQL watermark checkpoint written in ONE transaction; only after it
commits is the Redis watermark moved and are the deliveries enqueued. A poll
that dies anywhere before the commit leaves every watermark where it was; one
that dies after it has lost nothing (the sweeper enqueues pending deliveries).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets as pysecrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import keys, metrics
from app.domain.delta import (
    DeltaResult,
    Watermark,
    compute_delta,
    lower_bound,
    watermark_from_json,
    watermark_to_json,
)
from app.domain.events import EventRecord, InstanceInfo, build_payload, chunk_events, event_id
from app.domain.fieldpath import compile_path
from app.domain.instanceconfig import ELEMENT_KEY, POLLER_KEY
from app.domain.pollconfig import (
    ResourceConfig,
    default_poller_configuration,
    parse_poller_configuration,
)
from app.domain.schedule import failure_backoff_s
from app.metrics import MetricsBatch
from app.models import Delivery, DeliveryStatus, Event, Instance, PollState, utcnow
from app.providers.infusionsoft import InfusionsoftClient, ProviderError
from app.services.tokens import InstanceTokens, RedisBudget, RefreshConfig, release_lock
from app.settings import Settings

log = logging.getLogger(__name__)

POLL_LOCK_TTL_MS = 15 * 60 * 1000
MAX_ERROR_LENGTH = 500


@dataclass
class ResourceOutcome:
    resource: str
    delta: DeltaResult | None = None
    error: str | None = None
    records: int = 0
    requests: int = 0


@dataclass
class PollOutcome:
    """What one poll did; ``skipped`` when another poll of the instance was running."""

    instance_id: int
    skipped: bool = False
    resources: list[ResourceOutcome] = field(default_factory=list)
    events: int = 0
    # (delivery id, ticket): the ticket is the lease the delivery was created with; the
    # delivery task claims the delivery only while that lease still stands.
    deliveries: list[tuple[uuid.UUID, datetime]] = field(default_factory=list)

    @property
    def delivery_ids(self) -> list[uuid.UUID]:
        return [delivery_id for delivery_id, _ in self.deliveries]

    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def failed(self) -> bool:
        return any(r.error for r in self.resources)


@dataclass
class PollDeps:
    """What a poll needs; the worker runtime builds it once per process."""

    settings: Settings
    sessions: Any  # async_sessionmaker[AsyncSession]
    redis: Redis
    http: Any  # aiohttp.ClientSession
    box: Any  # SecretBox


@lru_cache(maxsize=4096)
def _parse_config(config_json: str) -> dict[str, ResourceConfig]:
    """Parsing is pure and deterministic: cache it by the configuration's JSON."""
    return parse_poller_configuration(json.loads(config_json))


def resources_of(instance: Instance) -> dict[str, ResourceConfig]:
    raw = instance.configuration.get(POLLER_KEY)
    if raw is None:
        return default_poller_configuration()
    return _parse_config(json.dumps(raw, sort_keys=True))


def item_key(rendered_path: str) -> str:
    """Keap's envelope key is the last segment of the list path (``/contacts`` → ``contacts``)."""
    path = rendered_path.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1]


async def _load_watermarks(
    redis: Redis, instance_id: int, states: Sequence[PollState]
) -> dict[str, Watermark]:
    """Redis is the hot copy; the PostgreSQL checkpoint wins when it is newer (or Redis lost it)."""
    result: dict[str, Watermark] = {}
    raw = await redis.mget([keys.watermark(instance_id, s.resource) for s in states])
    for state, cached in zip(states, raw, strict=True):
        checkpoint = Watermark(state.watermark_at, frozenset(state.watermark_ids))
        hot = watermark_from_json(json.loads(cached)) if cached else None
        newer = hot is not None and ((hot.at, len(hot.ids)) > (checkpoint.at, len(checkpoint.ids)))
        result[state.resource] = hot if newer and hot is not None else checkpoint
    return result


async def _poll_resource(
    client: InfusionsoftClient,
    cfg: ResourceConfig,
    state: PollState,
    watermark: Watermark,
    started: datetime,
) -> ResourceOutcome:
    outcome = ResourceOutcome(cfg.name)
    path = cfg.url.render(lower_bound(watermark, cfg), UTC)
    id_getter = compile_path(cfg.id_field)
    try:
        fetched = await client.fetch_all(path, item_key(path), id_getter, cfg.page_size or 1000)
    except ProviderError as exc:
        outcome.error = str(exc)[:MAX_ERROR_LENGTH]
        return outcome
    outcome.records = len(fetched.records)
    outcome.requests = fetched.stats.requests
    # A resource without dates reports "not seen before": its first successful poll only
    # learns what exists (a baseline), or every existing record would look new.
    baseline = cfg.updated is None and cfg.created is None and state.last_success_at is None
    outcome.delta = compute_delta(fetched.records, cfg, watermark, started, baseline=baseline)
    return outcome


def _client_for(deps: PollDeps, instance: Instance, secrets: dict[str, Any]) -> InfusionsoftClient:
    assert instance.id is not None
    settings = deps.settings
    client_id = str(instance.configuration.get("oauth.api.key", ""))
    tokens = InstanceTokens(
        instance.id,
        str(secrets.get("access_token", "")),
        deps.sessions,
        deps.redis,
        deps.http,
        deps.box,
        RefreshConfig(
            settings.infusionsoft_token_url,
            client_id,
            str(secrets.get("oauth.api.secret", "")),
            settings.provider_timeout_seconds,
        ),
    )
    budget = (
        RedisBudget(deps.redis, client_id, settings.provider_app_rate_per_second)
        if settings.provider_app_rate_per_second > 0
        else None
    )
    return InfusionsoftClient(
        deps.http,
        settings.infusionsoft_api_url,
        tokens,
        budget,
        timeout_s=settings.provider_timeout_seconds,
    )


async def poll_instance(deps: PollDeps, instance_id: int) -> PollOutcome:
    """Poll every configured resource of one instance once (no overlap with another poll)."""
    lock_key = keys.poll_lock(instance_id)
    holder = pysecrets.token_hex(8)
    if not await deps.redis.set(lock_key, holder, nx=True, px=POLL_LOCK_TTL_MS):
        return PollOutcome(instance_id, skipped=True)
    try:
        return await _poll_locked(deps, instance_id)
    finally:
        await release_lock(deps.redis, lock_key, holder)


async def _poll_locked(deps: PollDeps, instance_id: int) -> PollOutcome:
    outcome = PollOutcome(instance_id)
    async with deps.sessions() as session:
        instance = await session.get(Instance, instance_id)
        if instance is None or instance.deleted_at is not None or not instance.events_enabled:
            return PollOutcome(instance_id, skipped=True)
        states = list(
            (
                await session.execute(
                    select(PollState).where(col(PollState.instance_id) == instance_id)
                )
            ).scalars()
        )
    configs = resources_of(instance)
    states = [s for s in states if s.resource in configs]
    watermarks = await _load_watermarks(deps.redis, instance_id, states)
    client = _client_for(deps, instance, deps.box.open(instance.secrets))
    started = outcome.started_at = utcnow()
    outcome.resources = list(
        await asyncio.gather(
            *(
                _poll_resource(client, configs[s.resource], s, watermarks[s.resource], started)
                for s in states
            )
        )
    )
    await _store(deps, instance, outcome, started)
    outcome.finished_at = utcnow()
    return outcome


def poll_metrics(outcome: PollOutcome, scheduled_at: datetime | None) -> MetricsBatch:
    """Counters, histograms and the journal line for one poll."""
    batch = MetricsBatch()
    state = "skipped" if outcome.skipped else "failed" if outcome.failed else "ok"
    batch.inc(metrics.POLLS, {"outcome": state})
    if outcome.skipped or outcome.started_at is None or outcome.finished_at is None:
        return batch
    lag = (outcome.started_at - scheduled_at).total_seconds() if scheduled_at else None
    if lag is not None:
        batch.observe(metrics.POLL_LAG, max(lag, 0.0))
    batch.observe(metrics.POLL_DURATION, (outcome.finished_at - outcome.started_at).total_seconds())
    requests = 0
    for res in outcome.resources:
        requests += res.requests
        if res.error:
            batch.inc(metrics.POLL_ERRORS, {"kind": res.error.split(":", 1)[0]})
        elif res.delta is not None and res.delta.changes:
            batch.inc(metrics.POLL_EVENTS, {"resource": res.resource}, len(res.delta.changes))
    batch.inc(metrics.POLL_REQUESTS, None, requests)
    batch.journal(
        {
            "instance": outcome.instance_id,
            "scheduled": scheduled_at.isoformat() if scheduled_at else "",
            "started": outcome.started_at.isoformat(),
            "finished": outcome.finished_at.isoformat(),
            "events": outcome.events,
            "deliveries": len(outcome.delivery_ids),
            "requests": requests,
            "failed": int(outcome.failed),
        }
    )
    return batch


async def run_poll(deps: PollDeps, instance_id: int, scheduled_at: datetime | None) -> PollOutcome:
    """One poll plus its metrics (the Celery task's whole body)."""
    outcome = await poll_instance(deps, instance_id)
    try:
        await poll_metrics(outcome, scheduled_at).flush(deps.redis)
    except Exception:  # metrics are best effort; the poll itself is already committed
        log.warning("instance %s: recording poll metrics failed", instance_id, exc_info=True)
    return outcome


def _event_records(instance_id: int, resource: str, delta: DeltaResult) -> list[EventRecord]:
    return [
        EventRecord(
            id=event_id(instance_id, resource, change.object_id, change.date),
            object_type=resource,
            object_id=change.object_id,
            event_type=change.event_type,
            date=change.date,
            record=dict(change.record),
        )
        for change in delta.changes
    ]


async def _insert_new_events(
    session: AsyncSession, instance_id: int, events: list[EventRecord], poll_date: datetime
) -> list[EventRecord]:
    """Insert, skipping events already stored (same record, same updated date)."""
    if not events:
        return []
    table = Event.__table__  # type: ignore[attr-defined]
    rows = [
        {
            "id": e.id,
            "instance_id": instance_id,
            "object_type": e.object_type,
            "object_id": e.object_id,
            "event_type": e.event_type,
            "event_date": e.date,
            "poll_date": poll_date,
            "record": e.record,
        }
        for e in events
    ]
    inserted: set[uuid.UUID] = set()
    for start in range(0, len(rows), 1000):
        stmt = (
            pg_insert(table)
            .values(rows[start : start + 1000])
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(table.c.id)
        )
        inserted.update((await session.execute(stmt)).scalars())
    return [e for e in events if e.id in inserted]


async def _store(
    deps: PollDeps, instance: Instance, outcome: PollOutcome, started: datetime
) -> None:
    """The outbox transaction, then Redis watermarks."""
    assert instance.id is not None
    lease_s = deps.settings.delivery_lease_seconds
    info = InstanceInfo(
        instance.id, instance.name, list(instance.tags), instance.organization_id, ELEMENT_KEY
    )
    now = utcnow()
    advanced: dict[str, Watermark] = {}
    async with deps.sessions() as session, session.begin():
        for res in outcome.resources:
            values: dict[str, Any] = {"last_polled_at": now}
            if res.delta is None:
                values.update(
                    consecutive_failures=col(PollState.consecutive_failures) + 1,
                    last_error=res.error,
                )
            else:
                new = await _insert_new_events(
                    session,
                    instance.id,
                    _event_records(instance.id, res.resource, res.delta),
                    started,
                )
                outcome.events += len(new)
                outcome.deliveries += await _create_deliveries(
                    session, info, new, started, now + timedelta(seconds=lease_s)
                )
                wm = res.delta.watermark
                advanced[res.resource] = wm
                values.update(
                    watermark_at=wm.at,
                    watermark_ids=sorted(wm.ids),
                    last_success_at=now,
                    consecutive_failures=0,
                    last_error=None,
                )
            await session.execute(
                update(PollState)
                .where(
                    col(PollState.instance_id) == instance.id,
                    col(PollState.resource) == res.resource,
                )
                .values(**values)
            )
        await _reschedule_after_failure(session, instance, outcome, now)
    if advanced:
        await deps.redis.mset(
            {
                keys.watermark(instance.id, name): json.dumps(watermark_to_json(wm))
                for name, wm in advanced.items()
            }
        )


async def _reschedule_after_failure(
    session: AsyncSession, instance: Instance, outcome: PollOutcome, now: datetime
) -> None:
    """A failed poll backs off (the next slot beat chose may be too soon); success resets."""
    if not outcome.failed:
        if instance.poll_failures:
            await session.execute(
                update(Instance).where(col(Instance.id) == instance.id).values(poll_failures=0)
            )
        return
    failures = instance.poll_failures + 1
    backoff_at = now + timedelta(seconds=failure_backoff_s(failures, instance.refresh_interval_s))
    await session.execute(
        update(Instance)
        .where(col(Instance.id) == instance.id)
        .values(poll_failures=failures, next_poll_at=_later(col(Instance.next_poll_at), backoff_at))
    )


def _later(column: Any, at: datetime) -> Any:
    from sqlalchemy import func

    return func.greatest(column, at)


async def _create_deliveries(
    session: AsyncSession,
    info: InstanceInfo,
    events: list[EventRecord],
    poll_date: datetime,
    lease_until: datetime,
) -> list[tuple[uuid.UUID, datetime]]:
    """Chunk new events into deliveries of ≤ 10, insert them and link their events."""
    if not events:
        return []
    now = utcnow()
    rows: list[dict[str, Any]] = []
    links: list[tuple[uuid.UUID, uuid.UUID]] = []
    ordered = sorted(events, key=lambda e: (e.date, e.object_id))
    for chunk in chunk_events(ordered):
        delivery_id, body = build_payload(info, chunk, poll_date)
        rows.append(
            {
                "id": delivery_id,
                "instance_id": info.id,
                "status": DeliveryStatus.PENDING.value,
                "body": body,
                "event_count": len(chunk),
                "next_attempt_at": lease_until,
                "created_at": now,
            }
        )
        links += [(e.id, delivery_id) for e in chunk]
    await session.execute(pg_insert(Delivery.__table__).values(rows))  # type: ignore[attr-defined]
    await session.execute(
        _LINK_EVENTS, {"events": [e for e, _ in links], "deliveries": [d for _, d in links]}
    )
    return [(row["id"], lease_until) for row in rows]


_LINK_EVENTS = text("""
    UPDATE events AS e SET delivery_id = u.delivery_id
    FROM unnest(CAST(:events AS uuid[]), CAST(:deliveries AS uuid[])) AS u(event_id, delivery_id)
    WHERE e.id = u.event_id
""")
