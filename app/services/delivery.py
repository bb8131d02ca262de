"""Delivering one callback: claim, sign, POST, record the attempt, schedule what comes next.

Retries live in the database, not in Celery: every attempt is a row, the
attempt count is the number of rows, and ``next_attempt_at`` tells the sweeper
when to enqueue the delivery again. A worker that dies mid-POST leaves the
delivery ``pending`` with an expiring lease, so it is sent again (same
``webhook-id``) and never lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from redis.asyncio import Redis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app import metrics
from app.domain.backoff import next_attempt_delay, parse_retry_after
from app.domain.signing import signed_headers
from app.metrics import MetricsBatch
from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Instance, utcnow
from app.security import SecretBox
from app.services.breaker import SATURATED_DEFER_S, CircuitBreakers, OriginSlots, origin_of
from app.services.guarded_http import BlockedAddress, check_literal_host
from app.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0
MAX_RESPONSE_CHARS = 1024
SWEEP_BATCH = 500


@dataclass
class DeliveryDeps:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
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
            check_literal_host(urlsplit(url).hostname or "")
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


async def claim(
    session: AsyncSession,
    delivery_id: uuid.UUID,
    now: datetime,
    lease_s: float,
    ticket: datetime | None,
) -> Delivery | None:
    """Lease a pending delivery so the sweeper leaves it alone while we POST.

    ``ticket`` is the ``next_attempt_at`` the delivery had when it was enqueued: a
    message whose ticket no longer matches is stale (the delivery was already sent,
    rescheduled or re-enqueued since) and claims nothing, so duplicates in the queue
    never become duplicate POSTs. ``None`` claims any pending delivery.
    """
    stmt = select(Delivery).where(
        col(Delivery.id) == delivery_id, col(Delivery.status) == DeliveryStatus.PENDING
    )
    if ticket is not None:
        stmt = stmt.where(col(Delivery.next_attempt_at) == ticket)
    row = (await session.execute(stmt.with_for_update(skip_locked=True))).scalar_one_or_none()
    if row is None:
        return None
    row.next_attempt_at = now + timedelta(seconds=lease_s)
    session.add(row)
    return row


async def deliver(
    deps: DeliveryDeps, delivery_id: uuid.UUID, ticket: datetime | None = None
) -> str:
    """Attempt one delivery now; returns its status afterwards (see :func:`claim`)."""
    now = utcnow()
    async with deps.sessions() as session, session.begin():
        delivery = await claim(
            session, delivery_id, now, deps.settings.delivery_lease_seconds, ticket
        )
        if delivery is None:
            return "not-pending"
        instance = await session.get(Instance, delivery.instance_id)
        if instance is None or instance.deleted_at is not None:
            delivery.status = DeliveryStatus.CANCELLED
            delivery.next_attempt_at = None
            return DeliveryStatus.CANCELLED
        attempts = int(
            (
                await session.execute(
                    select(func.count())
                    .select_from(DeliveryAttempt)
                    .where(col(DeliveryAttempt.delivery_id) == delivery_id)
                )
            ).scalar_one()
        )
    url = str(instance.configuration.get("event.notification.callback.url") or "")
    origin = origin_of(url)
    admission = await deps.breakers.admit(origin)
    if not admission.allowed:
        await defer(deps, delivery.id, admission.retry_in_s)
        return "deferred"
    if not deps.slots.try_acquire(origin):
        await defer(deps, delivery.id, SATURATED_DEFER_S)
        return "deferred"
    try:
        key = deps.box.open(instance.secrets).get("event.notification.signature.key")
        headers = signed_headers(delivery.body, str(delivery.id), int(time.time()), key)
        result = await post_callback(
            deps.http, url, delivery.body, headers, deps.settings.allow_private_callbacks
        )
    finally:
        deps.slots.release(origin)
    await deps.breakers.record(origin, receiver_is_up(result))
    status = await record_attempt(deps, delivery, attempts + 1, result)
    await _record_metrics(deps.redis, result, status)
    return status


async def deliver_many(
    deps: DeliveryDeps,
    items: list[tuple[uuid.UUID, datetime | None]],
    slots: asyncio.Semaphore,
) -> list[str]:
    """Deliver a batch concurrently, at most ``slots`` POSTs at once in this process.

    An unexpected crash of one delivery is logged and leaves it pending: its lease
    runs out and the sweeper sends it again.
    """

    async def one(delivery_id: uuid.UUID, ticket: datetime | None) -> str:
        async with slots:
            try:
                return await deliver(deps, delivery_id, ticket)
            except Exception:
                log.exception("delivery %s crashed", delivery_id)
                return "crashed"

    return list(await asyncio.gather(*(one(d, t) for d, t in items)))


def receiver_is_up(result: AttemptResult) -> bool:
    """For the breaker: the receiver answered something other than overload or an error."""
    code = result.status_code
    return result.error is None or (
        code is not None and 400 <= code < 500 and code not in (408, 429)
    )


async def defer(deps: DeliveryDeps, delivery_id: uuid.UUID, seconds: float) -> None:
    """Push a delivery back without spending an attempt (its URL is saturated or tripped)."""
    at = utcnow() + timedelta(seconds=seconds * random.uniform(1.0, 1.2))
    async with deps.sessions() as session, session.begin():
        await session.execute(
            update(Delivery)
            .where(col(Delivery.id) == delivery_id, col(Delivery.status) == DeliveryStatus.PENDING)
            .values(next_attempt_at=at)
        )


async def _record_metrics(redis: Redis, result: AttemptResult, status: str) -> None:
    batch = MetricsBatch()
    outcome = status if status != DeliveryStatus.PENDING else f"retry_{result.error or 'http'}"
    batch.inc(metrics.DELIVERY_ATTEMPTS, {"outcome": outcome})
    batch.observe(metrics.DELIVERY_LATENCY, result.duration_ms / 1000.0)
    try:
        await batch.flush(redis)
    except Exception:  # best effort
        log.warning("recording delivery metrics failed", exc_info=True)


async def record_attempt(
    deps: DeliveryDeps, delivery: Delivery, attempt: int, result: AttemptResult
) -> str:
    """Store the attempt and decide: delivered, retry at ``next_attempt_at``, or failed."""
    now = utcnow()
    values: dict[str, Any]
    if result.ok:
        values = {"status": DeliveryStatus.DELIVERED, "next_attempt_at": None, "delivered_at": now}
    else:
        delay = next_attempt_delay(
            attempt, deps.settings.delivery_retry_schedule, result.retry_after_s
        )
        if result.status_code == 410 or delay is None:
            values = {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
        else:
            values = {"next_attempt_at": now + timedelta(seconds=delay)}
    async with deps.sessions() as session, session.begin():
        session.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                attempt=attempt,
                at=now,
                status_code=result.status_code,
                duration_ms=result.duration_ms,
                error=result.error,
                error_detail=result.detail,
                response_body=result.response_body,
            )
        )
        await session.execute(
            update(Delivery)
            .where(col(Delivery.id) == delivery.id, col(Delivery.status) == DeliveryStatus.PENDING)
            .values(**values)
        )
        if result.status_code == 410:
            await session.execute(
                update(Instance)
                .where(col(Instance.id) == delivery.instance_id)
                .values(events_enabled=False, updated_at=now)
            )
            log.warning(
                "instance %s: callback answered 410 Gone; events disabled", delivery.instance_id
            )
    return str(values.get("status", DeliveryStatus.PENDING))


async def due_deliveries(
    sessions: async_sessionmaker[AsyncSession], lease_s: float, limit: int = SWEEP_BATCH
) -> list[tuple[uuid.UUID, datetime]]:
    """Lease pending deliveries whose time has come; (id, ticket) for the sweeper to enqueue."""
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_s)
    async with sessions() as session, session.begin():
        ids = list(
            (
                await session.execute(
                    select(col(Delivery.id))
                    .where(
                        col(Delivery.status) == DeliveryStatus.PENDING,
                        col(Delivery.next_attempt_at) <= now,
                    )
                    .order_by(col(Delivery.next_attempt_at))
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        if ids:
            await session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(ids))
                .values(next_attempt_at=lease_until)
            )
    return [(delivery_id, lease_until) for delivery_id in ids]
