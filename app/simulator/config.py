"""Configuration of the simulator (CLI flags map 1:1 onto these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SimulatorConfig"]


@dataclass
class SimulatorConfig:
    """Everything ``create_app`` needs. Defaults match Keap's production limits."""

    host: str = "127.0.0.1"
    port: int = 8090
    #: added to every REST (``/crm/rest/v1``) response
    latency_ms: float = 0.0
    #: makes seeded data, account salts, fault dice and the mutator deterministic
    seed: int | None = None
    #: record timestamps are ``now - clock_skew_ms`` (the provider's clock lags)
    clock_skew_ms: int = 0
    #: access token lifetime in seconds
    token_ttl: float = 86_400.0
    #: spike arrest per (client, account); 0 disables
    throttle_per_second: float = 25.0
    #: per-minute throttle per (client, account); 0 disables
    throttle_per_minute: int = 1500
    #: daily quota per (client, account); 0 disables
    quota_per_day: int = 150_000
    #: send ``Retry-After`` on 429 (Keap does not document it; pollers must cope without)
    retry_after: bool = True
    #: pre-seed accounts ``acct-1`` .. ``acct-N`` at start-up
    accounts: int = 0
    #: records per seeded account (and per account created later without a count), spread
    #: round-robin over ``seed_resources``
    records_per_account: int = 0
    seed_resources: list[str] | None = None
    #: fixed OAuth clients (id -> secret); empty: any client, secret pinned on first use
    clients: dict[str, str] = field(default_factory=dict)
    #: maximum ``limit``; larger values are clamped
    max_limit: int = 1000
