"""Shared fixtures: real PostgreSQL and Redis (the machine's when URLs are set, else embedded).

Every test session gets a fresh database created for it and built through the
Alembic migrations, so runs never see each other's rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".data" / "test"
SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str


@pytest.fixture(scope="session")
def service_urls() -> Iterator[ServiceUrls]:
    """Real servers for the whole session, a fresh migrated database, a flushed Redis db."""
    import redis

    from app.embedded import drop_database, ensure_services, scratch_database
    from app.migrate import upgrade

    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL") or None,
        os.environ.get("POLLINATOR_REDIS_URL") or None,
        TEST_DATA_DIR,
    )
    database_url, name = scratch_database(services.database_url, "pollinator_t")
    try:
        upgrade(database_url)
        client = redis.Redis.from_url(services.redis_url)
        client.flushdb()
        client.close()
        yield ServiceUrls(database_url, services.redis_url)
    finally:
        drop_database(services.database_url, name)
        services.stop()
