"""Poll leases on real Redis: renewed while held, gone soon after their holder dies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from redis.asyncio import Redis

from app import keys
from app.services.leases import LEASE_TTL_MS, Leases
from tests.conftest import ServiceUrls
from tests.integration.test_polling import Harness, contacts_config, harness  # noqa: F401


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


async def test_a_held_lease_outlives_its_ttl_while_renewed(redis: Redis) -> None:
    key = f"test:lease:{uuid.uuid4().hex}"
    holder = Leases(redis, ttl_ms=1500, renew_every_s=0.2)
    token = await holder.acquire(key)
    assert token is not None
    await asyncio.sleep(4.0)  # well past the TTL: only renewal keeps it
    assert await Leases(redis).acquire(key) is None
    assert await redis.get(key) == token.encode()
    await holder.release(key, token)
    assert await redis.get(key) is None
    await holder.close()


async def test_a_dead_holders_lease_expires_within_its_ttl(redis: Redis) -> None:
    key = f"test:lease:{uuid.uuid4().hex}"
    crashed = Leases(redis, ttl_ms=1000, renew_every_s=0.2)
    assert await crashed.acquire(key) is not None
    await crashed.close()  # the process died: nobody renews any more
    other = Leases(redis, ttl_ms=1000, renew_every_s=0.2)
    for _ in range(100):
        if (token := await other.acquire(key)) is not None:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the dead holder's lease never expired")
    await other.release(key, token)
    await other.close()


async def test_a_lost_lease_is_forgotten_and_never_released_for_its_new_owner(
    redis: Redis,
) -> None:
    key = f"test:lease:{uuid.uuid4().hex}"
    first = Leases(redis, ttl_ms=1000, renew_every_s=0.2)
    token = await first.acquire(key)
    assert token is not None
    await redis.set(key, "someone-else")  # the lease expired and was taken meanwhile
    await first.renew_all()
    assert first.held() == 0
    await first.release(key, token)
    assert await redis.get(key) == b"someone-else"
    await first.close()


def test_renewal_must_come_well_within_the_ttl() -> None:
    with pytest.raises(ValueError, match="within their TTL"):
        Leases(Redis(), ttl_ms=1000, renew_every_s=1.0)


async def test_a_poll_that_finds_the_lease_held_comes_back_when_it_would_expire(
    harness: Harness,  # noqa: F811
) -> None:
    """A worker SIGKILLed mid-poll leaves its lease; the instance is retried within the TTL."""
    instance_id = await harness.create_instance(contacts_config())
    with psycopg.connect(harness.database_url) as conn:
        conn.execute(
            "UPDATE instances SET next_poll_at = now() + interval '1 hour' WHERE id = %s",
            (instance_id,),
        )
    await harness.deps.redis.set(keys.poll_lock(instance_id), "dead-worker", px=LEASE_TTL_MS)
    outcome = await harness.poll()
    assert outcome.skipped
    assert outcome.busy
    with psycopg.connect(harness.database_url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM next_poll_at - now()) FROM instances WHERE id = %s",
            (instance_id,),
        ).fetchone()
    assert row is not None
    assert 0 < float(row[0]) <= LEASE_TTL_MS / 1000
