"""The API process: ``create_app(settings)`` and ``pollinator api``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from app.api import health, lifecycle_routes, routes
from app.api.context import ApiContext
from app.api.errors import error_middleware
from app.api.ui import add_ui_routes
from app.db import create_engine, create_redis, session_factory
from app.logging import setup_logging
from app.security import SecretBox
from app.settings import Settings

MAX_BODY_BYTES = 256 * 1024


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application; connections open on startup and close on cleanup."""
    database_url = settings.require("database_url")
    redis_url = settings.require("redis_url")
    secret_key = settings.require("secret_key")
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(database_url)
        redis = create_redis(redis_url)
        http = aiohttp.ClientSession()
        app[routes.CTX] = ApiContext(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            redis=redis,
            http=http,
            box=SecretBox(secret_key),
        )
        yield
        await http.close()
        await redis.aclose()
        await engine.dispose()

    app.cleanup_ctx.append(lifecycle)
    routes.add_routes(app)
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
    setup_logging(settings.log_level)
    web.run_app(
        create_app(settings),
        host=args.host,
        port=args.port,
        access_log=logging.getLogger("pollinator.access"),
        print=None,
    )
    return 0
