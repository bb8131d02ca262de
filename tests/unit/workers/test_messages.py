"""The task-message codec (workers/messages.py), from the sender's call to the task's decode.

Both sides run as they do in production: beat's :func:`send_polls` and the workers'
:func:`enqueue_deliveries` hand their messages to a recording Celery app, the bodies go
through kombu's JSON serializer (the broker's), and the tasks' decoders read them back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu.serialization import dumps, loads

from workers.beat import Claimed, send_polls
from workers.messages import (
    DeliveryTicket,
    MessageError,
    PollOrder,
    decode_deliveries,
    decode_polls,
    encode_deliveries,
    encode_polls,
)
from workers.queues import DELIVERY_BATCH, POLL_INSTANCES, TASK_BATCH
from workers.tasks.delivery import enqueue_deliveries

DUE = datetime(2026, 11, 27, 10, 0, 5, 123456, tzinfo=UTC)


class RecordingApp:
    """What the senders use of a Celery app; each message's args as the broker carries them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        yield object()

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        _, _, body = dumps(args, serializer="json")
        self.sent.append((name, loads(body, "application/json", "utf-8"), options))


def test_beats_messages_decode_to_the_polls_it_claimed() -> None:
    count = 2 * TASK_BATCH + 5
    claimed = [Claimed(i, 60.0 + i, DUE + timedelta(seconds=i)) for i in range(1, count + 1)]
    app = RecordingApp()
    send_polls(app, claimed)  # type: ignore[arg-type]
    assert [name for name, _, _ in app.sent] == [POLL_INSTANCES] * 3
    orders = [order for _, args, _ in app.sent for order in decode_polls(args[0])]
    assert sorted(orders, key=lambda o: o.instance_id) == [
        PollOrder(c.instance_id, c.due) for c in claimed
    ]
    assert all(len(args[0]) <= TASK_BATCH for _, args, _ in app.sent)


def test_enqueued_deliveries_decode_to_their_tickets() -> None:
    tickets = [(uuid.uuid4(), DUE + timedelta(seconds=i)) for i in range(TASK_BATCH + 5)]
    app = RecordingApp()
    enqueue_deliveries(app, tickets)  # type: ignore[arg-type]
    assert [name for name, _, _ in app.sent] == [DELIVERY_BATCH] * 2
    decoded = [t for _, args, _ in app.sent for t in decode_deliveries(args[0])]
    assert decoded == [DeliveryTicket(i, at) for i, at in tickets]


def test_nothing_to_send_sends_nothing() -> None:
    app = RecordingApp()
    send_polls(app, [])  # type: ignore[arg-type]
    enqueue_deliveries(app, [])  # type: ignore[arg-type]
    assert app.sent == []


def test_items_are_named_on_the_wire() -> None:
    delivery = uuid.UUID("6f1c7d2e-8a4b-4c3d-9e2f-0a1b2c3d4e5f")
    assert encode_polls([PollOrder(42, DUE), PollOrder(43, None)]) == [
        {"instance": 42, "due": "2026-11-27T10:00:05.123456+00:00"},
        {"instance": 43, "due": None},
    ]
    assert encode_deliveries([DeliveryTicket(delivery, DUE)]) == [
        {"delivery": str(delivery), "ticket": "2026-11-27T10:00:05.123456+00:00"}
    ]


def test_messages_queued_by_the_previous_release_still_decode() -> None:
    """Before the codec: ``[[id, iso or null], ...]`` and ``[[uuid, iso or ""], ...]``."""
    delivery = uuid.uuid4()
    assert decode_polls([[42, DUE.isoformat()], [43, None]]) == [
        PollOrder(42, DUE),
        PollOrder(43, None),
    ]
    assert decode_deliveries([[str(delivery), DUE.isoformat()], [str(delivery), ""]]) == [
        DeliveryTicket(delivery, DUE),
        DeliveryTicket(delivery, None),
    ]


def test_keys_a_later_release_adds_are_ignored() -> None:
    assert decode_polls([{"instance": 7, "due": None, "priority": 1}]) == [PollOrder(7, None)]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"instance": 1}, "poll.instances: the message must be a list of items, got dict"),
        ([{"due": None}], "poll.instances item 0: missing 'instance'"),
        ([[1, None], "7"], "poll.instances item 1: must be an object with 'instance' and 'due'"),
        ([[1, None, 3]], "poll.instances item 0: must be an object"),
        ([{"instance": "7", "due": None}], "item 0: 'instance' must be a positive integer"),
        ([{"instance": True, "due": None}], "'instance' must be a positive integer, got bool"),
        ([{"instance": 0, "due": None}], "'instance' must be a positive integer, got int 0"),
        ([{"instance": 7, "due": "yesterday"}], "'due' must be an ISO-8601 time with an offset"),
        ([{"instance": 7, "due": "2026-11-27T10:00:00"}], "'due' must be an ISO-8601 time"),
        ([{"instance": 7, "due": 1764237600}], "'due' must be an ISO-8601 time"),
    ],
)
def test_a_malformed_poll_message_is_refused_saying_where(body: object, error: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_polls(body)
    assert error in str(info.value)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (None, "delivery.batch: the message must be a list of items, got NoneType"),
        ([{"delivery": "not-a-uuid", "ticket": None}], "'delivery' must be a UUID string"),
        ([[17, DUE.isoformat()]], "item 0: 'delivery' must be a UUID string, got int 17"),
        ([{"delivery": str(uuid.uuid4())}], "delivery.batch item 0: missing 'ticket'"),
    ],
)
def test_a_malformed_delivery_message_is_refused_saying_where(body: object, error: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_deliveries(body)
    assert error in str(info.value)


def test_a_huge_bad_value_is_not_copied_into_the_error() -> None:
    with pytest.raises(MessageError) as info:
        decode_polls([{"instance": "x" * 10_000, "due": None}])
    assert len(str(info.value)) < 200


def test_the_tasks_refuse_a_malformed_message_before_opening_anything() -> None:
    """No runtime exists in this process: a task that decoded after opening it would fail
    on the settings instead of naming the bad item."""
    from workers.tasks.delivery import send_deliveries_task
    from workers.tasks.poll import poll_instances_task

    with pytest.raises(MessageError, match="poll.instances item 0"):
        poll_instances_task.run([["7", None]])
    with pytest.raises(MessageError, match="delivery.batch item 0"):
        send_deliveries_task.run([{"delivery": 7, "ticket": None}])
