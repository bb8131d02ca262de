"""Alembic environment: the URL comes from the Config (set by ``app.migrate``) or settings."""

from __future__ import annotations

from sqlalchemy import create_engine, pool

import app.models  # noqa: F401  (registers every table on the metadata)
from alembic import context
from app.db import sync_url
from app.models import metadata

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.settings import get_settings

    return sync_url(get_settings().require("database_url"))


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
