"""One poll of one instance: lock → snapshot → fetch → delta → commit → mirror.

Orchestration only: the statements are :mod:`app.store.polling` and
:mod:`app.store.outbox`, both copies of the watermark are
:class:`app.store.watermarks.WatermarkStore` (its docstring has the truth model), and
the decisions are :mod:`app.domain`.

Order matters for at-least-once. Under the instance's poll lease: read the snapshot
(the instance and every resource's checkpoint) and the Redis watermarks, fetch, compute
the deltas; then insert events and their deliveries and write the checkpoints in ONE
PostgreSQL transaction (:mod:`app.services.outbox`); only after it commits are the Redis
watermarks moved (still under the lease, so no later poll of the instance can read
Redis before it) and, by the caller, the deliveries enqueued. A poll that dies anywhere
before the commit leaves every watermark where it was; one that dies after it has lost
nothing (Redis is repaired from the checkpoint by the next poll, and the sweeper
enqueues pending deliveries whose lease ran out).

This is the hot path of the whole system (every instance, every interval), so a batch
of polls reads with one query and one Redis round trip for all of them (:func:`run_polls`),
each poll writes with one transaction of a few statements (quiet polls: one statement
shared by those that end within 10 ms, :mod:`app.services.coalesce`), and talks to Redis
in as few round trips as it can (the leases of many polls in one script call).

A poll that *crashes* (an unexpected exception — not provider weather, which
fails the poll cleanly and backs off) is counted on the instance; after
``QUARANTINE_AFTER_CRASHES`` crashes in a row the instance is quarantined like
one beat cannot schedule: no longer claimed, its resources' ``lastError`` says
why, and a PATCH lifts it. A stored row that cannot be polled then costs one
crash per interval a few times, never a traceback every interval forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Final

import aiohttp
import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import keys, metrics
from app.domain.delta import DeltaResult, compute_delta
from app.domain.fieldpath import compile_path
from app.domain.limits import MAX_PAGE_SIZE
from app.domain.pollconfig import ConfigError, ResourceConfig
from app.domain.rows import utcnow
from app.domain.schedule import ScheduleError
from app.domain.watermark import Mirror, Start, Watermark, lower_bound
from app.logging import bind_log_context, log_context
from app.metrics import MetricsBatch
from app.providers.infusionsoft import InfusionsoftClient, ProviderError
from app.security import DecryptionError, SecretBox
from app.services.coalesce import WINDOW_S, Coalescer
from app.services.leases import Leases
from app.services.outbox import ResourceResult, record_failures, store_poll
from app.services.tokens import InstanceTokens, RedisBudget, RefreshConfig
from app.settings import Settings
from app.store import polling as store
from app.store.polling import ResourceState, Snapshot
from app.store.watermarks import CheckpointWrite, WatermarkStore, write_checkpoints_many

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
    DecryptionError,
)
#: A poll that finds its instance being polled tries its lease again after each of these
#: pauses before it is deferred (to when that lease would expire, :func:`store.rearm_busy`).
#: The other poll usually ends within a second: a poll-now, or every instance made due at
#: once, catches scheduled polls in flight, and those would otherwise wait out the TTL.
BUSY_RETRY_S: Final = (0.1, 0.2, 0.4, 0.8)

# Domain errors whose message is written for the tenant; any other crash is reported by
# its type only (the traceback, which may show internals, is in the worker's log).
_EXPLAINED = (ConfigError, ScheduleError)


@dataclass
class ResourceOutcome:
    resource: str
    delta: DeltaResult | None = None
    error: str | None = None  # lastError as the tenant sees it: "<kind>: <detail>"
    error_kind: str | None = None  # the provider fault's class (metrics label), never parsed back
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
    """What a poll needs; the worker runtime builds it once per process.

    Its group commits (quiet polls' checkpoints, lease returns) serve every batch the
    process runs, so polls of different batches that end within the window share a round
    trip. They belong to the process's one event loop (their sender is a task on it).
    """

    settings: Settings
    pg: asyncpg.Pool  # the worker's one database client (snapshot, outbox, token refresh)
    redis: Redis
    http: aiohttp.ClientSession
    box: SecretBox
    leases: Leases = field(init=False)
    watermarks: WatermarkStore = field(init=False)
    quiet: QuietCommits = field(init=False)
    returns: LeaseReturns = field(init=False)

    def __post_init__(self) -> None:
        self.leases = Leases(self.redis)
        self.watermarks = WatermarkStore(self.redis)
        self.quiet = QuietCommits(self.pg)
        self.returns = LeaseReturns(self.leases)


def item_key(rendered_path: str) -> str:
    """Keap's envelope key is the last segment of the list path (``/contacts`` → ``contacts``)."""
    path = rendered_path.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1]


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
            path, item_key(path), compile_path(cfg.id_field), cfg.page_size or MAX_PAGE_SIZE
        )
    except ProviderError as exc:
        outcome.error = str(exc)[:MAX_ERROR_LENGTH]
        outcome.error_kind = exc.kind
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
        deps.pg,
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
    pg: asyncpg.Pool,
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
        pg,
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


class QuietCommits:
    """The checkpoints of quiet polls, written together (group commit,
    :class:`app.services.coalesce.Coalescer`).

    A quiet poll (nothing changed, nothing failed: its commit would be the checkpoint
    statement alone) queues its checkpoints here and waits for them to be written with
    those of the polls that end within the window, in one statement. Each poll still
    moves its Redis watermarks only after the statement carrying its checkpoints
    returned, and stores no events, so at-least-once is as for a single poll.

    A statement that fails for a reason that could be one instance's data is not
    allowed to fail the whole group: each of its polls then writes alone
    (:meth:`commit` answers ``False``), so a crash stays counted on its own instance.
    """

    def __init__(self, pg: asyncpg.Pool, window_s: float = WINDOW_S) -> None:
        self.pg = pg
        self._group: Coalescer[tuple[int, datetime, list[CheckpointWrite]]] = Coalescer(
            self._write, window_s
        )

    async def commit(
        self, instance_id: int, started: datetime, writes: list[CheckpointWrite]
    ) -> bool:
        """``True`` once this poll's checkpoints are written; ``False``: write them alone."""
        return await self._group.join((instance_id, started, writes))

    async def _write(self, group: list[tuple[int, datetime, list[CheckpointWrite]]]) -> bool:
        try:
            async with self.pg.acquire() as conn:
                await write_checkpoints_many(conn, group)
        except _NOT_THE_INSTANCES_FAULT:
            raise
        except Exception:
            log.warning(
                "quiet polls' checkpoints failed together; each poll writes its own", exc_info=True
            )
            return False
        return True


class LeaseReturns:
    """Poll leases given back together: polls that end within the window
    share one round trip (:class:`app.services.coalesce.Coalescer`). Each poll still
    returns only after its own lease was given back, so its watermarks were mirrored
    under it.
    """

    def __init__(self, leases: Leases, window_s: float = WINDOW_S) -> None:
        self.leases = leases
        self._group: Coalescer[tuple[str, str]] = Coalescer(self._give_back, window_s)

    async def give_back(self, key: str, token: str) -> None:
        try:
            sent = await self._group.join((key, token))
        except asyncio.CancelledError:  # never renewed again: it expires within its TTL
            self.leases.forget(key, token)
            raise
        if not sent:  # the group's call was cancelled: give it back alone
            await self.leases.release(key, token)

    async def _give_back(self, group: list[tuple[str, str]]) -> bool:
        await self.leases.release_many(group)  # failing, it fails each poll of the group
        return True


@dataclass
class _Claim:
    """One poll of a batch as the batch's shared reads left it: its lease is held."""

    holder: str  # the lease's token
    snap: Snapshot | None = None  # None: gone or no longer polling
    error: Exception | None = None  # building its snapshot failed: the poll crashes with it
    starts: dict[str, Start] = field(default_factory=dict)


async def _claim(deps: PollDeps, instance_ids: Sequence[int]) -> dict[int, _Claim]:
    """Take the leases of a batch of polls and read what they start from, in one round
    trip each: the leases (one Redis pipeline), the snapshots (one PostgreSQL statement)
    and the Redis watermarks (one MGET). Only instances whose lease was taken are in the
    answer; a lease held elsewhere makes that poll ``busy`` as before.
    """
    holders = await deps.leases.acquire_many([keys.poll_lock(i) for i in instance_ids])
    claims = {i: _Claim(holder) for i in instance_ids if (holder := holders.get(keys.poll_lock(i)))}
    if not claims:
        return claims
    try:
        async with deps.pg.acquire() as conn:
            rows = await store.snapshot_rows(conn, list(claims))
        for instance_id, claim in claims.items():
            if instance_id in rows:
                try:
                    claim.snap = store.build_snapshot(instance_id, rows[instance_id])
                except Exception as exc:  # this poll's crash (see _poll_claimed), not the batch's
                    claim.error = exc
        snaps = [(i, c.snap.states) for i, c in claims.items() if c.snap is not None]
        starts = await deps.watermarks.starts_many(snaps)
    except BaseException:
        await _release_unstarted(deps, claims)
        raise
    for instance_id, claim in claims.items():
        claim.starts = starts.get(instance_id, {})
    return claims


async def _claim_when_free(deps: PollDeps, instance_ids: Sequence[int]) -> dict[int, _Claim]:
    """Claim polls whose instance another poll held, once that one ends: their leases are
    tried again after each pause of :data:`BUSY_RETRY_S`. What is still held after the
    last is left out (the caller defers it)."""
    claims: dict[int, _Claim] = {}
    waiting = list(instance_ids)
    try:
        for pause in BUSY_RETRY_S:
            await asyncio.sleep(pause)
            claims.update(await _claim(deps, waiting))
            waiting = [i for i in waiting if i not in claims]
            if not waiting:
                break
    except BaseException:
        await _release_unstarted(deps, claims)
        raise
    return claims


class _LateClaims:
    """A batch's polls whose instance another poll held, claimed once that one ends
    (:func:`_claim_when_free`: one task for all of them)."""

    def __init__(self, deps: PollDeps, held: Sequence[int]) -> None:
        self._waiting = set(held)
        self._task = asyncio.ensure_future(_claim_when_free(deps, held)) if held else None

    async def claim(self, instance_id: int) -> _Claim | None:
        """The instance's claim once its lease was free, else ``None`` (still busy). Once per
        instance: a second listing of it in the batch is busy, as before."""
        if self._task is None or instance_id not in self._waiting:
            return None
        self._waiting.discard(instance_id)
        # shielded: a poll cancelled while it waits must not cancel the others' claims
        return (await asyncio.shield(self._task)).pop(instance_id, None)

    async def unused(self) -> dict[int, _Claim]:
        """Claims taken but never polled (the batch was cancelled), for the caller to give
        back. A claim still under way is cancelled, and gives back what it took itself."""
        task = self._task
        if task is None:
            return {}
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
            return {}
        if task.cancelled() or task.exception() is not None:
            return {}
        return task.result()


async def _release_unstarted(deps: PollDeps, claims: dict[int, _Claim]) -> None:
    """Give back the leases of polls that will not run (best effort, one round trip): they
    are forgotten first, so even when Redis fails here they are not renewed, and expire."""
    with contextlib.suppress(Exception):
        await deps.leases.release_many([(keys.poll_lock(i), c.holder) for i, c in claims.items()])


async def poll_instance(
    deps: PollDeps, instance_id: int, slots: asyncio.Semaphore | None = None
) -> PollOutcome:
    """Poll every configured resource of one instance once (no overlap with another poll):
    a batch of one.

    ``slots`` is the poll slot the caller holds (given back while waiting on the app budget).
    """
    claim = (await _claim(deps, [instance_id])).get(instance_id)
    if claim is None:
        return PollOutcome(instance_id, skipped=True, busy=True)
    try:
        return await _poll_claimed(deps, instance_id, claim, slots)
    finally:
        await deps.leases.release(keys.poll_lock(instance_id), claim.holder)


async def _poll_claimed(
    deps: PollDeps,
    instance_id: int,
    claim: _Claim,
    slots: asyncio.Semaphore | None,
    quiet: QuietCommits | None = None,
) -> PollOutcome:
    """The rest of a claimed poll: fetch, delta, commit, mirror (the caller gives the lease
    back after it, even when it raises)."""
    if claim.error is not None:
        raise claim.error
    snap = claim.snap
    if snap is None:
        return PollOutcome(instance_id, skipped=True)
    outcome = PollOutcome(instance_id)
    starts = claim.starts
    client = _client_for(deps, snap, slots)
    started = outcome.started_at = utcnow()
    outcome.resources = list(
        await asyncio.gather(
            *(
                _poll_resource(
                    client,
                    snap.resources[s.resource],
                    s,
                    starts[s.resource].watermark,
                    started,
                    snap.timezone,
                )
                for s in snap.states
            )
        )
    )
    await _commit(deps, snap, outcome, started, quiet)
    await _mirror(deps, instance_id, starts, outcome.resources)
    outcome.finished_at = utcnow()
    return outcome


async def _commit(
    deps: PollDeps,
    snap: Snapshot,
    outcome: PollOutcome,
    started: datetime,
    quiet: QuietCommits | None = None,
) -> None:
    """Events, deliveries, checkpoints and the instance's counters, atomically."""
    lease_until = utcnow() + timedelta(seconds=deps.settings.delivery_lease_seconds)
    results = [ResourceResult(r.resource, r.delta, r.error or r.warning) for r in outcome.resources]
    single = _single_statement(results, snap.poll_failures) and not snap.poll_crashes
    if single and quiet is not None:
        writes = [
            CheckpointWrite(r.resource, r.delta.watermark if r.delta else None, r.error)
            for r in results
        ]
        if await quiet.commit(snap.info.id, started, writes):
            return
    async with deps.pg.acquire() as conn:
        if single:
            # Nothing changed and nothing failed: only the checkpoint statement runs,
            # and one statement is atomic without a BEGIN/COMMIT round trip each.
            outcome.events, outcome.deliveries = await store_poll(
                conn, snap.info, results, started, lease_until
            )
            return
        async with conn.transaction():
            outcome.events, outcome.deliveries = await store_poll(
                conn, snap.info, results, started, lease_until
            )
            await record_failures(
                conn, snap.info.id, snap.poll_failures, outcome.failed, snap.interval_s, started
            )
            if snap.poll_crashes:  # this poll ran to the end: the crashes were not "in a row"
                await store.reset_crashes(conn, snap.info.id)


async def _mirror(
    deps: PollDeps, instance_id: int, starts: dict[str, Start], resources: list[ResourceOutcome]
) -> None:
    """Move the Redis copies to the watermarks just committed, and repair the ones that
    were lost, behind or rewound (the checkpoint is their value).

    Best effort: the checkpoints are committed, and a Redis copy left behind is repaired
    by the next poll, so a Redis failure here does not fail the poll.
    """
    writes: list[tuple[str, Watermark, Mirror]] = []
    for res in resources:
        start = starts[res.resource]
        if res.watermark_moved and res.delta is not None:
            writes.append((res.resource, res.delta.watermark, start.mirror))
        elif start.mirror is not Mirror.KEEP:
            writes.append((res.resource, start.watermark, start.mirror))
    try:
        await deps.watermarks.mirror(instance_id, writes)
    except RedisError as exc:
        log.warning("instance %s: writing Redis watermarks failed (%s)", instance_id, exc)


def _single_statement(results: Sequence[ResourceResult], poll_failures: int) -> bool:
    """Whether the outbox write is just the checkpoint update (see :func:`store_poll`)."""
    quiet = all(r.delta is not None and not r.delta.changes for r in results)
    return quiet and poll_failures == 0


def poll_metrics(batch: MetricsBatch, outcome: PollOutcome, scheduled_at: datetime | None) -> None:
    """Add one poll's counters, histograms and journal line to ``batch`` (its batch's, flushed
    once for all of them)."""
    state = "skipped" if outcome.skipped else "failed" if outcome.failed else "ok"
    batch.add(metrics.POLLS, _OUTCOME_LABELS[state])
    started, finished = outcome.started_at, outcome.finished_at
    if outcome.skipped or started is None or finished is None:
        return
    if scheduled_at is not None:
        batch.observe(metrics.POLL_LAG, max((started - scheduled_at).total_seconds(), 0))
    batch.observe(metrics.POLL_DURATION, (finished - started).total_seconds())
    requests = 0
    for res in outcome.resources:
        requests += res.requests
        if res.error_kind:
            batch.inc(metrics.POLL_ERRORS, {"kind": res.error_kind})
        elif res.delta is not None and res.delta.changes:
            batch.inc(metrics.POLL_EVENTS, {"resource": res.resource}, len(res.delta.changes))
        if res.delta is not None and res.delta.skipped_unparseable:
            # No resource label: resource names are tenant input (unbounded cardinality).
            batch.inc(metrics.RECORDS_SKIPPED, None, len(res.delta.skipped_unparseable))
    batch.add(metrics.POLL_REQUESTS, metrics.NO_LABELS, requests)
    batch.journal_line(
        (
            "instance",
            str(outcome.instance_id),
            "scheduled",
            scheduled_at.isoformat() if scheduled_at else "",
            "started",
            started.isoformat(),
            "finished",
            finished.isoformat(),
            "events",
            str(outcome.events),
            "deliveries",
            str(len(outcome.deliveries)),
            "requests",
            str(requests),
            "failed",
            "1" if outcome.failed else "0",
        )
    )


_OUTCOME_LABELS: Final = {
    state: metrics.label_field({"outcome": state}) for state in ("ok", "failed", "skipped")
}


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
        async with deps.pg.acquire() as conn:
            quarantined = await store.count_crash(
                conn, instance_id, QUARANTINE_AFTER_CRASHES, utcnow(), reason
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

    The batch takes its leases and reads its snapshots and Redis watermarks together
    (:func:`_claim`: one round trip each, not one per poll); then each poll fetches,
    commits (a poll that stores events in its own transaction; quiet polls that end
    within the window in one statement, :class:`QuietCommits`), mirrors its watermarks,
    leaves its slot and gives its lease back (with the polls that end within the window,
    :class:`LeaseReturns`). A poll whose instance another poll holds waits for it to end
    (up to :data:`BUSY_RETRY_S`), then is deferred.
    Metrics of the whole batch go out in one round trip at the end (each poll has
    already written its watermarks, before giving its lease back).
    One poll's unexpected crash is logged and does not take the batch down: its
    watermarks did not move, so the next scheduled poll covers the same ground; and it
    counts towards quarantining that instance (:func:`count_crash`).
    """
    batch = MetricsBatch()
    quiet, returns = deps.quiet, deps.returns
    claims: dict[int, _Claim] = {}
    shared_failure: Exception | None = None
    try:
        claims = await _claim(deps, [i for i, _ in items])
    except Exception as exc:  # Redis or PostgreSQL: every poll of the batch fails with it
        shared_failure = exc
    held = [i for i in dict.fromkeys(i for i, _ in items) if i not in claims]
    late = _LateClaims(deps, [] if shared_failure else held)

    async def poll(instance_id: int) -> PollOutcome:
        if shared_failure is not None:
            raise shared_failure
        # pop: an instance listed twice is polled once; the other finds it busy, as before
        claim = claims.pop(instance_id, None) or await late.claim(instance_id)
        if claim is None:
            return PollOutcome(instance_id, skipped=True, busy=True)
        try:
            async with slots:
                return await _poll_claimed(deps, instance_id, claim, slots, quiet)
        finally:  # out of the slot: the next poll need not wait for this one's lease return
            await returns.give_back(keys.poll_lock(instance_id), claim.holder)

    async def one(instance_id: int, scheduled_at: datetime | None) -> PollOutcome:
        with log_context(instance_id=instance_id):
            try:
                outcome = await poll(instance_id)
            except Exception as exc:
                log.exception("instance %s: poll crashed", instance_id)
                await count_crash(deps, batch, instance_id, exc)
                crash = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
                return PollOutcome(instance_id, skipped=True, crash=crash)
        poll_metrics(batch, outcome, scheduled_at)
        return outcome

    try:
        done = await asyncio.gather(*(one(i, at) for i, at in items))
    finally:  # cancelled before some polls began: their leases must not be renewed forever
        claims.update(await late.unused())
        await _release_unstarted(deps, claims)
    busy = [o.instance_id for o in done if o.busy]
    if busy:
        async with deps.pg.acquire() as conn:
            await store.rearm_busy(conn, busy, deps.leases.ttl_ms / 1000)
    try:
        await batch.flush(deps.redis)
    except Exception:  # metrics are best effort; the polls' results are committed
        log.warning("writing the metrics of a poll batch failed", exc_info=True)
    return done
