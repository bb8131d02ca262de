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

A poll that *crashes* (an unexpected exception — not provider weather, which
fails the poll cleanly and backs off) is counted on the instance; after
``QUARANTINE_AFTER_CRASHES`` crashes in a row the instance is quarantined like
one beat cannot schedule: no longer claimed, its resources' ``lastError`` says
why, and a PATCH lifts it. A stored row that cannot be polled then costs one
crash per interval a few times, never a traceback every interval forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache

import aiohttp
import asyncpg
import sqlalchemy.exc
from redis.asyncio import Redis
from redis.exceptions import RedisError
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
from app.domain.pollconfig import ConfigError, ResourceConfig, resources_from_stored
from app.domain.schedule import ScheduleError
from app.domain.timezones import resolve_timezone
from app.logging import bind_log_context, log_context
from app.metrics import MetricsBatch
from app.models import utcnow
from app.providers.infusionsoft import InfusionsoftClient, ProviderError
from app.security import DecryptionError, SecretBox
from app.services.leases import Leases
from app.services.outbox import ResourceResult, record_failures, store_poll
from app.services.tokens import InstanceTokens, RedisBudget, RefreshConfig
from app.settings import Settings
from app.store import instances as instance_store

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 500
#: Polls of one instance that crash in a row before it is quarantined. More than one, so a
#: crash that a retry would not repeat (a race with a concurrent PATCH) costs nothing.
QUARANTINE_AFTER_CRASHES = 3

# Failures of the shared machinery rather than of one instance's data: they never count
# towards quarantine, or a Redis or PostgreSQL outage (or a worker started with the wrong
# POLLINATOR_SECRET_KEY) would quarantine every instance it touched.
_NOT_THE_INSTANCES_FAULT: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    RedisError,
    aiohttp.ClientError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    DecryptionError,
)
# Domain errors whose message is written for the tenant; any other crash is reported by
# its type only (the traceback, which may show internals, is in the worker's log).
_EXPLAINED = (ConfigError, ScheduleError)

_RESET_CRASHES = "UPDATE instances SET poll_crashes = 0 WHERE id = $1"
# Counts a crash; the one that reaches the limit quarantines (later ones match no row).
_CRASHED = """
    UPDATE instances SET
        poll_crashes = poll_crashes + 1,
        quarantined_at = CASE WHEN poll_crashes + 1 >= $2::int THEN $3::timestamptz END,
        quarantine_reason = CASE WHEN poll_crashes + 1 >= $2::int THEN $4::text END
    WHERE id = $1 AND deleted_at IS NULL AND quarantined_at IS NULL
    RETURNING quarantined_at IS NOT NULL
"""
# A poll that found its instance's lease held comes back when that lease would have
# expired, not a whole interval later: if the holder died, its instances are polled
# again within the lease TTL (a live holder renews, and the retry is a cheap skip).
_REARM_BUSY = """
    UPDATE instances SET next_poll_at = LEAST(next_poll_at, now() + make_interval(secs => $2))
    WHERE id = ANY($1::bigint[]) AND deleted_at IS NULL
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
    busy: bool = False  # skipped because another poll of it holds its lease
    crash: str | None = None  # an unexpected error ended the poll ("Type: message")
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
    leases: Leases = field(init=False)

    def __post_init__(self) -> None:
        self.leases = Leases(self.redis)


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
    tokens: bytes | None  # sealed; opened when the provider client is made
    poll_failures: int
    interval_s: float
    poll_crashes: int
    states: list[ResourceState]
    # The instance's zone (``event.poller.timezone``): ``${date:…}`` renders in it and
    # date values without a zone of their own or of their field are read in it.
    timezone: tzinfo = UTC


@lru_cache(maxsize=1024)
def _instance_timezone(name: str | None) -> tzinfo:
    return UTC if not name else resolve_timezone(name)


@lru_cache(maxsize=4096)
def resources_from(poller_json: str) -> dict[str, ResourceConfig]:
    """The instance's resources from its stored poller (``instances.poller`` as JSON text).

    Loading is pure and deterministic, so it is cached by that text: a worker decodes and
    builds each distinct configuration once, not once per poll.
    """
    return resources_from_stored(json.loads(poller_json))


def item_key(rendered_path: str) -> str:
    """Keap's envelope key is the last segment of the list path (``/contacts`` → ``contacts``)."""
    path = rendered_path.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1]


async def load_snapshot(pg: asyncpg.Pool, instance_id: int) -> Snapshot | None:
    """The instance and its resources' state, or ``None`` if it is gone or not polling."""
    found = await instance_store.poll_snapshot(pg, instance_id)
    if found is None:
        return None
    row, rows = found
    resources = resources_from(row.poller_json)
    states = [
        ResourceState(
            r.resource,
            Watermark(r.watermark_at, frozenset(json.loads(r.watermark_ids_json))),
            r.last_success_at,
            r.rewound,
        )
        for r in rows
        if r.resource in resources
    ]
    return Snapshot(
        info=InstanceInfo(
            instance_id, row.name, json.loads(row.tags_json), row.organization_id, ELEMENT_KEY
        ),
        client_id=row.client_id,
        resources=resources,
        tokens=row.sealed_tokens,
        poll_failures=row.poll_failures,
        interval_s=row.interval_s,
        poll_crashes=row.poll_crashes,
        states=states,
        timezone=_instance_timezone(row.timezone),
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
    zone: tzinfo,
) -> ResourceOutcome:
    bind_log_context(resource=cfg.name)  # this coroutine runs as its own task (gather)
    outcome = ResourceOutcome(cfg.name)
    path = cfg.url.render(lower_bound(watermark, cfg), zone)
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
    outcome.delta = compute_delta(
        fetched.records, cfg, watermark, started, baseline=baseline, default_tz=zone
    )
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
    return provider_client(
        deps.settings,
        deps.sessions,
        deps.redis,
        deps.http,
        deps.box,
        ProviderAccount(snap.info.id, snap.info.organization_id, snap.client_id, snap.tokens),
        slots,
    )


@dataclass(frozen=True)
class ProviderAccount:
    """Whose provider account a client reads: the instance, its app and its sealed tokens."""

    instance_id: int
    organization_id: int
    client_id: str
    sealed_tokens: bytes | None


def provider_client(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    redis: Redis,
    http: aiohttp.ClientSession,
    box: SecretBox,
    account: ProviderAccount,
    slots: asyncio.Semaphore | None = None,
) -> InfusionsoftClient:
    """A provider client for one instance: its tokens (refreshed single-flight) and its
    app's request budget (scoped to the organization). Only the tokens are opened here:
    the client secret is read (and decrypted) by a refresh, the one thing that needs it."""
    tokens = InstanceTokens(
        account.instance_id,
        str(box.open(account.sealed_tokens).get("access_token", "")),
        sessions,
        redis,
        http,
        box,
        RefreshConfig(
            settings.infusionsoft_token_url, account.client_id, settings.provider_timeout_seconds
        ),
    )
    budget = (
        RedisBudget(
            redis,
            keys.app_budget(account.organization_id, account.client_id),
            settings.provider_app_rate_per_second,
            slots,
        )
        if settings.provider_app_rate_per_second > 0
        else None
    )
    return InfusionsoftClient(
        http,
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
    holder = await deps.leases.acquire(lock_key)
    if holder is None:
        return PollOutcome(instance_id, skipped=True, busy=True)
    try:
        return await _poll_locked(deps, instance_id, slots)
    finally:
        await deps.leases.release(lock_key, holder)


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
                    client,
                    snap.resources[s.resource],
                    s,
                    watermarks[s.resource],
                    started,
                    snap.timezone,
                )
                for s in snap.states
            )
        )
    )
    lease_until = utcnow() + timedelta(seconds=deps.settings.delivery_lease_seconds)
    results = [ResourceResult(r.resource, r.delta, r.error or r.warning) for r in outcome.resources]
    async with deps.pg.acquire() as conn:
        if _single_statement(results, snap.poll_failures) and not snap.poll_crashes:
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
                if snap.poll_crashes:  # this poll ran to the end: the crashes were not "in a row"
                    await conn.execute(_RESET_CRASHES, instance_id)
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
        if res.delta is not None and res.delta.skipped_unparseable:
            # No resource label: resource names are tenant input (unbounded cardinality).
            batch.inc(metrics.RECORDS_SKIPPED, None, len(res.delta.skipped_unparseable))
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


def crash_reason(exc: Exception) -> str:
    """The quarantine reason shown as the resources' ``lastError``."""
    what = f"{type(exc).__name__}: {exc}" if isinstance(exc, _EXPLAINED) else type(exc).__name__
    return (
        f"polls crashed {QUARANTINE_AFTER_CRASHES} times in a row ({what}); "
        "polling is paused until the instance is updated"
    )[:MAX_ERROR_LENGTH]


async def count_crash(
    deps: PollDeps, batch: MetricsBatch, instance_id: int, exc: Exception
) -> None:
    """Count a crashed poll against its instance; quarantine it at the limit."""
    if isinstance(exc, _NOT_THE_INSTANCES_FAULT):
        return
    reason = crash_reason(exc)
    try:
        quarantined = await deps.pg.fetchval(
            _CRASHED, instance_id, QUARANTINE_AFTER_CRASHES, utcnow(), reason
        )
    except Exception as write_exc:  # best effort: the next crash counts again
        log.warning(
            "instance %s: counting a crashed poll failed (%s)",
            instance_id,
            type(write_exc).__name__,
        )
        return
    if quarantined:
        log.warning("instance %s quarantined: %s", instance_id, reason)
        batch.inc(metrics.QUARANTINES, {"cause": "crash"})


async def run_polls(
    deps: PollDeps, items: Sequence[tuple[int, datetime | None]], slots: asyncio.Semaphore
) -> list[PollOutcome]:
    """Poll a batch of instances concurrently, at most ``slots`` polls at once per process.

    Redis watermarks and metrics of the whole batch go out in one round trip at the
    end: the PostgreSQL checkpoints are already committed, Redis is the hot copy.
    One poll's unexpected crash is logged and does not take the batch down: its
    watermarks did not move, so the next scheduled poll covers the same ground; and it
    counts towards quarantining that instance (:func:`count_crash`).
    """
    batch = MetricsBatch()

    async def one(instance_id: int, scheduled_at: datetime | None) -> PollOutcome:
        with log_context(instance_id=instance_id):
            async with slots:
                try:
                    outcome = await poll_instance(deps, instance_id, slots)
                except Exception as exc:
                    log.exception("instance %s: poll crashed", instance_id)
                    await count_crash(deps, batch, instance_id, exc)
                    crash = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
                    return PollOutcome(instance_id, skipped=True, crash=crash)
        _record(batch, outcome, scheduled_at)
        return outcome

    done = await asyncio.gather(*(one(i, at) for i, at in items))
    busy = [o.instance_id for o in done if o.busy]
    if busy:
        async with deps.pg.acquire() as conn:
            await conn.execute(_REARM_BUSY, busy, deps.leases.ttl_ms / 1000)
    try:
        await batch.flush(deps.redis)
    except Exception:  # Redis is a cache here; the checkpoints are in PostgreSQL
        log.warning("writing Redis watermarks/metrics of a poll batch failed", exc_info=True)
    return done
