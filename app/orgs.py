"""``pollinator org create NAME``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from app.db import create_engine, session_factory, transaction
from app.services.orgs import NewOrganization, create_organization


async def create(database_url: str, name: str) -> NewOrganization:
    """Create an organization and its first user in one transaction."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with transaction(session_factory(engine)) as session:
            return await create_organization(session, name)
    finally:
        await engine.dispose()


def main(argv: list[str]) -> int:
    """Print ``{"organizationId", "organizationSecret", "userSecret"}`` as JSON."""
    from app.settings import beside_running_stack, load_settings_or_exit

    parser = argparse.ArgumentParser(prog="pollinator org")
    sub = parser.add_subparsers(dest="action", required=True)
    create_p = sub.add_parser("create", help="create an organization with one user")
    create_p.add_argument("name")
    args = parser.parse_args(argv)
    settings = beside_running_stack(load_settings_or_exit())
    if not settings.database_url:
        print(
            "pollinator: POLLINATOR_DATABASE_URL is required (or run it beside `pollinator up`)",
            file=sys.stderr,
        )
        return 2
    name = args.name.strip()
    if not name or len(name) > 200:
        print("pollinator: NAME must be 1-200 characters", file=sys.stderr)
        return 2
    result = asyncio.run(create(settings.database_url, name))
    print(json.dumps(result.as_json()))
    return 0
