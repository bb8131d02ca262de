"""Poll leases on real Redis: renewed while held, gone soon after their holder dies; a poll
that finds its instance's lease held runs once the other poll ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from redis.asyncio import Redis

from app import keys
from app.services.leases import LEASE_TTL_MS, Leases
from app.services.polling import run_polls
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


async def test_a_poll_that_finds_the_lease_held_runs_once_the_other_poll_ends(
    harness: Harness,  # noqa: F811
) -> None:
    """A poll-now (or a burst) that catches a scheduled poll in flight polls right after it,
    not when the lease would have expired; the instance listed twice still polls once."""
    instance_id = await harness.create_instance(contacts_config())
    lock = keys.poll_lock(instance_id)
    await harness.deps.redis.set(lock, "the-poll-in-flight", px=LEASE_TTL_MS)

    async def other_poll_ends() -> float:
        await asyncio.sleep(0.25)
        await harness.deps.redis.delete(lock)
        return time.time()

    ended = asyncio.ensure_future(other_poll_ends())
    first, second = await run_polls(
        harness.deps, [(instance_id, None), (instance_id, None)], asyncio.Semaphore(4)
    )
    assert (first.skipped, first.busy, first.failed) == (False, False, False)
    assert first.started_at is not None
    assert first.started_at.timestamp() >= await ended
    assert (second.skipped, second.busy) == (True, True)
    assert await harness.deps.redis.exists(lock) == 0  # given back
    assert harness.deps.leases.held() == 0


async def test_a_batch_cancelled_while_it_waits_for_a_held_lease_keeps_no_lease(
    harness: Harness,  # noqa: F811
) -> None:
    waiting_id = await harness.create_instance(contacts_config())
    free_id = await harness.create_instance(contacts_config())
    lock = keys.poll_lock(waiting_id)
    await harness.deps.redis.set(lock, "the-poll-in-flight", px=LEASE_TTL_MS)
    batch = asyncio.ensure_future(
        run_polls(harness.deps, [(waiting_id, None), (free_id, None)], asyncio.Semaphore(4))
    )
    await asyncio.sleep(0.2)  # between its lease's first and second retry
    batch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await batch
    assert harness.deps.leases.held() == 0  # nothing left held or renewed
    assert await harness.deps.redis.exists(keys.poll_lock(free_id)) == 0
    assert await harness.deps.redis.get(lock) == b"the-poll-in-flight"  # not ours to touch
