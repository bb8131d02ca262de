"""Per-callback-URL protection: a concurrency cap and a circuit breaker.

A callback URL that hangs or keeps failing must not hold back deliveries to
other URLs. Two guards, both keyed by the URL's origin:

* at most ``PER_ORIGIN_CONCURRENCY`` POSTs in flight per worker process; a
  delivery that finds its origin saturated is deferred for a moment instead of
  occupying a worker slot while it waits;
* a circuit breaker shared by all workers through Redis: after
  ``FAILURE_THRESHOLD`` consecutive failures the origin is *open* for a
  cooldown that doubles on each re-open (capped); while open, its deliveries
  are deferred without spending an attempt; when the cooldown ends a single
  probe delivery goes through (*half-open*) and its outcome closes or re-opens
  the circuit. Deliveries are never failed early or dropped by the breaker.

The half-open probe is a *flag* (``SET NX EX``), not one of the leases of
:mod:`app.services.leases`: it marks "a probe is in flight for this cooldown", and
it is meant to be cleared by whichever delivery records the origin's next outcome
(a success clears it, a re-opening replaces the cooldown), not by the probe's own
holder. A token would protect nothing, and there is nothing to renew: if the probe's
worker dies, the flag's TTL lets the next probe through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.asyncio import Redis

from app.keys import breaker, breaker_probe, breakers_open

PER_ORIGIN_CONCURRENCY = 8
FAILURE_THRESHOLD = 5
BASE_COOLDOWN_S = 10.0
MAX_COOLDOWN_S = 600.0
SATURATED_DEFER_S = 1.0
ORIGIN_WAIT_S = 2.0


def origin_of(url: str) -> str:
    """``scheme://host:port`` — the unit a breaker and a concurrency cap apply to."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def cooldown_s(opens: int) -> float:
    """Cooldown after the ``opens``-th consecutive opening: 10 s, 20 s, 40 s … 10 min."""
    return float(min(BASE_COOLDOWN_S * 2 ** max(opens - 1, 0), MAX_COOLDOWN_S))


@dataclass(frozen=True)
class Admission:
    allowed: bool
    retry_in_s: float = 0.0
    probe: bool = False
    # No failure on record: a success has nothing to reset (saves a Redis round trip).
    clean: bool = False


class CircuitBreakers:
    """Breaker state in Redis: hash ``{failures, opens, open_until}`` per origin."""

    def __init__(self, redis: Redis, threshold: int = FAILURE_THRESHOLD) -> None:
        self.redis = redis
        self.threshold = threshold

    @staticmethod
    def _key(origin: str) -> str:
        return breaker(origin)

    async def admit(self, origin: str) -> Admission:
        raw = await self.redis.hmget(self._key(origin), ["open_until", "failures"])
        open_until = float(raw[0] or 0)
        now = time.time()
        if open_until == 0:
            return Admission(True, clean=not raw[1])
        if now < open_until:
            return Admission(False, open_until - now)
        # Cooldown over: exactly one probe at a time gets through.
        if await self.redis.set(breaker_probe(origin), "1", nx=True, ex=30):
            return Admission(True, probe=True)
        return Admission(False, SATURATED_DEFER_S * 5)

    async def admit_many(self, origins: Collection[str]) -> dict[str, Admission]:
        """:meth:`admit` for the origins of a batch: one round trip while none has a failure
        on record (an origin that is open or cooling down gets the full rules)."""
        ordered = list(origins)
        if not ordered:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for origin in ordered:
                pipe.hmget(self._key(origin), ["open_until", "failures"])
            states = await pipe.execute()
        admissions: dict[str, Admission] = {}
        for origin, (open_until, failures) in zip(ordered, states, strict=True):
            if float(open_until or 0) == 0:
                admissions[origin] = Admission(True, clean=not failures)
            else:
                admissions[origin] = await self.admit(origin)
        return admissions

    async def record(self, origin: str, success: bool) -> None:
        """Count one attempt's outcome; ``success`` means the receiver is up (any 2xx/4xx)."""
        key = self._key(origin)
        if success:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(key, breaker_probe(origin))
                pipe.zrem(breakers_open(), origin)
                await pipe.execute()
            return
        open_until = float((await self.redis.hmget(key, ["open_until"]))[0] or 0)
        if time.time() < open_until:
            return  # already open: stragglers that were in flight don't extend it
        failures = int(await self.redis.hincrby(key, "failures", 1))
        if failures < self.threshold:
            await self.redis.expire(key, int(MAX_COOLDOWN_S * 2))
            return
        opens = int(await self.redis.hincrby(key, "opens", 1))
        open_until = time.time() + cooldown_s(opens)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"open_until": open_until})
            pipe.expire(key, int(MAX_COOLDOWN_S * 4))
            pipe.delete(breaker_probe(origin))
            # For /metrics: which origins are open now (a scrape counts scores > now).
            pipe.zadd(breakers_open(), {origin: open_until})
            pipe.zremrangebyscore(breakers_open(), "-inf", time.time() - MAX_COOLDOWN_S * 4)
            await pipe.execute()


class OriginSlots:
    """In-process cap on concurrent POSTs per origin; waiting for a slot is bounded.

    A delivery that cannot get a slot within ``ORIGIN_WAIT_S`` is deferred by its
    caller rather than holding a worker's delivery slot while its origin is busy.
    """

    def __init__(self, limit: int = PER_ORIGIN_CONCURRENCY) -> None:
        self.limit = limit
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    async def acquire(self, origin: str, wait_s: float) -> bool:
        semaphore = self._semaphores.get(origin)
        if semaphore is None:
            semaphore = self._semaphores[origin] = asyncio.Semaphore(self.limit)
        if not semaphore.locked():
            await semaphore.acquire()  # free: taken at once, no timer needed
            return True
        try:
            async with asyncio.timeout(wait_s):  # no task per wait, unlike wait_for
                await semaphore.acquire()
        except TimeoutError:
            return False
        return True

    def release(self, origin: str) -> None:
        self._semaphores[origin].release()
