"""Instance use-cases: create, read, update, delete — with tenant isolation on every query.

Functions take their dependencies as arguments; the caller owns the
transaction (the API handler commits at the request boundary).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from redis.asyncio import Redis
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import keys
from app.domain.instanceconfig import (
    CALLBACK_KEY,
    ELEMENT_KEY,
    ELEMENT_NAME,
    InstanceSpec,
    redacted_configuration,
    validate_create,
    validate_patch,
)
from app.domain.pollconfig import ResourceConfig
from app.domain.schedule import first_poll_at
from app.models import Delivery, DeliveryStatus, Instance, PollState, utcnow
from app.providers.oauth import GrantRejected, ProviderUnavailable, exchange_code
from app.security import REDACTED, SecretBox, hash_secret, new_secret
from app.services.guarded_http import BlockedAddress, check_callback_host
from app.settings import Settings

log = logging.getLogger(__name__)

PROVIDER_TOKEN_KEYS = ("access_token", "refresh_token", "expires_at")
SHOWN_TOKEN_KEYS = {"access_token": "oauth.user.token", "refresh_token": "oauth.user.refresh_token"}


class InstanceInputError(Exception):
    """Bad input; ``status`` is 400 (or 502 when the provider could not be reached)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def starting_watermark(enabled_at: datetime, resource: ResourceConfig) -> datetime:
    """Where a resource's watermark starts when polling is enabled for it.

    Keap renders most dates to the second, so a record written in the same second
    as ``enabled_at`` carries an earlier date than ``enabled_at`` itself; and a
    provider clock that lags (what ``pollDelay`` is for) dates records before our
    clock. Starting at the whole second, less ``pollDelay``, reports those records
    (at worst a few changes from just before enabling) instead of missing them.
    """
    return enabled_at.replace(microsecond=0) - timedelta(seconds=resource.poll_delay)


async def check_callback_dns(url: str | None, allow_private: bool) -> None:
    """Refuse a callback URL whose host the delivery client would not be allowed to reach.

    The host is judged as the HTTP client will read it (after IDNA mapping), then its
    DNS answers; see :func:`app.services.guarded_http.check_callback_host`.
    """
    if url is None:
        return
    try:
        await check_callback_host(url, allow_private)
    except BlockedAddress as exc:  # the message names the host and why it is refused
        raise InstanceInputError(f"configuration.{CALLBACK_KEY}: {exc}") from exc


def instance_view(instance: Instance, box: SecretBox, token: str | None = None) -> dict[str, Any]:
    """The public JSON of an instance (SPEC §3): secrets redacted, token only on create."""
    secrets = box.open(instance.secrets)
    config_secrets = {k: v for k, v in secrets.items() if k not in PROVIDER_TOKEN_KEYS}
    configuration = redacted_configuration(instance.configuration, config_secrets)
    for key, shown in SHOWN_TOKEN_KEYS.items():
        if secrets.get(key):
            configuration[shown] = REDACTED
    view: dict[str, Any] = {
        "id": instance.id,
        "name": instance.name,
        "element": {"key": ELEMENT_KEY, "name": ELEMENT_NAME},
        "tags": [{"name": t} for t in instance.tags],
        "valid": instance.valid,
        # SPEC §3 has no quarantine field: a quarantined instance does not poll, so it shows
        # as disabled; its resources' lastError (GET .../polling) says why.
        "disabled": instance.disabled or instance.quarantined_at is not None,
        "eventsEnabled": instance.events_enabled,
        "configuration": configuration,
        "createdDate": instance.created_at.isoformat().replace("+00:00", "Z"),
        "updatedDate": instance.updated_at.isoformat().replace("+00:00", "Z"),
    }
    if token is not None:
        view["token"] = token
    return view


async def create_instance(
    session: AsyncSession,
    http: aiohttp.ClientSession,
    box: SecretBox,
    settings: Settings,
    organization_id: int,
    body: object,
) -> tuple[Instance, str]:
    """Validate, exchange the OAuth code, then store; nothing is written on any failure."""
    from app.domain.instanceconfig import FieldError

    try:
        spec, code = validate_create(
            body,
            min_refresh_minutes=settings.min_refresh_minutes,
        )
    except FieldError as exc:
        raise InstanceInputError(exc.message) from exc
    await check_callback_dns(spec.callback_url, settings.allow_private_callbacks)
    try:
        tokens = await exchange_code(
            http,
            settings.infusionsoft_token_url,
            spec.client_id,
            spec.secrets["oauth.api.secret"],
            code,
            spec.oauth_callback_url,
            timeout=settings.provider_timeout_seconds,
        )
    except GrantRejected as exc:
        raise InstanceInputError(
            f"providerData.code: provider refused the code: {exc.message}"
        ) from exc
    except ProviderUnavailable as exc:
        raise InstanceInputError(f"providerData.code: {exc.message}", status=502) from exc
    token = new_secret()
    now = utcnow()
    instance = Instance(
        organization_id=organization_id,
        name=spec.name,
        element_key=ELEMENT_KEY,
        token_hash=hash_secret(token),
        tags=spec.tags,
        configuration=spec.public,
        secrets=box.seal({**spec.secrets, **tokens.to_secrets()}),
        events_enabled=spec.events_enabled,
        refresh_interval_s=spec.refresh_interval_s,
        created_at=now,
        updated_at=now,
    )
    session.add(instance)
    await session.flush()
    assert instance.id is not None
    if spec.events_enabled:
        instance.next_poll_at = first_poll_at(now, instance.id, spec.refresh_interval_s)
    for name, resource in spec.resources.items():
        session.add(
            PollState(
                instance_id=instance.id,
                resource=name,
                watermark_at=starting_watermark(now, resource),
                enabled_at=now,
            )
        )
    await session.flush()
    log.info("instance %s created for organization %s", instance.id, organization_id)
    return instance, token


async def get_instance(session: AsyncSession, organization_id: int, instance_id: int) -> Instance:
    """The organization's live instance, or :class:`LookupError` (→ 404, never 403)."""
    stmt = select(Instance).where(
        col(Instance.id) == instance_id,
        col(Instance.organization_id) == organization_id,
        col(Instance.deleted_at).is_(None),
    )
    instance = (await session.execute(stmt)).scalar_one_or_none()
    if instance is None:
        raise LookupError(f"instance {instance_id} not found")
    return instance


async def list_instances(
    session: AsyncSession, organization_id: int, page: int, page_size: int
) -> tuple[Sequence[Instance], int]:
    """One page of the organization's instances, oldest first, and the total count."""
    where = (
        col(Instance.organization_id) == organization_id,
        col(Instance.deleted_at).is_(None),
    )
    total = await session.execute(select(func.count()).select_from(Instance).where(*where))
    stmt = (
        select(Instance)
        .where(*where)
        .order_by(col(Instance.id))
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    rows = (await session.execute(stmt)).scalars().all()
    return rows, int(total.scalar_one())


async def patch_instance(
    session: AsyncSession,
    box: SecretBox,
    settings: Settings,
    instance: Instance,
    body: object,
) -> tuple[Instance, set[str]]:
    """Partial update; re-validated as on create. Watermarks of kept resources are untouched.

    Returns the instance and the resources it no longer polls (their Redis watermarks are
    dropped by the caller once the change is committed).
    """
    from app.domain.instanceconfig import FieldError

    secrets = box.open(instance.secrets)
    config_secrets = {k: v for k, v in secrets.items() if k not in PROVIDER_TOKEN_KEYS}
    try:
        spec = validate_patch(
            instance.name,
            instance.tags,
            instance.configuration,
            config_secrets,
            body,
            min_refresh_minutes=settings.min_refresh_minutes,
        )
    except FieldError as exc:
        raise InstanceInputError(exc.message) from exc
    await check_callback_dns(spec.callback_url, settings.allow_private_callbacks)
    removed = await _apply_spec(session, box, instance, spec, secrets)
    return instance, removed


async def _apply_spec(
    session: AsyncSession,
    box: SecretBox,
    instance: Instance,
    spec: InstanceSpec,
    secrets: dict[str, Any],
) -> set[str]:
    assert instance.id is not None
    now = utcnow()
    tokens = {k: secrets[k] for k in PROVIDER_TOKEN_KEYS if k in secrets}
    was_enabled = instance.events_enabled
    instance.name = spec.name
    instance.tags = spec.tags
    instance.configuration = spec.public
    instance.secrets = box.seal({**spec.secrets, **tokens})
    instance.events_enabled = spec.events_enabled
    next_by_interval = now + timedelta(seconds=spec.refresh_interval_s)
    if spec.events_enabled and (not was_enabled or instance.next_poll_at is None):
        assert instance.id is not None
        instance.next_poll_at = first_poll_at(now, instance.id, spec.refresh_interval_s)
    elif (
        instance.next_poll_at is not None and spec.refresh_interval_s != instance.refresh_interval_s
    ):
        instance.next_poll_at = min(instance.next_poll_at, next_by_interval)
    instance.refresh_interval_s = spec.refresh_interval_s
    # Any accepted PATCH (the configuration was just re-validated) lifts a quarantine: the
    # next claim or poll tries again and re-quarantines if the cause is still there.
    instance.quarantined_at = None
    instance.quarantine_reason = None
    instance.poll_crashes = 0
    instance.updated_at = now
    session.add(instance)
    existing = set(
        (
            await session.execute(
                select(col(PollState.resource)).where(col(PollState.instance_id) == instance.id)
            )
        ).scalars()
    )
    removed = existing - set(spec.resources)
    if removed:
        await session.execute(
            delete(PollState).where(
                col(PollState.instance_id) == instance.id,
                col(PollState.resource).in_(removed),
            )
        )
    for name, resource in spec.resources.items():
        if name not in existing:
            session.add(
                PollState(
                    instance_id=instance.id,
                    resource=name,
                    watermark_at=starting_watermark(now, resource),
                    enabled_at=now,
                )
            )
    await session.flush()
    return removed


async def delete_instance(session: AsyncSession, instance: Instance) -> set[str]:
    """Tombstone the instance: no polling, no tokens, pending deliveries cancelled.

    Returns the resources it polled (their Redis watermarks are dropped after commit).
    """
    assert instance.id is not None
    now = utcnow()
    instance.deleted_at = now
    instance.updated_at = now
    instance.secrets = None
    instance.events_enabled = False
    instance.next_poll_at = None
    session.add(instance)
    polled = set(
        (
            await session.execute(
                delete(PollState)
                .where(col(PollState.instance_id) == instance.id)
                .returning(col(PollState.resource))
            )
        ).scalars()
    )
    await session.execute(
        update(Delivery)
        .where(
            col(Delivery.instance_id) == instance.id,
            col(Delivery.status) == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.CANCELLED, next_attempt_at=None)
    )
    await session.flush()
    return polled


async def forget_watermarks(redis: Redis, instance_id: int, resources: set[str]) -> None:
    """Drop an instance's hot watermarks from Redis (after the change committed)."""
    if resources:
        await redis.delete(*(keys.watermark(instance_id, r) for r in resources))
