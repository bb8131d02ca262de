"""One tenant's unschedulable or crashing instance is quarantined; every other keeps polling.

The finding: a refresh interval of 4,193,436,587 minutes plus ``POST .../polling/run``
made ``next_poll_at`` raise ``OverflowError`` inside beat's claim; the claimed batch
rolled back on every tick with the poisoned row first, and no organization was polled
until the row was deleted. Validation at the API is not enough (old rows, manual SQL, a
future bug), so these tests write the poison straight into PostgreSQL, past validation,
and drive the real claim (beat) and the real poll service (worker).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from app import metrics
from app.db import sync_url
from app.services.polling import QUARANTINE_AFTER_CRASHES, PollOutcome, run_polls
from app.store.schedule import CLAIM
from tests.conftest import ServiceUrls
from tests.integration import test_polling
from tests.integration.test_polling import BASE, Harness, contacts_config
from workers.beat import Claimed, claim_due, dispatch_due

REPORTED_INTERVAL_S = 4_193_436_587 * 60.0

# test_polling's harness fixture: the simulator, the API and the worker's poll dependencies.
harness = test_polling.harness


@pytest.fixture
def engine(service_urls: ServiceUrls) -> Iterator[Engine]:
    """The synchronous engine beat uses."""
    eng = create_engine(sync_url(service_urls.database_url), pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture
def sync_redis(service_urls: ServiceUrls) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(service_urls.redis_url)
    yield client
    client.close()


def sql(h: Harness, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Write or read PostgreSQL directly, past every validation the API does."""
    with psycopg.connect(h.database_url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def quarantine_of(h: Harness, instance_id: int) -> tuple[Any, str | None, int]:
    [row] = sql(
        h,
        "SELECT quarantined_at, quarantine_reason, poll_crashes FROM instances WHERE id = %s",
        instance_id,
    )
    return row[0], row[1], int(row[2])


def make_due(h: Harness, ids: Sequence[int]) -> None:
    sql(
        h,
        "UPDATE instances SET next_poll_at = now() - interval '1 second' WHERE id = ANY(%s)",
        list(ids),
    )


async def metric(h: Harness, series: str) -> float:
    """One sample of GET /metrics (0 when the series is absent)."""
    body = await (await h.api.get("/metrics")).text()
    match = re.search(rf"^{re.escape(series)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def polling(h: Harness, instance_id: int) -> list[dict[str, Any]]:
    resp = await h.api.get(f"{BASE}/instances/{instance_id}/polling", headers=h.headers)
    assert resp.status == 200, await resp.text()
    rows: list[dict[str, Any]] = await resp.json()
    return rows


async def instance(h: Harness, instance_id: int) -> dict[str, Any]:
    resp = await h.api.get(f"{BASE}/instances/{instance_id}", headers=h.headers)
    assert resp.status == 200, await resp.text()
    view: dict[str, Any] = await resp.json()
    return view


async def patch_interval(h: Harness, instance_id: int, minutes: float) -> None:
    resp = await h.api.patch(
        f"{BASE}/instances/{instance_id}",
        headers=h.headers,
        json={"configuration": {"event.poller.refresh_interval": minutes}},
    )
    assert resp.status == 200, await resp.text()


async def test_unschedulable_rows_are_quarantined_and_the_rest_of_the_batch_is_scheduled(
    harness: Harness, engine: Engine, sync_redis: redis.Redis
) -> None:
    healthy = [await harness.create_instance(contacts_config()) for _ in range(3)]
    reported, huge, end_of_time = [await harness.create_instance(contacts_config()) for _ in "abc"]
    poisoned = {reported, huge, end_of_time}
    make_due(harness, [*healthy, *poisoned])
    # Past validation: the reported interval, 1e300 s, and a stored slot PostgreSQL accepts
    # but Python cannot represent (due, and first in the claim's order).
    sql(
        harness,
        "UPDATE instances SET refresh_interval_minutes = %s WHERE id = %s",
        REPORTED_INTERVAL_S / 60,
        reported,
    )
    sql(harness, "UPDATE instances SET refresh_interval_minutes = 1e300 WHERE id = %s", huge)
    sql(harness, "UPDATE instances SET next_poll_at = '-infinity' WHERE id = %s", end_of_time)
    counted = await metric(harness, 'pollinator_quarantines_total{cause="schedule"}')

    sent: list[Claimed] = []
    dispatch_due(engine, sent.extend, sync_redis)

    polled = {c.instance_id for c in sent}
    assert set(healthy) <= polled
    assert not poisoned & polled
    for instance_id in healthy:
        assert quarantine_of(harness, instance_id)[0] is None
    [[later]] = sql(
        harness,
        "SELECT count(*) FROM instances WHERE id = ANY(%s) AND next_poll_at > now()",
        healthy,
    )
    assert later == len(healthy)
    for instance_id in poisoned:
        at, reason, _ = quarantine_of(harness, instance_id)
        assert at is not None
        assert reason is not None
        assert reason.startswith("next poll time cannot be computed")
    assert "after 9999-12-30" in (quarantine_of(harness, reported)[1] or "")
    assert "outside 0001-01-02" in (quarantine_of(harness, end_of_time)[1] or "")

    # The next tick does not claim them again (they are not due in the claim's eyes).
    make_due(harness, [huge])
    again: list[Claimed] = []
    dispatch_due(engine, again.extend, sync_redis)
    assert not poisoned & {c.instance_id for c in again}

    # Metrics: three quarantine events; the gauge counts quarantined rows from PostgreSQL.
    assert await metric(harness, 'pollinator_quarantines_total{cause="schedule"}') == counted + 3
    [[in_db]] = sql(
        harness,
        "SELECT count(*) FROM instances WHERE quarantined_at IS NOT NULL AND deleted_at IS NULL",
    )
    assert await metric(harness, "pollinator_instances_quarantined") == in_db >= 3

    # The tenant sees why, and that nothing is scheduled.
    [state] = await polling(harness, reported)
    assert state["lastError"].startswith("quarantined: next poll time cannot be computed")
    assert state["nextPollAt"] is None
    assert (await instance(harness, reported))["disabled"] is True
    assert (await instance(harness, healthy[0]))["disabled"] is False

    # A PATCH (here: a sane interval) lifts the quarantine; the next tick schedules it.
    await patch_interval(harness, huge, 1)
    assert quarantine_of(harness, huge)[0] is None
    [state] = await polling(harness, huge)
    assert state["lastError"] is None
    assert (await instance(harness, huge))["disabled"] is False
    make_due(harness, [huge])
    lifted: list[Claimed] = []
    dispatch_due(engine, lifted.extend, sync_redis)
    assert huge in {c.instance_id for c in lifted}

    # The slot Python could not read was cleared when quarantined, so the API can read the
    # row, and lifting gives it a fresh first slot within one interval.
    [state] = await polling(harness, end_of_time)
    assert state["lastError"].startswith("quarantined: ")
    await patch_interval(harness, end_of_time, 1)
    [[fresh]] = sql(
        harness,
        "SELECT next_poll_at BETWEEN now() AND now() + interval '60 seconds'"
        " FROM instances WHERE id = %s AND quarantined_at IS NULL",
        end_of_time,
    )
    assert fresh is True


def test_rows_the_database_refuses_fail_alone(service_urls: ServiceUrls, engine: Engine) -> None:
    """Whatever fails one row's update (here triggers an operator added) fails only that row."""
    with psycopg.connect(service_urls.database_url, autocommit=True) as conn:
        ids = insert_due_instances(conn, 5)
        # One row may not move; another may not be updated at all.
        unmovable, untouchable = ids[1], ids[3]
        conn.execute(
            "CREATE FUNCTION refuse_rows() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.id = {untouchable} OR (NEW.id = {unmovable}"
            " AND NEW.next_poll_at IS DISTINCT FROM OLD.next_poll_at)"
            " THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_rows BEFORE UPDATE ON instances"
            " FOR EACH ROW EXECUTE FUNCTION refuse_rows()"
        )
        try:
            claim = claim_due(engine, utcnow_db(conn))
        finally:
            conn.execute("DROP TRIGGER refuse_rows ON instances")
            conn.execute("DROP FUNCTION refuse_rows()")
        polled = {c.instance_id for c in claim.polls}
        assert set(ids) - {unmovable, untouchable} <= polled
        assert [q.instance_id for q in claim.quarantined if q.instance_id in ids] == [unmovable]
        rows = dict(
            conn.execute(
                "SELECT id, quarantine_reason FROM instances WHERE id = ANY(%s)", (ids,)
            ).fetchall()
        )
        assert "cannot be stored" in rows[unmovable]
        assert rows[untouchable] is None  # left due: tried again next tick, logged each time
        assert untouchable not in polled


def insert_due_instances(conn: psycopg.Connection[Any], count: int) -> list[int]:
    """Bare due instances of a new organization, straight into PostgreSQL."""
    org = conn.execute(
        "INSERT INTO organizations (name, secret_hash) VALUES ('raw', md5(random()::text))"
        " RETURNING id"
    ).fetchone()
    assert org is not None
    return [
        int(row[0])
        for row in conn.execute(
            "INSERT INTO instances (organization_id, name, token_hash, configuration, client_id,"
            " poller, events_enabled, disabled, valid, refresh_interval_minutes, next_poll_at)"
            " SELECT %s, 'i' || g, md5(random()::text), '{}', '', '{}', true,"
            " false, true, 1, now() - interval '1 second' FROM generate_series(1, %s) g"
            " RETURNING id",
            (org[0], count),
        ).fetchall()
    ]


def schedule_quarantines(client: redis.Redis) -> float:
    raw = client.hgetall(metrics.QUARANTINES.key)
    for sample in metrics.metric_family(metrics.QUARANTINES, raw).samples:
        if sample.labels == {"cause": "schedule"}:
            return float(sample.value)
    return 0.0


def test_a_failed_send_ends_the_tick_and_its_quarantines_still_count(
    service_urls: ServiceUrls, engine: Engine, sync_redis: redis.Redis
) -> None:
    with psycopg.connect(service_urls.database_url, autocommit=True) as conn:
        healthy, poisoned = insert_due_instances(conn, 2)
        conn.execute(
            "UPDATE instances SET refresh_interval_minutes = 'NaN' WHERE id = %s", (poisoned,)
        )
    before = schedule_quarantines(sync_redis)
    attempts: list[list[int]] = []

    def broker_down(polls: Sequence[Claimed]) -> None:
        attempts.append([c.instance_id for c in polls])
        raise ConnectionError("broker down")

    assert dispatch_due(engine, broker_down, sync_redis) == 0
    assert len(attempts) == 1  # the tick stopped at the first failed send
    assert healthy in attempts[0]
    assert schedule_quarantines(sync_redis) == before + 1


def utcnow_db(conn: psycopg.Connection[Any]) -> Any:
    """The database's clock, so "due" agrees with the rows written with now()."""
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def test_the_claim_uses_the_due_index(engine: Engine) -> None:
    """The claim's predicate must imply the partial index's, or every tick scans the table."""
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            str(row[0])
            for row in conn.execute(
                text(f"EXPLAIN {CLAIM.text}"),
                {
                    "now": "2026-12-01T00:00:00Z",
                    "batch": 10,
                    "slot_min": "0001-01-02T00:00:00Z",
                    "slot_max": "9999-12-30T00:00:00Z",
                },
            )
        )
    assert "ix_instances_due" in plan, plan


async def poll_round(h: Harness, ids: Sequence[int]) -> dict[int, PollOutcome]:
    """One worker batch, as ``poll.instances`` runs it."""
    outcomes = await run_polls(h.deps, [(i, None) for i in ids], asyncio.Semaphore(4))
    return {o.instance_id: o for o in outcomes}


async def test_an_instance_whose_polls_keep_crashing_is_quarantined_and_neighbours_poll(
    harness: Harness,
) -> None:
    crashing = await harness.create_instance(contacts_config())
    neighbour = await harness.create_instance(contacts_config())  # harness.account is its
    # A stored configuration from before the page-size bound existed: loading it crashes
    # the poll (ConfigError) every time, before anything is fetched.
    sql(
        harness,
        "UPDATE instances SET poller = jsonb_set(poller, '{contacts,pageSize}', '5000')"
        " WHERE id = %s",
        crashing,
    )
    counted = await metric(harness, 'pollinator_quarantines_total{cause="crash"}')
    seen = 0
    for n in range(1, QUARANTINE_AFTER_CRASHES + 1):
        await harness.write("contacts", given_name=f"n{n}")
        outcomes = await poll_round(harness, [crashing, neighbour])
        crash = outcomes[crashing].crash
        assert crash is not None
        assert crash.startswith("ConfigError")
        assert not outcomes[neighbour].failed
        seen += outcomes[neighbour].events
        at, _, crashes = quarantine_of(harness, crashing)
        assert crashes == n
        assert (at is not None) == (n == QUARANTINE_AFTER_CRASHES)
    assert seen == QUARANTINE_AFTER_CRASHES

    _, reason, _ = quarantine_of(harness, crashing)
    assert reason is not None
    assert "ConfigError: event.poller.configuration.contacts.pageSize" in reason
    [state] = await polling(harness, crashing)
    assert state["lastError"].startswith(f"quarantined: polls crashed {QUARANTINE_AFTER_CRASHES}")
    assert await metric(harness, 'pollinator_quarantines_total{cause="crash"}') == counted + 1

    # Quarantined: a poll message still in flight skips it; the neighbour goes on.
    await harness.write("contacts", given_name="after")
    outcomes = await poll_round(harness, [crashing, neighbour])
    assert outcomes[crashing].skipped
    assert outcomes[neighbour].events == 1


async def test_crashes_count_only_in_a_row_and_never_for_shared_failures(
    harness: Harness,
) -> None:
    flaky = await harness.create_instance(contacts_config())
    undecryptable = await harness.create_instance(contacts_config())
    page_size = "'{contacts,pageSize}'"
    for _ in range(QUARANTINE_AFTER_CRASHES - 1):
        sql(
            harness,
            f"UPDATE instances SET poller = jsonb_set(poller, {page_size}, '5000') WHERE id = %s",
            flaky,
        )
        await poll_round(harness, [flaky])
        # Repaired in between: a poll that runs to the end resets the count.
        sql(
            harness,
            f"UPDATE instances SET poller = jsonb_set(poller, {page_size}, '100') WHERE id = %s",
            flaky,
        )
        assert (await poll_round(harness, [flaky]))[flaky].failed is False
        assert quarantine_of(harness, flaky)[1:] == (None, 0)
    # Secrets this worker cannot decrypt mean a wrong POLLINATOR_SECRET_KEY as often as a
    # bad row; counting them would quarantine every instance such a worker touches.
    sql(harness, "UPDATE instances SET tokens = 'not a fernet token' WHERE id = %s", undecryptable)
    for _ in range(QUARANTINE_AFTER_CRASHES + 1):
        crash = (await poll_round(harness, [undecryptable]))[undecryptable].crash
        assert crash is not None
        assert crash.startswith("DecryptionError")
    assert quarantine_of(harness, undecryptable) == (None, None, 0)
