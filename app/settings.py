"""Process settings: one pydantic-settings class, env prefix ``POLLINATOR_``.

Nothing is built at import time: callers ask for :func:`get_settings` (cached)
or construct :class:`Settings` directly in tests. A bad value stops the process
with one line naming the variable (:func:`load_settings_or_exit`).
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.domain.limits import DEFAULT_API_REQUESTS_PER_SECOND_PER_ORG, DEFAULT_MAX_INSTANCES_PER_ORG

DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
MIN_SECRET_KEY_LENGTH = 32


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


class Settings(BaseSettings):
    """Everything configurable about a Pollinator process (SPEC §2)."""

    model_config = SettingsConfigDict(
        env_prefix="POLLINATOR_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str | None = None
    redis_url: str | None = None
    broker_url: str | None = None
    secret_key: str | None = None
    data_dir: Path = Path(".data")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    flower_port: int = Field(default=5555, ge=0, le=65535)
    # ``user:password`` for Flower (SPEC §8); ``up`` generates one into the data dir if unset.
    flower_basic_auth: str | None = Field(default=None, repr=False)
    min_refresh_minutes: float = Field(default=1.0, gt=0)
    allow_private_callbacks: bool = False
    infusionsoft_api_url: str = "https://api.infusionsoft.com/crm/rest/v1"
    infusionsoft_token_url: str = "https://api.infusionsoft.com/token"
    infusionsoft_authorize_url: str = "https://accounts.infusionsoft.com/app/oauth/authorize"
    delivery_retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    provider_timeout_seconds: float = Field(default=30.0, gt=0)
    # Requests per second shared by all instances of one OAuth app (Keap: 25/s burst); 0 = off.
    provider_app_rate_per_second: int = Field(default=25, ge=0)
    # Polls one worker process keeps in flight. Each mostly waits (on the provider, or on
    # its OAuth app's request budget), so this is far above the core count.
    poll_concurrency: int = Field(default=256, ge=1, le=5000)
    delivery_concurrency: int = Field(default=64, ge=1, le=1000)
    # How long a delivery being POSTed is hidden from the sweeper; longer than the 15 s
    # callback timeout, so a live POST is never sent twice. A worker killed mid-POST
    # has its delivery re-sent after this.
    delivery_lease_seconds: float = Field(default=60.0, ge=16.0)
    log_level: str = "INFO"
    # text (default) or json: one object per line with instance/resource/delivery/request ids.
    log_format: Literal["text", "json"] = "text"
    # Set by `pollinator up` for its children; the API echoes it in /healthz.
    run_id: str | None = None
    # Worker/beat liveness file (workers/heartbeat.py), kept fresh by the work loop; unset = off.
    heartbeat_file: Path | None = None
    # Live instances one organization may have; a create beyond it is refused before the
    # OAuth code is exchanged.
    max_instances_per_org: int = Field(default=DEFAULT_MAX_INSTANCES_PER_ORG, ge=1)
    # API requests per second per organization, all API processes together (burst: one
    # second's worth); 0 = off. Beyond it: 429 with Retry-After.
    api_requests_per_second_per_org: float = Field(
        default=DEFAULT_API_REQUESTS_PER_SECOND_PER_ORG, ge=0
    )
    # -- data lifecycle (README "Data retention") --------------------------------------------
    # Payloads (delivery bodies, events' raw records) and metadata (event, delivery and
    # attempt rows) are purged separately; organizations may override both. 30 days of
    # payloads keep a month replayable; 90 days of metadata keep the quarter's log.
    payload_retention_days: float = Field(default=30.0, gt=0, le=36500)
    metadata_retention_days: float = Field(default=90.0, gt=0, le=36500)
    # Rows per purge/erasure transaction: small enough that no lock is held for long.
    purge_batch_rows: int = Field(default=2000, ge=10, le=100_000)

    @field_validator("delivery_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                numbers = tuple(float(p) for p in parts)
            except ValueError as exc:
                raise ValueError("must be comma-separated seconds, e.g. 5,300,1800") from exc
            value = numbers
        if isinstance(value, tuple | list):
            if not value or any(float(v) <= 0 for v in value):
                raise ValueError("must be a non-empty list of positive seconds")
        return value

    @field_validator("secret_key")
    @classmethod
    def _strong_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_KEY_LENGTH} characters")
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_and_password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ValueError("must be user:password")
        if "," in value:  # Flower reads a comma-separated list of credentials
            raise ValueError("must not contain a comma")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql", "postgres")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker: explicit, else the Redis URL."""
        url = self.broker_url or self.redis_url
        if url is None:
            raise SettingsError("POLLINATOR_BROKER_URL: no broker (set it or POLLINATOR_REDIS_URL)")
        return url

    def require(self, name: str) -> str:
        """Return a setting that must be present in this process, else raise naming it."""
        value = getattr(self, name)
        if not value:
            raise SettingsError(f"POLLINATOR_{name.upper()} is required but not set")
        return str(value)


def format_validation_error(exc: ValidationError) -> str:
    """One line per bad variable, naming it the way the operator spelled it."""
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        lines.append(f"POLLINATOR_{field.upper()}: {err['msg']}")
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, raising :class:`SettingsError` on bad values."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc)) from None


def load_settings_or_exit() -> Settings:
    """Entry points call this: a bad setting prints one clear line and exits 2."""
    try:
        return get_settings()
    except SettingsError as exc:
        print(f"pollinator: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


RUNTIME_FILE = "runtime.json"


def beside_running_stack(settings: Settings) -> Settings:
    """Fill unset database/Redis URLs from a running ``pollinator up`` in the same data dir.

    ``up`` writes ``<data dir>/runtime.json`` with the URLs of its embedded servers, so
    ``pollinator org create`` or ``migrate`` run in another terminal just work.
    """
    if settings.database_url and settings.redis_url:
        return settings
    path = settings.data_dir / RUNTIME_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return settings
    return settings.model_copy(
        update={
            "database_url": settings.database_url or found.get("POLLINATOR_DATABASE_URL"),
            "redis_url": settings.redis_url or found.get("POLLINATOR_REDIS_URL"),
        }
    )


def command_settings_or_exit() -> tuple[Settings, str]:
    """Settings for a command that needs the database, and its URL; exits 2 without one.

    Unset URLs come from a running ``pollinator up`` (:func:`beside_running_stack`).
    """
    settings = beside_running_stack(load_settings_or_exit())
    if not settings.database_url:
        print(
            "pollinator: POLLINATOR_DATABASE_URL is required (or run it beside `pollinator up`)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return settings, settings.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
