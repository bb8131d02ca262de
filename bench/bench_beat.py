"""Beat tick cost at 1k / 10k / 100k instances: it must grow with the *due* instances only.

Each size gets its own fresh database (built by the migrations) with its
instances spread over a 60 s interval. Before every measured tick, DUE random
instances are made due, so each tick claims the same number of instances at
every size and the comparison isolates the effect of the table size. The
baseline is the same tick at the smallest size, measured in the same run. Only
the database part of the tick is timed (claim + reschedule); sending the tasks
costs the same per due instance at any size.

Usage: .venv/bin/python bench/bench_beat.py [--quick] (uses POLLINATOR_DATABASE_URL when set,
else an embedded PostgreSQL under .data/bench).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from app.db import sync_url
from app.embedded import drop_database, ensure_services, scratch_database
from app.migrate import upgrade
from app.models import utcnow
from workers.beat import claim_due

DUE = 100
TICKS = 20

_FILL = text("""
    INSERT INTO instances (organization_id, name, token_hash, configuration, client_id, poller,
                           events_enabled, disabled, valid, refresh_interval_minutes, next_poll_at)
    SELECT :org, 'bench', md5(random()::text || g), '{}'::jsonb, 'bench', '{}'::jsonb,
           true, false, true, 1,
           now() + make_interval(secs => 5 + (g % 55))
    FROM generate_series(1, :n) AS g
""")
_MAKE_DUE = text("""
    UPDATE instances SET next_poll_at = now() - interval '1 second'
    WHERE id IN (SELECT id FROM instances ORDER BY random() LIMIT :due)
""")


def measure(base: str, size: int, ticks: int) -> tuple[float, float, int]:
    url, name = scratch_database(base, "pollinator_bench")
    try:
        upgrade(url)
        engine = create_engine(sync_url(url), pool_size=2)
        with engine.begin() as conn:
            org = conn.execute(
                text(
                    "INSERT INTO organizations (name, secret_hash)"
                    " VALUES ('b', md5(random()::text))"
                    " RETURNING id"
                )
            ).scalar_one()
            conn.execute(_FILL, {"org": org, "n": size})
            conn.execute(text("ANALYZE instances"))
        samples: list[float] = []
        claimed = 0
        for _ in range(ticks):
            with engine.begin() as conn:
                conn.execute(_MAKE_DUE, {"due": DUE})
            started = time.perf_counter()
            got = claim_due(engine, utcnow())
            samples.append((time.perf_counter() - started) * 1000)
            claimed += len(got.polls)
        engine.dispose()
        return statistics.median(samples), max(samples), claimed // ticks
    finally:
        drop_database(base, name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1k and 10k only, fewer ticks")
    args = parser.parse_args()
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"), "redis://unused", Path(".data/bench")
    )
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    ticks = 8 if args.quick else TICKS
    try:
        rows = [(size, *measure(services.database_url, size, ticks)) for size in sizes]
    finally:
        services.stop()
    baseline = rows[0][1]
    print(
        f"beat tick: claim {DUE} due instances and move them to their next slot "
        f"(median of {ticks} ticks)"
    )
    print(f"{'instances':>10} {'median ms':>10} {'max ms':>8} {'claimed':>8} {'vs 1k':>7}")
    for size, median, worst, claimed in rows:
        print(f"{size:>10,} {median:>10.2f} {worst:>8.2f} {claimed:>8} {median / baseline:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
