"""One poll of one instance: fetch, delta, outbox, then the watermark.

Order matters for at-least-once: events and their deliveries are inserted and
the PostgreSQL watermark checkpoint written in ONE transaction
(:mod:`app.services.outbox`); only after it commits is the Redis watermark moved
and are the deliveries enqueued. A poll that dies anywhere before the commit
leaves every watermark where it was; one that dies after it has lost nothing
(the sweeper enqueues pending deliveries whose lease ran out).

This is the hot path of the whole system (every instance, every interval), so
it reads with one query, writes with one transaction of a few statements, and
talks to Redis in as few round trips as it can.
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

import aiohttp
import asyncpg
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import keys, metrics
from app.domain.delta import (
    DeltaResult,
    Watermark,
    compute_delta,
    lower_bound,
    watermark_from_json,
    watermark_to_json,
)
from app.domain.events import InstanceInfo
from app.domain.fieldpath import compile_path
from app.domain.instanceconfig import ELEMENT_KEY
from app.domain.pollconfig import (
    ResourceConfig,
    default_poller_configuration,
    parse_poller_configuration,
)
from app.metrics import MetricsBatch
from app.models import utcnow
from app.providers.infusionsoft import InfusionsoftClient, ProviderError
from app.security import SecretBox
from app.services.outbox import ResourceResult, record_failures, store_poll
from app.services.tokens import InstanceTokens, RedisBudget, RefreshConfig, release_lock
from app.settings import Settings

log = logging.getLogger(__name__)

POLL_LOCK_TTL_MS = 15 * 60 * 1000
MAX_ERROR_LENGTH = 500

_LOAD = """
    SELECT i.name, CAST(i.tags AS text), i.organization_id,
           i.configuration ->> 'oauth.api.key',
           CAST(i.configuration -> 'event.poller.configuration' AS text),
           i.secrets, i.poll_failures, i.refresh_interval_s,
           p.resource, p.watermark_at, CAST(p.watermark_ids AS text), p.last_success_at,
           coalesce(p.rewound_at > coalesce(p.last_polled_at, '-infinity'), false)
    FROM instances AS i LEFT JOIN poll_states AS p ON p.instance_id = i.id
    WHERE i.id = $1 AND i.deleted_at IS NULL AND i.events_enabled
"""


@dataclass
class ResourceOutcome:
    resource: str
    delta: DeltaResult | None = None
    error: str | None = None
    records: int = 0
    requests: int = 0
    watermark_moved: bool = False
    # Records the delta could not read (no id, or a date that does not match the configured
    # format). Not a failed poll, but shown as the resource's lastError: a wrong date format
    # must not drop events silently.
    warning: str | None = None


@dataclass
class PollOutcome:
    """What one poll did; ``skipped`` when the instance is gone or already being polled."""

    instance_id: int
    skipped: bool = False
    resources: list[ResourceOutcome] = field(default_factory=list)
    events: int = 0
    # (delivery id, ticket): the delivery task claims a delivery only while the lease it
    # was created with still stands, so a duplicate message never sends twice.
    deliveries: list[tuple[uuid.UUID, datetime]] = field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def delivery_ids(self) -> list[uuid.UUID]:
        return [delivery_id for delivery_id, _ in self.deliveries]

    @property
    def failed(self) -> bool:
        return any(r.error for r in self.resources)


@dataclass
class PollDeps:
    """What a poll needs; the worker runtime builds it once per process."""

    settings: Settings
    pg: asyncpg.Pool  # raw pool for the hot path (load and outbox)
    sessions: async_sessionmaker[AsyncSession]  # ORM, for the rare token refresh
    redis: Redis
    http: aiohttp.ClientSession
    box: SecretBox


@dataclass(frozen=True)
class ResourceState:
    resource: str
    checkpoint: Watermark
    last_success_at: datetime | None
    # Rewound (POST …/polling/rewind) and not polled since: the checkpoint wins over any
    # Redis copy, even one a poll that ended just before the rewind wrote late.
    rewound: bool = False


@dataclass(frozen=True)
class Snapshot:
    """What a poll reads about its instance, in one query."""

    info: InstanceInfo
    client_id: str
    resources: dict[str, ResourceConfig]
    secrets: bytes | None
    poll_failures: int
    interval_s: float
    states: list[ResourceState]


@lru_cache(maxsize=4096)
def _parse_config(config_json: str) -> dict[str, ResourceConfig]:
    """Parsing is pure and deterministic: cache it by the configuration's JSON text."""
    return parse_poller_configuration(json.loads(config_json))


def resources_from(config_json: str | None) -> dict[str, ResourceConfig]:
    """The instance's resources; the Keap defaults when it has no poller configuration."""
    if config_json is None:
        return default_poller_configuration()
    return _parse_config(config_json)


def item_key(rendered_path: str) -> str:
    """Keap's envelope key is the last segment of the list path (``/contacts`` → ``contacts``)."""
    path = rendered_path.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1]


async def load_snapshot(pg: asyncpg.Pool, instance_id: int) -> Snapshot | None:
    """The instance and its resources' state, or ``None`` if it is gone or not polling."""
    rows = await pg.fetch(_LOAD, instance_id)
    if not rows:
        return None
    first = rows[0]
    resources = resources_from(first[4])
    states = [
        ResourceState(r[8], Watermark(r[9], frozenset(json.loads(r[10]))), r[11], r[12])
        for r in rows
        if r[8] is not None and r[8] in resources
    ]
    return Snapshot(
        info=InstanceInfo(instance_id, first[0], json.loads(first[1]), first[2], ELEMENT_KEY),
        client_id=first[3] or "",
        resources=resources,
        secrets=first[5],
        poll_failures=first[6],
        interval_s=first[7],
        states=states,
    )


async def load_watermarks(
    redis: Redis, instance_id: int, states: Sequence[ResourceState]
) -> dict[str, Watermark]:
    """Redis is the hot copy; the PostgreSQL checkpoint wins when it is newer (or Redis lost
    it), or when it was rewound since the last poll."""
    if not states:
        return {}
    cached = await redis.mget([keys.watermark(instance_id, s.resource) for s in states])
    result: dict[str, Watermark] = {}
    for state, raw in zip(states, cached, strict=True):
        hot = watermark_from_json(json.loads(raw)) if raw else None
        checkpoint = state.checkpoint
        newer = (
            hot is not None
            and not state.rewound
            and (hot.at, len(hot.ids)) > (checkpoint.at, len(checkpoint.ids))
        )
        result[state.resource] = hot if newer and hot is not None else checkpoint
    return result


async def _poll_resource(
    client: InfusionsoftClient,
    cfg: ResourceConfig,
    state: ResourceState,
    watermark: Watermark,
    started: datetime,
) -> ResourceOutcome:
    outcome = ResourceOutcome(cfg.name)
    path = cfg.url.render(lower_bound(watermark, cfg), UTC)
    try:
        fetched = await client.fetch_all(
            path, item_key(path), compile_path(cfg.id_field), cfg.page_size or 1000
        )
    except ProviderError as exc:
        outcome.error = str(exc)[:MAX_ERROR_LENGTH]
        return outcome
    outcome.records = len(fetched.records)
    outcome.requests = fetched.stats.requests
    # A resource without dates reports "not seen before": its first successful poll only
    # learns what exists (a baseline), or every existing record would look new.
    baseline = cfg.updated is None and cfg.created is None and state.last_success_at is None
    outcome.delta = compute_delta(fetched.records, cfg, watermark, started, baseline=baseline)
    outcome.watermark_moved = outcome.delta.watermark != watermark
    skipped = outcome.delta.skipped_unparseable
    if skipped:
        object_id, reason = skipped[0]
        outcome.warning = (
            f"{len(skipped)} record(s) skipped, unreadable: id {object_id or '?'}: {reason}"
        )[:MAX_ERROR_LENGTH]
        log.warning("%s: %s", cfg.name, outcome.warning)
    return outcome


def _client_for(
    deps: PollDeps, snap: Snapshot, slots: asyncio.Semaphore | None
) -> InfusionsoftClient:
    settings = deps.settings
    secrets = deps.box.open(snap.secrets)
    tokens = InstanceTokens(
        snap.info.id,
        str(secrets.get("access_token", "")),
        deps.sessions,
        deps.redis,
        deps.http,
        deps.box,
        RefreshConfig(
            settings.infusionsoft_token_url,
            snap.client_id,
            str(secrets.get("oauth.api.secret", "")),
            settings.provider_timeout_seconds,
        ),
    )
    budget = (
        RedisBudget(deps.redis, snap.client_id, settings.provider_app_rate_per_second, slots)
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


async def poll_instance(
    deps: PollDeps, instance_id: int, slots: asyncio.Semaphore | None = None
) -> PollOutcome:
    """Poll every configured resource of one instance once (no overlap with another poll).

    ``slots`` is the poll slot the caller holds (given back while waiting on the app budget).
    """
    lock_key = keys.poll_lock(instance_id)
    holder = pysecrets.token_hex(8)
    if not await deps.redis.set(lock_key, holder, nx=True, px=POLL_LOCK_TTL_MS):
        return PollOutcome(instance_id, skipped=True)
    try:
        return await _poll_locked(deps, instance_id, slots)
    finally:
        await release_lock(deps.redis, lock_key, holder)


async def _poll_locked(
    deps: PollDeps, instance_id: int, slots: asyncio.Semaphore | None
) -> PollOutcome:
    snap = await load_snapshot(deps.pg, instance_id)
    if snap is None:
        return PollOutcome(instance_id, skipped=True)
    outcome = PollOutcome(instance_id)
    watermarks = await load_watermarks(deps.redis, instance_id, snap.states)
    client = _client_for(deps, snap, slots)
    started = outcome.started_at = utcnow()
    outcome.resources = list(
        await asyncio.gather(
            *(
                _poll_resource(
                    client, snap.resources[s.resource], s, watermarks[s.resource], started
                )
                for s in snap.states
            )
        )
    )
    lease_until = utcnow() + timedelta(seconds=deps.settings.delivery_lease_seconds)
    results = [ResourceResult(r.resource, r.delta, r.error or r.warning) for r in outcome.resources]
    async with deps.pg.acquire() as conn:
        if _single_statement(results, snap.poll_failures):
            # Nothing changed and nothing failed: only the checkpoint statement runs,
            # and one statement is atomic without a BEGIN/COMMIT round trip each.
            outcome.events, outcome.deliveries = await store_poll(
                conn, snap.info, results, started, lease_until
            )
        else:
            async with conn.transaction():
                outcome.events, outcome.deliveries = await store_poll(
                    conn, snap.info, results, started, lease_until
                )
                await record_failures(
                    conn,
                    instance_id,
                    snap.poll_failures,
                    outcome.failed,
                    snap.interval_s,
                    started,
                )
    outcome.finished_at = utcnow()
    return outcome


def _single_statement(results: Sequence[ResourceResult], poll_failures: int) -> bool:
    """Whether the outbox write is just the checkpoint update (see :func:`store_poll`)."""
    quiet = all(r.delta is not None and not r.delta.changes for r in results)
    return quiet and poll_failures == 0


def poll_metrics(outcome: PollOutcome, scheduled_at: datetime | None) -> MetricsBatch:
    """Counters, histograms and the journal line for one poll."""
    batch = MetricsBatch()
    state = "skipped" if outcome.skipped else "failed" if outcome.failed else "ok"
    batch.inc(metrics.POLLS, {"outcome": state})
    if outcome.skipped or outcome.started_at is None or outcome.finished_at is None:
        return batch
    if scheduled_at is not None:
        batch.observe(metrics.POLL_LAG, max((outcome.started_at - scheduled_at).total_seconds(), 0))
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
            "deliveries": len(outcome.deliveries),
            "requests": requests,
            "failed": int(outcome.failed),
        }
    )
    return batch


def _record(batch: MetricsBatch, outcome: PollOutcome, scheduled_at: datetime | None) -> None:
    """Add a poll's metrics, journal line and moved Redis watermarks to ``batch``."""
    batch.merge(poll_metrics(outcome, scheduled_at))
    for res in outcome.resources:
        if res.delta is not None and res.watermark_moved:
            batch.set(
                keys.watermark(outcome.instance_id, res.resource),
                json.dumps(watermark_to_json(res.delta.watermark)),
            )


async def run_polls(
    deps: PollDeps, items: Sequence[tuple[int, datetime | None]], slots: asyncio.Semaphore
) -> list[PollOutcome]:
    """Poll a batch of instances concurrently, at most ``slots`` polls at once per process.

    Redis watermarks and metrics of the whole batch go out in one round trip at the
    end: the PostgreSQL checkpoints are already committed, Redis is the hot copy.
    One poll's unexpected crash is logged and does not take the batch down: its
    watermarks did not move, so the next scheduled poll covers the same ground.
    """
    batch = MetricsBatch()

    async def one(instance_id: int, scheduled_at: datetime | None) -> PollOutcome | None:
        async with slots:
            try:
                outcome = await poll_instance(deps, instance_id, slots)
            except Exception:
                log.exception("instance %s: poll crashed", instance_id)
                return None
        _record(batch, outcome, scheduled_at)
        return outcome

    done = await asyncio.gather(*(one(i, at) for i, at in items))
    try:
        await batch.flush(deps.redis)
    except Exception:  # Redis is a cache here; the checkpoints are in PostgreSQL
        log.warning("writing Redis watermarks/metrics of a poll batch failed", exc_info=True)
    return [outcome for outcome in done if outcome is not None]
