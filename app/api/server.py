"""The API process: ``create_app(settings)`` and ``pollinator api``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from app import liveness
from app.api import health, lifecycle_routes, routes
from app.api.auth import auth_middleware
from app.api.console_routes import add_console_routes
from app.api.context import CTX, ApiContext
from app.api.errors import error_middleware
from app.api.ui import add_ui_routes
from app.db import create_engine, create_pg_pool, create_redis, session_factory
from app.domain.limits import MAX_BODY_BYTES
from app.gctune import freeze_startup
from app.logging import MaskingAccessLogger, setup_logging
from app.security import SecretBox
from app.settings import Settings

#: Connections of the API's asyncpg pool (the data-lifecycle routes' store calls).
PG_POOL_SIZE = 4


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application; connections open on startup and close on cleanup."""
    database_url = settings.require("database_url")
    redis_url = settings.require("redis_url")
    secret_key = settings.require("secret_key")
    # error_middleware is outermost so a 401 or 429 from auth_middleware is JSON too.
    app = web.Application(
        middlewares=[error_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(database_url)
        pg = await create_pg_pool(database_url, PG_POOL_SIZE)
        redis = create_redis(redis_url)
        http = aiohttp.ClientSession()
        app[CTX] = ApiContext(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            pg=pg,
            redis=redis,
            http=http,
            box=SecretBox(secret_key),
        )
        announcer = liveness.Announcer(redis, "api", liveness.member(f":{settings.api_port}"))
        announcer.start()
        yield
        await announcer.stop()
        await http.close()
        await redis.aclose()
        await pg.close()
        await engine.dispose()

    app.cleanup_ctx.append(lifecycle)
    routes.add_routes(app)
    add_console_routes(app)
    lifecycle_routes.add_routes(app)
    health.add_routes(app)
    add_ui_routes(app)
    return app


def main(argv: list[str]) -> int:
    """``pollinator api [--host H] [--port P]``."""
    from app.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    parser = argparse.ArgumentParser(prog="pollinator api")
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    args = parser.parse_args(argv)
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)

    async def started(_: web.Application) -> None:  # after the lifecycle's setup
        freeze_startup()  # what exists now lives as long as the process (app.gctune)

    app.on_startup.append(started)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=logging.getLogger("pollinator.access"),
        access_log_class=MaskingAccessLogger,
        print=None,
    )
    return 0
