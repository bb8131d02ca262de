"""Redis leases: Pollinator's one lock, for the async workers and API and for sync beat.

Every mutual exclusion through Redis is a *lease*: a key set only if absent
(``SET NX PX``) to a random token that names its holder, with a TTL so that a holder
that dies frees it, renewed (``PEXPIRE``) and released (``DEL``) only by a Lua script
that first checks the token, so a holder whose lease expired and was taken can neither
extend nor delete its successor's. :class:`Lease` (asyncio) and :class:`SyncLease`
(beat's synchronous client) are the same lease: one token rule, one TTL rule and the
same two scripts (:data:`RENEW_SCRIPT`, :data:`RELEASE_SCRIPT`). Where they are used:

* the poll lock (:func:`app.keys.poll_lock`), through :class:`Leases`: one poll of an
  instance at a time, and a SIGKILLed worker's instances are free again within
  :data:`LEASE_TTL_MS` (a lock with a long TTL released in ``finally`` kept them
  locked for its whole TTL). One renewer per process renews every lease it holds in
  one pipelined round trip every :data:`RENEW_EVERY_S`, so a thousand polls in flight
  cost one Redis call per period, not a timer each;
* a rewind (:mod:`app.services.lifecycle`) takes the same poll lock, waiting a little;
* the single-flight OAuth refresh (:mod:`app.services.tokens`, :func:`app.keys.refresh_lock`);
* beat's leadership (:func:`app.keys.beat_leader`): the beat that holds it schedules.

A holder that loses its lease (partitioned from Redis past the TTL) may still finish a
poll while another worker polls the same instance; that is safe by construction:
event ids are deterministic and the checkpoint never moves backwards, so the overlap
can only repeat an event id, never lose a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets as pysecrets
import time
from collections.abc import Sequence
from typing import Final

import redis
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LEASE_TTL_MS: Final = 30_000
RENEW_EVERY_S: Final = 10.0

#: KEYS[1] = lease, ARGV[1] = token, ARGV[2] = TTL (ms): 1 when renewed, 0 when not ours.
RENEW_SCRIPT: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
#: KEYS[1] = lease, ARGV[1] = token: 1 when deleted, 0 when not ours (expired, or taken).
RELEASE_SCRIPT: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def new_token() -> str:
    """A holder's token: random, so no two holders (processes, or leases) share one."""
    return pysecrets.token_hex(8)


class _LeaseKey:
    """What the async and the sync lease share: the key, the TTL and the holder's token."""

    def __init__(self, key: str, ttl_ms: int, token: str | None) -> None:
        if ttl_ms <= 0:
            raise ValueError("a lease needs a positive TTL")
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = new_token() if token is None else token


class Lease(_LeaseKey):
    """One lease on ``key`` (asyncio client); a new :class:`Lease` is a new holder, unless
    it is given the ``token`` of one."""

    def __init__(
        self, client: Redis, key: str, ttl_ms: int = LEASE_TTL_MS, token: str | None = None
    ) -> None:
        super().__init__(key, ttl_ms, token)
        self.client = client
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    async def acquire(self) -> bool:
        """Take the lease now; ``False`` while another holder has it."""
        return bool(await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def acquire_within(self, wait_s: float, retry_every_s: float = 0.1) -> bool:
        """Take the lease, retrying for up to ``wait_s``; ``False`` if it stayed taken."""
        deadline = time.monotonic() + wait_s
        while not await self.acquire():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(retry_every_s)
        return True

    async def renew(self, pipe: Pipeline | None = None) -> bool:
        """Push the TTL out again; ``False`` when the lease is no longer ours.

        With ``pipe`` the renewal is only queued on that pipeline (its answer is in the
        pipeline's results) and this returns ``True``.
        """
        args: list[str | int] = [self.token, self.ttl_ms]
        if pipe is not None:
            await self._renew(keys=[self.key], args=args, client=pipe)
            return True
        return bool(await self._renew(keys=[self.key], args=args))

    async def release(self, pipe: Pipeline | None = None) -> bool:
        """Give the lease back, only if it is still ours; ``True`` when it was.

        With ``pipe`` the release is only queued on that pipeline and this returns ``True``.
        """
        if pipe is not None:
            await self._release(keys=[self.key], args=[self.token], client=pipe)
            return True
        return bool(await self._release(keys=[self.key], args=[self.token]))


class SyncLease(_LeaseKey):
    """The same lease for a synchronous client (beat)."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int = LEASE_TTL_MS) -> None:
        super().__init__(key, ttl_ms, None)
        self.client = client
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> bool:
        return bool(self._release(keys=[self.key], args=[self.token]))


class Leases:
    """Every lease one process holds on the poll locks, renewed together while any is held."""

    def __init__(
        self, redis: Redis, ttl_ms: int = LEASE_TTL_MS, renew_every_s: float = RENEW_EVERY_S
    ) -> None:
        if renew_every_s * 1000 >= ttl_ms:
            raise ValueError("leases must be renewed well within their TTL")
        self.redis = redis
        self.ttl_ms = ttl_ms
        self.renew_every_s = renew_every_s
        self._held: dict[str, Lease] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, key: str) -> str | None:
        """The lease's token, or ``None`` while someone else holds ``key``."""
        lease = Lease(self.redis, key, self.ttl_ms)
        if not await lease.acquire():
            return None
        self._hold([lease])
        return lease.token

    async def acquire_many(self, keys: Sequence[str]) -> dict[str, str]:
        """:meth:`acquire` for several keys in one pipelined round trip: the tokens of the
        leases taken, by key. A key someone else holds is left out, and so is the second
        of a key listed twice (only one holder, as with two :meth:`acquire` calls)."""
        if not keys:
            return {}
        leases = [Lease(self.redis, key, self.ttl_ms) for key in keys]
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                pipe.set(lease.key, lease.token, nx=True, px=lease.ttl_ms)
            answers = await pipe.execute()
        taken = [lease for lease, ok in zip(leases, answers, strict=True) if ok]
        self._hold(taken)
        return {lease.key: lease.token for lease in taken}

    def _hold(self, leases: Sequence[Lease]) -> None:
        """Remember leases just taken, and renew them (with the others) while held."""
        for lease in leases:
            self._held[lease.key] = lease
        if self._held and (self._renewer is None or self._renewer.done()):
            self._renewer = asyncio.create_task(self._renew_while_held())

    async def release(self, key: str, token: str) -> None:
        """Give the lease back (only if it is still ours)."""
        lease = self._held.get(key)
        if lease is not None and lease.token == token:
            del self._held[key]
        else:  # forgotten as lost: the script still checks the token
            lease = Lease(self.redis, key, self.ttl_ms, token)
        await lease.release()

    async def release_many(self, leases: Sequence[tuple[str, str]]) -> None:
        """:meth:`release` of several (key, token) pairs in one pipelined round trip."""
        if not leases:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, token in leases:
                lease = self._held.get(key)
                if lease is not None and lease.token == token:
                    del self._held[key]
                else:
                    lease = Lease(self.redis, key, self.ttl_ms, token)
                await lease.release(pipe)
            await pipe.execute()

    def held(self) -> int:
        return len(self._held)

    async def renew_all(self) -> None:
        """One pipelined round trip; a lease that was lost is forgotten (and logged)."""
        held = list(self._held.items())
        if not held:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, lease in held:
                await lease.renew(pipe)
            answers = await pipe.execute()
        for (key, lease), renewed in zip(held, answers, strict=True):
            if not renewed and self._held.get(key) is lease:
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
