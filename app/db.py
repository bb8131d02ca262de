"""Database engines and sessions. Factories take a URL; nothing connects at import.

SQLAlchemy is imported by the engine factories only: the workers use the asyncpg pool
(:func:`create_pg_pool`) and never load it (see :mod:`app.domain.rows`); asyncpg by the
pool factory only: beat reaches PostgreSQL through SQLAlchemy and psycopg.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from redis.asyncio import BlockingConnectionPool, Redis

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

_SCHEMES = ("postgresql+asyncpg://", "postgresql+psycopg://", "postgresql://", "postgres://")


def _strip_scheme(url: str) -> str:
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            return url[len(scheme) :]
    raise ValueError(f"not a PostgreSQL URL: {url.split('://', 1)[0]}://...")


def async_url(url: str) -> str:
    """The SQLAlchemy URL for the asyncpg driver."""
    return "postgresql+asyncpg://" + _strip_scheme(url)


def sync_url(url: str) -> str:
    """The SQLAlchemy URL for the psycopg (v3) driver, used by Alembic and the CLI."""
    return "postgresql+psycopg://" + _strip_scheme(url)


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """An async engine; one per process (API, each worker process).

    ``hide_parameters``: SQLAlchemy's errors otherwise quote the statement's parameters
    (secrets, tenant data) into every traceback that reaches a log.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(
        async_url(url),
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that do not expire objects on commit (they are read after it)."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit at the boundary, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session


def libpq_url(url: str) -> str:
    """A plain libpq URL, for asyncpg (the hot path bypasses the ORM) and psycopg."""
    return "postgresql://" + _strip_scheme(url)


async def create_pg_pool(url: str, size: int) -> asyncpg.Pool:
    """A raw asyncpg pool; statements are prepared and cached per connection.

    A connection goes back to the pool without asyncpg's session reset (``RESET ALL;
    UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()``: one more round trip, and work for
    the server, on every release of the hot path). Nothing we run leaves session state
    behind: no ``SET``, ``LISTEN`` or cursors outside a transaction, and the one
    session-level advisory lock closes its connection when its unlock did not complete
    (:func:`app.store.lifecycle.advisory_unlock`). An open transaction is still rolled back.
    """
    import asyncpg

    pool = await asyncpg.create_pool(
        libpq_url(url),
        min_size=1,
        max_size=size,
        max_inactive_connection_lifetime=300,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing beyond the rollback asyncpg always does."""


def create_redis(url: str, max_connections: int = 64) -> Redis:
    """An asyncio Redis client whose pool waits for a free connection instead of failing."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
