"""The bodies of the Celery messages Pollinator sends, encoded and decoded in one place.

A ``poll.instances`` message carries one argument, a list of :class:`PollOrder` (from
beat); a ``delivery.batch`` message one list of :class:`DeliveryTicket` (from the poll
worker, the sweeper and replay jobs). Each item travels as a JSON object with named
keys, so a message read in Flower or in the broker says what it is::

    poll.instances   [{"instance": 42, "due": "2026-11-27T10:00:00+00:00"}, ...]
    delivery.batch   [{"delivery": "<uuid>", "ticket": "2026-11-27T10:00:45+00:00"}, ...]

Rolling upgrades: messages queued by the previous release are positional pairs
(``[42, "<iso>"]``, ``["<uuid>", "<iso>"]``) and still decode. A previous-release
worker cannot read the named shape, so upgrade workers before beat (a poll message it
refused costs that instance one interval; a delivery is re-sent by the sweeper).

Decoding is strict: anything else is a :class:`MessageError` naming the task, the item
and what is wrong with it, never a bare ``KeyError`` from deep inside a task. Keys a
later release adds are ignored, so a newer sender does not break an older reader.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workers.queues import DELIVERY_BATCH, POLL_INSTANCES


class MessageError(ValueError):
    """A task message that is not what its task reads; the text says where and why."""


@dataclass(frozen=True, slots=True)
class PollOrder:
    """Poll one instance now; ``due`` is the slot it was scheduled for (schedule lag)."""

    instance_id: int
    due: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryTicket:
    """Send one delivery; ``ticket`` is the lease it was enqueued under (a stale one is a
    no-op, so a delivery re-enqueued by the sweeper is never sent twice at once)."""

    delivery_id: uuid.UUID
    ticket: datetime | None


def encode_polls(orders: Iterable[PollOrder]) -> list[dict[str, Any]]:
    return [{"instance": o.instance_id, "due": _encode_time(o.due)} for o in orders]


def decode_polls(body: object) -> list[PollOrder]:
    """The orders of a ``poll.instances`` message (named or positional items)."""
    return [
        PollOrder(_instance_id(instance, where), _decode_time(due, where, "due"))
        for where, (instance, due) in _items(body, POLL_INSTANCES, ("instance", "due"))
    ]


def encode_deliveries(tickets: Iterable[DeliveryTicket]) -> list[dict[str, Any]]:
    return [{"delivery": str(t.delivery_id), "ticket": _encode_time(t.ticket)} for t in tickets]


def decode_deliveries(body: object) -> list[DeliveryTicket]:
    """The tickets of a ``delivery.batch`` message (named or positional items)."""
    return [
        DeliveryTicket(_delivery_id(delivery, where), _decode_time(ticket, where, "ticket"))
        for where, (delivery, ticket) in _items(body, DELIVERY_BATCH, ("delivery", "ticket"))
    ]


def _items(
    body: object, task: str, names: tuple[str, str]
) -> Iterable[tuple[str, tuple[object, object]]]:
    """Each item as ``(where, (first, second))``, from an object or a positional pair."""
    if not isinstance(body, list):
        raise MessageError(f"{task}: the message must be a list of items, got {_kind(body)}")
    for index, item in enumerate(body):
        where = f"{task} item {index}"
        if isinstance(item, dict):
            missing = [name for name in names if name not in item]
            if missing:
                raise MessageError(f"{where}: missing {', '.join(map(repr, missing))}")
            yield where, (item[names[0]], item[names[1]])
        elif isinstance(item, list | tuple) and len(item) == 2:  # before the named shape
            yield where, (item[0], item[1])
        else:
            raise MessageError(
                f"{where}: must be an object with {names[0]!r} and {names[1]!r}, got {_kind(item)}"
            )


def _instance_id(value: object, where: str) -> int:
    # bool is an int to Python; a JSON true is no instance id.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise MessageError(f"{where}: 'instance' must be a positive integer, got {_kind(value)}")


def _delivery_id(value: object, where: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise MessageError(f"{where}: 'delivery' must be a UUID string, got {_kind(value)}")


def _encode_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _decode_time(value: object, where: str, name: str) -> datetime | None:
    """An aware ISO-8601 time; ``None`` (and, from older senders, ``""``) for none."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    raise MessageError(
        f"{where}: {name!r} must be an ISO-8601 time with an offset, got {_kind(value)}"
    )


def _kind(value: object) -> str:
    """A short description of a bad value (bounded: a message may carry anything)."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
