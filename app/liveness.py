"""Which roles are alive, across hosts: each process re-announces itself in Redis.

One sorted set per role, member = ``host:pid`` (plus a detail such as the port or
queues), score = the time its announcement expires. Reading it costs one
``ZRANGEBYSCORE`` per role — no key scan, no broadcast over the broker (unlike
``celery inspect ping``, which costs every worker a reply) — and a process that
died simply stops being listed once its score passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Final

from redis import Redis
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis as AsyncRedis

from app import keys

ROLES: Final = ("api", "beat", "worker-poll", "worker-delivery")
#: How often a process re-announces itself, and how long an announcement lasts.
ANNOUNCE_EVERY_S: Final = 10.0
ANNOUNCE_TTL_S: Final = 30.0


def member(detail: str = "") -> str:
    """This process's name in the registry: ``host:pid`` and an optional detail."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name} {detail}".strip()


def _prune_before(now: float) -> str:
    # Old members are trimmed by whoever announces next, so the set stays small.
    return f"({now - ANNOUNCE_TTL_S}"


async def announce(redis: AsyncRedis, role: str, name: str) -> None:
    """Mark ``name`` alive as ``role`` for the next :data:`ANNOUNCE_TTL_S` seconds."""
    now = time.time()
    key = keys.alive(role)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {name: now + ANNOUNCE_TTL_S})
        pipe.zremrangebyscore(key, "-inf", _prune_before(now))
        await pipe.execute()


def announce_sync(redis: Redis, role: str, name: str) -> None:
    """:func:`announce` for synchronous processes (beat)."""
    now = time.time()
    key = keys.alive(role)
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(key, {name: now + ANNOUNCE_TTL_S})
    pipe.zremrangebyscore(key, "-inf", _prune_before(now))
    pipe.execute()


def alive(redis: Redis) -> dict[str, list[str]]:
    """Every role with the processes whose announcement has not expired."""
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for role in ROLES:
        pipe.zrangebyscore(keys.alive(role), now, "+inf")
    answers = pipe.execute()
    return {
        role: sorted(m.decode() if isinstance(m, bytes) else str(m) for m in found)
        for role, found in zip(ROLES, answers, strict=True)
    }


class Announcer:
    """Re-announces one process every :data:`ANNOUNCE_EVERY_S` on its event loop.

    Stopped with an event rather than a cancellation: a cancel that lands while the Redis
    client is connecting leaves a half-open connection outside its pool, and the client
    reports it as a Redis error, so the loop could not even tell it was cancelled.
    """

    def __init__(self, redis: AsyncRedis, role: str, name: str) -> None:
        self.redis, self.role, self.name = redis, role, name
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(redis_exceptions.RedisError, OSError):
                await announce(self.redis, self.role, self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), ANNOUNCE_EVERY_S)

    async def stop(self, timeout: float = 5.0) -> None:
        """Let the current announcement finish (bounded), then end."""
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:  # Redis hangs: give up on a clean end
            self._task.cancel()


class SyncAnnouncer:
    """For a synchronous loop (beat's tick): announces when the last one is getting old."""

    def __init__(self, redis: Redis, role: str, name: str) -> None:
        self.redis, self.role, self.name = redis, role, name
        self.last = 0.0

    def maybe_announce(self) -> None:
        if time.monotonic() - self.last < ANNOUNCE_EVERY_S:
            return
        self.last = time.monotonic()
        with contextlib.suppress(redis_exceptions.RedisError, OSError):
            announce_sync(self.redis, self.role, self.name)
