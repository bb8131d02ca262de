"""``pollinator migrate``: ``alembic upgrade head`` against the configured database."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic.config import Config

from alembic import command
from app.db import sync_url

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"


def alembic_config(database_url: str, secret_key: str | None = None) -> Config:
    """An Alembic config pointing at our scripts and the given database.

    ``secret_key`` (``POLLINATOR_SECRET_KEY``) is for revisions that must read encrypted
    rows (0004 splits the instance secrets); without it they read the environment's.
    """
    cfg = Config()
    cfg.attributes["secret_key"] = secret_key
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    # ConfigParser interpolation: a literal % in the URL must be doubled.
    cfg.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, secret_key: str | None = None) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    command.upgrade(alembic_config(database_url, secret_key), "head")


def check(database_url: str) -> None:
    """Fail if the models and the migrations disagree (``alembic check``)."""
    command.check(alembic_config(database_url))


def main(argv: list[str]) -> int:
    """Entry point of ``pollinator migrate [--check]``."""
    from app.settings import command_settings_or_exit

    parser = argparse.ArgumentParser(prog="pollinator migrate")
    parser.add_argument("--check", action="store_true", help="run `alembic check` afterwards")
    args = parser.parse_args(argv)
    settings, database_url = command_settings_or_exit()
    upgrade(database_url, settings.secret_key)
    if args.check:
        check(database_url)
    return 0
