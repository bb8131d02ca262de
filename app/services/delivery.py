"""Delivering one callback: claim, sign, POST, record the attempt, schedule what comes next.

Retries live in the database, not in Celery: every attempt is a row, the
attempt count is the number of rows, and ``next_attempt_at`` tells the sweeper
when to enqueue the delivery again. A worker that dies mid-POST leaves the
delivery ``pending`` with an expiring lease, so it is sent again (same
``webhook-id``) and never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
import asyncpg
from redis.asyncio import Redis

from app import metrics
from app.domain.backoff import next_attempt_delay, parse_retry_after
from app.domain.signing import signed_headers
from app.logging import log_context
from app.metrics import MetricsBatch
from app.models import DeliveryStatus, utcnow
from app.security import SecretBox
from app.services.breaker import (
    ORIGIN_WAIT_S,
    SATURATED_DEFER_S,
    CircuitBreakers,
    OriginSlots,
    origin_of,
)
from app.services.guarded_http import BlockedAddress, check_url
from app.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0
MAX_RESPONSE_CHARS = 1024
SWEEP_BATCH = 500


@dataclass
class DeliveryDeps:
    settings: Settings
    pg: asyncpg.Pool
    http: aiohttp.ClientSession  # from guarded_http.callback_session
    box: SecretBox
    redis: Redis
    breakers: CircuitBreakers
    slots: OriginSlots  # one per process


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
    """What one call of :func:`deliver` did (the delivery's status, or why nothing was sent)."""

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
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        ) as resp:
            text = (await resp.content.read(MAX_RESPONSE_CHARS * 4)).decode("utf-8", "replace")
            status = resp.status
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), utcnow())
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


_CLAIM = """
    UPDATE deliveries AS d SET next_attempt_at = $2
    FROM instances AS i
    WHERE d.id = $1 AND d.status = 'pending' AND i.id = d.instance_id
      AND ($3::timestamptz IS NULL OR d.next_attempt_at = $3)
    RETURNING d.body, d.instance_id, i.deleted_at IS NOT NULL, i.callback_url,
              CASE WHEN 'event.notification.signature.key' = ANY(i.secret_keys)
                   THEN i.secrets END
"""
_CANCEL = """
    UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL
    WHERE id = $1 AND status = 'pending'
"""
_DEFER = "UPDATE deliveries SET next_attempt_at = $2 WHERE id = $1 AND status = 'pending'"
# The attempt row and the delivery's new state in one statement; the attempt number
# is the count of earlier attempt rows (retry counts come from the database).
_RECORD = """
    WITH attempt AS (
        INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, duration_ms,
                                       error, error_detail, response_body)
        SELECT $1, coalesce(max(a.attempt), 0) + 1, $2, $3, $4, $5, $6, $7
        FROM delivery_attempts AS a WHERE a.delivery_id = $1
        ON CONFLICT (delivery_id, attempt) DO NOTHING
        RETURNING attempt
    )
    UPDATE deliveries SET
        status = coalesce($8, status),
        next_attempt_at = CASE WHEN $8::text IS NULL
            THEN $2 + make_interval(secs => $9::float8 * 1) ELSE NULL END,
        delivered_at = CASE WHEN $8 = 'delivered' THEN $2 ELSE delivered_at END
    WHERE id = $1 AND status = 'pending'
    RETURNING (SELECT attempt FROM attempt)
"""
_ATTEMPTS = "SELECT count(*) FROM delivery_attempts WHERE delivery_id = $1"
# 410 Gone: the system disables the instance; the tenant's own events_enabled is left as
# they set it, and their next accepted PATCH clears the flag.
_DISABLE = "UPDATE instances SET disabled = true, updated_at = now() WHERE id = $1"
_DUE = """
    WITH due AS (
        SELECT id FROM deliveries
        WHERE status = 'pending' AND next_attempt_at <= $1
        ORDER BY next_attempt_at LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    UPDATE deliveries AS d SET next_attempt_at = $2 FROM due WHERE d.id = due.id
    RETURNING d.id
"""


@dataclass(frozen=True)
class Claimed:
    """A delivery leased for one attempt, with what the attempt needs."""

    id: uuid.UUID
    instance_id: int
    body: bytes
    url: str
    signature_key: str | None


async def claim(
    deps: DeliveryDeps, delivery_id: uuid.UUID, ticket: datetime | None
) -> Claimed | Outcome:
    """Lease a pending delivery so the sweeper leaves it alone while we POST.

    ``ticket`` is the ``next_attempt_at`` the delivery had when it was enqueued: a
    message whose ticket no longer matches is stale (the delivery was already sent,
    rescheduled or re-enqueued since) and claims nothing, so duplicates in the queue
    never become duplicate POSTs. ``None`` claims any pending delivery. Returns
    :attr:`Outcome.NOT_PENDING` when there is nothing to claim and
    :attr:`Outcome.CANCELLED` for a delivery whose instance was deleted.
    """
    lease_until = utcnow() + timedelta(seconds=deps.settings.delivery_lease_seconds)
    row = await deps.pg.fetchrow(_CLAIM, delivery_id, lease_until, ticket)
    if row is None:
        return Outcome.NOT_PENDING
    body, instance_id, deleted, url, secrets = row
    if deleted:
        await deps.pg.execute(_CANCEL, delivery_id)
        return Outcome.CANCELLED
    key = deps.box.open(secrets).get("event.notification.signature.key")
    return Claimed(delivery_id, instance_id, bytes(body), url or "", key)


async def deliver(
    deps: DeliveryDeps,
    delivery_id: uuid.UUID,
    ticket: datetime | None = None,
    slots: asyncio.Semaphore | None = None,
    metrics_batch: MetricsBatch | None = None,
) -> DeliveryOutcome:
    """Attempt one delivery now (see :func:`claim` for what is not attempted).

    ``slots`` bounds the POSTs in flight in this process. It is taken only once the
    delivery's origin has admitted it, so deliveries queued behind a slow origin
    never hold slots that deliveries to healthy origins could use.
    """
    started = time.time()
    claimed = await claim(deps, delivery_id, ticket)
    if isinstance(claimed, Outcome):
        return DeliveryOutcome(delivery_id, claimed, started, time.time())
    origin = origin_of(claimed.url)
    admission = await deps.breakers.admit(origin)
    if not admission.allowed:
        await defer(deps, claimed.id, admission.retry_in_s)
        return DeliveryOutcome(delivery_id, Outcome.DEFERRED, started, time.time(),
                               claimed.instance_id)  # fmt: skip
    if not await deps.slots.acquire(origin, ORIGIN_WAIT_S):
        await defer(deps, claimed.id, SATURATED_DEFER_S)
        return DeliveryOutcome(delivery_id, Outcome.DEFERRED, started, time.time(),
                               claimed.instance_id)  # fmt: skip
    try:
        headers = signed_headers(
            claimed.body, str(claimed.id), int(time.time()), claimed.signature_key
        )
        async with slots or contextlib.nullcontext():
            result = await post_callback(
                deps.http,
                claimed.url,
                claimed.body,
                headers,
                deps.settings.allow_private_callbacks,
            )
    finally:
        deps.slots.release(origin)
    up = receiver_is_up(result)
    if not (up and admission.clean):
        await deps.breakers.record(origin, up)
    outcome = await record_attempt(deps, claimed, result)
    if metrics_batch is not None:
        _add_metrics(metrics_batch, result, outcome)
    return DeliveryOutcome(
        delivery_id, outcome, started, time.time(), claimed.instance_id, attempt=result
    )


async def deliver_many(
    deps: DeliveryDeps,
    items: list[tuple[uuid.UUID, datetime | None]],
    slots: asyncio.Semaphore,
) -> list[DeliveryOutcome]:
    """Deliver a batch concurrently, at most ``slots`` POSTs at once in this process.

    An unexpected crash of one delivery is logged and leaves it pending: its lease
    runs out and the sweeper sends it again.
    """

    batch = MetricsBatch()

    async def one(delivery_id: uuid.UUID, ticket: datetime | None) -> DeliveryOutcome:
        started = time.time()
        with log_context(delivery_id=str(delivery_id)):
            try:
                return await deliver(deps, delivery_id, ticket, slots, batch)
            except Exception as exc:
                log.exception("delivery %s crashed", delivery_id)
                error = f"{type(exc).__name__}: {exc}"[:500]
                return DeliveryOutcome(
                    delivery_id, Outcome.CRASHED, started, time.time(), error=error
                )

    statuses = list(await asyncio.gather(*(one(d, t) for d, t in items)))
    try:
        await batch.flush(deps.redis)
    except Exception:  # metrics are best effort
        log.warning("recording delivery metrics failed", exc_info=True)
    return statuses


def receiver_is_up(result: AttemptResult) -> bool:
    """For the breaker: the receiver answered something other than overload or an error."""
    code = result.status_code
    return result.error is None or (
        code is not None and 400 <= code < 500 and code not in (408, 429)
    )


async def defer(deps: DeliveryDeps, delivery_id: uuid.UUID, seconds: float) -> None:
    """Push a delivery back without spending an attempt (its URL is saturated or tripped)."""
    at = utcnow() + timedelta(seconds=seconds * random.uniform(1.0, 1.2))
    await deps.pg.execute(_DEFER, delivery_id, at)


def _add_metrics(batch: MetricsBatch, result: AttemptResult, outcome: Outcome) -> None:
    label = outcome.value if outcome != Outcome.RETRY else f"retry_{result.error or 'http'}"
    batch.inc(metrics.DELIVERY_ATTEMPTS, {"outcome": label})
    batch.observe(metrics.DELIVERY_LATENCY, result.duration_ms / 1000.0)


async def record_attempt(deps: DeliveryDeps, claimed: Claimed, result: AttemptResult) -> Outcome:
    """Store the attempt and decide: delivered, retry after a delay, or failed."""
    now = utcnow()
    status: str | None
    delay = 0.0
    if result.ok:
        status = DeliveryStatus.DELIVERED.value
    else:
        attempts = int(await deps.pg.fetchval(_ATTEMPTS, claimed.id) or 0) + 1
        next_delay = next_attempt_delay(
            attempts, deps.settings.delivery_retry_schedule, result.retry_after_s
        )
        if result.status_code == 410 or next_delay is None:
            status = DeliveryStatus.FAILED.value
        else:
            status, delay = None, next_delay
    async with deps.pg.acquire() as conn, conn.transaction():
        await conn.fetchval(
            _RECORD,
            claimed.id,
            now,
            result.status_code,
            result.duration_ms,
            result.error,
            result.detail,
            result.response_body,
            status,
            delay,
        )
        if result.status_code == 410:
            await conn.execute(_DISABLE, claimed.instance_id)
            log.warning(
                "instance %s: callback answered 410 Gone; events disabled", claimed.instance_id
            )
    return Outcome(status) if status else Outcome.RETRY


async def due_deliveries(
    pg: asyncpg.Pool, lease_s: float, limit: int = SWEEP_BATCH
) -> list[tuple[uuid.UUID, datetime]]:
    """Lease pending deliveries whose time has come; (id, ticket) for the sweeper to enqueue."""
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_s)
    rows = await pg.fetch(_DUE, now, lease_until, limit)
    return [(row[0], lease_until) for row in rows]
