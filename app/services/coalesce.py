"""Group commit: what concurrent polls send within a short window goes in one round trip.

A round trip costs the client about as much CPU whether it carries one lease or twenty
(redis-py and asyncpg spend ~0.1 ms of a worker's CPU on the call itself), and a worker
finishes a poll every few milliseconds. So the first poll to arrive waits ``window_s``,
then sends everything queued by then in one call, and again what queued meanwhile; the
others just wait for the call carrying their item. Nobody waits for a poll that is still
fetching, and nobody waits longer than the window plus the round trips before its own.
"""

from __future__ import annotations

import asyncio
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
        self._sending = False

    async def join(self, item: T) -> bool:
        """``True`` once ``item`` was sent with a group; ``False``: send it alone."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.append((item, done))
        if not self._sending:
            self._sending = True
            try:
                await asyncio.sleep(self._window_s)
                while self._queued:
                    group, self._queued = self._queued, []
                    await self._send_group(group)
            finally:
                self._sending = False
                for _, left in self._queued:  # cancelled: the rest are sent alone
                    if not left.done():
                        left.set_result(False)
                self._queued = []
        return await done

    async def _send_group(self, group: list[tuple[T, asyncio.Future[bool]]]) -> None:
        try:
            ok = await self._send([item for item, _ in group])
        except Exception as exc:
            for _, done in group:
                done.set_exception(exc)
        else:
            for _, done in group:
                done.set_result(ok)
        finally:  # cancelled mid-call: whether it took effect is unknown, send each again
            for _, done in group:
                if not done.done():
                    done.set_result(False)
