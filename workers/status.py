"""``pollinator status``: is the stack healthy, and what is failing?

Reads only: the liveness registry and the beat leader lock (Redis), the broker's
queue depths, the schedule and delivery backlog and whether autovacuum runs
(PostgreSQL). Run beside ``pollinator up`` it finds the embedded servers as
``org create`` does; in a cluster it reads the URLs from the settings like every role.
Exit 0 when the state could be read (whatever it says), 2 when it could not.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

import psycopg
import redis
from kombu import Connection

from app import keys, liveness
from app.db import libpq_url
from app.settings import Settings
from app.store import operator
from workers.queues import Queue


def queue_depths(broker_url: str) -> dict[str, int | None]:
    """Messages waiting per queue; ``None`` for a queue no worker has declared yet.

    On Redis a queue is a list, and an empty list does not exist: "not found" means 0.
    """
    depths: dict[str, int | None] = {}
    with Connection(broker_url, connect_timeout=3) as conn:
        missing = 0 if conn.transport.driver_type == "redis" else None
        for queue in Queue:
            channel: Any = conn.channel()  # a refused passive declare closes an AMQP channel
            try:
                depths[queue.value] = int(
                    channel.queue_declare(queue=queue.value, passive=True).message_count
                )
            except conn.channel_errors:
                depths[queue.value] = missing
            finally:
                channel.close()
    return depths


def read_state(settings: Settings) -> dict[str, Any]:
    """Everything ``status`` prints, as one JSON-ready dict."""
    client = redis.Redis.from_url(settings.require("redis_url"), socket_timeout=5)
    try:
        roles = liveness.alive(client)
        leader = client.get(keys.beat_leader())
        purge_raw = client.get(keys.retention_report())
    finally:
        client.close()
    with psycopg.connect(libpq_url(settings.require("database_url")), connect_timeout=5) as conn:
        backlog = operator.backlog(conn)
        failing = operator.failing_resources(conn)
        sizes = operator.table_sizes(conn)
        vacuum = operator.vacuum_state(conn)
    return {
        "roles": roles,
        "beatLeader": leader is not None,
        "queues": queue_depths(settings.effective_broker_url),
        "schedule": {
            "pollableInstances": backlog.pollable_instances,
            "overdueInstances": backlog.overdue_instances,
            "lagSeconds": round(backlog.schedule_lag_s, 3),
        },
        "deliveries": {
            "pending": backlog.pending_deliveries,
            "failed": backlog.failed_deliveries,
            "oldestPendingAgeSeconds": round(backlog.oldest_pending_age_s, 3),
        },
        "database": {
            "autovacuum": vacuum.autovacuum,
            "instanceLiveRows": vacuum.live_rows,
            "instanceDeadRows": vacuum.dead_rows,
        },
        "failing": [asdict(f) for f in failing],
        "retention": {
            "payloadDays": settings.payload_retention_days,
            "metadataDays": settings.metadata_retention_days,
            "tables": {
                str(r[0]): {"rows": int(r[1]), "tableBytes": int(r[2]), "indexBytes": int(r[3])}
                for r in sizes
            },
            "lastPurge": json.loads(purge_raw) if purge_raw else None,
        },
    }


def render(state: dict[str, Any]) -> str:
    """The human view: one block per question an operator asks."""
    lines = ["roles"]
    for role, members in state["roles"].items():
        mark = "up  " if members else "DOWN"
        lines.append(f"  {mark} {role:<16} {len(members)} alive  {', '.join(members)}".rstrip())
    lines.append(f"  beat leader lock: {'held' if state['beatLeader'] else 'FREE (no beat leads)'}")
    lines.append("queues")
    for name, depth in state["queues"].items():
        lines.append(f"  {name:<10} {'not declared' if depth is None else depth}")
    s, d = state["schedule"], state["deliveries"]
    lines.append(
        f"schedule   {s['pollableInstances']} pollable, {s['overdueInstances']} overdue,"
        f" lag {s['lagSeconds']:.1f} s"
    )
    lines.append(
        f"deliveries {d['pending']} pending (oldest {d['oldestPendingAgeSeconds']:.0f} s),"
        f" {d['failed']} failed"
    )
    db = state["database"]
    rows = f"instances ~{db['instanceLiveRows']} live rows, ~{db['instanceDeadRows']} dead"
    if db["autovacuum"]:
        lines.append(f"database   autovacuum on; {rows}")
    else:
        lines.append(
            f"database   AUTOVACUUM OFF ({rows}): beat rewrites every instance row each"
            " interval and nothing cleans up; turn it on (deploy/README.md, operating notes)"
        )
    failing = state["failing"]
    lines.append(f"failing    {len(failing)} resource(s)")
    for f in failing:
        lines.append(
            f"  instance {f['instance_id']} (org {f['organization_id']}) {f['resource']}:"
            f" {f['error_class']} x{f['consecutive_failures']}"
        )
    lines += _render_retention(state["retention"])
    return "\n".join(lines)


def _render_retention(retention: dict[str, Any]) -> list[str]:
    lines = [
        f"retention  payloads {retention['payloadDays']:g} d, metadata"
        f" {retention['metadataDays']:g} d (defaults; organizations may override)"
    ]
    for name, t in retention["tables"].items():
        lines.append(
            f"  {name:<18} ~{t['rows']} rows, {t['tableBytes'] / 2**20:.1f} MiB"
            f" + {t['indexBytes'] / 2**20:.1f} MiB indexes"
        )
    last = retention["lastPurge"]
    if last is None:
        lines.append("  purge: no run recorded yet")
    else:
        state = "caught up" if last["complete"] else "behind (continues next run)"
        lines.append(
            f"  purge: last run {last['finished_at']}, {last['rows']} rows in"
            f" {last['seconds']:.1f} s, longest batch {last['longest_batch_s'] * 1000:.0f} ms,"
            f" {state}"
        )
        lines.append(f"  oldest payload kept: {last['oldest_payload'] or 'none'}")
    return lines


def main(argv: list[str]) -> int:
    """``pollinator status [--json]``."""
    from app.settings import beside_running_stack, load_settings_or_exit

    parser = argparse.ArgumentParser(prog="pollinator status")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    settings = beside_running_stack(load_settings_or_exit())
    try:
        state = read_state(settings)
    except Exception as exc:  # any unreadable piece: say which, exit 2
        print(
            f"pollinator status: cannot read the state ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(state, indent=2) if args.json else render(state))
    return 0
