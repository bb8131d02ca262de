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


async def announce_forever(redis: AsyncRedis, role: str, name: str) -> None:
    """Re-announce every :data:`ANNOUNCE_EVERY_S` until cancelled; Redis blips are skipped."""
    while True:
        with contextlib.suppress(redis_exceptions.RedisError, OSError):
            await announce(redis, role, name)
        await asyncio.sleep(ANNOUNCE_EVERY_S)


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
