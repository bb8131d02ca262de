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
    #: Raw asyncpg pool for the :mod:`app.store` functions that take a connection.
    pg: asyncpg.Pool
    redis: Redis
    http: aiohttp.ClientSession
    box: SecretBox


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
