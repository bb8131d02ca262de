"""Provider tokens of one instance, with single-flight refresh across every worker.

Keap rotates refresh tokens: the old one stops working once used. Two workers
refreshing at once would make one of them fail with ``invalid_grant`` and could
lose the new token. So a refresh takes a Redis lock per instance; whoever gets
it re-reads the stored tokens first (another worker may have refreshed
already), refreshes only if the stored access token is still the rejected one,
and stores the rotated pair with an optimistic ``token_version`` check. A loser
waits for the lock and re-reads instead of failing.

The refresh is the entry point of its own short transactions (a read, then a write);
the SQL is :mod:`app.store.tokens`, on the caller's asyncpg pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
from redis.asyncio import Redis

from app import keys
from app.providers.infusionsoft import ProviderError
from app.providers.oauth import GrantRejected, ProviderUnavailable, refresh_tokens
from app.security import SecretBox
from app.services.leases import Lease
from app.store import tokens as store

log = logging.getLogger(__name__)

REFRESH_LOCK_TTL_MS = 30_000
LOCK_WAIT_S = 35.0


@dataclass
class RefreshConfig:
    """Where and as which OAuth app to refresh; the client secret is read by the refresh."""

    token_url: str
    client_id: str
    timeout_s: float


class InstanceTokens:
    """A :class:`~app.providers.infusionsoft.TokenSource` backed by PostgreSQL + Redis."""

    def __init__(
        self,
        instance_id: int,
        access_token: str,
        pg: asyncpg.Pool,
        redis: Redis,
        http: aiohttp.ClientSession,
        box: SecretBox,
        refresh: RefreshConfig,
    ) -> None:
        self.instance_id = instance_id
        self._access = access_token
        self.pg = pg
        self.redis = redis
        self.http = http
        self.box = box
        self.refresh_config = refresh

    async def access_token(self) -> str:
        return self._access

    async def refresh(self, rejected_token: str) -> str:
        """A working access token after ``rejected_token`` got a 401."""
        lease = Lease(self.redis, keys.refresh_lock(self.instance_id), REFRESH_LOCK_TTL_MS)
        if not await lease.acquire_within(LOCK_WAIT_S):
            raise ProviderError("auth", "timed out waiting for another worker's refresh")
        try:
            self._access = await self._refresh_locked(rejected_token)
            return self._access
        finally:
            await lease.release()

    async def _refresh_locked(self, rejected_token: str) -> str:
        async with self.pg.acquire() as conn:
            row = await store.read_tokens(conn, self.instance_id)
        if row is None or row.tokens is None:
            raise ProviderError("auth", "instance has no tokens (deleted?)")
        stored = self.box.open(row.tokens)
        if stored.get("access_token") and stored["access_token"] != rejected_token:
            return str(stored["access_token"])  # another worker refreshed already
        refresh_token = stored.get("refresh_token")
        if not refresh_token:
            raise ProviderError("auth", "access token expired and no refresh token is stored")
        cfg = self.refresh_config
        client_secret = str(self.box.open(row.secrets).get("oauth.api.secret", ""))
        try:
            tokens = await refresh_tokens(
                self.http,
                cfg.token_url,
                cfg.client_id,
                client_secret,
                refresh_token,
                cfg.timeout_s,
            )
        except GrantRejected as exc:
            async with self.pg.acquire() as conn:
                await store.mark_invalid(conn, self.instance_id)
            raise ProviderError("auth", f"refresh rejected: {exc.message}") from exc
        except ProviderUnavailable as exc:
            raise ProviderError("auth", f"refresh failed: {exc.message}") from exc
        new_tokens = tokens.to_secrets()
        if tokens.refresh_token is None:
            new_tokens["refresh_token"] = refresh_token
        sealed = self.box.seal(new_tokens)
        async with self.pg.acquire() as conn:
            stored_now = await store.store_tokens(conn, self.instance_id, row.version, sealed)
        if not stored_now:
            log.warning("instance %s: tokens changed during refresh", self.instance_id)
        log.info("instance %s: access token refreshed", self.instance_id)
        return tokens.access_token


class RedisBudget:
    """A fixed one-second window per OAuth app, shared by every worker through Redis.

    Keap's spike arrest counts per app; without a shared budget a few hundred
    instances of one app would all be throttled at once. A poll waiting for its
    app's next second gives its poll slot back while it sleeps (``slots``), so
    polls of one busy app never crowd out polls of the others. ``key`` names the
    budget: :func:`app.keys.app_budget`, per organization and client id.
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        per_second: int,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.redis = redis
        self.key = key
        self.per_second = per_second
        self.slots = slots

    async def acquire(self) -> None:
        while True:
            second = int(time.time())
            key = keys.app_budget_window(self.key, second)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, 2)
                count, _ = await pipe.execute()
            if int(count) <= self.per_second:
                return
            await self._sleep(max(0.01, (second + 1) - time.time()))

    async def _sleep(self, seconds: float) -> None:
        if self.slots is None:
            await asyncio.sleep(seconds)
            return
        self.slots.release()
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.slots.acquire()
