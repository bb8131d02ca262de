"""The token refresh's store on real PostgreSQL: the worker's asyncpg pool reads the sealed
tokens, a write lands only at the version it read, a refused grant marks the instance
invalid, and a refresh that finds a newer token stored than the one rejected uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from app.db import create_pg_pool
from app.providers.infusionsoft import ProviderError
from app.security import SecretBox
from app.services.tokens import InstanceTokens, RefreshConfig
from app.store import tokens as store
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import FakeTokenEndpoint
from tests.integration.lifecycle_data import make_instance, make_org

pytestmark = pytest.mark.integration

BOX = SecretBox(SECRET_KEY)


@pytest.fixture
async def pool(service_urls: ServiceUrls) -> AsyncIterator[asyncpg.Pool]:
    pg = await create_pg_pool(service_urls.database_url, 2)
    yield pg
    await pg.close()


async def _instance(pool: asyncpg.Pool, marker: str) -> int:
    async with pool.acquire() as conn:
        org = await make_org(conn, f"tokens-{marker}")
        return await make_instance(conn, org.id, marker=marker)


async def _valid(pool: asyncpg.Pool, instance_id: int) -> bool:
    return bool(await pool.fetchval("SELECT valid FROM instances WHERE id = $1", instance_id))


async def test_a_write_lands_only_at_the_version_it_read(pool: asyncpg.Pool) -> None:
    instance_id = await _instance(pool, "cas")
    async with pool.acquire() as conn:
        read = await store.read_tokens(conn, instance_id)
        assert read is not None
        assert read.tokens is not None
        assert read.secrets is not None
        assert BOX.open(read.tokens) == {"access_token": "AT-cas"}
        assert BOX.open(read.secrets) == {"event.notification.signature.key": "k"}
        await store.mark_invalid(conn, instance_id)
        assert await store.store_tokens(
            conn, instance_id, read.version, BOX.seal({"access_token": "new"})
        )
        # A second writer that read the same version lost: the row moved on.
        assert not await store.store_tokens(
            conn, instance_id, read.version, BOX.seal({"access_token": "stale"})
        )
        after = await store.read_tokens(conn, instance_id)
        assert await store.read_tokens(conn, instance_id + 10_000) is None
    assert after is not None
    assert after.tokens is not None
    assert after.version == read.version + 1
    assert BOX.open(after.tokens) == {"access_token": "new"}
    assert await _valid(pool, instance_id)  # stored tokens make the instance valid again


@pytest.fixture
async def tokens_for(
    pool: asyncpg.Pool,
    service_urls: ServiceUrls,
    token_endpoint: tuple[FakeTokenEndpoint, str],
) -> AsyncIterator[tuple[FakeTokenEndpoint, int, InstanceTokens]]:
    instance_id = await _instance(pool, "refresh")
    redis = Redis.from_url(service_urls.redis_url)
    async with aiohttp.ClientSession() as http:
        fake, url = token_endpoint
        tokens = InstanceTokens(
            instance_id, "AT-refresh", pool, redis, http, BOX, RefreshConfig(url, "client", 2.0)
        )
        yield fake, instance_id, tokens
    await redis.aclose()


async def test_a_newer_stored_token_is_used_without_asking_the_provider(
    tokens_for: tuple[FakeTokenEndpoint, int, InstanceTokens],
) -> None:
    fake, _, tokens = tokens_for
    # Another worker refreshed after this one's token was rejected: re-read, not refresh.
    assert await tokens.refresh("AT-older") == "AT-refresh"
    assert await tokens.access_token() == "AT-refresh"
    assert fake.requests == []


async def test_a_refused_refresh_marks_the_instance_invalid(
    pool: asyncpg.Pool, tokens_for: tuple[FakeTokenEndpoint, int, InstanceTokens]
) -> None:
    fake, instance_id, tokens = tokens_for
    await pool.execute(
        "UPDATE instances SET tokens = $2 WHERE id = $1",
        instance_id,
        BOX.seal({"access_token": "AT-refresh", "refresh_token": "RT-revoked"}),
    )
    with pytest.raises(ProviderError, match="refresh rejected"):
        await tokens.refresh("AT-refresh")
    assert [r["form"]["refresh_token"] for r in fake.requests] == ["RT-revoked"]
    assert not await _valid(pool, instance_id)
