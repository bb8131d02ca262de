"""Replay by time range and rewind (data-lifecycle issue, part 3).

Replay: each selected delivery is POSTed again exactly once, even with two overlapping
jobs and every queue message duplicated, and a delivery in flight is never sent twice
at once. Rewind: the watermark moves back in PostgreSQL and Redis, and the re-read
changes are emitted again with their original event ids.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from app import keys
from app.db import create_pg_pool
from app.domain.delta import Change, DeltaResult
from app.domain.events import InstanceInfo, event_id
from app.domain.watermark import Mirror, Watermark
from app.models import utcnow
from app.security import SecretBox
from app.services import lifecycle
from app.services.breaker import CircuitBreakers, OriginSlots
from app.services.delivery import DeliveryDeps, deliver_many, due_deliveries
from app.services.guarded_http import callback_session
from app.services.outbox import ResourceResult, store_poll
from app.settings import Settings
from app.store.polling import load_snapshot
from app.store.watermarks import WatermarkStore
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.lifecycle_data import Org, make_instance, make_org, seed_delivery

BASE = "/elements/api-v2"
DAY = timedelta(days=1)


@dataclass
class Receiver:
    received: list[str] = field(default_factory=list)  # webhook-id of every POST
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.received.append(request.headers["webhook-id"])
        return web.Response(status=200)


@dataclass
class Rig:
    pool: asyncpg.Pool
    deps: DeliveryDeps
    settings: Settings
    receiver: Receiver
    redis: Redis


@pytest.fixture
async def rig(
    service_urls: ServiceUrls, make_settings: Callable[..., Settings]
) -> AsyncIterator[Rig]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    server = TestServer(app)
    await server.start_server()
    receiver.url = str(server.make_url("/events"))
    settings = make_settings(allow_private_callbacks=True)
    pool = await create_pg_pool(service_urls.database_url, 10)
    redis = Redis.from_url(service_urls.redis_url)
    http = callback_session(True)
    deps = DeliveryDeps(
        settings, pool, http, SecretBox(SECRET_KEY), redis, CircuitBreakers(redis), OriginSlots()
    )
    yield Rig(pool, deps, settings, receiver, redis)
    await http.close()
    await redis.aclose()
    await pool.close()
    await server.close()


def _iso(moment: datetime) -> str:
    return moment.isoformat()


async def _status(api: TestClient[Any, Any], org: Org, inst: int, job: str) -> dict[str, Any]:
    resp = await api.get(f"{BASE}/instances/{inst}/deliveries/replay/{job}", headers=org.headers)
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_replay_sends_each_selected_delivery_once(
    api: TestClient[Any, Any], rig: Rig
) -> None:
    async with rig.pool.acquire() as conn:
        org = await make_org(conn, "replay")
        inst = await make_instance(conn, org.id, callback_url=rig.receiver.url)
        inside = [
            await seed_delivery(conn, inst, org.id, age=5 * DAY),
            await seed_delivery(conn, inst, org.id, age=5 * DAY, status="failed"),
            await seed_delivery(conn, inst, org.id, age=4 * DAY),
        ]
        in_flight = await seed_delivery(
            conn,
            inst,
            org.id,
            age=4 * DAY,
            status="pending",
            next_attempt_at=utcnow() + timedelta(minutes=5),  # leased by a worker now
        )
        outside = [
            await seed_delivery(conn, inst, org.id, age=10 * DAY),
            await seed_delivery(conn, inst, org.id, age=1 * DAY),
        ]
    window = {"since": _iso(utcnow() - 6 * DAY), "until": _iso(utcnow() - 2 * DAY)}
    jobs = []
    for _ in range(2):  # two overlapping replays of the same window
        resp = await api.post(
            f"{BASE}/instances/{inst}/deliveries/replay",
            json={**window, "status": "all"},
            headers=org.headers,
        )
        assert resp.status == 202, await resp.text()
        jobs.append((await resp.json())["jobId"])
    assert (await _status(api, org, inst, jobs[0]))["status"] == "queued"

    enqueued: list[tuple[uuid.UUID, datetime]] = []
    armed = await lifecycle.run_replay_jobs(rig.pool, rig.settings, enqueued.extend)
    assert armed == 3
    # Every message delivered twice (a redelivered broker message), the sweeper too.
    slots = asyncio.Semaphore(8)
    await deliver_many(rig.deps, enqueued + enqueued, slots)
    await deliver_many(rig.deps, await due_deliveries(rig.pool, 60), slots)

    sent = Counter(rig.receiver.received)
    assert sent == Counter({str(s.delivery_id): 1 for s in inside})
    assert str(in_flight.delivery_id) not in sent
    assert not {str(s.delivery_id) for s in outside} & set(sent)
    first, second = [await _status(api, org, inst, job) for job in jobs]
    assert (first["status"], first["selected"], first["sent"]) == ("done", 3, 3)
    # The second job found them already re-armed (pending): nothing selected twice.
    assert (second["status"], second["selected"], second["sent"]) == ("done", 0, 0)


async def test_replay_of_failed_only(api: TestClient[Any, Any], rig: Rig) -> None:
    async with rig.pool.acquire() as conn:
        org = await make_org(conn, "replay-failed")
        inst = await make_instance(conn, org.id, callback_url=rig.receiver.url)
        failed = await seed_delivery(conn, inst, org.id, age=3 * DAY, status="failed")
        await seed_delivery(conn, inst, org.id, age=3 * DAY)
    resp = await api.post(
        f"{BASE}/instances/{inst}/deliveries/replay",
        json={
            "since": _iso(utcnow() - 4 * DAY),
            "until": _iso(utcnow()),
            "status": "failed",
        },
        headers=org.headers,
    )
    assert resp.status == 202
    job = (await resp.json())["jobId"]
    enqueued: list[tuple[uuid.UUID, datetime]] = []
    await lifecycle.run_replay_jobs(rig.pool, rig.settings, enqueued.extend)
    await deliver_many(rig.deps, enqueued, asyncio.Semaphore(8))
    assert rig.receiver.received == [str(failed.delivery_id)]
    status = await _status(api, org, inst, job)
    assert (status["status"], status["selected"], status["sent"]) == ("done", 1, 1)


async def test_replay_input_and_ownership(api: TestClient[Any, Any], rig: Rig) -> None:
    async with rig.pool.acquire() as conn:
        org = await make_org(conn, "replay-input")
        stranger = await make_org(conn, "stranger")
        inst = await make_instance(conn, org.id)
    url = f"{BASE}/instances/{inst}/deliveries/replay"
    now = utcnow()
    for body, message in (
        ({"since": _iso(now), "until": _iso(now - DAY)}, "until:"),
        ({"since": "yesterday", "until": _iso(now)}, "since:"),
        ({"since": _iso(now - DAY), "until": _iso(now), "status": "some"}, "status:"),
        ({"since": _iso(now - DAY)}, "until:"),
    ):
        resp = await api.post(url, json=body, headers=org.headers)
        assert resp.status == 400
        assert (await resp.json())["message"].startswith(message)
    good = {"since": _iso(now - DAY), "until": _iso(now)}
    assert (await api.post(url, json=good, headers=stranger.headers)).status == 404
    resp = await api.post(url, json=good, headers=org.headers)
    job = (await resp.json())["jobId"]
    status_url = f"{url}/{job}"
    assert (await api.get(status_url, headers=stranger.headers)).status == 404
    assert (await api.get(f"{url}/{uuid.uuid4()}", headers=org.headers)).status == 404
    assert (await api.post(url, json=good)).status == 401


# -- rewind -------------------------------------------------------------------------------------


def _delta(changes: list[tuple[str, datetime]], watermark: datetime) -> DeltaResult:
    return DeltaResult(
        [Change(object_id, "UPDATED", date, {"id": object_id}) for object_id, date in changes],
        Watermark(watermark, frozenset()),
    )


async def _poll(pool: asyncpg.Pool, info: InstanceInfo, delta: DeltaResult) -> list[uuid.UUID]:
    """What a poll that read ``delta`` stores; returns the event ids it delivered."""
    async with pool.acquire() as conn, conn.transaction():
        _, deliveries = await store_poll(
            conn,
            info,
            [ResourceResult("contacts", delta, None)],
            utcnow(),
            utcnow() + timedelta(minutes=1),
        )
        ids: list[uuid.UUID] = []
        for delivery_id, _ticket in deliveries:
            body = await conn.fetchval("SELECT body FROM deliveries WHERE id = $1", delivery_id)
            ids += [uuid.UUID(e["eventId"]) for e in json.loads(body)["message"]["events"]]
    return ids


async def test_rewind_re_reads_and_re_emits_with_the_same_event_ids(
    api: TestClient[Any, Any], rig: Rig
) -> None:
    async with rig.pool.acquire() as conn:
        org = await make_org(conn, "rewind")
        inst = await make_instance(conn, org.id)
    info = InstanceInfo(inst, "rewind", [], org.id)
    now = utcnow()
    changes = [("1", now - 3 * DAY), ("2", now - 2 * DAY), ("3", now - DAY)]
    first = await _poll(rig.pool, info, _delta(changes, now - DAY))
    expected = {event_id(inst, "contacts", o, d) for o, d in changes}
    assert set(first) == expected
    # Read again without a rewind (e.g. an overlapping page): nothing is emitted twice.
    assert await _poll(rig.pool, info, _delta(changes, now - DAY)) == []
    # The hot copy in Redis is ahead of the rewind target.
    watermarks = WatermarkStore(rig.redis)
    hot = [("contacts", Watermark(now - DAY, frozenset({"3"})), Mirror.KEEP)]
    await watermarks.mirror(inst, hot)
    assert await rig.redis.get(keys.watermark(inst, "contacts")) is not None

    resp = await api.post(
        f"{BASE}/instances/{inst}/polling/rewind",
        json={"resource": "contacts", "since": _iso(now - 2 * DAY - timedelta(hours=1))},
        headers=org.headers,
    )
    assert resp.status == 202, await resp.text()
    checkpoint = await rig.pool.fetchval(
        "SELECT watermark_at FROM poll_states WHERE instance_id = $1", inst
    )
    assert checkpoint == now - 2 * DAY - timedelta(hours=1)
    assert await rig.redis.get(keys.watermark(inst, "contacts")) is None
    # A poll that ended just before the rewind writes its (newer) Redis copy late: the next
    # poll still starts from the rewound checkpoint, and puts it back into Redis.
    await watermarks.mirror(inst, hot)
    async with rig.pool.acquire() as conn:
        snapshot = await load_snapshot(conn, inst)
    assert snapshot is not None
    starts = await watermarks.starts(inst, snapshot.states)
    assert starts["contacts"].watermark.at == checkpoint
    assert starts["contacts"].mirror is Mirror.RESET

    # The re-read changes since then are emitted again, with their original ids...
    again = await _poll(rig.pool, info, _delta(changes[1:], now - DAY))
    assert set(again) == {event_id(inst, "contacts", o, d) for o, d in changes[1:]}
    # ...once: a further read of the same changes is a no-op again.
    assert await _poll(rig.pool, info, _delta(changes[1:], now - DAY)) == []
    # The event log still has one row per event id, linked to its newest delivery.
    assert await rig.pool.fetchval(
        "SELECT count(*) FROM events WHERE instance_id = $1", inst
    ) == len(changes)


async def test_rewind_bounds(
    api: TestClient[Any, Any], rig: Rig, make_settings: Callable[..., Settings]
) -> None:
    async with rig.pool.acquire() as conn:
        org = await make_org(conn, "rewind-bounds")
        inst = await make_instance(conn, org.id)
        await conn.execute(
            "UPDATE organizations SET payload_retention_days = 2 WHERE id = $1", org.id
        )
    url = f"{BASE}/instances/{inst}/polling/rewind"
    now = utcnow()
    for body, status, message in (
        ({"resource": "contacts", "since": _iso(now - 3 * DAY)}, 400, "retention"),
        ({"resource": "contacts", "since": _iso(now + DAY)}, 400, "future"),
        ({"resource": "orders", "since": _iso(now - DAY)}, 400, "not polled"),
        ({"since": _iso(now - DAY)}, 400, "resource"),
    ):
        resp = await api.post(url, json=body, headers=org.headers)
        assert resp.status == status
        assert message in (await resp.json())["message"]
    # A poll in flight holds the instance's poll lock: the rewind waits for it, then 409.
    await rig.redis.set(keys.poll_lock(inst), "a-poll", px=60_000)
    try:
        resp = await api.post(
            url, json={"resource": "contacts", "since": _iso(now - DAY)}, headers=org.headers
        )
        assert resp.status == 409
    finally:
        await rig.redis.delete(keys.poll_lock(inst))
    resp = await api.post(
        url, json={"resource": "contacts", "since": _iso(now - DAY)}, headers=org.headers
    )
    assert resp.status == 202


async def test_a_replay_cut_short_resumes_at_the_next_tick(
    api: TestClient[Any, Any], rig: Rig
) -> None:
    """A worker's time budget pauses a job; the next tick picks it up, not minutes later."""
    await lifecycle.run_replay_jobs(rig.pool, rig.settings, lambda _: None)  # earlier tests' jobs
    async with rig.pool.acquire() as conn:
        org = await make_org(conn, "replay-resume")
        inst = await make_instance(conn, org.id, callback_url=rig.receiver.url)
        seeded = [await seed_delivery(conn, inst, org.id, age=(3 + n) * DAY) for n in range(3)]
    resp = await api.post(
        f"{BASE}/instances/{inst}/deliveries/replay",
        json={"since": _iso(utcnow() - 7 * DAY), "until": _iso(utcnow())},
        headers=org.headers,
    )
    job = (await resp.json())["jobId"]
    enqueued: list[tuple[uuid.UUID, datetime]] = []
    for expected_sent in (1, 2, 3):  # one page of one delivery per tick
        await lifecycle.run_replay_jobs(rig.pool, rig.settings, enqueued.extend, budget_s=0, page=1)
        status = await _status(api, org, inst, job)
        assert (status["status"], status["selected"], status["sent"]) == (
            "running",
            3,
            expected_sent,
        )
    await lifecycle.run_replay_jobs(rig.pool, rig.settings, enqueued.extend, budget_s=0, page=1)
    assert (await _status(api, org, inst, job))["status"] == "done"
    assert sorted(d for d, _ in enqueued) == sorted(s.delivery_id for s in seeded)
