"""The delivery service against a local receiver, real PostgreSQL and Redis (SPEC §5)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from app import keys
from app.db import create_engine, create_pg_pool, session_factory
from app.domain.events import EventRecord, InstanceInfo, build_payload
from app.models import Delivery, Instance, utcnow
from app.security import SecretBox, hash_secret
from app.services.breaker import PER_ORIGIN_CONCURRENCY, CircuitBreakers, OriginSlots, origin_of
from app.services.delivery import DeliveryDeps, Outcome, deliver, deliver_many, due_deliveries
from app.services.guarded_http import callback_session
from app.settings import Settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import new_org_headers

SIGNING_KEY = "whsec_" + base64.b64encode(b"a-very-secret-signing-key").decode()


@dataclass
class Receiver:
    """A callback endpoint whose answers the test scripts."""

    statuses: list[int] = field(default_factory=list)  # consumed first; then 200
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text=f"answer {status}", headers=self.headers)


SIGNATURE_KEY = "event.notification.signature.key"


@dataclass
class World:
    deps: DeliveryDeps
    sessions: async_sessionmaker[AsyncSession]
    database_url: str
    org_id: int
    receiver: Receiver

    async def instance(self, url: str, key: str | None = SIGNING_KEY) -> int:
        async with self.sessions() as session, session.begin():
            instance = Instance(
                organization_id=self.org_id,
                name="delivery test",
                token_hash=hash_secret(uuid.uuid4().hex),
                tags=["t"],
                configuration={},
                client_id="client",
                callback_url=url,
                refresh_interval_minutes=15.0,
                poller={},
                secrets=self.deps.box.seal({SIGNATURE_KEY: key}) if key else None,
                secret_keys=[SIGNATURE_KEY] if key else [],
                events_enabled=True,
            )
            session.add(instance)
            await session.flush()
            assert instance.id is not None
            return instance.id

    async def delivery(self, instance_id: int) -> uuid.UUID:
        event = EventRecord(
            uuid.uuid4(), "contacts", "42", "CREATED", utcnow(), {"id": 42, "given_name": "Ada"}
        )
        delivery_id, body = build_payload(
            InstanceInfo(instance_id, "delivery test", ["t"], self.org_id), [event], utcnow()
        )
        async with self.sessions() as session, session.begin():
            session.add(
                Delivery(
                    id=delivery_id,
                    instance_id=instance_id,
                    body=body,
                    event_count=1,
                    next_attempt_at=utcnow(),
                )
            )
        return delivery_id

    def row(self, delivery_id: uuid.UUID) -> dict[str, Any]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute("SELECT * FROM deliveries WHERE id = %s", (delivery_id,))
            row = cur.fetchone()
            assert row is not None
            assert cur.description is not None
            return {d.name: v for d, v in zip(cur.description, row, strict=True)}

    def attempts(self, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute(
                "SELECT * FROM delivery_attempts WHERE delivery_id = %s ORDER BY attempt",
                (delivery_id,),
            )
            assert cur.description is not None
            names = [d.name for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def make_due(self, delivery_id: uuid.UUID) -> None:
        with psycopg.connect(self.database_url) as conn:
            conn.execute(
                "UPDATE deliveries SET next_attempt_at = now() WHERE id = %s", (delivery_id,)
            )


async def _world(
    service_urls: ServiceUrls, allow_private: bool, schedule: str = "1,2,3"
) -> AsyncIterator[World]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    server = TestServer(app)
    await server.start_server()
    receiver.url = str(server.make_url("/events"))
    settings = Settings(
        database_url=service_urls.database_url,
        redis_url=service_urls.redis_url,
        secret_key=SECRET_KEY,
        allow_private_callbacks=allow_private,
        delivery_retry_schedule=schedule,
    )  # type: ignore[arg-type]
    engine = create_engine(service_urls.database_url)
    pg = await create_pg_pool(service_urls.database_url, 10)
    redis = Redis.from_url(service_urls.redis_url)
    http = callback_session(allow_private)
    deps = DeliveryDeps(
        settings,
        pg,
        http,
        SecretBox(SECRET_KEY),
        redis,
        CircuitBreakers(redis),
        OriginSlots(),
    )
    headers = await new_org_headers(service_urls.database_url, "deliveries")
    yield World(
        deps, session_factory(engine), service_urls.database_url, int(headers["X-Org-Id"]), receiver
    )
    await http.close()
    await pg.close()
    await redis.aclose()
    await engine.dispose()
    await server.close()


@pytest.fixture
async def world(service_urls: ServiceUrls) -> AsyncIterator[World]:
    async for w in _world(service_urls, allow_private=True):
        yield w


@pytest.fixture
async def guarded_world(service_urls: ServiceUrls) -> AsyncIterator[World]:
    async for w in _world(service_urls, allow_private=False):
        yield w


async def test_exact_bytes_signed_both_ways(world: World) -> None:
    instance_id = await world.instance(world.receiver.url)
    delivery_id = await world.delivery(instance_id)
    assert (await deliver(world.deps, delivery_id)).outcome == "delivered"
    headers, body = world.receiver.received[0]
    assert body == world.row(delivery_id)["body"]
    assert headers["webhook-id"] == str(delivery_id)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert re.fullmatch(r"Pollinator/\d[\w.+]*", headers["User-Agent"])  # SPEC §8
    # Standard Webhooks, verified by the reference library (not our code).
    Webhook(SIGNING_KEY).verify(body, {k.lower(): v for k, v in headers.items()})
    # Open Connectors: an independent HMAC of the raw body.
    expected = base64.b64encode(
        hmac.new(SIGNING_KEY.encode(), body, hashlib.sha256).digest()
    ).decode()
    assert headers["Elements-Webhook-Signature"] == f"sha256={expected}"
    message = json.loads(body)["message"]
    assert message["eventId"] == str(delivery_id)
    assert message["raw"] == {"contacts": [{"id": 42, "given_name": "Ada"}]}
    [attempt] = world.attempts(delivery_id)
    assert attempt["status_code"] == 200
    assert attempt["error"] is None
    assert world.row(delivery_id)["status"] == "delivered"


async def test_plain_key_verifies_as_its_whsec_form(world: World) -> None:
    instance_id = await world.instance(world.receiver.url, key="plain-signing-key")
    delivery_id = await world.delivery(instance_id)
    await deliver(world.deps, delivery_id)
    headers, body = world.receiver.received[0]
    whsec = "whsec_" + base64.b64encode(b"plain-signing-key").decode()
    Webhook(whsec).verify(body, {k.lower(): v for k, v in headers.items()})


@pytest.fixture
async def elsewhere() -> AsyncIterator[tuple[str, list[str]]]:
    """A second receiver that counts requests of any method: (its URL, the methods seen)."""
    seen: list[str] = []

    async def count(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.Response(text="followed")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", count)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("/elsewhere")), seen
    await server.close()


async def test_failures_are_recorded_and_retried_on_schedule_then_failed(
    world: World, elsewhere: tuple[str, list[str]]
) -> None:
    # The 302 points at a second receiver: a client following it (as a GET or a POST)
    # would show there.
    location, followed = elsewhere
    world.receiver.headers = {"Location": location}
    instance_id = await world.instance(world.receiver.url)
    delivery_id = await world.delivery(instance_id)
    world.receiver.statuses = [500, 503, 302, 500]
    before = utcnow()
    assert (await deliver(world.deps, delivery_id)).outcome == "pending"
    row = world.row(delivery_id)
    # Retry 1 after ~1 s (±10 %), from the schedule 1,2,3.
    assert timedelta(seconds=0.85) <= row["next_attempt_at"] - before <= timedelta(seconds=1.3)
    for _ in range(2):
        world.make_due(delivery_id)
        assert (await deliver(world.deps, delivery_id)).outcome == "pending"
    world.make_due(delivery_id)
    assert (await deliver(world.deps, delivery_id)).outcome == "failed"  # schedule exhausted
    attempts = world.attempts(delivery_id)
    assert [a["status_code"] for a in attempts] == [500, 503, 302, 500]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert all(a["error"] == "http" for a in attempts)
    assert attempts[0]["response_body"] == "answer 500"
    row = world.row(delivery_id)
    assert row["status"] == "failed"
    assert row["next_attempt_at"] is None
    assert len(world.receiver.received) == 4  # 3xx is a failure; redirects are not followed
    assert followed == []


async def test_retry_after_is_honoured_when_longer(world: World) -> None:
    instance_id = await world.instance(world.receiver.url)
    delivery_id = await world.delivery(instance_id)
    world.receiver.statuses = [429]
    world.receiver.headers = {"Retry-After": "120"}
    before = utcnow()
    await deliver(world.deps, delivery_id)
    wait = world.row(delivery_id)["next_attempt_at"] - before
    assert timedelta(seconds=119) <= wait <= timedelta(seconds=122)


async def test_gone_disables_events_and_keeps_the_delivery(world: World) -> None:
    instance_id = await world.instance(world.receiver.url)
    delivery_id = await world.delivery(instance_id)
    world.receiver.statuses = [410]
    assert (await deliver(world.deps, delivery_id)).outcome == "failed"
    with psycopg.connect(world.database_url) as conn:
        row = conn.execute(
            "SELECT disabled, events_enabled FROM instances WHERE id = %s", (instance_id,)
        ).fetchone()
    assert row == (True, True)  # disabled by the system; the tenant's own switch untouched
    assert world.row(delivery_id)["status"] == "failed"


async def test_timeout_and_connection_errors_are_classified(world: World) -> None:
    instance_id = await world.instance("http://127.0.0.1:9/unreachable")
    delivery_id = await world.delivery(instance_id)
    await deliver(world.deps, delivery_id)
    [attempt] = world.attempts(delivery_id)
    assert attempt["error"] == "connection"
    assert attempt["status_code"] is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/e",
        "http://[::1]:{port}/e",
        "http://0x7f000001:{port}/e",
        "http://2130706433:{port}/e",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:{port}/e",
        "http://[::ffff:127.0.0.1]:{port}/e",
    ],
)
async def test_private_callbacks_blocked_at_delivery_time(guarded_world: World, url: str) -> None:
    port = guarded_world.receiver.url.split(":")[2].split("/")[0]
    instance_id = await guarded_world.instance(url.format(port=port))
    delivery_id = await guarded_world.delivery(instance_id)
    assert (await deliver(guarded_world.deps, delivery_id)).outcome == "pending"
    [attempt] = guarded_world.attempts(delivery_id)
    assert attempt["error"] == "ssrf_blocked", attempt
    assert guarded_world.receiver.received == []


async def test_breaker_opens_and_defers_without_spending_attempts(world: World) -> None:
    instance_id = await world.instance(world.receiver.url)
    world.receiver.statuses = [500] * 20
    ids = [await world.delivery(instance_id) for _ in range(8)]
    for delivery_id in ids[:5]:
        await deliver(world.deps, delivery_id)
    # Five consecutive failures opened the circuit: the rest wait, unspent.
    for delivery_id in ids[5:]:
        assert (await deliver(world.deps, delivery_id)).outcome == "deferred"
        assert world.attempts(delivery_id) == []
        assert world.row(delivery_id)["status"] == "pending"
    assert len(world.receiver.received) == 5
    # /metrics counts it as an open breaker until a delivery to it succeeds.
    origin = origin_of(world.receiver.url)
    assert await world.deps.redis.zscore(keys.breakers_open(), origin) is not None
    await world.deps.breakers.record(origin, True)
    assert await world.deps.redis.zscore(keys.breakers_open(), origin) is None


async def test_sweeper_claims_due_deliveries_once(world: World) -> None:
    instance_id = await world.instance(world.receiver.url)
    ids = {await world.delivery(instance_id) for _ in range(3)}
    first = dict(await due_deliveries(world.deps.pg, 60))
    assert ids <= set(first)
    second = dict(await due_deliveries(world.deps.pg, 60))
    assert not (ids & set(second))  # leased: not enqueued twice
    # A stale message (wrong ticket) claims nothing; the right ticket delivers once.
    some = next(iter(ids))
    stale = await deliver(world.deps, some, first[some] - timedelta(seconds=1))
    assert stale.outcome == "not-pending"
    assert (await deliver(world.deps, some, first[some])).outcome == "delivered"
    assert (await deliver(world.deps, some, first[some])).outcome == "not-pending"
    assert len(world.receiver.received) == 1


@dataclass
class Gate:
    """A receiver whose requests wait until the test opens the gate; counts concurrency."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    most: int = 0
    arrived: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.opened.wait()
        finally:
            self.in_flight -= 1
        return web.Response(text="ok")


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    held = Gate()
    app = web.Application()
    app.router.add_post("/{tail:.*}", held.handle)
    server = TestServer(app)
    await server.start_server()
    held.url = str(server.make_url("/held"))
    yield held
    held.opened.set()
    await server.close()


async def _until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def broken() -> AsyncIterator[Receiver]:
    """A second receiver that answers 500 to everything."""
    failing = Receiver(statuses=[500] * 100)
    app = web.Application()
    app.router.add_post("/{tail:.*}", failing.handle)
    server = TestServer(app)
    await server.start_server()
    failing.url = str(server.make_url("/broken"))
    yield failing
    await server.close()


async def test_a_slow_callback_does_not_hold_back_the_rest_of_its_batch(
    world: World, gate: Gate, broken: Receiver
) -> None:
    fast = await world.instance(world.receiver.url)
    slow = await world.instance(gate.url)
    failing = await world.instance(broken.url)
    fast_ids = [await world.delivery(fast) for _ in range(3)]
    slow_id = await world.delivery(slow)
    failing_id = await world.delivery(failing)
    batch = [(slow_id, None), *[(d, None) for d in fast_ids], (failing_id, None)]
    task = asyncio.create_task(deliver_many(world.deps, batch))
    # The healthy deliveries are recorded (durably: read back from PostgreSQL) and the
    # failed one is rescheduled while the slow one is still waiting for its answer.
    await _until(lambda: all(world.row(d)["status"] == "delivered" for d in fast_ids))
    await _until(lambda: len(world.attempts(failing_id)) == 1)
    assert world.row(failing_id)["status"] == "pending"
    assert not task.done()
    assert world.attempts(slow_id) == []
    gate.opened.set()
    outcomes = {o.delivery_id: o.outcome for o in await task}
    assert outcomes == {
        slow_id: Outcome.DELIVERED,
        **dict.fromkeys(fast_ids, Outcome.DELIVERED),
        failing_id: Outcome.RETRY,
    }


async def test_a_crash_between_post_and_record_is_redelivered_with_the_same_webhook_id(
    world: World,
) -> None:
    instance_id = await world.instance(world.receiver.url)
    delivery_id = await world.delivery(instance_id)
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION test_no_attempts() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER test_no_attempts BEFORE INSERT ON delivery_attempts"
            " FOR EACH ROW EXECUTE FUNCTION test_no_attempts()"
        )
    try:
        [crashed] = await deliver_many(world.deps, [(delivery_id, None)])
    finally:
        with psycopg.connect(world.database_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER test_no_attempts ON delivery_attempts")
            conn.execute("DROP FUNCTION test_no_attempts()")
    # Sent, but its attempt never committed: not done, still pending under its lease.
    assert crashed.outcome is Outcome.CRASHED
    assert "disk full" in str(crashed.error)
    assert len(world.receiver.received) == 1
    assert world.row(delivery_id)["status"] == "pending"
    assert world.attempts(delivery_id) == []
    world.make_due(delivery_id)  # the lease runs out; the sweeper sends it again
    swept = dict(await due_deliveries(world.deps.pg, 60))
    [again] = await deliver_many(world.deps, [(delivery_id, swept[delivery_id])])
    assert again.outcome is Outcome.DELIVERED
    ids = [headers["webhook-id"] for headers, _ in world.receiver.received]
    assert ids == [str(delivery_id)] * 2
    assert [a["status_code"] for a in world.attempts(delivery_id)] == [200]


async def test_a_batch_claims_each_delivery_once_and_cancels_those_of_deleted_instances(
    world: World,
) -> None:
    live = await world.instance(world.receiver.url)
    deleted = await world.instance(world.receiver.url)
    sent, doomed = await world.delivery(live), await world.delivery(deleted)
    stale = await world.delivery(live)
    with psycopg.connect(world.database_url) as conn:
        conn.execute("UPDATE instances SET deleted_at = now() WHERE id = %s", (deleted,))
    batch = [
        (sent, None),
        (doomed, None),
        (sent, None),  # the same message twice
        (stale, utcnow() - timedelta(hours=1)),  # a ticket that no longer matches
    ]
    outcomes = [o.outcome for o in await deliver_many(world.deps, batch)]
    assert outcomes == [
        Outcome.DELIVERED,
        Outcome.CANCELLED,
        Outcome.NOT_PENDING,
        Outcome.NOT_PENDING,
    ]
    assert [h["webhook-id"] for h, _ in world.receiver.received] == [str(sent)]
    assert world.row(doomed)["status"] == "cancelled"
    assert world.row(doomed)["next_attempt_at"] is None
    assert world.row(stale)["status"] == "pending"


async def test_half_open_breaker_lets_one_delivery_of_a_batch_probe(world: World) -> None:
    instance_id = await world.instance(world.receiver.url)
    world.receiver.statuses = [500] * 5
    for _ in range(5):
        await deliver(world.deps, await world.delivery(instance_id))
    origin = origin_of(world.receiver.url)
    key = f"{keys.PREFIX}:cb:{origin}"
    assert float(await world.deps.redis.hget(key, "open_until") or 0) > time.time()
    await world.deps.redis.hset(key, "open_until", time.time() - 1)  # the cooldown is over
    ids = [await world.delivery(instance_id) for _ in range(3)]
    outcomes = [o.outcome for o in await deliver_many(world.deps, [(d, None) for d in ids])]
    assert sorted(outcomes) == sorted([Outcome.DELIVERED, Outcome.DEFERRED, Outcome.DEFERRED])
    assert len(world.receiver.received) == 6  # five failures and the one probe
    assert await world.deps.redis.exists(key) == 0  # the probe succeeded: closed again


async def test_at_most_eight_posts_in_flight_per_origin(world: World, gate: Gate) -> None:
    instance_id = await world.instance(gate.url)
    ids = [await world.delivery(instance_id) for _ in range(PER_ORIGIN_CONCURRENCY + 4)]
    task = asyncio.create_task(deliver_many(world.deps, [(d, None) for d in ids]))
    await _until(lambda: gate.in_flight >= PER_ORIGIN_CONCURRENCY)
    await asyncio.sleep(0.3)  # room for a ninth to arrive, were the cap broken
    assert gate.most == PER_ORIGIN_CONCURRENCY
    gate.opened.set()
    outcomes = [o.outcome for o in await task]
    # The rest waited for a slot; on a slow machine a wait past 2 s defers instead.
    assert set(outcomes) <= {Outcome.DELIVERED, Outcome.DEFERRED}
    assert gate.arrived == outcomes.count(Outcome.DELIVERED) >= PER_ORIGIN_CONCURRENCY
    assert gate.most == PER_ORIGIN_CONCURRENCY
