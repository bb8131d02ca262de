"""Validation of the Open Connectors instance body (SPEC §3), as pure functions.

The body is split into what may be shown back (``public``) and what must be
encrypted (``secrets``). Every failure raises :class:`FieldError` naming the
offending key, so the API can answer 400 without having written anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.domain.limits import (
    MAX_NAME_LENGTH,
    MAX_NUMBER_TEXT_LENGTH,
    MAX_REFRESH_MINUTES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TIMEZONE_NAME_LENGTH,
    MAX_URL_LENGTH,
)
from app.domain.pollconfig import (
    DEFAULT_POLLER_CONFIGURATION,
    ConfigError,
    ResourceConfig,
    load_configuration_object,
    parse_poller_configuration,
)
from app.domain.signing import standard_webhooks_key
from app.domain.timezones import UnknownTimeZoneError, resolve_timezone

ELEMENT_KEY = "infusionsoftrest"
ELEMENT_NAME = "Infusionsoft REST"
SECRET_CONFIG_KEYS = ("oauth.api.secret", "event.notification.signature.key")
POLLER_KEY = "event.poller.configuration"
INTERVAL_KEY = "event.poller.refresh_interval"
#: The instance's time zone (Open Connectors: "unless configured for a specific time zone,
#: polling occurs in UTC"): ``${date:…}`` renders in it and zone-less date values read in it.
TIMEZONE_KEY = "event.poller.timezone"
CALLBACK_KEY = "event.notification.callback.url"
ENABLED_KEY = "event.notification.enabled"
DEFAULT_REFRESH_MINUTES = 15.0
REDACTED = "********"
OAUTH_CALLBACK_KEY = "oauth.callback.url"
# Never valid in a URL (RFC 3986 has no raw whitespace): a space in a host or a CR/LF in a
# path is accepted by urlsplit but makes every delivery or redirect fail, forever.
_URL_FORBIDDEN_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# Host names: letters (IDN included), digits, '-', '.', '_'; IPv6 literals add ':' and '%'.
_HOST_PUNCTUATION = frozenset("-._")
_IPV6_PUNCTUATION = frozenset(":.%")


class FieldError(ValueError):
    """Invalid input; ``field`` is the key the caller must fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = f"{field}: {message}"


@dataclass(frozen=True)
class InstanceSpec:
    """A validated instance definition, ready to store."""

    name: str
    tags: list[str]
    public: dict[str, Any]
    secrets: dict[str, str]
    events_enabled: bool
    callback_url: str | None
    refresh_interval_s: float
    resources: dict[str, ResourceConfig]

    @property
    def client_id(self) -> str:
        return str(self.public["oauth.api.key"])

    @property
    def oauth_callback_url(self) -> str:
        return str(self.public["oauth.callback.url"])


def _as_bool(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise FieldError(field, "must be true or false")


def _non_empty_str(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value.strip():
        raise FieldError(f"configuration.{key}", "is required (a non-empty string)")
    return value.strip()


def _finite_number(value: object) -> float | None:
    """A number or a short numeric string as a finite float; ``None`` otherwise.

    NaN, infinities (``"inf"``, ``1e999``) and integers beyond float's range are ``None``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str) and len(value) > MAX_NUMBER_TEXT_LENGTH:
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int beyond float's range
        return None
    return number if math.isfinite(number) else None


def parse_refresh_minutes(value: object, minimum: float) -> float:
    """``event.poller.refresh_interval``: a number or numeric string, in minutes.

    Bounded by ``MAX_REFRESH_MINUTES``: the next poll slot is computed from it, and a huge
    interval (``4193436587``) put that slot beyond ``datetime``'s range.
    """
    field = f"configuration.{INTERVAL_KEY}"
    minutes = _finite_number(value)
    if minutes is None:
        raise FieldError(field, "must be a number of minutes")
    if minutes < minimum:
        raise FieldError(field, f"must be at least {minimum:g} minutes")
    if minutes > MAX_REFRESH_MINUTES:
        raise FieldError(field, f"must be at most {MAX_REFRESH_MINUTES:g} minutes")
    return minutes


def _valid_host(host: str) -> bool:
    punctuation = _IPV6_PUNCTUATION if ":" in host else _HOST_PUNCTUATION
    return all(char.isalnum() or char in punctuation for char in host)


def _split_http_url(url: object, field: str, missing: str) -> tuple[str, str]:
    """The stripped URL and its host, or a :class:`FieldError` naming ``field``.

    Shared by the callback and the OAuth callback: both must be usable as they are written,
    so anything ``urlsplit`` would quietly accept but no HTTP client can use (whitespace,
    control characters, a host with a space or a '<') is refused here, once, with a 400.
    """
    if not isinstance(url, str) or not url.strip():
        raise FieldError(field, missing)
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise FieldError(field, f"must be at most {MAX_URL_LENGTH} characters")
    if _URL_FORBIDDEN_RE.search(url):
        raise FieldError(field, "must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        raise FieldError(field, "is not a valid URL") from exc
    if parts.scheme not in {"http", "https"} or not host:
        raise FieldError(field, "must be an http(s) URL with a host")
    if not _valid_host(host):
        raise FieldError(field, "has a host name with characters no host name can contain")
    return url, host


def check_callback_url(url: object, field: str) -> str:
    """Scheme, host presence and syntax (see :func:`_split_http_url`).

    Whether the host may be reached (SSRF) is judged by the caller, on the host as the
    HTTP client will read it (``app.services.guarded_http``): that reading needs yarl,
    which this stdlib-only module does not import, and any other reading of the host
    lets spellings such as ``127。0。0。1`` through.
    """
    url, _ = _split_http_url(url, field, "is required when events are enabled")
    return url


def _check_signature_key(key: object) -> None:
    """A key the deliveries can sign with (``whsec_`` keys must be base64 after the prefix)."""
    field = "configuration.event.notification.signature.key"
    if not isinstance(key, str):
        raise FieldError(field, "must be a string")
    try:
        standard_webhooks_key(key)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from exc


def _check_timezone(zone: object) -> str:
    field = f"configuration.{TIMEZONE_KEY}"
    if not isinstance(zone, str) or not zone.strip() or len(zone) > MAX_TIMEZONE_NAME_LENGTH:
        raise FieldError(
            field, f"must be a time zone name of at most {MAX_TIMEZONE_NAME_LENGTH} characters"
        )
    try:
        resolve_timezone(zone.strip())
    except UnknownTimeZoneError as exc:
        raise FieldError(field, f"unknown time zone {zone!r}") from exc
    return zone.strip()


def parse_tags(value: object) -> list[str]:
    """Tags (SPEC §8): a list of strings, a list of ``{"name": ...}`` objects, or one string.

    A plain string is one tag (not a comma-separated list: a tag may contain commas).
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_TAGS:
        raise FieldError(
            "tags", f"must be a string or a list of at most {MAX_TAGS} strings or {{name}} objects"
        )
    tags: list[str] = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_TAG_LENGTH:
            raise FieldError(
                "tags", f"each tag must be a non-empty string of at most {MAX_TAG_LENGTH} chars"
            )
        tags.append(name.strip())
    return tags


def parse_name(value: object) -> str:
    if value is None:
        return "Infusionsoft REST instance"
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise FieldError("name", f"must be a non-empty string of at most {MAX_NAME_LENGTH} chars")
    return value.strip()


def _poller(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, ResourceConfig]]:
    raw = config.get(POLLER_KEY)
    if raw is None or raw == "":
        raw = DEFAULT_POLLER_CONFIGURATION
    try:
        as_object = load_configuration_object(raw)
        resources = parse_poller_configuration(as_object)
    except ConfigError as exc:
        raise FieldError(f"configuration.{exc.field}", exc.detail) from exc
    return dict(as_object), resources


def validate_configuration(
    config: object, *, min_refresh_minutes: float
) -> tuple[dict[str, Any], dict[str, str], bool, str | None, float, dict[str, ResourceConfig]]:
    """Validate a full ``configuration`` object; split it into public and secret parts."""
    if not isinstance(config, dict):
        raise FieldError("configuration", "must be an object")
    _non_empty_str(config, "oauth.api.key")
    _non_empty_str(config, "oauth.api.secret")
    _non_empty_str(config, OAUTH_CALLBACK_KEY)
    _split_http_url(
        config[OAUTH_CALLBACK_KEY], f"configuration.{OAUTH_CALLBACK_KEY}", "is required"
    )
    enabled = _as_bool(config.get(ENABLED_KEY, False), f"configuration.{ENABLED_KEY}")
    vendor = config.get("event.vendor.type", "polling")
    if enabled and vendor != "polling":
        raise FieldError(
            "configuration.event.vendor.type", "only 'polling' is supported for infusionsoftrest"
        )
    callback = None
    if enabled or config.get(CALLBACK_KEY):
        callback = check_callback_url(config.get(CALLBACK_KEY), f"configuration.{CALLBACK_KEY}")
    raw_interval = config.get(INTERVAL_KEY)
    minutes = (
        max(DEFAULT_REFRESH_MINUTES, min_refresh_minutes)
        if raw_interval is None
        else parse_refresh_minutes(raw_interval, min_refresh_minutes)
    )
    signature = config.get("event.notification.signature.key")
    if signature is not None:
        _check_signature_key(signature)
    zone = config.get(TIMEZONE_KEY)
    if zone is not None:
        zone = _check_timezone(zone)
    poller_raw, resources = _poller(config)
    public = {k: v for k, v in config.items() if k not in SECRET_CONFIG_KEYS}
    public[ENABLED_KEY] = enabled
    public[POLLER_KEY] = poller_raw
    public[INTERVAL_KEY] = minutes
    if zone is not None:
        public[TIMEZONE_KEY] = zone
    secrets = {k: str(config[k]) for k in SECRET_CONFIG_KEYS if config.get(k)}
    return public, secrets, enabled, callback, minutes * 60.0, resources


def validate_create(body: object, *, min_refresh_minutes: float) -> tuple[InstanceSpec, str]:
    """Validate a ``POST /instances`` body; returns the spec and the OAuth grant code."""
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    element = body.get("element")
    key = element.get("key") if isinstance(element, dict) else None
    if key != ELEMENT_KEY:
        raise FieldError("element.key", f"unknown element; only '{ELEMENT_KEY}' is supported")
    provider = body.get("providerData")
    code = provider.get("code") if isinstance(provider, dict) else None
    if not isinstance(code, str) or not code.strip():
        raise FieldError("providerData.code", "is required (the OAuth authorization grant code)")
    public, secrets, enabled, callback, interval, resources = validate_configuration(
        body.get("configuration"),
        min_refresh_minutes=min_refresh_minutes,
    )
    spec = InstanceSpec(
        name=parse_name(body.get("name")),
        tags=parse_tags(body.get("tags")),
        public=public,
        secrets=secrets,
        events_enabled=enabled,
        callback_url=callback,
        refresh_interval_s=interval,
        resources=resources,
    )
    return spec, code.strip()


def validate_patch(
    current_name: str,
    current_tags: list[str],
    current_public: Mapping[str, Any],
    current_secrets: Mapping[str, str],
    body: object,
    *,
    min_refresh_minutes: float,
) -> InstanceSpec:
    """Merge a ``PATCH`` body over the stored instance and re-validate the result as on create."""
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    changes = body.get("configuration", {})
    if not isinstance(changes, dict):
        raise FieldError("configuration", "must be an object")
    merged: dict[str, Any] = {**current_public, **current_secrets}
    for key, value in changes.items():
        if key in SECRET_CONFIG_KEYS and value == REDACTED:
            continue  # a client echoing the redacted configuration back keeps the secret
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    public, secrets, enabled, callback, interval, resources = validate_configuration(
        merged,
        min_refresh_minutes=min_refresh_minutes,
    )
    return InstanceSpec(
        name=parse_name(body["name"]) if "name" in body else current_name,
        tags=parse_tags(body["tags"]) if "tags" in body else list(current_tags),
        public=public,
        secrets=secrets,
        events_enabled=enabled,
        callback_url=callback,
        refresh_interval_s=interval,
        resources=resources,
    )
