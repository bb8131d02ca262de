"""Delivering callbacks: claim a batch, sign, POST, record each attempt, schedule what's next.

Retries live in the database, not in Celery: every attempt is a row, the
attempt count is the number of rows, and ``next_attempt_at`` tells the sweeper
when to enqueue the delivery again. A worker that dies mid-POST, or between the
POST and the write of its attempt, leaves the delivery ``pending`` with an
expiring lease, so it is sent again (same ``webhook-id``) and never lost: a
delivery counts as done only once its attempt row is committed.

The work per callback is shared across a batch (one Celery message): one
statement leases the whole batch, one Redis round trip reads the breakers of its
origins, each instance's secrets are decrypted once, and finished attempts are
written in groups — whatever finished while the previous group was being
written — so a slow callback never holds back the record of a fast one. The SQL
is in :mod:`app.store.deliveries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
import asyncpg
from redis.asyncio import Redis

from app import metrics
from app.domain.backoff import next_attempt_delay, parse_retry_after
from app.domain.rows import DeliveryStatus, utcnow
from app.domain.signing import signed_headers
from app.logging import log_context
from app.metrics import MetricsBatch
from app.security import SecretBox
from app.services.breaker import (
    ORIGIN_WAIT_S,
    SATURATED_DEFER_S,
    Admission,
    CircuitBreakers,
    OriginSlots,
    origin_of,
)
from app.services.guarded_http import BlockedAddress, check_url
from app.settings import Settings
from app.store import deliveries as store
from app.store.deliveries import AttemptRecord, Claim, Claimed, Refused

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0
MAX_RESPONSE_CHARS = 1024
SWEEP_BATCH = 500
SIGNATURE_KEY = "event.notification.signature.key"
_TIMEOUT = aiohttp.ClientTimeout(total=TIMEOUT_S)


@dataclass
class DeliveryDeps:
    settings: Settings
    pg: asyncpg.Pool
    http: aiohttp.ClientSession  # from guarded_http.callback_session
    box: SecretBox
    redis: Redis
    breakers: CircuitBreakers
    slots: OriginSlots  # one per process

    def __post_init__(self) -> None:
        # Shared by every batch these deps serve, so one write carries the attempts of
        # all the batches in flight (keep one DeliveryDeps per process).
        self.writer = AttemptWriter(self.pg)


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    duration_ms: int
    error: str | None  # timeout | dns | tls | connection | ssrf_blocked | http
    detail: str | None
    response_body: str | None
    retry_after_s: float | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


class Outcome(enum.StrEnum):
    """What one delivery's turn did (the delivery's status, or why nothing was sent)."""

    DELIVERED = DeliveryStatus.DELIVERED.value
    RETRY = DeliveryStatus.PENDING.value  # the attempt failed; the next one is scheduled
    FAILED = DeliveryStatus.FAILED.value  # the attempt failed and the schedule is spent
    CANCELLED = DeliveryStatus.CANCELLED.value  # its instance was deleted
    DEFERRED = "deferred"  # held back (open breaker, saturated origin); no attempt spent
    NOT_PENDING = "not-pending"  # a stale or duplicate message: already sent or re-armed
    CRASHED = "crashed"  # an unexpected error; the lease runs out and the sweeper re-sends


@dataclass(frozen=True)
class DeliveryOutcome:
    """One delivery's result, with the attempt made (if any) and when it ran."""

    delivery_id: uuid.UUID
    outcome: Outcome
    started: float  # epoch seconds
    finished: float
    instance_id: int | None = None
    attempt: AttemptResult | None = None
    error: str | None = None  # CRASHED: the exception's class and message

    @property
    def failed_attempt(self) -> bool:
        return self.attempt is not None and not self.attempt.ok


def classify_client_error(exc: BaseException) -> str:
    """The error class recorded on an attempt."""
    if isinstance(exc, BlockedAddress):
        return "ssrf_blocked"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    return "connection"


async def post_callback(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    allow_private: bool,
) -> AttemptResult:
    """One POST of the exact bytes; never raises for network or HTTP faults."""
    started = time.monotonic()
    try:
        if not allow_private:
            check_url(url)
        async with http.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=_TIMEOUT,
        ) as resp:
            text = (await resp.content.read(MAX_RESPONSE_CHARS * 4)).decode("utf-8", "replace")
            status = resp.status
            header = resp.headers.get("Retry-After")
            retry_after = parse_retry_after(header, utcnow()) if header else None
    except (TimeoutError, aiohttp.ClientError) as exc:
        return AttemptResult(
            None,
            _ms(started),
            classify_client_error(exc),
            f"{type(exc).__name__}: {exc}"[:500],
            None,
            None,
        )
    ok = 200 <= status < 300
    return AttemptResult(
        status, _ms(started), None if ok else "http", None, text[:MAX_RESPONSE_CHARS], retry_after
    )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def claim(
    deps: DeliveryDeps, tickets: Sequence[tuple[uuid.UUID, datetime | None]]
) -> list[Claim]:
    """Lease a batch of pending deliveries so the sweeper leaves them alone while we POST.

    One :data:`~app.store.deliveries.Claim` per ticket, in order: :class:`Claimed` with
    what the attempt needs, or :class:`Refused` with why nothing was leased (a stale or
    duplicate message, or a delivery whose instance was deleted — now cancelled). See
    :func:`app.store.deliveries.claim` for the ticket rule.
    """
    lease_until = utcnow() + timedelta(seconds=deps.settings.delivery_lease_seconds)
    async with deps.pg.acquire() as conn:
        return await store.claim(conn, tickets, lease_until)


async def deliver(
    deps: DeliveryDeps, delivery_id: uuid.UUID, ticket: datetime | None = None
) -> DeliveryOutcome:
    """Attempt one delivery now: :func:`deliver_many` with a batch of one."""
    [outcome] = await deliver_many(deps, [(delivery_id, ticket)])
    return outcome


async def deliver_many(
    deps: DeliveryDeps,
    items: Sequence[tuple[uuid.UUID, datetime | None]],
    slots: asyncio.Semaphore | None = None,
) -> list[DeliveryOutcome]:
    """Deliver a batch concurrently, at most ``slots`` POSTs at once in this process.

    ``slots`` is taken only once a delivery's origin has admitted it, so deliveries
    queued behind a slow origin never hold slots that deliveries to healthy origins
    could use. An unexpected crash of one delivery is logged and leaves it pending:
    its lease runs out and the sweeper sends it again.
    """
    started = time.time()
    try:
        claims = await claim(deps, items)
        origins = {c.id: origin_of(c.url) for c in claims if isinstance(c, Claimed)}
        admissions = await deps.breakers.admit_many(set(origins.values()))
    except Exception as exc:
        log.exception("claiming a batch of %d deliveries failed", len(items))
        return [_crashed(delivery_id, started, exc) for delivery_id, _ in items]
    batch = _Batch(deps, slots, origins, admissions)
    outcomes = list(await asyncio.gather(*(batch.run(c, started) for c in claims)))
    try:
        await batch.flush_metrics()
    except Exception:  # metrics are best effort
        log.warning("recording delivery metrics failed", exc_info=True)
    return outcomes


def _crashed(delivery_id: uuid.UUID, started: float, exc: Exception) -> DeliveryOutcome:
    error = f"{type(exc).__name__}: {exc}"[:500]
    return DeliveryOutcome(delivery_id, Outcome.CRASHED, started, time.time(), error=error)


@dataclass
class _Batch:
    """What the deliveries of one batch share: breaker admissions and signature keys."""

    deps: DeliveryDeps
    slots: asyncio.Semaphore | None
    origins: dict[uuid.UUID, str]
    admissions: dict[str, Admission]
    metrics: MetricsBatch = field(default_factory=MetricsBatch)
    keys: dict[bytes | None, str | None] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)  # origins that failed in this batch
    attempts: Counter[str] = field(default_factory=Counter)  # by outcome label

    async def flush_metrics(self) -> None:
        """One Redis round trip for the batch; the attempt counter once per outcome."""
        for label, count in self.attempts.items():
            self.metrics.inc(metrics.DELIVERY_ATTEMPTS, {"outcome": label}, count)
        await self.metrics.flush(self.deps.redis)

    async def run(self, claim: Claim, started: float) -> DeliveryOutcome:
        with log_context(delivery_id=str(claim.id)):
            try:
                return await self._deliver(claim, started)
            except Exception as exc:
                log.exception("delivery %s crashed", claim.id)
                return _crashed(claim.id, started, exc)

    async def _admit(self, origin: str) -> Admission:
        """The batch's admission for ``origin``; asked again once the origin failed in this
        batch (its breaker may have opened). A probe admission goes to one delivery only."""
        if origin in self.failing:
            return await self.deps.breakers.admit(origin)
        admission = self.admissions[origin]
        if admission.probe:
            self.admissions[origin] = Admission(False, SATURATED_DEFER_S * 5)
        return admission

    def _signature_key(self, claimed: Claimed) -> str | None:
        sealed = claimed.sealed_secrets
        if sealed is None:
            return None
        if sealed not in self.keys:
            self.keys[sealed] = self.deps.box.open(sealed).get(SIGNATURE_KEY)
        return self.keys[sealed]

    async def _deliver(self, claim: Claim, started: float) -> DeliveryOutcome:
        if isinstance(claim, Refused):
            return DeliveryOutcome(claim.id, Outcome(claim.reason.value), started, time.time())
        deps = self.deps
        origin = self.origins[claim.id]
        admission = await self._admit(origin)
        if not admission.allowed:
            await defer(deps, claim.id, admission.retry_in_s)
            return DeliveryOutcome(claim.id, Outcome.DEFERRED, started, time.time(),
                                   claim.instance_id)  # fmt: skip
        if not await deps.slots.acquire(origin, ORIGIN_WAIT_S):
            await defer(deps, claim.id, SATURATED_DEFER_S)
            return DeliveryOutcome(claim.id, Outcome.DEFERRED, started, time.time(),
                                   claim.instance_id)  # fmt: skip
        try:
            headers = signed_headers(
                claim.body, str(claim.id), int(time.time()), self._signature_key(claim)
            )
            async with self.slots or contextlib.nullcontext():
                result = await post_callback(
                    deps.http, claim.url, claim.body, headers, deps.settings.allow_private_callbacks
                )
        finally:
            deps.slots.release(origin)
        up = receiver_is_up(result)
        if not up:
            self.failing.add(origin)
        if not (up and admission.clean):
            await deps.breakers.record(origin, up)
        record = decide(claim, result, deps.settings.delivery_retry_schedule)
        await deps.writer.write(record)
        if record.gone:
            log.warning("instance %s: callback answered 410 Gone; events disabled",
                        claim.instance_id)  # fmt: skip
        outcome = Outcome(record.status) if record.status else Outcome.RETRY
        label = outcome.value if outcome != Outcome.RETRY else f"retry_{result.error or 'http'}"
        self.attempts[label] += 1
        self.metrics.observe(metrics.DELIVERY_LATENCY, result.duration_ms / 1000.0)
        return DeliveryOutcome(
            claim.id, outcome, started, time.time(), claim.instance_id, attempt=result
        )


class AttemptWriter:
    """Writes finished attempts in groups, each group in one statement (group commit).

    The first attempt to finish is written at once; those that finish while a write is
    in flight wait for it and go together in the next one. A caller returns only once
    its attempt is committed (or with the write's error), so no delivery counts as done
    before its record is durable, and no attempt waits for a slower one to finish.
    """

    def __init__(self, pg: asyncpg.Pool) -> None:
        self._pg = pg
        self._queue: list[tuple[AttemptRecord, asyncio.Future[None]]] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def write(self, record: AttemptRecord) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, future))
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        drained = False
        try:
            async with self._pg.acquire() as conn:
                while self._queue:
                    group, self._queue = self._queue, []
                    try:
                        await store.record_attempts(conn, [record for record, _ in group])
                    except Exception as exc:
                        _settle(group, exc)
                    else:
                        _settle(group, None)
                # No await between the empty queue and this: a later write starts a new drain.
                self._drain_task, drained = None, True
        except Exception as exc:
            if drained:  # everything is written; only releasing the connection failed
                log.warning("releasing a database connection failed", exc_info=True)
                return
            self._drain_task = None  # the connection could not be had
            group, self._queue = self._queue, []
            _settle(group, exc)


def _settle(group: list[tuple[AttemptRecord, asyncio.Future[None]]], exc: Exception | None) -> None:
    for _, future in group:
        if future.done():  # its caller was cancelled
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


def decide(claimed: Claimed, result: AttemptResult, schedule: Sequence[float]) -> AttemptRecord:
    """The attempt's record and what it leads to: delivered, retry after a delay, or failed."""
    status: str | None
    delay = 0.0
    if result.ok:
        status = DeliveryStatus.DELIVERED.value
    else:
        next_delay = next_attempt_delay(claimed.attempts_made + 1, schedule, result.retry_after_s)
        if result.status_code == 410 or next_delay is None:
            status = DeliveryStatus.FAILED.value
        else:
            status, delay = None, next_delay
    return AttemptRecord(
        claimed.id,
        claimed.instance_id,
        utcnow(),
        result.status_code,
        result.duration_ms,
        result.error,
        result.detail,
        result.response_body,
        status,
        delay,
    )


def receiver_is_up(result: AttemptResult) -> bool:
    """For the breaker: the receiver answered something other than overload or an error."""
    code = result.status_code
    return result.error is None or (
        code is not None and 400 <= code < 500 and code not in (408, 429)
    )


async def defer(deps: DeliveryDeps, delivery_id: uuid.UUID, seconds: float) -> None:
    """Push a delivery back without spending an attempt (its URL is saturated or tripped)."""
    at = utcnow() + timedelta(seconds=seconds * random.uniform(1.0, 1.2))
    async with deps.pg.acquire() as conn:
        await store.defer(conn, [(delivery_id, at)])


async def due_deliveries(
    pg: asyncpg.Pool, lease_s: float, limit: int = SWEEP_BATCH
) -> list[tuple[uuid.UUID, datetime]]:
    """Lease pending deliveries whose time has come; (id, ticket) for the sweeper to enqueue."""
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_s)
    async with pg.acquire() as conn:
        ids = await store.lease_due(conn, now, lease_until, limit)
    return [(delivery_id, lease_until) for delivery_id in ids]
