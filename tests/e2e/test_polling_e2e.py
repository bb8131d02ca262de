"""Real processes end to end: what arrives at the callback equals the simulator's change log."""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import pytest
import redis

from app import keys
from tests.conftest import ServiceUrls
from tests.e2e.conftest import Stack, wait_for

TS = "${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}"
KEAP = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"


def orders_config(page_size: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "orders": {
            "url": f"/orders?since={TS}&order=id",
            "idField": "id",
            "pageSize": page_size,
            "datesConfiguration": {
                "updatedDateField": "modification_date",
                "updatedDateFormat": KEAP,
                "createdDateField": "creation_date",
                "createdDateFormat": KEAP,
            },
            **extra,
        }
    }


def contacts_config(page_size: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "contacts": {
            "url": f"/contacts?since={TS}&order=id",
            "idField": "id",
            "pageSize": page_size,
            "datesConfiguration": {
                "updatedDateField": "last_updated_utc_millis",
                "updatedDateFormat": "milliseconds",
                "createdDateField": "date_created",
                "createdDateFormat": KEAP,
            },
            "createdCheckTolerance": 1,
            **extra,
        }
    }


def keys_of(records: list[dict[str, Any]], resource: str, kind: str) -> set[tuple[str, str, str]]:
    return {(resource, str(r["id"]), kind) for r in records}


def test_creates_and_updates_across_resources(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance()  # Keap's default configuration: seven resources
    contacts = [tenant.write("contacts", given_name=f"c{i}") for i in range(3)]
    orders = [tenant.write("orders", title=f"o{i}") for i in range(2)]
    tasks = [tenant.write("tasks", title="t")]
    opportunities = [tenant.write("opportunities", opportunity_title="deal")]
    created = (
        keys_of(contacts, "contacts", "CREATED")
        | keys_of(orders, "orders", "CREATED")
        | keys_of(tasks, "tasks", "CREATED")
        | keys_of(opportunities, "opportunities", "CREATED")
    )
    tenant.wait_received(created)
    time.sleep(1.1)  # Keap renders most dates to the second
    tenant.update("contacts", contacts[0]["id"], given_name="changed")
    tenant.update("orders", orders[1]["id"], title="changed")
    updated = {
        ("contacts", str(contacts[0]["id"]), "UPDATED"),
        ("orders", str(orders[1]["id"]), "UPDATED"),
    }
    tenant.assert_exactly(created | updated)
    # The callbacks are signed, ≤ 10 events, and carry the raw records of those events.
    for request in tenant.callbacks():
        body = json.loads(request["body"])["message"]
        assert len(body["events"]) <= 10
        assert request["headers"]["webhook-id"] == body["eventId"]
        assert request["headers"]["Elements-Webhook-Signature"].startswith("sha256=")
        raw_ids = {str(r["id"]) for records in body["raw"].values() for r in records}
        assert raw_ids == {e["objectId"] for e in body["events"]}


def test_fifty_records_sharing_one_timestamp_across_pages(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(orders_config(page_size=7))
    orders = [tenant.write("orders", title=f"o{i}") for i in range(50)]
    tenant.assert_exactly(keys_of(orders, "orders", "CREATED"))


def test_updates_and_deletes_while_a_multi_page_poll_runs(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config(page_size=5))
    contacts = [tenant.write("contacts", given_name=f"c{i}") for i in range(40)]
    tenant.wait_received(keys_of(contacts, "contacts", "CREATED"))
    # Keep writing (updates and deletes) while polls walk 8+ pages every 1.2 s.
    deleted = set()
    updated = set()
    for i in range(0, 40, 3):
        tenant.update("contacts", contacts[i]["id"], given_name=f"u{i}")
        updated.add(("contacts", str(contacts[i]["id"]), "UPDATED"))
        if i + 1 < 40:
            tenant.delete("contacts", contacts[i + 1]["id"])
            deleted.add(str(contacts[i + 1]["id"]))
        time.sleep(0.15)
    expected = keys_of(contacts, "contacts", "CREATED") | updated
    tenant.wait_received(expected)
    received = tenant.received()
    assert set(received) == expected
    assert len(received) == len(set(received))


def test_expired_token_throttling_and_faults_are_weather(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config())
    first = [tenant.write("contacts", given_name="a")]
    tenant.fault("expire_tokens", 1)
    tenant.wait_received(keys_of(first, "contacts", "CREATED"))
    tenant.fault("throttle", 4, probability=0.7)
    second = [tenant.write("contacts", given_name=f"b{i}") for i in range(3)]
    tenant.wait_received(keys_of(first + second, "contacts", "CREATED"))
    tenant.fault("error500", 3)
    third = [tenant.write("contacts", given_name="c")]
    time.sleep(1.5)
    tenant.fault("malformed", 3)
    fourth = [tenant.write("contacts", given_name="d")]
    tenant.assert_exactly(keys_of(first + second + third + fourth, "contacts", "CREATED"))
    status, states = tenant.api("GET", f"/instances/{tenant.instance_id}/polling")
    assert status == 200
    assert states[0]["resource"] == "contacts"
    assert states[0]["consecutiveFailures"] == 0


def test_redis_flushed_between_polls(stack: Stack, service_urls: ServiceUrls) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config())
    first = [tenant.write("contacts", given_name=f"a{i}") for i in range(4)]
    tenant.wait_received(keys_of(first, "contacts", "CREATED"))
    client = redis.Redis.from_url(service_urls.redis_url)
    client.delete(keys.watermark(tenant.instance_id, "contacts"))
    client.close()
    second = [tenant.write("contacts", given_name=f"b{i}") for i in range(2)]
    tenant.assert_exactly(keys_of(first + second, "contacts", "CREATED"))


def _redis(service_urls: ServiceUrls) -> redis.Redis:
    return redis.Redis.from_url(service_urls.redis_url)


@pytest.mark.timeout(300)
def test_poll_worker_killed_mid_poll(stack: Stack, service_urls: ServiceUrls) -> None:
    """SIGKILL the poll worker while the poll that carries every record holds its lease.

    The records are written while no poll worker runs, and the provider is slowed to
    0.8 s a page (12 records, 3 a page: ~5 s a poll); so the first poll after the worker
    starts has all of them in hand, and nothing was delivered before it. It is killed two
    seconds into its fetch, and its lease, taken before and still held after the kill,
    proves the kill hit that one poll mid-flight (a finished poll gives its lease back).
    """
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config(page_size=3))
    client = _redis(service_urls)
    lock = keys.poll_lock(tenant.instance_id)
    try:
        stack.stop("worker-poll")  # graceful: its polls finish, nothing is half done
        records = [tenant.write("contacts", given_name=f"k{i}") for i in range(12)]
        tenant.fault("slow", 120, delaySeconds=0.8)
        stack.start("worker-poll", "worker", "--queues", "poll")
        holder = wait_for(lambda: client.get(lock), 90, interval=0.05, what="a poll lease")
        # Past its first slow page (0.8 s) and into the next ones, same poll all along.
        held_since = time.monotonic()
        wait_for(
            lambda: client.get(lock) != holder or time.monotonic() - held_since > 2.0,
            30,
            interval=0.05,
            what="the poll two seconds into its fetch",
        )
        stack.stop("worker-poll", signal.SIGKILL)
        assert client.get(lock) == holder, "the poll had finished before the kill"
        assert tenant.received() == []
        stack.sim(lambda sim: sim.clear_faults())
        stack.start("worker-poll", "worker", "--queues", "poll")
        expected = keys_of(records, "contacts", "CREATED")
        tenant.wait_received(expected, timeout=90)  # once the dead poll's 30 s lease ends
        tenant.assert_exactly(expected)
    finally:
        client.close()
        if "worker-poll" not in stack.procs:  # the next tests need a poll worker
            stack.start("worker-poll", "worker", "--queues", "poll")


@pytest.mark.timeout(300)
def test_two_beats_do_not_double_schedule_and_the_standby_takes_over(
    stack: Stack, service_urls: ServiceUrls
) -> None:
    """A second beat runs beside the leader and schedules nothing; when the leader is
    killed it takes the lead and polls go on, every event still delivered once."""
    client = _redis(service_urls)
    standby = stack.start("beat-2", "beat")
    try:
        member = f"{socket.gethostname()}:{standby.pid}"
        # Alive and ticking (it announces itself every tick), not crashed.
        wait_for(
            lambda: client.zscore(keys.alive("beat"), member) is not None,
            60,
            what="the second beat announcing itself",
        )
        tenant = stack.new_tenant()
        tenant.create_instance(contacts_config())
        records = [tenant.write("contacts", given_name=f"b{i}") for i in range(3)]
        tenant.assert_exactly(keys_of(records, "contacts", "CREATED"))
        assert standby.alive(), stack.log("beat-2")
        assert "scheduled" in stack.log("beat")
        assert "scheduled" not in stack.log("beat-2")
        assert "leading" not in stack.log("beat-2")
        # Failover: the leader dies without giving the lock back.
        stack.stop("beat", signal.SIGKILL)
        wait_for(
            lambda: "leading: this beat schedules" in stack.log("beat-2"),
            60,
            what="the standby taking the lead",
        )
        more = [tenant.write("contacts", given_name=f"c{i}") for i in range(3)]
        tenant.assert_exactly(keys_of(records + more, "contacts", "CREATED"))
        assert "scheduled" in stack.log("beat-2")
    finally:
        client.close()
        stack.stop("beat-2")
        if "beat" not in stack.procs:
            stack.start("beat", "beat")
