"""The asyncpg pools skip asyncpg's session reset on release (one round trip per use of
the hot path), so the one session-level state we ever take, an advisory lock, must not
go back to the pool held."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from app.db import create_pg_pool, libpq_url
from app.store.lifecycle import advisory_unlock, try_advisory_lock
from tests.conftest import ServiceUrls

KEY = 0x5EED_F00D


class _UnlockCancelled:
    """A pooled connection whose unlock statement is cancelled before it runs."""

    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> None:
        self.conn = conn

    async def execute(self, *_: object) -> str:
        raise asyncio.CancelledError

    def terminate(self) -> None:
        self.conn.terminate()


async def test_a_lock_whose_unlock_did_not_complete_closes_its_connection(
    service_urls: ServiceUrls,
) -> None:
    pool = await create_pg_pool(service_urls.database_url, 1)
    other = await asyncpg.connect(libpq_url(service_urls.database_url))
    try:
        async with pool.acquire() as conn:
            assert await try_advisory_lock(conn, KEY)
            with pytest.raises(asyncio.CancelledError):
                await advisory_unlock(_UnlockCancelled(conn), KEY)  # type: ignore[arg-type]
        # the session that held it is gone, so the lock is free for every other runner
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
        await other.execute("SELECT pg_advisory_unlock($1)", KEY)
        async with pool.acquire() as conn:  # and the pool opened a new connection
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await other.close()
        await pool.close()


async def test_a_pooled_connection_comes_back_without_a_reset_round_trip(
    service_urls: ServiceUrls,
) -> None:
    """asyncpg's default reset runs RESET ALL, UNLISTEN, CLOSE ALL and unlocks on every
    release; our pool keeps the session (a setting made outside a transaction survives)."""
    pool = await create_pg_pool(service_urls.database_url, 1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'kept'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "kept"
            await conn.execute("RESET application_name")
            async with conn.transaction():  # an open transaction is still rolled back
                await conn.execute("SET LOCAL application_name = 'rolled back'")
    finally:
        await pool.close()
