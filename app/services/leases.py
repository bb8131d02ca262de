"""Short Redis leases that live exactly as long as their holder: the poll lock.

A poll of one instance must never overlap another poll of it, but a crashed
worker must not leave the instance idle either. A lock with a long TTL released
in ``finally`` does the first and fails the second: a SIGKILLed or partitioned
worker kept every instance it was polling locked for the whole TTL (it was 15
minutes). So each lock is a *lease*: a short TTL (:data:`LEASE_TTL_MS`) that the
holding process renews while the poll runs. One renewer per process renews every
lease it holds in one pipelined round trip every :data:`RENEW_EVERY_S` — not a
timer per poll — so a thousand polls in flight cost one Redis call per period.

A holder that loses its lease (partitioned from Redis past the TTL) may still
finish its poll while another worker polls the same instance; that is safe by
construction: event ids are deterministic and the checkpoint never moves
backwards, so the overlap can only repeat an event id, never lose a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets as pysecrets
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LEASE_TTL_MS: Final = 30_000
RENEW_EVERY_S: Final = 10.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class Leases:
    """Every lease one process holds, renewed together while any is held."""

    def __init__(
        self, redis: Redis, ttl_ms: int = LEASE_TTL_MS, renew_every_s: float = RENEW_EVERY_S
    ) -> None:
        if renew_every_s * 1000 >= ttl_ms:
            raise ValueError("leases must be renewed well within their TTL")
        self.redis = redis
        self.ttl_ms = ttl_ms
        self.renew_every_s = renew_every_s
        self._held: dict[str, str] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, key: str) -> str | None:
        """The lease's token, or ``None`` while someone else holds ``key``."""
        token = pysecrets.token_hex(8)
        if not await self.redis.set(key, token, nx=True, px=self.ttl_ms):
            return None
        self._held[key] = token
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_while_held())
        return token

    async def release(self, key: str, token: str) -> None:
        """Give the lease back (only if it is still ours)."""
        if self._held.get(key) == token:
            del self._held[key]
        await self._release(keys=[key], args=[token])

    def held(self) -> int:
        return len(self._held)

    async def renew_all(self) -> None:
        """One pipelined round trip; a lease that was lost is forgotten (and logged)."""
        held = list(self._held.items())
        if not held:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, token in held:
                await self._renew(keys=[key], args=[token, self.ttl_ms], client=pipe)
            answers = await pipe.execute()
        for (key, token), renewed in zip(held, answers, strict=True):
            if not renewed and self._held.get(key) == token:
                del self._held[key]
                log.warning("lease %s was lost before its holder finished", key)

    async def _renew_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(self.renew_every_s)
            try:
                await self.renew_all()
            except RedisError as exc:  # the TTL covers a blip; keep trying
                log.warning("renewing %d leases failed (%s)", len(self._held), type(exc).__name__)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
