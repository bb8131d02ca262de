"""Group commit: what concurrent polls send within a short window goes in one round trip.

A round trip costs the client about as much CPU whether it carries one lease or twenty
(redis-py and asyncpg spend ~0.1 ms of a worker's CPU on the call itself), and a worker
finishes a poll every few milliseconds. So the first item to arrive starts a sender task,
which waits ``window_s``, then sends everything queued by then in one call, and again what
queued meanwhile; every poll just waits for the call carrying its item. Nobody waits for a
poll that is still fetching, and nobody waits longer than the window plus the round trips
before its own.

The sender is a task of its own, not the first poll: one :class:`Coalescer` serves a
whole worker process, where items keep arriving, and a poll that sent for the others
would be held (in its slot) for as long as they did.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: What a poll's commit and its lease's return may wait for company. At a few hundred
#: polls/s per worker this groups 2–10 polls per round trip, for at most twice this
#: added to a poll that takes ~100 ms or more (its provider's latency).
WINDOW_S = 0.01


class Coalescer(Generic[T]):
    """Sends items in groups: ``send(group)`` answers ``True`` when every item of the
    group is done, ``False`` when each must be sent alone (the group failed in a way
    that could be one item's fault), or raises what every item of the group fails with.
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[bool]], window_s: float) -> None:
        self._send = send
        self._window_s = window_s
        self._queued: list[tuple[T, asyncio.Future[bool]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def join(self, item: T) -> bool:
        """``True`` once ``item`` was sent with a group; ``False``: send it alone.

        A caller cancelled while it waits leaves its item queued: it may still be sent."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._queued.append((item, done))
        if self._sender is None:
            # An empty context: the sender's log lines are nobody's poll in particular.
            self._sender = loop.create_task(self._run(), context=contextvars.Context())
        return await done

    async def _run(self) -> None:
        try:
            await asyncio.sleep(self._window_s)
            while self._queued:
                group, self._queued = self._queued, []
                await self._send_group(group)
        finally:  # also when cancelled (the loop shutting down): the rest are sent alone
            self._sender = None
            left, self._queued = self._queued, []
            _answer(left, False)

    async def _send_group(self, group: list[tuple[T, asyncio.Future[bool]]]) -> None:
        try:
            ok = await self._send([item for item, _ in group])
        except Exception as exc:
            for _, done in group:
                if not done.done():
                    done.set_exception(exc)
        else:
            _answer(group, ok)
        finally:  # cancelled mid-call: whether it took effect is unknown, send each again
            _answer(group, False)


def _answer(group: list[tuple[T, asyncio.Future[bool]]], ok: bool) -> None:
    """Answer every item of ``group`` still waiting (a waiter may have been cancelled)."""
    for _, done in group:
        if not done.done():
            done.set_result(ok)
