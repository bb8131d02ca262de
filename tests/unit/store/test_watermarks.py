"""WatermarkStore's Redis side on fakeredis (its Lua runs there): never backwards, rebuilt
from the checkpoint when lost or behind, reset only by a rewound checkpoint."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fakeredis import FakeAsyncRedis

from app import keys
from app.domain.watermark import Encoded, Mirror, Start, Watermark
from app.store.watermarks import WatermarkStore

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
S = timedelta(seconds=1)
INSTANCE = 7


@dataclass(frozen=True)
class Row:
    """A checkpoint as the poll's snapshot reads it."""

    resource: str
    checkpoint: Watermark
    rewound: bool = False


def wm(seconds: int, *ids: str) -> Watermark:
    return Watermark(T0 + seconds * S, frozenset(ids))


@pytest.fixture
async def redis() -> AsyncIterator[FakeAsyncRedis]:
    client = FakeAsyncRedis()
    yield client
    await client.aclose()


async def hot(redis: FakeAsyncRedis, resource: str = "contacts") -> Watermark | None:
    stored = Encoded.from_redis(await redis.get(keys.watermark(INSTANCE, resource)))
    return None if stored is None else stored.decode()


async def test_mirror_never_moves_redis_back(redis: FakeAsyncRedis) -> None:
    store = WatermarkStore(redis)
    await store.mirror(INSTANCE, [("contacts", wm(10, "a", "b"), Mirror.KEEP)])
    for older in (wm(9, "z"), wm(10, "a"), wm(10, "c", "d")):
        await store.mirror(INSTANCE, [("contacts", older, Mirror.KEEP)])
        await store.mirror(INSTANCE, [("contacts", older, Mirror.REBUILD)])
    assert await hot(redis) == wm(10, "a", "b")
    await store.mirror(INSTANCE, [("contacts", wm(10, "a", "b", "c"), Mirror.KEEP)])
    assert await hot(redis) == wm(10, "a", "b", "c")


async def test_concurrent_out_of_order_writers_leave_the_newest(redis: FakeAsyncRedis) -> None:
    """Many writers (say, a poll whose lease ran out and the next one) in any order."""
    store = WatermarkStore(redis)
    written = [wm(s, *(str(i) for i in range(n))) for s in range(20) for n in range(3)]
    random.Random(7).shuffle(written)
    await asyncio.gather(
        *(
            store.mirror(INSTANCE, [("contacts", w, Mirror.KEEP), ("orders", w, Mirror.REBUILD)])
            for w in written
        )
    )
    newest = wm(19, "0", "1")
    assert await hot(redis, "contacts") == newest
    assert await hot(redis, "orders") == newest


async def test_lost_redis_is_rebuilt_from_the_checkpoint(redis: FakeAsyncRedis) -> None:
    store = WatermarkStore(redis)
    checkpoint = wm(5, "a")
    [start] = (await store.starts(INSTANCE, [Row("contacts", checkpoint)])).values()
    assert start == Start(checkpoint, Mirror.REBUILD)
    await store.mirror(INSTANCE, [("contacts", start.watermark, start.mirror)])
    assert await hot(redis) == checkpoint
    assert await store.starts(INSTANCE, [Row("contacts", checkpoint)]) == {
        "contacts": Start(checkpoint, Mirror.KEEP)
    }


async def test_unreadable_redis_counts_as_lost(redis: FakeAsyncRedis) -> None:
    """A value in an older form (the JSON document earlier versions wrote) is replaced."""
    store = WatermarkStore(redis)
    key = keys.watermark(INSTANCE, "contacts")
    await redis.set(key, '{"at": "2026-11-27T10:00:09+00:00", "ids": []}')
    starts = await store.starts(INSTANCE, [Row("contacts", wm(5))])
    assert starts["contacts"] == Start(wm(5), Mirror.REBUILD)
    await store.mirror(INSTANCE, [("contacts", wm(5), Mirror.REBUILD)])
    assert await hot(redis) == wm(5)


async def test_redis_behind_the_checkpoint_loses_and_catches_up(redis: FakeAsyncRedis) -> None:
    store = WatermarkStore(redis)
    await store.mirror(INSTANCE, [("contacts", wm(3, "a"), Mirror.KEEP)])
    checkpoint = wm(8, "b")
    starts = await store.starts(INSTANCE, [Row("contacts", checkpoint)])
    assert starts["contacts"] == Start(checkpoint, Mirror.REBUILD)
    await store.mirror(INSTANCE, [("contacts", checkpoint, Mirror.REBUILD)])
    assert await hot(redis) == checkpoint


async def test_redis_ahead_of_the_checkpoint_is_where_a_poll_starts(
    redis: FakeAsyncRedis,
) -> None:
    store = WatermarkStore(redis)
    await store.mirror(INSTANCE, [("contacts", wm(9, "a"), Mirror.KEEP)])
    starts = await store.starts(INSTANCE, [Row("contacts", wm(4)), Row("orders", wm(4))])
    assert starts == {
        "contacts": Start(wm(9, "a"), Mirror.KEEP),
        "orders": Start(wm(4), Mirror.REBUILD),
    }


async def test_a_rewound_checkpoint_resets_redis_ahead(redis: FakeAsyncRedis) -> None:
    store = WatermarkStore(redis)
    await store.mirror(INSTANCE, [("contacts", wm(100, "a"), Mirror.KEEP)])
    rewound = wm(-3600)
    starts = await store.starts(INSTANCE, [Row("contacts", rewound, rewound=True)])
    assert starts["contacts"] == Start(rewound, Mirror.RESET)
    await store.mirror(INSTANCE, [("contacts", wm(-3000, "x"), Mirror.RESET)])
    assert await hot(redis) == wm(-3000, "x")


async def test_forget_drops_only_the_named_copies(redis: FakeAsyncRedis) -> None:
    store = WatermarkStore(redis)
    for resource in ("contacts", "orders"):
        await store.mirror(INSTANCE, [(resource, wm(1), Mirror.KEEP)])
    await store.mirror(INSTANCE + 1, [("contacts", wm(1), Mirror.KEEP)])
    await store.forget(INSTANCE, {"orders"})
    assert await hot(redis, "contacts") == wm(1)
    assert await hot(redis, "orders") is None
    await store.forget_all([(INSTANCE, "contacts"), (INSTANCE + 1, "contacts")])
    await store.forget(INSTANCE, set())
    assert await redis.keys("*") == []


async def test_a_batch_reads_every_instances_starts_in_one_round_trip(
    redis: FakeAsyncRedis,
) -> None:
    store = WatermarkStore(redis)
    await store.mirror(INSTANCE, [("contacts", wm(9, "a"), Mirror.KEEP)])
    await store.mirror(INSTANCE + 1, [("orders", wm(2), Mirror.KEEP)])
    sent: list[tuple[object, ...]] = []
    execute = redis.execute_command

    async def counting(*args: object, **options: object) -> object:
        sent.append(args)
        return await execute(*args, **options)  # type: ignore[no-untyped-call]

    redis.execute_command = counting  # type: ignore[method-assign]
    starts = await store.starts_many(
        [
            (INSTANCE, [Row("contacts", wm(4)), Row("orders", wm(4))]),
            (INSTANCE + 1, [Row("orders", wm(5))]),
            (INSTANCE + 2, []),
        ]
    )
    assert starts == {
        INSTANCE: {
            "contacts": Start(wm(9, "a"), Mirror.KEEP),
            "orders": Start(wm(4), Mirror.REBUILD),
        },
        INSTANCE + 1: {"orders": Start(wm(5), Mirror.REBUILD)},
        INSTANCE + 2: {},
    }
    assert [args[0] for args in sent] == ["MGET"]
