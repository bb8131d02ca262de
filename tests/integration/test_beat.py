"""Beat's claim and leader lock against real PostgreSQL and Redis: two schedulers racing
on the same due rows claim each row once, a standby takes over when the leader stops, and
a poll-now wakes the leader between ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, create_engine, event

from app.db import libpq_url, sync_url
from app.store import schedule
from app.store import wakeups as wakeups_module
from app.store.wakeups import DueWakeups
from tests.conftest import ServiceUrls
from tests.integration import test_polling
from tests.integration.test_polling import Harness, contacts_config
from workers import beat
from workers.beat import Claim, Claimed, LeaderLock, claim_due, dispatch_due

harness = test_polling.harness
BASE = test_polling.BASE
WAIT_S = 20.0  # generous: how long one claimer waits for the other on a loaded machine


@pytest.fixture
def engines(service_urls: ServiceUrls) -> Iterator[tuple[Engine, Engine]]:
    """Two beats' engines (each its own connections, as two processes would have)."""
    pair = (
        create_engine(sync_url(service_urls.database_url), pool_size=1),
        create_engine(sync_url(service_urls.database_url), pool_size=1),
    )
    yield pair
    for engine in pair:
        engine.dispose()


def _make_due(database_url: str, ids: list[int]) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE instances SET next_poll_at = now() - interval '1 second' WHERE id = ANY(%s)",
            (ids,),
        )


def _claim_all(engine: Engine, batch: int) -> list[Claim]:
    claims = []
    while True:
        claim = claim_due(engine, _db_now(engine), batch)
        claims.append(claim)
        if claim.rows < batch:
            return claims


def _db_now(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT now()").scalar_one()


async def test_two_claimers_racing_on_the_same_due_rows_claim_each_row_once(
    harness: Harness, engines: tuple[Engine, Engine]
) -> None:
    """Beat A claims a batch and, holding its transaction open, lets beat B claim: B must
    neither wait for A nor take A's rows; together they claim every due row once."""
    ids = [await harness.create_instance(contacts_config()) for _ in range(24)]
    _make_due(harness.database_url, ids)
    first, second = engines
    a_selected = threading.Event()
    b_done = threading.Event()

    @event.listens_for(first, "after_cursor_execute")
    def hold_the_claim(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "next_poll_at <= " in statement and not a_selected.is_set():
            a_selected.set()  # A holds its rows' locks until B is done
            b_done.wait(WAIT_S)

    results: dict[str, list[Claim]] = {}
    b_waited_s: list[float] = []

    def run_a() -> None:
        results["a"] = [claim_due(first, _db_now(first), 8)]

    def run_b() -> None:
        assert a_selected.wait(WAIT_S)
        started = time.monotonic()
        results["b"] = _claim_all(second, 5)
        b_waited_s.append(time.monotonic() - started)
        b_done.set()

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)
    a_ids = [c.instance_id for claim in results["a"] for c in claim.polls]
    b_ids = [c.instance_id for claim in results["b"] for c in claim.polls]
    assert len(a_ids) == 8
    assert set(a_ids).isdisjoint(b_ids), "a row was claimed by both"
    assert len(a_ids + b_ids) == len(set(a_ids + b_ids))
    assert set(ids) <= set(a_ids) | set(b_ids)
    # B skipped A's locked rows instead of queueing behind them.
    assert b_waited_s
    assert b_waited_s[0] < WAIT_S / 2
    # Nothing is claimed again until its next slot.
    assert not set(ids) & {c.instance_id for c in claim_due(first, _db_now(first)).polls}


async def test_a_tick_claims_a_small_batch_first_then_doubles_until_one_comes_back_short(
    harness: Harness, engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many instances due at once: the first polls go out after a small claim, and the
    tick still claims every due row once, in batches growing up to the cap."""
    monkeypatch.setattr(beat, "FIRST_CLAIM", 2)
    monkeypatch.setattr(beat, "CLAIM_BATCH", 8)
    ids = [await harness.create_instance(contacts_config()) for _ in range(17)]
    _make_due(harness.database_url, ids)
    sends: list[list[Claimed]] = []

    sent = dispatch_due(engines[0], lambda polls: sends.append(list(polls)))

    sizes = [len(polls) for polls in sends]
    assert sizes[:3] == [2, 4, 8]  # then 8s (the cap) until one comes back short
    assert all(size == 8 for size in sizes[2:-1])
    assert sizes[-1] < 8
    claimed = [c.instance_id for polls in sends for c in polls]
    assert sent == len(claimed) == len(set(claimed))
    assert set(ids) <= set(claimed)


def test_a_standby_takes_the_lead_when_the_leader_stops(service_urls: ServiceUrls) -> None:
    key = "pollinator:lock:beat:test-failover"
    ttl_ms = 2000  # renewals every 0.2 s: a stall of 1.8 s would be needed to lose it
    clients = [redis.Redis.from_url(service_urls.redis_url) for _ in range(2)]
    try:
        clients[0].delete(key)
        leader, standby = (LeaderLock(c, key, ttl_ms) for c in clients)
        assert leader.ensure()
        # While the leader renews, well past one TTL, the standby never gets the lead.
        renewed_until = time.monotonic() + 1.5 * ttl_ms / 1000
        while time.monotonic() < renewed_until:
            assert leader.ensure()
            assert not standby.ensure()
            time.sleep(0.2)
        # The leader stops renewing (it died): the standby takes over once the lease ends.
        stopped = time.monotonic()
        deadline = stopped + 30
        while not standby.ensure():
            assert time.monotonic() < deadline, "the standby never took the lead"
            time.sleep(0.05)
        assert time.monotonic() - stopped >= ttl_ms / 1000 * 0.5  # not before the lease ran out
        # The old leader, back from a pause, finds it lost the lead and stands by.
        assert not leader.ensure()
        assert standby.ensure()
    finally:
        clients[0].delete(key)
        for client in clients:
            client.close()


async def test_poll_now_wakes_the_listening_leader(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's poll-now notifies beat's channel when it commits; a beat waiting for its
    next tick wakes, one wake answers every notification that came with it, and wakes come
    no more often than the gap allows."""
    monkeypatch.setattr(wakeups_module, "MIN_WAKE_GAP_S", 1.0)
    instance_id = await harness.create_instance(contacts_config())
    wakeups = DueWakeups(libpq_url(harness.database_url))
    try:
        assert not wakeups.wait(0.01)  # listening from here on; nothing happened yet
        for _ in range(3):
            resp = await harness.api.post(
                f"{BASE}/instances/{instance_id}/polling/run", headers=harness.headers
            )
            assert resp.status == 202, await resp.text()
        started = time.monotonic()
        assert wakeups.wait(WAIT_S)
        assert time.monotonic() - started < WAIT_S
        assert not wakeups.wait(0.05)  # the other two were answered by the same wake
        resp = await harness.api.post(
            f"{BASE}/instances/{instance_id}/polling/run", headers=harness.headers
        )
        assert resp.status == 202
        started = time.monotonic()
        assert wakeups.wait(WAIT_S)  # woken again, but not before the gap since the last wake
        assert time.monotonic() - started >= 0.5
    finally:
        wakeups.close()


def test_beat_ticks_without_the_listener_when_it_cannot_listen(
    service_urls: ServiceUrls, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listening connection that fails or cannot be made costs the early wake only: the
    wait still lasts until the tick, and the listener comes back once PostgreSQL does."""
    monkeypatch.setattr(wakeups_module, "RELISTEN_AFTER_S", 0.0)
    caplog.set_level(logging.WARNING, logger=wakeups_module.__name__)
    unreachable = DueWakeups("postgresql://postgres@127.0.0.1:1/none")
    assert not unreachable.wait(0.05)
    assert "cannot listen for poll-now" in caplog.text
    wakeups = DueWakeups(libpq_url(service_urls.database_url))
    try:
        assert not wakeups.wait(0.01)
        assert wakeups._conn is not None
        pid = wakeups._conn.info.backend_pid
        with psycopg.connect(libpq_url(service_urls.database_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            started = time.monotonic()
            assert not wakeups.wait(0.5)  # the connection died: no wake, but a full wait
            assert time.monotonic() - started >= 0.45
            assert "listening for poll-now failed" in caplog.text
            assert not wakeups.wait(0.01)  # listening again on a new connection
            admin.execute(f"NOTIFY {schedule.DUE_CHANNEL}")
            assert wakeups.wait(WAIT_S)
    finally:
        wakeups.close()
