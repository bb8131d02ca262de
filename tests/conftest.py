"""Shared fixtures: real PostgreSQL and Redis (the machine's when URLs are set, else embedded).

Every test session gets a fresh database created for it and built through the
Alembic migrations, so runs never see each other's rows.

Redis has no such thing as a scratch database to create, and tests flush what they
use. So a session only ever uses (and flushes) a Redis database it has *proved* is
for tests: one that was empty when the session claimed it, or that carries the claim
marker an earlier test session left (see :func:`claim_redis_db`). When the configured
database holds anything else — CI's second pass points ``POLLINATOR_REDIS_URL`` at the
machine's shared db 0 — the session takes the highest-numbered free database instead
and never touches the configured one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from hypothesis import settings as hypothesis_settings

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".data" / "test"
SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"

# The 200 ms default deadline measures the machine's load, not the code: a loaded 2-core
# CI box fails property tests at random. Linear-time guarantees have their own tests.
hypothesis_settings.register_profile("pollinator", deadline=None)
hypothesis_settings.load_profile("pollinator")

# Markers by directory: ``pytestmark`` in a conftest.py is ignored by pytest, so
# ``-m integration`` / ``-m e2e`` used to select nothing.
_DIRECTORY_MARKERS = {"integration": "integration", "e2e": "e2e", "fuzz": "integration"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            top = item.path.resolve().relative_to(tests_dir).parts[0]
        except (ValueError, IndexError):
            continue
        marker = _DIRECTORY_MARKERS.get(top)
        if marker is not None:
            item.add_marker(marker)


# The key that says "this Redis database was claimed by a test session" (its value is
# the session's token). Application keys all start with ``pollinator:``; Celery's don't
# start with ``pollinator-tests``.
CLAIM_MARKER = "pollinator-tests:claimed-by"

# Atomically: claim the database if it is empty or was claimed by tests before.
_CLAIM = """
if redis.call('dbsize') == 0 or redis.call('exists', KEYS[1]) == 1 then
    redis.call('set', KEYS[1], ARGV[1])
    return 1
end
return 0
"""


def _with_db(url: str, db: int) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


def _db_of(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path else 0


def try_claim(url: str, token: str) -> bool:
    """Claim ``url``'s database for this session, then flush it; ``False`` if not ours."""
    with redis.Redis.from_url(url) as client:
        if not client.eval(_CLAIM, 1, CLAIM_MARKER, token):
            return False
        client.flushdb()
        client.set(CLAIM_MARKER, token)
    return True


def claim_redis_db(url: str, token: str, taken: frozenset[int] = frozenset()) -> str:
    """A URL of a Redis database this session may flush: ``url``'s own when that one is
    empty or test-claimed, else the highest-numbered such database (never db 0).

    Raises ``pytest.UsageError`` when there is none: the tests refuse to run rather than
    flush a database that holds someone else's keys.
    """
    configured = _db_of(url)
    count = 16  # Redis's default, when CONFIG is not available (managed Redis)
    with redis.Redis.from_url(url) as client, contextlib.suppress(redis.ResponseError):
        count = int(client.config_get("databases").get("databases", count))
    candidates = [configured] + [db for db in range(count - 1, 0, -1) if db != configured]
    for db in candidates:
        if db in taken:
            continue
        candidate = _with_db(url, db)
        if try_claim(candidate, token):
            return candidate
    raise pytest.UsageError(
        f"no Redis database the tests may flush: db {configured} holds keys no test session "
        "created, and no other database is empty"
    )


def release_redis_db(url: str, token: str) -> None:
    """Flush a database this session claimed, unless another session has claimed it since.

    The marker may be gone: the e2e stacks flush the session's database between
    modules (it is this session's, so they may); only another session's marker stops us.
    """
    with redis.Redis.from_url(url) as client:
        if client.get(CLAIM_MARKER) in (None, token.encode()):
            client.flushdb()


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str
    # A second Redis database of this session's, for processes that must not share the
    # other tests' broker (a beat's leader lock, a queue measured by length).
    spare_redis_url: str


@pytest.fixture(scope="session")
def service_urls() -> Iterator[ServiceUrls]:
    """Real servers for the whole session, a fresh migrated database, claimed Redis dbs."""
    from app.embedded import drop_database, ensure_services, scratch_database
    from app.migrate import upgrade

    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL") or None,
        os.environ.get("POLLINATOR_REDIS_URL") or None,
        TEST_DATA_DIR,
    )
    token = secrets.token_hex(8)
    database_url, name = scratch_database(services.database_url, "pollinator_t")
    claimed: list[str] = []
    try:
        upgrade(database_url)
        claimed.append(claim_redis_db(services.redis_url, token))
        claimed.append(claim_redis_db(services.redis_url, token, frozenset({_db_of(claimed[0])})))
        yield ServiceUrls(database_url, claimed[0], claimed[1])
    finally:
        for url in claimed:
            release_redis_db(url, token)
        drop_database(services.database_url, name)
        services.stop()
