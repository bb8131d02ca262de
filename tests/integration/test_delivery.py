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
from collections import Counter
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
from app.services import delivery
from app.services.breaker import CircuitBreakers, OriginSlots, origin_of
from app.services.delivery import DeliveryDeps, Outcome, deliver, deliver_many, due_deliveries
from app.services.guarded_http import callback_session
from app.settings import Settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import new_org_headers

EPSILON = timedelta(milliseconds=1)  # timestamptz keeps microseconds; rounding only
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
                element_key="infusionsoftrest",
                token_hash=hash_secret(uuid.uuid4().hex),
                tags=["t"],
                configuration={"event.notification.callback.url": url},
                secrets=self.deps.box.seal(
                    {"event.notification.signature.key": key} if key else {}
                ),
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
    assert (await deliver(world.deps, delivery_id)).outcome == "pending"
    row = world.row(delivery_id)
    # Retry 1 after 1 s ±10 % (schedule 1,2,3), counted from the attempt's own record:
    # a slow POST on a loaded machine moves both ends alike.
    [first] = world.attempts(delivery_id)
    wait = row["next_attempt_at"] - first["at"]
    assert timedelta(seconds=0.9) - EPSILON <= wait <= timedelta(seconds=1.1) + EPSILON
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


async def test_every_attempt_carries_the_same_webhook_id_and_bytes(world: World) -> None:
    """Receivers deduplicate on ``webhook-id`` (SPEC §5): a retry that got a new id
    would be processed twice. Three attempts: two failures, then the one that lands."""
    instance_id = await world.instance(world.receiver.url)
    delivery_id = await world.delivery(instance_id)
    world.receiver.statuses = [500, 503]
    assert (await deliver(world.deps, delivery_id)).outcome == "pending"
    world.make_due(delivery_id)
    assert (await deliver(world.deps, delivery_id)).outcome == "pending"
    world.make_due(delivery_id)
    assert (await deliver(world.deps, delivery_id)).outcome == "delivered"
    received = world.receiver.received
    assert len(received) == 3
    assert {headers["webhook-id"] for headers, _ in received} == {str(delivery_id)}
    assert {body for _, body in received} == {world.row(delivery_id)["body"]}
    for headers, body in received:  # each attempt is signed afresh, and verifies
        Webhook(SIGNING_KEY).verify(body, {k.lower(): v for k, v in headers.items()})


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
            "SELECT events_enabled FROM instances WHERE id = %s", (instance_id,)
        ).fetchone()
    assert row == (False,)
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


async def test_at_most_eight_posts_in_flight_to_one_origin(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve deliveries to one hanging receiver: eight POSTs go out, the other four are
    deferred (no attempt spent) instead of holding delivery slots while they wait."""
    monkeypatch.setattr(delivery, "ORIGIN_WAIT_S", 0.5)
    world.receiver.hang_s = 4.0  # longer than a waiter waits, on any machine load
    instance_id = await world.instance(world.receiver.url)
    ids = [await world.delivery(instance_id) for _ in range(12)]
    outcomes = await deliver_many(world.deps, [(d, None) for d in ids], asyncio.Semaphore(16))
    by_outcome = Counter(o.outcome for o in outcomes)
    assert by_outcome == {Outcome.DELIVERED: 8, Outcome.DEFERRED: 4}
    assert len(world.receiver.received) == 8
    for o in outcomes:
        if o.outcome == Outcome.DEFERRED:
            assert world.attempts(o.delivery_id) == []
            assert world.row(o.delivery_id)["status"] == "pending"


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
