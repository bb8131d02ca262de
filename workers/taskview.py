"""What Flower shows: one task per poll and per delivery, though they travel in batches.

Polls and deliveries travel in batches (up to ``TASK_BATCH`` per Celery message), which
keeps the broker and Celery's per-message cost out of the hot path. But the unit an SRE
looks for is *the poll of one instance* and *the delivery of one callback*. So the worker
reports each one to Flower with Celery's own task events — ``poll.instance`` with args
``[instance id]`` and ``delivery.send`` with args ``[delivery id]`` — received, started,
then SUCCESS (with what it did) or FAILURE (with the error class and message). The batch
messages themselves send no task events (workers run without ``-E``), so Flower lists the
units, and beat's two-second ``delivery.sweep`` is not a row at all.

Events are published as Celery's ``task.multi`` batches (one broker message per
:data:`BUFFER_LIMIT` events) at the end of every batch. A broker that cannot take them
costs the events, never the poll.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Final

import orjson
from celery import Celery
from celery.utils.time import utcoffset

from app.services.delivery import DeliveryOutcome, Outcome
from app.services.polling import PollOutcome
from workers.queues import DELIVERY_UNIT, POLL_UNIT, Queue

log = logging.getLogger(__name__)

BUFFER_LIMIT: Final = 150
#: Characters of a unit's args or kwargs shown (an instance may poll 50 resources).
MAX_SHOWN: Final = 1000


def _shown(value: object) -> str:
    """``repr`` cut to :data:`MAX_SHOWN`; not Celery's ``saferepr``, which took half of
    this module's CPU: the values are ours and flat (ids, an ISO date, resource names)."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _poll_result(outcome: PollOutcome) -> tuple[bool, str]:
    """(succeeded, result or exception text) of one poll."""
    if outcome.crash is not None:
        return False, f"PollCrashed({outcome.crash!r})"
    if outcome.skipped:
        why = "another poll holds its lease" if outcome.busy else "gone, off or quarantined"
        return True, f"skipped: {why}"
    failed = [f"{r.resource}: {r.error}" for r in outcome.resources if r.error]
    if failed:
        return False, f"PollFailed({'; '.join(failed)!r})"
    summary = {
        "events": outcome.events,
        "deliveries": len(outcome.deliveries),
        "requests": sum(r.requests for r in outcome.resources),
    }
    warnings = [f"{r.resource}: {r.warning}" for r in outcome.resources if r.warning]
    if warnings:
        summary["warnings"] = "; ".join(warnings)  # type: ignore[assignment]
    return True, repr(summary)


def _delivery_result(outcome: DeliveryOutcome) -> tuple[bool, str] | None:
    """(succeeded, text) of one delivery, or ``None`` when no attempt was made."""
    if outcome.outcome is Outcome.CRASHED:
        return False, f"DeliveryCrashed({outcome.error!r})"
    if outcome.outcome is Outcome.CANCELLED:
        return True, "cancelled: its instance was deleted"
    attempt = outcome.attempt
    if attempt is None:  # deferred by the breaker, or a stale message: nothing was sent
        return None
    answer = f"HTTP {attempt.status_code}" if attempt.status_code is not None else attempt.error
    took = f"{answer} in {attempt.duration_ms} ms"
    if attempt.ok:
        return True, took
    then = "retry scheduled" if outcome.outcome is Outcome.RETRY else "failed: schedule spent"
    detail = f" ({attempt.error}: {attempt.detail})" if attempt.detail else ""
    return False, f"CallbackFailed({f'{took}{detail}; {then}'!r})"


class TaskView:
    """Sends one process's per-unit task events (thread-safe; one per worker process)."""

    def __init__(self, app: Celery, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self._dispatcher: Any = None
        self._lock = threading.Lock()
        self._warned = False
        self._pid = os.getpid()
        self._clock = app.clock  # type: ignore[attr-defined]  # Celery's Lamport clock (celery-types lacks it)
        self._utcoffset = utcoffset()
        self._id_prefix = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-"
        self._count = 0

    def _events(self) -> Any:
        with self._lock:
            if self._dispatcher is None:
                # Only its connection, exchange and producer are used (see _publish).
                self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(), hostname=self.hostname
                )
            return self._dispatcher

    def _reset(self) -> None:
        """Drop the dispatcher and its connection (after a broker failure); the next batch
        opens a new one. The events of the failed batch are lost: they are only a view."""
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            with contextlib.suppress(Exception):
                dispatcher.close()
                dispatcher.connection.release()

    def _unit(
        self,
        out: list[dict[str, Any]],
        name: str,
        queue: str,
        args: list[object],
        kwargs: dict[str, object],
        started: float,
        finished: float,
        result: tuple[bool, str],
    ) -> None:
        """Append one unit's three events (received, started, then succeeded or failed)."""
        task_id = self._next_id()
        ok, text = result
        out += (
            self._event(
                "task-received",
                started,
                uuid=task_id,
                name=name,
                args=_shown(args),
                kwargs=_shown(kwargs),
                root_id=task_id,
                parent_id=None,
                retries=0,
                eta=None,
                expires=None,
                routing_key=queue,
            ),
            self._event("task-started", started, uuid=task_id),  # pid: the dispatcher's
            self._event(
                "task-succeeded",
                finished,
                uuid=task_id,
                result=text,
                runtime=max(finished - started, 0.0),
            )
            if ok
            else self._event("task-failed", finished, uuid=task_id, exception=text, traceback=""),
        )

    def _event(self, kind: str, timestamp: float, **fields: object) -> dict[str, Any]:
        """An event as Celery's dispatcher writes it (``celery.events.Event`` plus its
        hostname, pid, UTC offset and Lamport clock)."""
        return {
            "hostname": self.hostname,
            "utcoffset": self._utcoffset,
            "pid": self._pid,
            "clock": self._clock.forward(),
            "timestamp": timestamp,
            "type": kind,
            **fields,
        }

    def _next_id(self) -> str:
        """A task id unique to this process's run: a random UUID-shaped prefix drawn once and a
        counter (``uuid4`` per unit was a system call and a tenth of this module's CPU)."""
        with self._lock:
            self._count += 1
            return f"{self._id_prefix}{self._count:012x}"

    def _publish(self, events: list[dict[str, Any]]) -> None:
        """Publish as Celery's buffered dispatcher does: ``task.multi`` messages of up to
        :data:`BUFFER_LIMIT` events each, which Celery's receiver (Flower) unpacks.

        Building the events here saves a third of the CPU of ``EventDispatcher.send`` per
        event, which re-reads the UTC offset and takes locks each time. The body is JSON
        made by ``orjson`` and published as it is (kombu's ``json`` took 3.4 µs per event,
        orjson 0.3): the receiver decodes it by its content type, as any JSON message. Like
        its dispatcher made with ``buffer_while_offline=False``, a failed publish raises (the
        caller drops the connection) rather than queueing events in memory."""
        if not events:
            return
        dispatcher = self._events()
        with dispatcher.mutex:
            for start in range(0, len(events), BUFFER_LIMIT):
                dispatcher.producer.publish(
                    orjson.dumps(events[start : start + BUFFER_LIMIT]),
                    routing_key="task.multi",
                    exchange=dispatcher.exchange.name,
                    declare=[dispatcher.exchange],
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers=dispatcher.headers,
                    delivery_mode=dispatcher.delivery_mode,
                )

    def polls(self, outcomes: list[PollOutcome], scheduled: dict[int, str | None]) -> None:
        """One ``poll.instance`` task per poll of the batch."""
        try:
            self._utcoffset = utcoffset()  # it changes with daylight saving time
            events: list[dict[str, Any]] = []
            for outcome in outcomes:
                started = outcome.started_at.timestamp() if outcome.started_at else None
                finished = outcome.finished_at.timestamp() if outcome.finished_at else None
                now = time.time()
                kwargs: dict[str, object] = {"scheduled": scheduled.get(outcome.instance_id)}
                if outcome.resources:
                    kwargs["resources"] = ",".join(r.resource for r in outcome.resources)
                self._unit(
                    events,
                    POLL_UNIT,
                    Queue.POLL.value,
                    [outcome.instance_id],
                    kwargs,
                    started or now,
                    finished or now,
                    _poll_result(outcome),
                )
            self._publish(events)
        except Exception as exc:  # visibility must never cost a poll
            self._warn(exc)

    def deliveries(self, outcomes: list[DeliveryOutcome]) -> None:
        """One ``delivery.send`` task per delivery attempted (or cancelled, or crashed)."""
        try:
            self._utcoffset = utcoffset()  # it changes with daylight saving time
            events: list[dict[str, Any]] = []
            for outcome in outcomes:
                result = _delivery_result(outcome)
                if result is None:
                    continue
                self._unit(
                    events,
                    DELIVERY_UNIT,
                    Queue.DELIVERY.value,
                    [str(outcome.delivery_id)],
                    {"instance": outcome.instance_id},
                    outcome.started,
                    outcome.finished,
                    result,
                )
            self._publish(events)
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        self._reset()
        if not self._warned:
            log.warning("task events for Flower could not be sent (%s)", type(exc).__name__)
            self._warned = True


_views: dict[str, TaskView] = {}
_views_lock = threading.Lock()


def task_view(app: Celery, hostname: str | None) -> TaskView:
    """This process's view (one dispatcher and broker connection per worker process).

    ``hostname`` is the worker's node name (the task's ``request.hostname``), so Flower
    files the units under the worker that ran them.
    """
    hostname = hostname or f"{os.getpid()}@{socket.gethostname()}"
    with _views_lock:
        view = _views.get(hostname)
        if view is None:
            view = _views[hostname] = TaskView(app, hostname)
        return view
