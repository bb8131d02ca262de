"""What Flower receives: one ``poll.instance`` / ``delivery.send`` task per unit, on a real broker.

The events are read back with Celery's own event receiver (what Flower runs), so
the test sees exactly the task rows an SRE will see: one per poll naming its
instance, FAILURE with the error class and message when the poll failed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery

from app.services.delivery import AttemptResult, DeliveryOutcome, Outcome
from app.services.polling import PollOutcome, ResourceOutcome
from tests.conftest import ServiceUrls
from workers.taskview import TaskView


@pytest.fixture
def celery_app(service_urls: ServiceUrls) -> Iterator[Celery]:
    app = Celery("taskview-test", broker=service_urls.redis_url, set_as_current=False)
    yield app
    app.close()


def _collect(app: Celery, want: int) -> tuple[list[dict[str, Any]], threading.Event]:
    """Start an event receiver (as Flower does); returns the list it fills and 'ready'."""
    events: list[dict[str, Any]] = []
    ready = threading.Event()

    def run() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            ready.set()
            deadline = time.monotonic() + 30
            for _ in receiver.itercapture(limit=None, timeout=1.0, wakeup=False):
                if len(events) >= want or time.monotonic() > deadline:
                    break

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    time.sleep(0.5)  # the receiver's queue is bound once it consumes
    return events, ready


def _by_task(events: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    tasks: dict[str, dict[str, dict[str, Any]]] = {}
    for e in events:
        if str(e.get("type", "")).startswith("task-"):
            tasks.setdefault(e["uuid"], {})[e["type"]] = e
    return tasks


def _wait(events: list[dict[str, Any]], n: int) -> None:
    deadline = time.monotonic() + 20
    while len([e for e in events if str(e.get("type", "")).startswith("task-")]) < n:
        assert time.monotonic() < deadline, f"only {len(events)} events arrived"
        time.sleep(0.1)


def test_each_poll_is_one_task_and_a_failed_poll_is_a_failure(celery_app: Celery) -> None:
    now = datetime.now(UTC)
    ok = PollOutcome(41, resources=[ResourceOutcome("contacts", requests=2)], events=3)
    ok.started_at = ok.finished_at = now
    bad = PollOutcome(42, resources=[ResourceOutcome("orders", error="http_500: upstream 500")])
    bad.started_at = bad.finished_at = now
    crashed = PollOutcome(43, skipped=True, crash="ConfigError: contacts.pageSize: too big")
    busy = PollOutcome(44, skipped=True, busy=True)
    events, _ = _collect(celery_app, 12)
    TaskView(celery_app, "poll-1@host").polls(
        [ok, bad, crashed, busy], {41: now.isoformat(), 42: None, 43: None, 44: None}
    )
    _wait(events, 12)
    tasks = {t["task-received"]["args"]: t for t in _by_task(events).values()}
    assert set(tasks) == {"[41]", "[42]", "[43]", "[44]"}
    assert all(t["task-received"]["name"] == "poll.instance" for t in tasks.values())
    assert all(t["task-received"]["hostname"] == "poll-1@host" for t in tasks.values())
    assert "'events': 3" in tasks["[41]"]["task-succeeded"]["result"]
    assert now.isoformat() in tasks["[41]"]["task-received"]["kwargs"]
    failed = tasks["[42]"]["task-failed"]["exception"]
    assert failed.startswith("PollFailed(")
    assert "orders: http_500: upstream 500" in failed
    assert tasks["[43]"]["task-failed"]["exception"].startswith("PollCrashed('ConfigError")
    assert "lease" in tasks["[44]"]["task-succeeded"]["result"]


def test_each_delivery_attempt_is_one_task_with_its_outcome(celery_app: Celery) -> None:
    t = time.time()
    sent = DeliveryOutcome(
        uuid.uuid4(), Outcome.DELIVERED, t, t + 0.05, 7,
        AttemptResult(200, 50, None, None, "ok", None),
    )  # fmt: skip
    refused = DeliveryOutcome(
        uuid.uuid4(), Outcome.RETRY, t, t + 0.02, 7,
        AttemptResult(503, 20, "http", "HTTP 503", "busy", None),
    )  # fmt: skip
    deferred = DeliveryOutcome(uuid.uuid4(), Outcome.DEFERRED, t, t, 7)  # no attempt: no row
    events, _ = _collect(celery_app, 6)
    TaskView(celery_app, "delivery-1@host").deliveries([sent, refused, deferred])
    _wait(events, 6)
    tasks = {t["task-received"]["args"]: t for t in _by_task(events).values()}
    assert set(tasks) == {f"['{sent.delivery_id}']", f"['{refused.delivery_id}']"}
    assert tasks[f"['{sent.delivery_id}']"]["task-succeeded"]["result"] == "HTTP 200 in 50 ms"
    failure = tasks[f"['{refused.delivery_id}']"]["task-failed"]["exception"]
    assert "HTTP 503" in failure
    assert "retry scheduled" in failure


def test_a_broker_that_is_down_costs_the_events_not_the_poll() -> None:
    app = Celery("down", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_connection_timeout = 1
    app.conf.broker_connection_retry = False
    outcome = PollOutcome(1, skipped=True, busy=True)
    view = TaskView(app, "poll-1@host")
    view.polls([outcome], {1: None})  # must not raise
    assert view._dispatcher is None  # dropped, not left buffering: the next batch reconnects
    app.close()
