"""Shared fixtures: real PostgreSQL and Redis (the machine's when URLs are set, else embedded).

Every test session gets a fresh database created for it and built through the
Alembic migrations, so runs never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
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


def _fresh_database(base_url: str) -> tuple[str, str]:
    """Create ``pollinator_t_<random>`` next to ``base_url``'s database; return (url, name)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from app.db import sync_url

    url = make_url(sync_url(base_url))
    name = f"pollinator_t_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    new = url.set(database=name, drivername="postgresql")
    return new.render_as_string(hide_password=False), name


def _drop_database(base_url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    from app.db import sync_url

    admin = make_url(sync_url(base_url)).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def service_urls() -> Iterator[ServiceUrls]:
    """Real servers for the whole session, a fresh migrated database, a flushed Redis db."""
    import redis

    from app.embedded import ensure_services
    from app.migrate import upgrade

    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL") or None,
        os.environ.get("POLLINATOR_REDIS_URL") or None,
        TEST_DATA_DIR,
    )
    database_url, name = _fresh_database(services.database_url)
    try:
        upgrade(database_url)
        client = redis.Redis.from_url(services.redis_url)
        client.flushdb()
        client.close()
        yield ServiceUrls(database_url, services.redis_url)
    finally:
        _drop_database(services.database_url, name)
        services.stop()
