"""``pollinator instances list|show`` and ``pollinator events tail``: operator views, read-only.

They read PostgreSQL directly across organizations (an operator's view, not a
tenant's), never decrypt anything and never print a secret.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from app.db import libpq_url
from app.domain.isodate import format_ms
from app.domain.limits import MAX_INSTANCE_ID
from app.store import operator

TAIL_POLL_S = 1.0


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return format_ms(value)
    return str(value)


def _dump(value: object) -> str:
    return json.dumps(value, indent=2, default=_json_default)


def _print_instances(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'id':>8} {'org':>6} {'events':<8} {'every':>7} {'failing':>7} {'pending':>7}"
        f" {'failed':>6}  name"
    )
    for r in rows:
        state = "disabled" if r["disabled"] else ("on" if r["events_enabled"] else "off")
        print(
            f"{r['id']:>8} {r['organization_id']:>6} {state:<8}"
            f" {r['refresh_interval_s'] / 60:>6.1f}m {r['failing_resources']:>7}"
            f" {r['pending_deliveries']:>7} {r['failed_deliveries']:>6}  {r['name']}"
        )


def _print_event(e: operator.EventRow) -> None:
    print(
        f"{format_ms(e.created_at)}  {e.event_type:<8}"
        f" {e.object_type}/{e.object_id}  date={format_ms(e.event_date)}"
        f"  delivery={e.delivery_status or '-'}  {e.event_id}",
        flush=True,
    )


def tail(
    connect: Callable[[], psycopg.Connection[Any]],
    instance_id: int,
    lines: int,
    follow: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the last ``lines`` events, then (``follow``) each new one as it is written."""
    with connect() as conn:
        conn.autocommit = True  # each read sees the newest rows, no open snapshot
        rows = operator.events_after(conn, instance_id, None, lines)
        for e in rows:
            _print_event(e)
        cursor = (rows[-1].created_at, rows[-1].event_id) if rows else None
        while follow:
            sleep(TAIL_POLL_S)
            for e in operator.events_after(conn, instance_id, cursor, 500):
                _print_event(e)
                cursor = (e.created_at, e.event_id)


def _instance_id(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_INSTANCE_ID:
        raise argparse.ArgumentTypeError(f"not an instance id: {text}")
    return value


def main(argv: list[str]) -> int:
    """``pollinator instances list|show ID`` and ``pollinator events tail ID``."""
    from app.settings import command_settings_or_exit

    parser = argparse.ArgumentParser(prog="pollinator")
    sub = parser.add_subparsers(dest="what", required=True)
    inst = sub.add_parser("instances", help="list or show instances (all organizations)")
    inst_sub = inst.add_subparsers(dest="action", required=True)
    listing = inst_sub.add_parser("list")
    listing.add_argument("--org", type=int, default=None, help="only this organization")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    show = inst_sub.add_parser("show")
    show.add_argument("id", type=_instance_id)
    events = sub.add_parser("events", help="the event log of one instance")
    events_sub = events.add_subparsers(dest="action", required=True)
    tail_p = events_sub.add_parser("tail")
    tail_p.add_argument("id", type=_instance_id)
    tail_p.add_argument("-n", "--lines", type=int, default=20)
    tail_p.add_argument("--no-follow", action="store_true", help="print and exit")
    args = parser.parse_args(argv)

    _, database_url = command_settings_or_exit()
    url = libpq_url(database_url)

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(url, connect_timeout=5)

    if args.what == "events":
        try:
            tail(connect, args.id, max(args.lines, 0), not args.no_follow)
        except KeyboardInterrupt:
            pass
        return 0
    with connect() as conn:
        if args.action == "list":
            rows = operator.list_instances(conn, args.org, max(1, min(args.limit, 10_000)))
            if args.json:
                print(_dump(rows))
            else:
                _print_instances(rows)
            return 0
        detail = operator.instance_detail(conn, args.id)
    if detail is None:
        print(f"pollinator: no instance {args.id}", file=sys.stderr)
        return 1
    print(_dump(detail))
    return 0
