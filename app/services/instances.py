"""Instance use-cases: create, read, update, delete — with tenant isolation on every query.

Functions take their dependencies as arguments and keep the decisions (validation, the
OAuth exchange, the instance limit, the schedule); the statements are
:mod:`app.store.instances`. The caller owns the transaction (the API handler commits at
the request boundary), except in :func:`create_instance`, which is its own entry point.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.instanceconfig import (
    CALLBACK_KEY,
    ENABLED_KEY,
    INTERVAL_KEY,
    POLLER_KEY,
    TIMEZONE_KEY,
    FieldError,
    InstanceSpec,
    validate_create,
    validate_patch,
)
from app.domain.jsonsafety import UnsafeJson, check_value, loads_checked
from app.domain.pollconfig import stored_resources
from app.domain.schedule import first_poll_at
from app.domain.watermark import starting_watermark
from app.errors import BadGateway, BadInput, Conflict
from app.models import Instance, utcnow
from app.providers.oauth import GrantRejected, ProviderUnavailable, exchange_code
from app.security import SecretBox, hash_secret, new_secret
from app.services.guarded_http import BlockedAddress, check_callback_host
from app.settings import Settings
from app.store import instances as store
from app.store.watermarks import WatermarkStore

log = logging.getLogger(__name__)

#: The provider tokens a view shows (as ``********``) under Open Connectors' names.
SHOWN_TOKEN_KEYS = {"access_token": "oauth.user.token", "refresh_token": "oauth.user.refresh_token"}
CLIENT_ID_KEY = "oauth.api.key"
#: Keys of the Open Connectors configuration stored in columns of their own, not in
#: ``Instance.configuration`` (:func:`public_configuration` puts them back).
ENGINE_KEYS = frozenset({CLIENT_ID_KEY, CALLBACK_KEY, INTERVAL_KEY, ENABLED_KEY, TIMEZONE_KEY})


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
        raise BadInput(f"configuration.{CALLBACK_KEY}: {exc}") from exc


def public_configuration(instance: Instance) -> dict[str, Any]:
    """The instance's Open Connectors configuration without its secrets, as validated.

    The keys the engine reads live in columns; this puts them back where a client (and a
    PATCH, which merges into it) expects them.
    """
    config = dict(instance.configuration)
    config[CLIENT_ID_KEY] = instance.client_id
    config[ENABLED_KEY] = instance.events_enabled
    config[INTERVAL_KEY] = instance.refresh_interval_minutes
    if instance.callback_url is not None:
        config[CALLBACK_KEY] = instance.callback_url
    if instance.timezone is not None:
        config[TIMEZONE_KEY] = instance.timezone
    return config


def polls(instance: Instance) -> bool:
    """Whether beat schedules the instance (the tenant's switch, no 410, no quarantine)."""
    return instance.events_enabled and not instance.disabled and instance.quarantined_at is None


def _spec_columns(
    box: SecretBox, spec: InstanceSpec, tokens: dict[str, Any] | None, secret_keys: list[str]
) -> dict[str, Any]:
    """A validated spec as the instance's columns, in the engine's shape.

    The one writer of the configuration columns, so the body, the engine's columns and the
    names of the secrets cannot disagree. ``tokens`` replace the provider tokens; without
    them the stored tokens stay, and so do their names (from ``secret_keys``).
    """
    zone = spec.public.get(TIMEZONE_KEY)
    columns: dict[str, Any] = {
        "name": spec.name,
        "tags": spec.tags,
        "configuration": {k: v for k, v in spec.public.items() if k not in ENGINE_KEYS},
        "client_id": spec.client_id,
        "callback_url": spec.callback_url,
        "timezone": zone if isinstance(zone, str) and zone else None,
        "refresh_interval_minutes": float(spec.public[INTERVAL_KEY]),
        "poller": stored_resources(spec.resources),
        "events_enabled": spec.events_enabled,
        "secrets": box.seal(spec.secrets) if spec.secrets else None,
    }
    if tokens is None:
        token_names = [k for k in secret_keys if k in SHOWN_TOKEN_KEYS.values()]
    else:
        columns["tokens"] = box.seal(tokens)
        token_names = [name for key, name in SHOWN_TOKEN_KEYS.items() if tokens.get(key)]
    columns["secret_keys"] = sorted(spec.secrets) + token_names
    return columns


def _storable(body: object, spec: InstanceSpec) -> None:
    """Refuse what PostgreSQL would refuse, naming the field, before anything is spent.

    The API reads bodies with :func:`loads_checked`, but the spec also holds values
    decoded by the validators themselves (an ``event.poller.configuration`` given as a
    JSON string) and this function is the service's boundary for every caller. jsonb
    takes neither ``\\u0000`` nor NaN/Infinity (which ``json.loads`` accepts).
    """
    try:
        check_value(body)
        check_value(spec.name, "name")
        check_value(spec.tags, "tags")
        check_value(spec.public, "configuration")
        check_value(spec.secrets, "configuration")
    except UnsafeJson as exc:
        raise BadInput.naming(exc) from exc
    for field, value in (("tags", spec.tags), ("configuration", spec.public)):
        try:
            json.dumps(value, allow_nan=False)
        except ValueError as exc:
            raise BadInput(f"{field}: numbers must be finite (no NaN or Infinity)") from exc


def _schedulable(now: datetime, spec: InstanceSpec) -> None:
    """Every date the new instance will be given must exist (``datetime`` ends at year 9999).

    The first poll is at most one interval after ``now`` (:func:`first_poll_at`), and each
    resource's watermark starts ``pollDelay`` before it.
    """
    try:
        _ = now + timedelta(seconds=spec.refresh_interval_s)
    except OverflowError as exc:
        raise BadInput(f"configuration.{INTERVAL_KEY}: is too large") from exc
    for name, resource in spec.resources.items():
        try:
            starting_watermark(now, resource)
        except OverflowError as exc:
            raise BadInput(f"configuration.{POLLER_KEY}.{name}.pollDelay: is too large") from exc


def _decoded_poller(body: object) -> object:
    """The body with a JSON-string ``event.poller.configuration`` read by :func:`loads_checked`.

    Open Connectors clients send the poller configuration as a JSON *string*; decoding it
    here means NUL, lone surrogates and deep nesting inside that string are a 400 naming
    the key, like the same problems anywhere else in the body.
    """
    if not isinstance(body, dict):
        return body
    config = body.get("configuration")
    if not isinstance(config, dict) or not isinstance(config.get(POLLER_KEY), str):
        return body
    raw = config[POLLER_KEY]
    if raw == "":
        return body
    try:
        decoded = loads_checked(raw, f"configuration.{POLLER_KEY}")
    except UnsafeJson as exc:
        raise BadInput.naming(exc) from exc
    return {**body, "configuration": {**config, POLLER_KEY: decoded}}


#: Settings the validator only reads while events are enabled; they must still be text.
_TEXT_SETTINGS = (CALLBACK_KEY, "event.vendor.type")


def _settings_are_text(body: object) -> None:
    """A callback URL or vendor type that is not text is refused even while events are off.

    The configuration validator skips them when events are disabled, which would store
    ``0`` or ``[]`` and fail only when events are enabled later.
    """
    config = body.get("configuration") if isinstance(body, dict) else None
    if not isinstance(config, dict):
        return
    for key in _TEXT_SETTINGS:
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise BadInput(f"configuration.{key}: must be a string")


def _limit_error(settings: Settings) -> Conflict:
    return Conflict(
        f"organization: at most {settings.max_instances_per_org} instances "
        "(POLLINATOR_MAX_INSTANCES_PER_ORG); delete one first"
    )


async def _exchange(
    http: aiohttp.ClientSession, settings: Settings, spec: InstanceSpec, code: str
) -> dict[str, Any]:
    """Trade the grant code for tokens with the spec's OAuth app; the tokens as secrets."""
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
        raise BadInput(f"providerData.code: provider refused the code: {exc.message}") from exc
    except ProviderUnavailable as exc:
        raise BadGateway(f"providerData.code: {exc.message}") from exc
    return tokens.to_secrets()


def _checked_create(body: object, min_refresh_minutes: float) -> tuple[InstanceSpec, str]:
    """Every check of a create body that needs no I/O (run off the event loop: a 256 KB body
    of the largest valid configuration costs tens of ms of CPU, which must not stall other
    requests)."""
    body = _decoded_poller(body)
    _settings_are_text(body)
    try:
        spec, code = validate_create(body, min_refresh_minutes=min_refresh_minutes)
    except FieldError as exc:
        raise BadInput.naming(exc) from exc
    _storable(body, spec)
    _schedulable(utcnow(), spec)
    return spec, code


def _checked_patch(
    instance: Instance, config_secrets: dict[str, str], body: object, min_refresh_minutes: float
) -> tuple[object, InstanceSpec]:
    """:func:`_checked_create` for a PATCH body; returns the decoded body and the spec."""
    body = _decoded_poller(body)
    _settings_are_text(body)
    try:
        spec = validate_patch(
            instance.name,
            instance.tags,
            public_configuration(instance),
            config_secrets,
            body,
            min_refresh_minutes=min_refresh_minutes,
        )
    except FieldError as exc:
        raise BadInput.naming(exc) from exc
    _storable(body, spec)
    _schedulable(utcnow(), spec)
    return body, spec


async def create_instance(
    sessions: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    box: SecretBox,
    settings: Settings,
    organization_id: int,
    body: object,
) -> tuple[Instance, str]:
    """Validate everything, exchange the OAuth code, then store; nothing is written on failure.

    A grant code can be exchanged once, so every check that can refuse the request runs
    before the exchange: the body, PostgreSQL's own limits on what it stores, the dates
    the instance will be given, the callback's DNS answers and the organization's
    instance limit. No database connection is held while the provider answers (one
    organization's slow creates must not starve everyone's requests of connections).
    The limit is checked again under a per-organization lock just before the commit, so
    concurrent creates cannot pass it together; only a create that lost that race has
    spent its code for nothing.
    """
    spec, code = await asyncio.to_thread(_checked_create, body, settings.min_refresh_minutes)
    await check_callback_dns(spec.callback_url, settings.allow_private_callbacks)
    async with sessions() as session:
        if await store.count_live(session, organization_id) >= settings.max_instances_per_org:
            raise _limit_error(settings)
    tokens = await _exchange(http, settings, spec, code)
    token = new_secret()
    async with sessions() as session, session.begin():
        now = utcnow()
        instance = Instance(
            organization_id=organization_id,
            token_hash=hash_secret(token),
            created_at=now,
            updated_at=now,
            **_spec_columns(box, spec, tokens, []),
        )
        # Serializes this organization's creates from here to the commit.
        await store.lock_organization(session, organization_id)
        if await store.count_live(session, organization_id) >= settings.max_instances_per_org:
            raise _limit_error(settings)
        instance_id = await store.insert_instance(session, instance)
        if spec.events_enabled:
            instance.next_poll_at = first_poll_at(now, instance_id, spec.refresh_interval_s)
        await store.add_poll_states(
            session,
            instance_id,
            {name: starting_watermark(now, r) for name, r in spec.resources.items()},
        )
    log.info("instance %s created for organization %s", instance.id, organization_id)
    return instance, token


async def get_instance(session: AsyncSession, organization_id: int, instance_id: int) -> Instance:
    """The organization's live instance, or :class:`LookupError` (→ 404, never 403)."""
    instance = await store.get_live_instance(session, organization_id, instance_id)
    if instance is None:
        raise LookupError(f"instance {instance_id} not found")
    return instance


async def list_instances(
    session: AsyncSession, organization_id: int, page: int, page_size: int
) -> tuple[Sequence[Instance], int]:
    """One page of the organization's instances (for views only), oldest first, and the total."""
    return await store.list_live_instances(session, organization_id, page, page_size)


#: Configuration keys naming the OAuth app the instance's tokens belong to. Tokens of one
#: app are useless to another, so changing them needs a grant code for the new app.
OAUTH_APP_KEYS = ("oauth.api.key", "oauth.api.secret")


def _patch_code(body: object) -> str | None:
    """``providerData.code`` of a PATCH body (a re-authorization), if it carries one."""
    if not isinstance(body, dict) or "providerData" not in body:
        return None
    provider = body["providerData"]
    code = provider.get("code") if isinstance(provider, dict) else None
    if not isinstance(code, str) or not code.strip():
        raise BadInput(
            "providerData.code: must be a non-empty string (the OAuth authorization grant code)"
        )
    return code.strip()


def _changed_oauth_app(
    spec: InstanceSpec, public: dict[str, Any], config_secrets: dict[str, Any]
) -> str | None:
    """The first OAuth app key whose value the PATCH changes, if any."""
    before = {**public, **config_secrets}
    after = {**spec.public, **spec.secrets}
    for key in OAUTH_APP_KEYS:
        if before.get(key) != after.get(key):
            return key
    return None


async def patch_instance(
    session: AsyncSession,
    http: aiohttp.ClientSession,
    box: SecretBox,
    settings: Settings,
    instance: Instance,
    body: object,
) -> tuple[Instance, set[str]]:
    """Partial update; re-validated as on create. Watermarks of kept resources are untouched.

    Changing the OAuth app (``oauth.api.key`` / ``oauth.api.secret``) needs a new grant:
    the PATCH must carry ``providerData.code``, which is exchanged - after every check that
    can refuse the body - and replaces the tokens, as on create. A code without an app
    change re-authorizes the instance with its current app (e.g. after a revoked grant).
    Without a code the change is refused: silently keeping tokens of another app would
    leave an instance that fails at its next refresh.

    Returns the instance and the resources it no longer polls (their Redis watermarks are
    dropped by the caller once the change is committed).
    """
    config_secrets = box.open(instance.secrets)  # a PATCH merges into them
    body, spec = await asyncio.to_thread(
        _checked_patch, instance, config_secrets, body, settings.min_refresh_minutes
    )
    code = _patch_code(body)
    changed = _changed_oauth_app(spec, public_configuration(instance), config_secrets)
    if changed is not None and code is None:
        raise BadInput(
            f"configuration.{changed}: changing the OAuth app needs a new authorization; "
            "send providerData.code (a grant code for the new app) with the PATCH"
        )
    await check_callback_dns(spec.callback_url, settings.allow_private_callbacks)
    tokens = await _exchange(http, settings, spec, code) if code is not None else None
    removed = await _apply_spec(session, box, instance, spec, tokens)
    return instance, removed


async def _apply_spec(
    session: AsyncSession,
    box: SecretBox,
    instance: Instance,
    spec: InstanceSpec,
    new_tokens: dict[str, Any] | None = None,
) -> set[str]:
    assert instance.id is not None
    now = utcnow()
    if new_tokens is not None:
        # A refresh racing with this write loses its optimistic version check and re-reads.
        instance.token_version += 1
        instance.valid = True
    was_enabled = instance.events_enabled
    old_interval_s = instance.refresh_interval_s
    for column, value in _spec_columns(box, spec, new_tokens, instance.secret_keys).items():
        setattr(instance, column, value)
    next_by_interval = now + timedelta(seconds=spec.refresh_interval_s)
    if spec.events_enabled and (not was_enabled or instance.next_poll_at is None):
        assert instance.id is not None
        instance.next_poll_at = first_poll_at(now, instance.id, spec.refresh_interval_s)
    elif instance.next_poll_at is not None and spec.refresh_interval_s != old_interval_s:
        instance.next_poll_at = min(instance.next_poll_at, next_by_interval)
    # Any accepted PATCH (the configuration was just re-validated) lifts a quarantine and
    # a 410's disabling: the next claim or poll tries again, and a callback still Gone
    # disables the instance again.
    instance.disabled = False
    instance.quarantined_at = None
    instance.quarantine_reason = None
    instance.poll_crashes = 0
    instance.updated_at = now
    await store.save_instance(session, instance)
    existing = await store.polled_resources(session, instance.id)
    removed = existing - set(spec.resources)
    if removed:
        await store.delete_poll_states(session, instance.id, removed)
    await store.add_poll_states(
        session,
        instance.id,
        {
            name: starting_watermark(now, resource)
            for name, resource in spec.resources.items()
            if name not in existing
        },
    )
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
    instance.tokens = None
    instance.secret_keys = []
    instance.events_enabled = False
    instance.next_poll_at = None
    await store.save_instance(session, instance)
    polled = await store.delete_poll_states(session, instance.id)
    await store.cancel_pending_deliveries(session, instance.id)
    return polled


async def forget_watermarks(redis: Redis, instance_id: int, resources: set[str]) -> None:
    """Drop an instance's hot watermarks from Redis (after the change committed)."""
    await WatermarkStore(redis).forget(instance_id, resources)
