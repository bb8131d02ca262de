"""One long-lived asyncio event loop per worker process (the dramatiq EventLoopThread pattern).

Celery does not run ``async def`` tasks, and a prefork child that polls one
instance at a time wastes a process on 100-500 ms of provider latency. Instead
the worker runs Celery's thread pool; every task thread submits its coroutine
to this process's single loop and waits. All coroutines share one aiohttp
session, one asyncpg pool (the worker's only database client) and one Redis
pool, so hundreds of polls are in flight per process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import asyncpg
from redis.asyncio import Redis

from app import liveness
from app.db import create_pg_pool, create_redis
from app.security import SecretBox
from app.services.breaker import OriginSlots
from app.services.guarded_http import callback_session
from app.services.polling import PollDeps
from app.settings import Settings, get_settings
from workers.heartbeat import Heartbeat

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Clients:
    """The shared connections of one process; created on the loop they are used on."""

    settings: Settings
    pg: asyncpg.Pool
    redis: Redis
    http: aiohttp.ClientSession
    callback_http: aiohttp.ClientSession
    box: SecretBox
    slots: OriginSlots
    poll_slots: asyncio.Semaphore
    delivery_slots: asyncio.Semaphore
    #: What every poll batch of the process shares, its poll leases included: one renewer
    #: for all of them (a batch of its own would leave a renewer sleeping per batch).
    poll: PollDeps

    @classmethod
    async def create(cls, settings: Settings, pool_size: int = 20) -> Clients:
        """``pool_size`` asyncpg connections: the snapshot, the outbox and the token refresh."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
        pg = await create_pg_pool(settings.require("database_url"), pool_size)
        redis = create_redis(settings.require("redis_url"), max_connections=128)
        http = aiohttp.ClientSession(connector=connector)
        box = SecretBox(settings.require("secret_key"))
        return cls(
            settings=settings,
            pg=pg,
            redis=redis,
            http=http,
            callback_http=callback_session(settings.allow_private_callbacks),
            box=box,
            slots=OriginSlots(),
            poll_slots=asyncio.Semaphore(settings.poll_concurrency),
            delivery_slots=asyncio.Semaphore(settings.delivery_concurrency),
            poll=PollDeps(settings, pg, redis, http, box),
        )

    async def close(self) -> None:
        await self.poll.leases.close()  # its renewer: a task left pending at exit
        await self.http.close()
        await self.callback_http.close()
        await self.redis.aclose()
        await self.pg.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available: the loop itself is a large share of a poll's CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime:
    """The event loop thread and its clients.

    Created when the worker process starts (:mod:`workers.worker`), so a setting the
    clients cannot work with fails the worker at once rather than its first task; the
    heartbeat and the liveness announcements start with :meth:`start_beating` once the
    worker consumes (a worker that cannot reach its broker must not look alive).
    """

    def __init__(self, settings: Settings, roles: Sequence[str] = ()) -> None:
        self.settings = settings
        self.roles = list(roles)
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name="pollinator-loop", daemon=True)
        self._thread.start()
        try:
            self.clients: Clients = self.submit(Clients.create(settings))
        except BaseException:
            self._stop_loop()  # no loop thread left behind by a runtime that never was
            raise
        self._heartbeat: Future[None] | None = None
        self._announcers: list[liveness.Announcer] = []

    def start_beating(self) -> None:
        """Beat the heartbeat file and announce the roles (``pollinator status``); once."""
        if self._heartbeat is not None or self._announcers:
            return
        # Beats from the loop itself: a loop that stops running coroutines stops the beat.
        if self.settings.heartbeat_file is not None:
            beat = Heartbeat(self.settings.heartbeat_file).run()
            self._heartbeat = asyncio.run_coroutine_threadsafe(beat, self.loop)
        self._announcers = [
            liveness.Announcer(self.clients.redis, role, liveness.member()) for role in self.roles
        ]
        for announcer in self._announcers:
            self.loop.call_soon_threadsafe(announcer.start)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop from any thread and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        for announcer in self._announcers:
            self.submit(announcer.stop(), timeout=10)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            self.submit(self.clients.close(), timeout=10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


_runtime: Runtime | None = None
_roles: list[str] = []


def announce_as(roles: Sequence[str]) -> None:
    """The liveness roles the process's runtime announces (``worker-poll`` ...); set before
    the runtime starts."""
    _roles[:] = roles


_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime: the one the worker opened at start, else created now."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings(), _roles)
        return _runtime


def shutdown_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
