"""Redis leases: Pollinator's one lock, for the async workers and API and for sync beat.

Every mutual exclusion through Redis is a *lease*: a key set only if absent
(``SET NX PX``) to a random token that names its holder, with a TTL so that a holder
that dies frees it, renewed (``PEXPIRE``) and released (``DEL``) only by a Lua script
that first checks the token, so a holder whose lease expired and was taken can neither
extend nor delete its successor's. :class:`Lease` (asyncio) and :class:`SyncLease`
(beat's synchronous client) are the same lease: one token rule, one TTL rule and the
same two scripts (:data:`RENEW_SCRIPT`, :data:`RELEASE_SCRIPT`), each for any number of
leases. Where they are used:

* the poll lock (:func:`app.keys.poll_lock`), through :class:`Leases`: one poll of an
  instance at a time, and a SIGKILLed worker's instances are free again within
  :data:`LEASE_TTL_MS` (a lock with a long TTL released in ``finally`` kept them
  locked for its whole TTL). One renewer per process renews every lease it holds in
  one script call every :data:`RENEW_EVERY_S`, so a thousand polls in flight
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
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LEASE_TTL_MS: Final = 30_000
RENEW_EVERY_S: Final = 10.0

# Each script takes any number of leases in one call (one command, one round trip: a
# pipeline of one command per lease costs the client several times more CPU per lease).
#: KEYS = leases, ARGV[1] = TTL (ms), ARGV[1 + i] = the token for KEYS[i]: per lease, 1 when
#: taken, 0 when another holder has it (or the key came earlier in KEYS).
ACQUIRE_SCRIPT: Final = """
local taken = {}
for i, key in ipairs(KEYS) do
  taken[i] = redis.call('set', key, ARGV[i + 1], 'NX', 'PX', ARGV[1]) and 1 or 0
end
return taken
"""
#: KEYS = leases, ARGV[1] = TTL (ms), ARGV[1 + i] = the token for KEYS[i]: per lease, 1 when
#: renewed, 0 when not ours (expired, or taken).
RENEW_SCRIPT: Final = """
local renewed = {}
for i, key in ipairs(KEYS) do
  renewed[i] = 0
  if redis.call('get', key) == ARGV[i + 1] then renewed[i] = redis.call('pexpire', key, ARGV[1]) end
end
return renewed
"""
#: KEYS = leases, ARGV[i] = the token for KEYS[i]: per lease, 1 when deleted, 0 when not ours.
RELEASE_SCRIPT: Final = """
local released = {}
for i, key in ipairs(KEYS) do
  released[i] = 0
  if redis.call('get', key) == ARGV[i] then released[i] = redis.call('del', key) end
end
return released
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

    async def renew(self) -> bool:
        """Push the TTL out again; ``False`` when the lease is no longer ours."""
        return bool((await self._renew(keys=[self.key], args=[self.ttl_ms, self.token]))[0])

    async def release(self) -> bool:
        """Give the lease back, only if it is still ours; ``True`` when it was."""
        return bool((await self._release(keys=[self.key], args=[self.token]))[0])


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
        return bool(self._renew(keys=[self.key], args=[self.ttl_ms, self.token])[0])

    def release(self) -> bool:
        return bool(self._release(keys=[self.key], args=[self.token])[0])


class Leases:
    """Every lease one process holds on the poll locks, renewed together while any is held.

    A lease here is its key and its holder's token (no :class:`Lease` object per poll):
    taking, renewing and giving back many is one script call each. The scripts are called
    by their SHA1 and loaded only when Redis answers NOSCRIPT (after a restart or a
    ``SCRIPT FLUSH``): one round trip on the hot path.
    """

    def __init__(
        self, redis: Redis, ttl_ms: int = LEASE_TTL_MS, renew_every_s: float = RENEW_EVERY_S
    ) -> None:
        if renew_every_s * 1000 >= ttl_ms:
            raise ValueError("leases must be renewed well within their TTL")
        self.redis = redis
        self.ttl_ms = ttl_ms
        self.renew_every_s = renew_every_s
        self._held: dict[str, str] = {}  # key -> our token
        self._renewer: asyncio.Task[None] | None = None
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    async def acquire(self, key: str) -> str | None:
        """The lease's token, or ``None`` while someone else holds ``key``."""
        return (await self.acquire_many([key])).get(key)

    async def acquire_many(self, keys: Sequence[str]) -> dict[str, str]:
        """:meth:`acquire` for several keys in one round trip: the tokens of the
        leases taken, by key. A key someone else holds is left out, and so is the second
        of a key listed twice (only one holder, as with two :meth:`acquire` calls)."""
        if not keys:
            return {}
        tokens = [new_token() for _ in keys]
        answers = await self._acquire(keys=list(keys), args=[self.ttl_ms, *tokens])
        taken = {key: token for key, token, ok in zip(keys, tokens, answers, strict=True) if ok}
        self._hold(taken)
        return taken

    def _hold(self, taken: dict[str, str]) -> None:
        """Remember leases just taken, and renew them (with the others) while held."""
        self._held.update(taken)
        if self._held and (self._renewer is None or self._renewer.done()):
            self._renewer = asyncio.create_task(self._renew_while_held())

    async def release(self, key: str, token: str) -> None:
        """Give the lease back (only if it is still ours)."""
        await self.release_many([(key, token)])

    async def release_many(self, leases: Sequence[tuple[str, str]]) -> None:
        """:meth:`release` of several (key, token) pairs in one round trip.

        Each is forgotten first (so never renewed again, even when this round trip
        fails); the script still checks the token, so a lease forgotten as lost, or
        taken over since, is left to its new holder."""
        if not leases:
            return
        for key, token in leases:
            self.forget(key, token)
        await self._release(keys=[key for key, _ in leases], args=[token for _, token in leases])

    def forget(self, key: str, token: str) -> None:
        """Stop renewing a lease (it expires within its TTL unless given back)."""
        if self._held.get(key) == token:
            del self._held[key]

    def held(self) -> int:
        return len(self._held)

    async def renew_all(self) -> None:
        """One round trip; a lease that was lost is forgotten (and logged)."""
        held = list(self._held.items())
        if not held:
            return
        answers = await self._renew(
            keys=[key for key, _ in held], args=[self.ttl_ms, *(token for _, token in held)]
        )
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
