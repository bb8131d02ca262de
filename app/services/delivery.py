"""Delivering one callback: claim, sign, POST, record the attempt, schedule what comes next.

Retries live in the database, not in Celery: every attempt is a row, the
attempt count is the number of rows, and ``next_attempt_at`` tells the sweeper
when to enqueue the delivery again. A worker that dies mid-POST leaves the
delivery ``pending`` with an expiring lease, so it is sent again (same
``webhook-id``) and never lost.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app.domain.backoff import next_attempt_delay, parse_retry_after
from app.domain.signing import signed_headers
from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Instance, utcnow
from app.security import SecretBox
from app.services.guarded_http import BlockedAddress, check_literal_host
from app.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0
# How long a claimed delivery is hidden from the sweeper: longer than one POST can take.
CLAIM_LEASE_S = 60.0
MAX_RESPONSE_CHARS = 1024
SWEEP_BATCH = 500


@dataclass
class DeliveryDeps:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    http: aiohttp.ClientSession  # from guarded_http.callback_session
    box: SecretBox


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


async def claim(session: AsyncSession, delivery_id: uuid.UUID, now: datetime) -> Delivery | None:
    """Lease a pending delivery so the sweeper leaves it alone while we POST."""
    row = (
        await session.execute(
            select(Delivery)
            .where(col(Delivery.id) == delivery_id, col(Delivery.status) == DeliveryStatus.PENDING)
            .with_for_update(skip_locked=True)
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    row.next_attempt_at = now + timedelta(seconds=CLAIM_LEASE_S)
    session.add(row)
    return row


async def deliver(deps: DeliveryDeps, delivery_id: uuid.UUID) -> str:
    """Attempt one delivery now; returns its status afterwards."""
    now = utcnow()
    async with deps.sessions() as session, session.begin():
        delivery = await claim(session, delivery_id, now)
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
    key = deps.box.open(instance.secrets).get("event.notification.signature.key")
    headers = signed_headers(delivery.body, str(delivery.id), int(time.time()), key)
    result = await post_callback(
        deps.http, url, delivery.body, headers, deps.settings.allow_private_callbacks
    )
    return await record_attempt(deps, delivery, attempts + 1, result)


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
    sessions: async_sessionmaker[AsyncSession], limit: int = SWEEP_BATCH
) -> list[uuid.UUID]:
    """Claim pending deliveries whose time has come (the sweeper enqueues them)."""
    now = utcnow()
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
                .values(next_attempt_at=now + timedelta(seconds=CLAIM_LEASE_S))
            )
    return ids
