"""What an API process shares across requests, created at startup."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import asyncpg
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.security import SecretBox
from app.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    http: aiohttp.ClientSession
    box: SecretBox


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
# The API's small asyncpg pool, for the stores written against asyncpg (the data-lifecycle
# routes, and a test poll's token refresh); opened by :mod:`app.api.lifecycle_routes`.
PG: web.AppKey[asyncpg.Pool] = web.AppKey("lifecycle_pg", asyncpg.Pool)
