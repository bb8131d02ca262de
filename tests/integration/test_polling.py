"""The polling service against the in-process Keap simulator, real PostgreSQL and Redis.

Each scenario asserts the events stored (the outbox) against the simulator's
ground-truth change log: no change missed, none invented, none repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from app import keys
from app.api.server import create_app as create_api
from app.client import InstanceSpec, OAuthApp
from app.db import create_pg_pool, libpq_url
from app.domain.watermark import Watermark
from app.security import SecretBox
from app.services.polling import PollDeps, PollOutcome, QuietCommits, run_polls
from app.settings import Settings
from app.simulator import SimulatorConfig
from app.simulator import create_app as create_sim
from app.store.watermarks import CheckpointWrite
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import api_clients, new_org_headers

BASE = "/elements/api-v2"
TS = "${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}"


@dataclass
class Harness:
    sim: TestClient[Any, Any]
    api: TestClient[Any, Any]
    deps: PollDeps
    database_url: str
    headers: dict[str, str]
    account: str = ""
    instance_id: int = 0

    async def create_instance(
        self,
        poller: dict[str, Any] | None = None,
        account: str | None = None,
        **configuration: Any,
    ) -> int:
        self.account = account or f"acct-{uuid.uuid4().hex[:8]}"
        spec = InstanceSpec(
            app=OAuthApp("cid", "csecret", "https://app.example.com/cb"),
            callback_url="http://127.0.0.1:9/events",
            name="polling test",
            refresh_minutes=1,
            poller=poller,
            extra=configuration,
        )
        sim, api = api_clients(self.sim, self.api, self.headers)
        self.instance_id = int((await api.create_authorized(sim, spec, self.account))["id"])
        return self.instance_id

    async def write(self, resource: str, **fields: Any) -> dict[str, Any]:
        resp = await self.sim.post(f"/_sim/accounts/{self.account}/{resource}", json=fields)
        assert resp.status in (200, 201), await resp.text()
        record: dict[str, Any] = await resp.json()
        return record

    async def update(self, resource: str, rid: int, **fields: Any) -> None:
        resp = await self.sim.patch(
            f"/_sim/accounts/{self.account}/{resource}/{rid}",
            json=fields or {"notes": uuid.uuid4().hex},
        )
        assert resp.status == 200, await resp.text()

    async def delete(self, resource: str, rid: int) -> None:
        resp = await self.sim.delete(f"/_sim/accounts/{self.account}/{resource}/{rid}")
        assert resp.status == 200

    async def fault(self, kind: str, seconds: float = 30, probability: float = 1.0) -> None:
        resp = await self.sim.post(
            "/_sim/faults",
            json={
                "kind": kind,
                "seconds": seconds,
                "probability": probability,
                "account": self.account,
            },
        )
        assert resp.status in (200, 201), await resp.text()

    async def clear_faults(self) -> None:
        await self.sim.delete("/_sim/faults")

    async def poll(self) -> PollOutcome:
        """One poll the way a worker runs it (outbox, then Redis watermarks and metrics)."""
        [outcome] = await run_polls(self.deps, [(self.instance_id, None)], asyncio.Semaphore(4))
        return outcome

    def events(self) -> list[tuple[str, str, str]]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT object_type, object_id, event_type FROM events WHERE instance_id = %s",
                (self.instance_id,),
            ).fetchall()
        return sorted((str(r[0]), str(r[1]), str(r[2])) for r in rows)

    def state(self, resource: str) -> dict[str, Any]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute(
                "SELECT * FROM poll_states WHERE instance_id = %s AND resource = %s",
                (self.instance_id, resource),
            )
            row = cur.fetchone()
            assert row is not None
            assert cur.description is not None
            return {d.name: v for d, v in zip(cur.description, row, strict=True)}


@pytest.fixture
async def harness(service_urls: ServiceUrls) -> AsyncIterator[Harness]:
    sim: TestClient[Any, Any] = TestClient(TestServer(create_sim(SimulatorConfig(seed=3))))
    await sim.start_server()
    sim_url = str(sim.make_url("")).rstrip("/")
    settings = Settings(
        database_url=service_urls.database_url,
        redis_url=service_urls.redis_url,
        secret_key=SECRET_KEY,
        allow_private_callbacks=True,
        min_refresh_minutes=0.01,
        infusionsoft_api_url=f"{sim_url}/crm/rest/v1",
        infusionsoft_token_url=f"{sim_url}/token",
        provider_timeout_seconds=2.0,
    )
    api: TestClient[Any, Any] = TestClient(TestServer(create_api(settings)))
    await api.start_server()
    redis = Redis.from_url(service_urls.redis_url)
    http = aiohttp.ClientSession()
    pg = await create_pg_pool(service_urls.database_url, 10)
    deps = PollDeps(settings, pg, redis, http, SecretBox(SECRET_KEY))
    headers = await new_org_headers(service_urls.database_url, "pollers")
    yield Harness(sim, api, deps, service_urls.database_url, headers)
    await http.close()
    await redis.aclose()
    await pg.close()
    await api.close()
    await sim.close()


def contacts_config(**extra: Any) -> dict[str, Any]:
    return {
        "contacts": {
            "url": f"/contacts?since={TS}&order=id",
            "idField": "id",
            "datesConfiguration": {
                "updatedDateField": "last_updated_utc_millis",
                "updatedDateFormat": "milliseconds",
                "createdDateField": "date_created",
                "createdDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
            },
            "createdCheckTolerance": 1,
            **extra,
        }
    }


async def test_creates_and_updates_across_resources(harness: Harness) -> None:
    await harness.create_instance()  # Keap defaults: seven resources
    contact = await harness.write("contacts", given_name="Ada")
    order = await harness.write("orders", title="first")
    task = await harness.write("tasks", title="call")
    first = await harness.poll()
    assert not first.failed, first
    assert harness.events() == sorted(
        [
            ("contacts", str(contact["id"]), "CREATED"),
            ("orders", str(order["id"]), "CREATED"),
            ("tasks", str(task["id"]), "CREATED"),
        ]
    )
    assert len(first.delivery_ids) == 3
    await asyncio.sleep(1.1)  # Keap renders orders' dates to the second
    await harness.update("contacts", contact["id"], given_name="Ada L.")
    await harness.update("orders", order["id"], title="changed")
    second = await harness.poll()
    assert not second.failed
    assert ("contacts", str(contact["id"]), "UPDATED") in harness.events()
    assert ("orders", str(order["id"]), "UPDATED") in harness.events()
    # Unchanged records produce nothing: a third poll adds no event.
    before = harness.events()
    third = await harness.poll()
    assert third.events == 0
    assert harness.events() == before


async def test_fifty_records_sharing_one_timestamp_split_across_pages(harness: Harness) -> None:
    poller = {
        "orders": {
            "url": f"/orders?since={TS}&order=id",
            "idField": "id",
            "pageSize": 7,
            "datesConfiguration": {
                "updatedDateField": "modification_date",
                "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
                "createdDateField": "creation_date",
                "createdDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
            },
        }
    }
    await harness.create_instance(poller)
    created = [await harness.write("orders", title=f"o{i}") for i in range(50)]
    outcome = await harness.poll()
    assert not outcome.failed
    assert harness.events() == sorted(("orders", str(r["id"]), "CREATED") for r in created)
    # Re-polling at the same second re-reads them (>=) but repeats nothing.
    again = await harness.poll()
    assert again.events == 0
    assert len(harness.events()) == 50


async def test_redis_flushed_between_polls_nothing_missed_or_repeated(
    harness: Harness,
) -> None:
    await harness.create_instance(contacts_config())
    first = [await harness.write("contacts", given_name=f"c{i}") for i in range(5)]
    await harness.poll()
    assert await harness.deps.redis.exists(keys.watermark(harness.instance_id, "contacts"))
    await harness.deps.redis.delete(keys.watermark(harness.instance_id, "contacts"))
    second = [await harness.write("contacts", given_name=f"d{i}") for i in range(3)]
    outcome = await harness.poll()
    assert outcome.events == 3
    assert harness.events() == sorted(
        ("contacts", str(r["id"]), "CREATED") for r in [*first, *second]
    )


async def test_token_expired_mid_run_is_refreshed_and_rotated(harness: Harness) -> None:
    await harness.create_instance(contacts_config())
    record = await harness.write("contacts", given_name="x")
    await harness.fault("expire_tokens")
    outcome = await harness.poll()
    assert not outcome.failed, outcome
    assert harness.events() == [("contacts", str(record["id"]), "CREATED")]
    # The rotated refresh token was stored: a second expiry refreshes again.
    await harness.fault("expire_tokens")
    record2 = await harness.write("contacts", given_name="y")
    assert not (await harness.poll()).failed
    assert ("contacts", str(record2["id"]), "CREATED") in harness.events()


async def test_concurrent_refresh_is_single_flight(harness: Harness) -> None:
    poller = {
        **contacts_config(),
        "orders": {
            "url": f"/orders?since={TS}&order=id",
            "idField": "id",
            "datesConfiguration": {
                "updatedDateField": "modification_date",
                "createdDateField": "creation_date",
            },
        },
    }
    await harness.create_instance(poller)
    await harness.write("contacts", given_name="x")
    await harness.write("orders", title="o")
    await harness.fault("expire_tokens")
    # Both resources hit 401 at once; one refresh wins, the other re-reads the stored token.
    outcome = await harness.poll()
    assert not outcome.failed, outcome
    assert len(harness.events()) == 2


@pytest.mark.parametrize("kind", ["error500", "malformed", "timeout"])
async def test_provider_fault_fails_cleanly_and_next_poll_catches_up(
    harness: Harness, kind: str
) -> None:
    await harness.create_instance(contacts_config())
    record = await harness.write("contacts", given_name="x")
    watermark_before = harness.state("contacts")["watermark_at"]
    await harness.fault(kind)
    failed = await harness.poll()
    assert failed.failed
    state = harness.state("contacts")
    assert state["watermark_at"] == watermark_before
    assert state["consecutive_failures"] == 1
    assert state["last_error"]
    assert harness.events() == []
    await harness.clear_faults()
    recovered = await harness.poll()
    assert not recovered.failed
    assert harness.events() == [("contacts", str(record["id"]), "CREATED")]
    assert harness.state("contacts")["consecutive_failures"] == 0


async def test_throttling_waits_instead_of_failing(harness: Harness) -> None:
    await harness.create_instance(contacts_config())
    record = await harness.write("contacts", given_name="x")
    await harness.fault("throttle", seconds=1.5)
    outcome = await harness.poll()
    assert not outcome.failed, outcome
    assert harness.events() == [("contacts", str(record["id"]), "CREATED")]


async def test_deletes_and_updates_while_walking_pages(harness: Harness) -> None:
    """A delete and an update land between page 1 and page 2 of one poll.

    The delete shifts every later record one offset back: a walk that did not notice
    would skip the first record of page 2. The mutation is awaited before page 2 is
    requested, so it happens in every run (it used to be a task that might run late).
    """
    poller = contacts_config(pageSize=5)
    await harness.create_instance(poller)
    records = [await harness.write("contacts", given_name=f"c{i}") for i in range(23)]
    original_get = harness.deps.http.get
    calls = 0
    mutated = False

    @contextlib.asynccontextmanager
    async def meddling_get(url: Any, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        nonlocal calls, mutated
        calls += 1
        if calls == 2:  # page 1 is read; page 2 is not requested yet
            await harness.delete("contacts", records[1]["id"])
            await harness.update("contacts", records[3]["id"], given_name="moved")
            mutated = True
        async with original_get(url, **kwargs) as resp:
            yield resp

    harness.deps.http.get = meddling_get  # type: ignore[assignment]
    try:
        outcome = await harness.poll()
    finally:
        harness.deps.http.get = original_get  # type: ignore[method-assign]
    assert not outcome.failed
    assert mutated
    assert calls >= 6  # 23 records, 5 a page with overlap: at least 6 pages
    events = harness.events()
    got = {e[1] for e in events}
    all_ids = {str(r["id"]) for r in records}
    # Every record that still exists was seen exactly once; the deleted one may or may
    # not have been (it was on page 1), and nothing else was invented.
    assert all_ids - {str(records[1]["id"])} <= got <= all_ids
    assert len(events) == len(got), "a record was reported twice"


async def test_unreadable_dates_are_reported_not_silently_dropped(harness: Harness) -> None:
    wrong = {
        "contacts": {
            "url": f"/contacts?since={TS}&order=id",
            "idField": "id",
            "datesConfiguration": {
                "updatedDateField": "last_updated",
                "updatedDateFormat": "yyyy-MM-dd",
            },
        }
    }
    await harness.create_instance(wrong)
    await harness.write("contacts", given_name="x")
    outcome = await harness.poll()
    assert not outcome.failed
    assert outcome.events == 0
    state = harness.state("contacts")
    assert state["consecutive_failures"] == 0
    assert "1 record(s) skipped" in state["last_error"]
    assert "yyyy-MM-dd" in state["last_error"]


async def test_quiet_poll_is_not_fatal(harness: Harness) -> None:
    await harness.create_instance(contacts_config())
    outcome = await harness.poll()
    assert outcome.events == 0
    assert not outcome.failed
    assert [r.resource for r in outcome.resources] == ["contacts"]
    assert harness.state("contacts")["last_error"] is None


async def test_a_batch_of_polls_reads_its_snapshots_in_one_statement(harness: Harness) -> None:
    """The snapshot read is once per batch, not once per poll (issue 13: work per poll)."""
    ids = [await harness.create_instance(contacts_config()) for _ in range(5)]
    statements: list[str] = []

    async def log_statements(conn: asyncpg.Connection[asyncpg.Record]) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    pool = await asyncpg.create_pool(
        libpq_url(harness.database_url), min_size=1, max_size=10, init=log_statements
    )
    assert pool is not None
    d = harness.deps
    try:
        outcomes = await run_polls(
            PollDeps(d.settings, pool, d.redis, d.http, d.box),
            [(i, None) for i in ids],
            asyncio.Semaphore(4),
        )
    finally:
        await pool.close()
    assert [(o.instance_id, o.skipped, o.failed) for o in outcomes] == [
        (i, False, False) for i in ids
    ]
    assert len([q for q in statements if "LEFT JOIN poll_states" in q]) == 1


async def test_a_batch_whose_shared_read_fails_fails_each_poll_and_holds_no_lease(
    harness: Harness,
) -> None:
    ids = [await harness.create_instance(contacts_config()) for _ in range(3)]
    closed = await create_pg_pool(harness.database_url, 1)
    await closed.close()  # the batch's snapshot read fails: a shared fault, not an instance's
    d = harness.deps
    deps = PollDeps(d.settings, closed, d.redis, d.http, d.box)
    outcomes = await run_polls(deps, [(i, None) for i in ids], asyncio.Semaphore(4))
    assert all(o.skipped and o.crash and o.crash.startswith("InterfaceError") for o in outcomes)
    assert deps.leases.held() == 0  # given back, and not renewed on
    assert await d.redis.exists(*(keys.poll_lock(i) for i in ids)) == 0
    again = await run_polls(d, [(i, None) for i in ids], asyncio.Semaphore(4))
    assert [(o.skipped, o.busy) for o in again] == [(False, False)] * 3  # nothing left held
    await deps.leases.close()


async def test_quiet_polls_of_a_batch_write_their_checkpoints_in_one_statement(
    harness: Harness,
) -> None:
    """Quiet polls arriving together share one checkpoint statement; one that the database
    refuses sends each of the group back to write alone, so it fails only its own poll."""
    ids = [await harness.create_instance(contacts_config()) for _ in range(3)]
    statements: list[str] = []

    async def log_statements(conn: asyncpg.Connection[asyncpg.Record]) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    pool = await asyncpg.create_pool(
        libpq_url(harness.database_url), min_size=1, max_size=10, init=log_statements
    )
    assert pool is not None
    quiet = QuietCommits(pool)
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

    def writes(error: str | None = None) -> list[CheckpointWrite]:
        return [CheckpointWrite("contacts", Watermark(at, frozenset()), error)]

    def polled(instance_id: int) -> tuple[datetime | None, str | None]:
        with psycopg.connect(harness.database_url) as conn:
            row = conn.execute(
                "SELECT last_polled_at, last_error FROM poll_states WHERE instance_id = %s",
                (instance_id,),
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    try:
        written = await asyncio.gather(*(quiet.commit(i, at, writes()) for i in ids))
        assert written == [True, True, True]
        assert len([q for q in statements if "UPDATE poll_states" in q]) == 1
        assert [polled(i) for i in ids] == [(at, None)] * 3

        later = at + timedelta(minutes=1)
        unstorable = "id \x00: no date"  # provider text PostgreSQL refuses
        alone = list(
            await asyncio.gather(
                quiet.commit(ids[0], later, writes()),
                quiet.commit(ids[1], later, writes(unstorable)),
            )
        )
        assert alone == [False, False]  # each writes alone: the refusal stays its own
        assert polled(ids[0]) == (at, None)
    finally:
        await pool.close()


async def test_the_instance_time_zone_renders_date_templates_and_reads_zoneless_dates(
    harness: Harness,
) -> None:
    """``event.poller.timezone``: ``${date:…}`` in it, and zone-less values read in it."""
    local = "yyyy-MM-dd'T'HH:mm:ss.SSS"
    poller = {
        "contacts": {
            "url": f"/contacts?since=${{date:{local}}}&order=id",
            "idField": "id",
            "datesConfiguration": {
                "updatedDateField": "last_updated_utc_millis",
                "updatedDateFormat": "milliseconds",
            },
        }
    }
    await harness.create_instance(poller, **{"event.poller.timezone": "America/New_York"})
    record = await harness.write("contacts", given_name="Tz")
    watermark: datetime = harness.state("contacts")["watermark_at"]
    requested: list[str] = []
    original_get = harness.deps.http.get

    def recording_get(url: Any, **kwargs: Any) -> Any:
        requested.append(str(url))
        return original_get(url, **kwargs)

    harness.deps.http.get = recording_get  # type: ignore[method-assign]
    try:
        outcome = await harness.poll()
    finally:
        harness.deps.http.get = original_get  # type: ignore[method-assign]
    assert not outcome.failed
    since = parse_qs(urlsplit(requested[0]).query)["since"][0]
    # The first poll's bound is the starting watermark (no pollDelay), in New York time,
    # truncated to the format's milliseconds.
    new_york = watermark.astimezone(ZoneInfo("America/New_York")).replace(tzinfo=None)
    assert datetime.fromisoformat(since) == new_york.replace(
        microsecond=new_york.microsecond // 1000 * 1000
    )
    assert str(record["id"]) in {e[1] for e in harness.events()}
