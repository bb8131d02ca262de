"""The watermark's two copies on real PostgreSQL and Redis: the checkpoint never moves back,
a poll mirrors what it committed into Redis before giving its lease back, and a Redis copy
that is lost or behind is rebuilt from the checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from app import keys
from app.db import create_pg_pool
from app.domain.watermark import Encoded, Mirror, Watermark, decode_ids
from app.models import utcnow
from app.services.polling import poll_instance
from app.store.watermarks import CheckpointWrite, WatermarkStore, write_checkpoints
from tests.conftest import ServiceUrls
from tests.integration import test_polling
from tests.integration.lifecycle_data import make_instance, make_org
from tests.integration.test_polling import Harness, contacts_config

pytestmark = pytest.mark.integration

S = timedelta(seconds=1)

# test_polling's harness fixture: the simulator, the API and the worker's poll dependencies.
harness = test_polling.harness


@pytest.fixture
async def pool(service_urls: ServiceUrls) -> AsyncIterator[asyncpg.Pool]:
    pg = await create_pg_pool(service_urls.database_url, 2)
    yield pg
    await pg.close()


async def _checkpoint(pool: asyncpg.Pool, instance_id: int) -> tuple[Watermark, str | None]:
    row = await pool.fetchrow(
        """SELECT watermark_at, CAST(watermark_ids AS text), last_error FROM poll_states
           WHERE instance_id = $1 AND resource = 'contacts'""",
        instance_id,
    )
    assert row is not None
    return Watermark(row[0], decode_ids(row[1])), row[2]


async def _write(pool: asyncpg.Pool, instance_id: int, w: CheckpointWrite) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await write_checkpoints(conn, instance_id, utcnow(), [w])


async def test_an_older_checkpoint_write_does_not_move_it_back(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        org = await make_org(conn, "guard")
        inst = await make_instance(conn, org.id)
    now = utcnow().replace(microsecond=0)
    newest = Watermark(now + 10 * S, frozenset({"a", "b"}))
    await _write(pool, inst, CheckpointWrite("contacts", newest, None))
    assert await _checkpoint(pool, inst) == (newest, None)
    # A poll that started earlier (its lease ran out) commits later, with an older watermark:
    # an earlier date, or the same date with fewer ids. Its status is still recorded.
    for older in (Watermark(now, frozenset({"z"})), Watermark(now + 10 * S, frozenset({"c"}))):
        await _write(pool, inst, CheckpointWrite("contacts", older, "late"))
        assert await _checkpoint(pool, inst) == (newest, "late")
    # A failed resource keeps its watermark; a newer one moves it.
    await _write(pool, inst, CheckpointWrite("contacts", None, "provider error"))
    assert await _checkpoint(pool, inst) == (newest, "provider error")
    ahead = Watermark(now + 10 * S, frozenset({"a", "b", "c"}))
    await _write(pool, inst, CheckpointWrite("contacts", ahead, None))
    assert await _checkpoint(pool, inst) == (ahead, None)


async def test_redis_never_moves_back_on_real_redis(service_urls: ServiceUrls) -> None:
    redis = Redis.from_url(service_urls.redis_url)
    try:
        store = WatermarkStore(redis)
        now = utcnow()
        newer, older = Watermark(now), Watermark(now - S, frozenset({"x"}))
        await store.mirror(10**9, [("contacts", newer, Mirror.KEEP)])
        await store.mirror(10**9, [("contacts", older, Mirror.REBUILD)])
        stored = Encoded.from_redis(await redis.get(keys.watermark(10**9, "contacts")))
        assert stored is not None
        assert stored.decode() == newer
        await store.mirror(10**9, [("contacts", older, Mirror.RESET)])  # a rewound checkpoint
        stored = Encoded.from_redis(await redis.get(keys.watermark(10**9, "contacts")))
        assert stored is not None
        assert stored.decode() == older
        await store.forget(10**9, ["contacts"])
    finally:
        await redis.aclose()


async def _hot(h: Harness) -> Watermark | None:
    stored = Encoded.from_redis(await h.deps.redis.get(keys.watermark(h.instance_id, "contacts")))
    return None if stored is None else stored.decode()


def _committed(h: Harness) -> Watermark:
    state = h.state("contacts")
    return Watermark(state["watermark_at"], frozenset(state["watermark_ids"]))


async def test_a_poll_mirrors_its_checkpoint_before_giving_its_lease_back(
    harness: Harness,
) -> None:
    await harness.create_instance(contacts_config())
    await harness.write("contacts", given_name="x")
    outcome = await poll_instance(harness.deps, harness.instance_id)
    assert outcome.events == 1
    # poll_instance has returned (lease released): Redis already holds what was committed.
    assert await _hot(harness) == _committed(harness)


async def test_lost_or_stale_redis_is_rebuilt_from_the_checkpoint(harness: Harness) -> None:
    await harness.create_instance(contacts_config())
    first = await harness.write("contacts", given_name="a")
    await harness.poll()
    checkpoint = _committed(harness)
    key = keys.watermark(harness.instance_id, "contacts")
    stale = Encoded.of(Watermark(checkpoint.at - 3600 * S)).to_redis()
    for damage in ("lost", "behind", "old format"):
        if damage == "lost":
            await harness.deps.redis.delete(key)
        elif damage == "behind":
            await harness.deps.redis.set(key, stale)
        else:
            await harness.deps.redis.set(key, '{"at": "2020-01-01T00:00:00+00:00", "ids": []}')
        quiet = await harness.poll()  # nothing changed: the checkpoint is where it starts
        assert quiet.events == 0, damage
        assert await _hot(harness) == _committed(harness), damage
    assert harness.events() == [("contacts", str(first["id"]), "CREATED")]
