"""Delivery with real processes: receivers down, failing, gone or hanging; a killed worker."""

from __future__ import annotations

import collections
import json
import signal
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from app.embedded import free_port
from tests.conftest import ServiceUrls
from tests.e2e.conftest import Stack, Tenant, http_json, is_up, start_stack, wait_for
from tests.e2e.test_polling_e2e import contacts_config


@pytest.fixture(scope="module")
def stack(service_urls: ServiceUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(
        service_urls,
        tmp_path_factory.mktemp("delivery"),
        extra_env={
            "POLLINATOR_DELIVERY_RETRY_SCHEDULE": "1,1,1",
            "POLLINATOR_DELIVERY_LEASE_SECONDS": "20",
        },
    )
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture(autouse=True)
def _healthy_sink(stack: Stack) -> Iterator[None]:
    yield
    http_json("POST", f"{stack.sink_url}/_sink/behaviour", {"status": 200})


def behave(stack: Stack, **behaviour: Any) -> None:
    status, _ = http_json("POST", f"{stack.sink_url}/_sink/behaviour", behaviour)
    assert status == 200


def deliveries(tenant: Tenant, status: str | None = None) -> list[dict[str, Any]]:
    query = f"?status={status}" if status else ""
    code, data = tenant.api("GET", f"/instances/{tenant.instance_id}/deliveries{query}")
    assert code == 200, data
    return list(data)


def test_receiver_down_for_the_first_attempts(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config())
    behave(stack, status=503, count=3)
    record = tenant.write("contacts", given_name="late")
    expected = {("contacts", str(record["id"]), "CREATED")}
    tenant.wait_received(expected)
    [delivery] = wait_for(lambda: deliveries(tenant, "delivered"), 20, what="delivered")
    assert [a["statusCode"] for a in delivery["attempts"]] == [503, 503, 503, 200]
    assert all(a["durationMs"] >= 0 for a in delivery["attempts"])
    assert delivery["attempts"][0]["responseBody"]


def test_failing_forever_then_failed_then_redelivered_through_the_api(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config())
    behave(stack, status=500)
    record = tenant.write("contacts", given_name="stubborn")
    [failed] = wait_for(lambda: deliveries(tenant, "failed"), 30, what="failed delivery")
    assert len(failed["attempts"]) == 4  # the first try and three retries of "1,1,1"
    assert failed["nextAttemptAt"] is None
    code, events = tenant.api("GET", f"/instances/{tenant.instance_id}/events")
    assert code == 200
    assert events[0]["deliveryStatus"] == "failed"
    behave(stack, status=200)
    code, body = tenant.api(
        "POST", f"/instances/{tenant.instance_id}/deliveries/retry?status=failed"
    )
    assert code == 202
    assert body == {"count": 1}
    wait_for(lambda: deliveries(tenant, "delivered"), 20, what="redelivery")
    ok = [r for r in tenant.callbacks() if r["status"] == 200]
    assert len(ok) == 1
    assert json.loads(ok[0]["body"])["message"]["events"][0]["objectId"] == str(record["id"])


def test_gone_disables_events(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config())
    behave(stack, status=410)
    tenant.write("contacts", given_name="gone")

    def disabled() -> bool:
        return tenant.api("GET", f"/instances/{tenant.instance_id}")[1]["eventsEnabled"] is False

    wait_for(disabled, 20, what="events disabled")
    assert deliveries(tenant)[0]["status"] == "failed"


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def test_a_hanging_receiver_does_not_delay_other_instances(stack: Stack) -> None:
    """While a receiver holds every POST sent to it open, another instance's callbacks
    still arrive, before any of the hanging POSTs has even timed out (15 s): they did not
    wait for a delivery slot. At most 8 POSTs hang at once (the per-origin cap); the rest
    of that receiver's deliveries wait, pending, without spending attempts.

    This compares events, not durations: no baseline latency, no wall-clock margin.
    """
    healthy = stack.new_tenant()
    healthy.create_instance(contacts_config())
    hang_port = free_port()
    hang_url = f"http://127.0.0.1:{hang_port}"
    stack.start("sink-hang", "sink", "--port", str(hang_port), "--delay-seconds", "60")
    try:
        wait_for(lambda: is_up(f"{hang_url}/_sink/requests"), 30)

        def hanging_posts() -> list[dict[str, Any]]:
            status, data = http_json("GET", f"{hang_url}/_sink/requests")
            assert status == 200
            return list(data if isinstance(data, list) else data.get("requests", []))

        hanging = stack.new_tenant()
        hanging.create_instance(
            contacts_config(),
            **{"event.notification.callback.url": f"{hang_url}/events"},
        )
        # 200 changes: ~20 deliveries, more than the worker's 16 slots, all to the hanging URL.
        for i in range(200):
            hanging.write("contacts", given_name=f"h{i}")
        wait_for(lambda: len(hanging_posts()) >= 8, 60, what="POSTs hanging at the receiver")
        records = [healthy.write("contacts", given_name=f"l{i}") for i in range(3)]
        healthy.wait_received({("contacts", str(r["id"]), "CREATED") for r in records}, 60)
        arrived = max(_at(r["received_at"]) for r in healthy.callbacks())
        stuck = deliveries(hanging)
        ended = [_at(a["at"]) for d in stuck for a in d["attempts"]]
        assert not ended or arrived < min(ended), "the healthy callback waited for a hang"
        assert len([r for r in hanging_posts() if _at(r["received_at"]) < arrived]) <= 8
        assert stuck
        assert all(d["status"] == "pending" for d in stuck)  # waiting, not failed or dropped
    finally:
        stack.stop("sink-hang")


def test_delivery_worker_killed_mid_post(stack: Stack) -> None:
    tenant = stack.new_tenant()
    tenant.create_instance(contacts_config())
    behave(stack, status=200, delaySeconds=5)
    record = tenant.write("contacts", given_name="kill")
    wait_for(lambda: tenant.callbacks(), 30, what="a POST in flight")
    stack.stop("worker-delivery", signal.SIGKILL)
    behave(stack, status=200)
    stack.start("worker-delivery", "worker", "--queues", "delivery")
    wait_for(lambda: deliveries(tenant, "delivered"), 60, what="completed after the kill")
    ids = collections.Counter(r["headers"]["webhook-id"] for r in tenant.callbacks())
    assert len(ids) == 1
    assert 1 <= next(iter(ids.values())) <= 2  # at most one extra copy, same webhook-id
    assert {e[1] for e in tenant.received()} == {str(record["id"])}
