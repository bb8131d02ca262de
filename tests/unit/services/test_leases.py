"""The one Redis lease (app/services/leases.py) on fakeredis: fast, and the same Lua scripts.

The real-Redis behaviour over time (renewal outliving the TTL, a dead holder's lease
expiring) is in tests/integration/test_leases.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import fakeredis
import pytest
from redis.asyncio import Redis

from app.services.leases import Lease, Leases, SyncLease
from app.services.polling import LeaseReturns
from workers.beat import LeaderLock

KEY = "pollinator:lock:test"


@pytest.fixture
async def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def redis(server: fakeredis.FakeServer) -> AsyncIterator[Redis]:
    client = fakeredis.FakeAsyncRedis(server=server)
    yield client
    await client.aclose()


@pytest.fixture
def sync_redis(server: fakeredis.FakeServer) -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


async def test_one_holder_at_a_time_and_each_holder_has_its_own_token(redis: Redis) -> None:
    first, second = Lease(redis, KEY, 5_000), Lease(redis, KEY, 5_000)
    assert first.token != second.token
    assert await first.acquire()
    assert not await second.acquire()
    assert await redis.get(KEY) == first.token.encode()
    assert 0 < await redis.pttl(KEY) <= 5_000
    assert await first.release()
    assert await second.acquire()


async def test_renewal_pushes_the_ttl_out_only_for_the_holder(redis: Redis) -> None:
    holder, other = Lease(redis, KEY, 60_000), Lease(redis, KEY, 60_000)
    assert await holder.acquire()
    await redis.pexpire(KEY, 100)
    assert not await other.renew()
    assert await redis.pttl(KEY) <= 100
    assert await holder.renew()
    assert await redis.pttl(KEY) > 50_000


async def test_a_lease_that_was_taken_over_is_neither_renewed_nor_deleted(redis: Redis) -> None:
    stale = Lease(redis, KEY, 5_000)
    assert await stale.acquire()
    await redis.set(KEY, "successor")  # it expired and another holder took it
    assert not await stale.renew()
    assert not await stale.release()
    assert await redis.get(KEY) == b"successor"


async def test_acquire_within_waits_for_a_release_and_gives_up_at_its_bound(redis: Redis) -> None:
    holder, waiter = Lease(redis, KEY, 5_000), Lease(redis, KEY, 5_000)
    assert await holder.acquire()
    assert not await waiter.acquire_within(0.05, retry_every_s=0.01)
    released = asyncio.get_running_loop().call_later(
        0.05, lambda: asyncio.ensure_future(holder.release())
    )
    assert await waiter.acquire_within(5.0, retry_every_s=0.01)
    released.cancel()
    assert await redis.get(KEY) == waiter.token.encode()


def test_a_lease_needs_a_positive_ttl(redis: Redis) -> None:
    with pytest.raises(ValueError, match="positive TTL"):
        Lease(redis, KEY, 0)


async def test_the_sync_lease_is_the_same_lease(
    redis: Redis, sync_redis: fakeredis.FakeRedis
) -> None:
    """Beat's sync lease and an async holder exclude each other on one key."""
    beat = SyncLease(sync_redis, KEY, 5_000)
    worker = Lease(redis, KEY, 5_000)
    assert beat.acquire()
    assert not await worker.acquire()
    assert not await worker.renew()
    assert not await worker.release()
    sync_redis.pexpire(KEY, 100)
    assert beat.renew()
    assert sync_redis.pttl(KEY) > 1_000
    assert beat.release()
    assert await worker.acquire()
    assert not beat.acquire()
    assert not beat.renew()
    assert not beat.release()


async def test_leases_renew_every_held_lease_in_one_round_and_forget_lost_ones(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    leases = Leases(redis, ttl_ms=60_000, renew_every_s=30)
    kept, lost = await leases.acquire("k:kept"), await leases.acquire("k:lost")
    assert kept is not None
    assert lost is not None
    assert await leases.acquire("k:kept") is None
    await redis.pexpire("k:kept", 100)
    await redis.set("k:lost", "successor")
    with caplog.at_level(logging.WARNING):
        await leases.renew_all()
    assert leases.held() == 1
    assert await redis.pttl("k:kept") > 50_000
    assert "k:lost was lost" in caplog.text
    await leases.release("k:lost", lost)  # forgotten, and the successor's key is left alone
    assert await redis.get("k:lost") == b"successor"
    await leases.release("k:kept", kept)
    assert leases.held() == 0
    assert await redis.exists("k:kept") == 0
    await leases.close()


async def test_the_renewer_renews_a_held_lease_by_itself(redis: Redis) -> None:
    leases = Leases(redis, ttl_ms=60_000, renew_every_s=0.02)
    token = await leases.acquire(KEY)
    assert token is not None
    for _ in range(3):  # each time, only the renewer can push the TTL back up
        await redis.pexpire(KEY, 50_000)
        await wait_until_renewed(redis)
    await leases.release(KEY, token)
    await leases.close()
    assert await redis.exists(KEY) == 0


async def wait_until_renewed(redis: Redis) -> None:
    for _ in range(500):
        if await redis.pttl(KEY) > 55_000:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the lease was not renewed")


def test_one_beat_leads_and_a_standby_takes_over_when_its_lease_expires(
    sync_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    leader, standby = LeaderLock(sync_redis, KEY, 5_000), LeaderLock(sync_redis, KEY, 5_000)
    with caplog.at_level(logging.INFO):
        assert leader.ensure()
        assert not standby.ensure()
        assert leader.ensure()  # renewed
        sync_redis.delete(KEY)  # the leader stalled past its TTL
        assert standby.ensure()
        assert not leader.ensure()
    assert caplog.text.count("leading: this beat schedules") == 2
    assert "standing by: lost the lead" in caplog.text


async def test_a_batch_takes_its_leases_in_one_round_trip_and_skips_busy_ones(
    redis: Redis,
) -> None:
    leases = Leases(redis, ttl_ms=60_000, renew_every_s=30)
    busy = await leases.acquire("k:busy")
    assert busy is not None
    taken = await leases.acquire_many(["k:a", "k:busy", "k:b", "k:a"])
    assert sorted(taken) == ["k:a", "k:b"]  # held elsewhere, or listed twice: taken once
    assert leases.held() == 3
    for key, token in taken.items():
        assert await redis.get(key) == token.encode()
        assert 50_000 < await redis.pttl(key) <= 60_000
        await leases.release(key, token)
    assert await redis.get("k:busy") == busy.encode()
    assert await leases.acquire_many([]) == {}
    await leases.release("k:busy", busy)
    await leases.close()


async def test_release_many_gives_back_ours_and_leaves_a_successors_key(redis: Redis) -> None:
    leases = Leases(redis, ttl_ms=60_000, renew_every_s=30)
    taken = await leases.acquire_many(["k:a", "k:b"])
    await redis.set("k:b", "successor")
    await leases.release_many(list(taken.items()))
    assert leases.held() == 0
    assert await redis.exists("k:a") == 0
    assert await redis.get("k:b") == b"successor"
    await leases.close()


async def test_polls_ending_together_give_their_leases_back_in_one_round_trip(
    redis: Redis,
) -> None:
    class Counting(Leases):
        rounds = 0

        async def release_many(self, leases: Sequence[tuple[str, str]]) -> None:
            self.rounds += 1
            await super().release_many(leases)

    leases = Counting(redis, ttl_ms=60_000, renew_every_s=30)
    taken = await leases.acquire_many([f"k:{i}" for i in range(5)])
    returns = LeaseReturns(leases)
    await asyncio.gather(*(returns.give_back(key, token) for key, token in taken.items()))
    assert leases.rounds == 1
    assert leases.held() == 0
    assert await redis.exists(*taken) == 0
    await leases.close()


async def test_many_leases_are_one_round_trip_without_asking_script_exists(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's script objects make a pipeline ask SCRIPT EXISTS first (a second round
    trip on the hot path); the poll leases call their scripts by SHA1 instead."""

    async def no_script_exists(self: object) -> None:
        raise AssertionError("the pipeline asked SCRIPT EXISTS")

    monkeypatch.setattr("redis.asyncio.client.Pipeline.load_scripts", no_script_exists)
    leases = Leases(redis, ttl_ms=60_000, renew_every_s=30)
    taken = await leases.acquire_many(["k:a", "k:b"])
    await leases.renew_all()
    await leases.release_many(list(taken.items()))
    assert await redis.exists("k:a", "k:b") == 0
    await leases.close()


async def test_leases_load_their_scripts_again_after_redis_forgot_them(redis: Redis) -> None:
    leases = Leases(redis, ttl_ms=60_000, renew_every_s=30)
    taken = await leases.acquire_many(["k:a", "k:b"])
    await redis.script_flush()  # a restarted Redis: every EVALSHA answers NOSCRIPT
    await redis.pexpire("k:a", 100)
    await leases.renew_all()
    assert leases.held() == 2
    assert await redis.pttl("k:a") > 50_000
    await redis.script_flush()
    await leases.release_many(list(taken.items()))
    assert await redis.exists("k:a", "k:b") == 0
    await leases.close()


async def test_a_poll_cancelled_while_giving_its_lease_back_stops_renewing_it(
    redis: Redis,
) -> None:
    leases = Leases(redis, ttl_ms=60_000, renew_every_s=30)
    taken = await leases.acquire_many(["k:a"])
    returns = LeaseReturns(leases, window_s=1.0)
    giving_back = asyncio.create_task(returns.give_back("k:a", taken["k:a"]))
    await asyncio.sleep(0.01)  # waiting for company in the window
    giving_back.cancel()
    with pytest.raises(asyncio.CancelledError):
        await giving_back
    assert leases.held() == 0  # not renewed: it expires within its TTL
    assert await redis.get("k:a") == taken["k:a"].encode()
    await leases.close()
