"""Beat tick cost and memory at 1k … 1M instances: it must grow with the *due* instances only.

Each size gets its own fresh database (built by the migrations), filled by
``scale_fixture.fill`` (one ``INSERT … SELECT generate_series``: mixed refresh
intervals at random phases, 2 % quarantined and stuck in the past, disabled,
events-off and deleted rows, ``VACUUM ANALYZE``d). Beat's own code then runs in a
child process of its own per size (so its RSS is comparable between sizes), in two
phases, timing only the database part of the tick (sending a task costs the same per
due instance at any size):

1. **steady state** — a simulated clock starts at the fixture's epoch and advances 1 s
   per tick; beat claims whatever the spread made due in that second (batches from
   ``FIRST_CLAIM`` doubling up to ``CLAIM_BATCH`` until one comes back short, as
   ``dispatch_due`` does): the real tick
   at that size. Its rows grow with the table; the cost *per claimed row* must not;
2. **fixed due** — before each tick ~100 random pollable instances are made due (at the
   real clock, before the epoch, so nothing else is due), and one ``claim_due`` claims
   and reschedules them: the same work at every size, so any difference is the table
   size.

The claim statement's plan (``EXPLAIN (ANALYZE, BUFFERS)``, rolled back) is recorded per
size: it must walk the partial due index ``ix_instances_due``. The baseline of every
ratio is the smallest size, measured in the same run.

Usage: .venv/bin/python bench/bench_beat.py [--quick | --full] [--json PATH]
  --quick 1k / 10k, default 1k / 10k / 100k, --full 1k / 100k / 1M.
  Uses POLLINATOR_DATABASE_URL when set (a scratch database is created beside it and
  dropped), else an embedded PostgreSQL under .data/bench.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from scale_fixture import fill
from sqlalchemy import create_engine, text

from app.db import libpq_url, sync_url
from app.domain.schedule import SLOT_MAX, SLOT_MIN
from app.embedded import drop_database, ensure_services, scratch_database
from app.migrate import upgrade
from app.models import DUE_PREDICATE, utcnow
from app.store.schedule import CLAIM
from workers.beat import CLAIM_BATCH, FIRST_CLAIM, claim_due, next_claim

DUE = 100
TICKS = 20
# Of scale_fixture's rows 89 % are pollable: ask for this many to make ~DUE of them due.
_PICK = 112

_MAKE_DUE = text(f"""
    UPDATE instances SET next_poll_at = now() - interval '1 second'
    WHERE id = ANY(ARRAY(SELECT :lo + floor(random() * (:hi - :lo + 1))::bigint
                         FROM generate_series(1, :pick)))
      AND {DUE_PREDICATE}
""")


def _rss_mb() -> tuple[float, float]:
    """This process's resident set now and at its peak (VmRSS, VmHWM), in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def child(url: str, epoch: datetime, ticks: int) -> dict[str, Any]:
    """Beat's claim code, as the beat process runs it; returns the measurements."""
    engine = create_engine(sync_url(url), pool_size=2)
    with engine.begin() as conn:
        lo, hi = conn.execute(text("SELECT min(id), max(id) FROM instances")).one()
    rss_start, _ = _rss_mb()
    steady: list[float] = []
    steady_rows = 0
    clock = epoch
    for _ in range(ticks):
        clock += timedelta(seconds=1)
        started = time.perf_counter()
        batch: int | None = FIRST_CLAIM
        while batch is not None:
            rows = claim_due(engine, clock, batch).rows
            steady_rows += rows
            batch = next_claim(batch, rows)
        steady.append((time.perf_counter() - started) * 1000)
    fixed: list[float] = []
    fixed_rows = 0
    for _ in range(ticks):
        with engine.begin() as conn:
            conn.execute(_MAKE_DUE, {"lo": lo, "hi": hi, "pick": _PICK})
        started = time.perf_counter()
        fixed_rows += claim_due(engine, utcnow()).rows
        fixed.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    rss_end, rss_peak = _rss_mb()
    return {
        "fixed_median_ms": statistics.median(fixed),
        "fixed_max_ms": max(fixed),
        "fixed_rows_per_tick": fixed_rows / ticks,
        "steady_median_ms": statistics.median(steady),
        "steady_max_ms": max(steady),
        "steady_rows_per_tick": steady_rows / ticks,
        "steady_us_per_row": sum(steady) * 1000 / max(steady_rows, 1),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_peak_mb": rss_peak,
    }


def claim_plan(url: str, at: datetime) -> list[str]:
    """The claim statement's executed plan for the first second's tick (rolled back)."""
    engine = create_engine(sync_url(url), pool_size=1)
    try:
        with engine.connect() as conn:
            plan = conn.execute(
                text("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + CLAIM.text),
                {
                    "now": at,
                    "batch": CLAIM_BATCH,
                    "slot_min": SLOT_MIN,
                    "slot_max": SLOT_MAX,
                },
            ).all()
            conn.rollback()
    finally:
        engine.dispose()
    return [str(r[0]) for r in plan]


def measure(base: str, size: int, ticks: int) -> dict[str, Any]:
    url, name = scratch_database(base, "pollinator_bench")
    try:
        upgrade(url)
        started = time.perf_counter()
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            filled = fill(conn, size)
            table_mb = conn.execute(
                "SELECT pg_total_relation_size('instances') / 1048576.0"
            ).fetchone()
        fill_s = time.perf_counter() - started
        plan = claim_plan(url, filled.epoch + timedelta(seconds=1))
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                *("--child", url, "--epoch", filled.epoch.isoformat(), "--ticks", str(ticks)),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return {
            "instances": size,
            "fill_s": round(fill_s, 1),
            "table_mb": round(float(table_mb[0]) if table_mb else 0.0, 1),
            **json.loads(out),
            "plan_uses_due_index": any("ix_instances_due" in line for line in plan),
            "plan": plan,
        }
    finally:
        drop_database(base, name)


def _print(rows: list[dict[str, Any]], ticks: int) -> None:
    base = rows[0]
    print(f"beat tick, database part (claim + reschedule), median of {ticks} ticks per phase;")
    print(f"baseline = {base['instances']:,} instances, same run; RSS = the process running it")
    print(
        f"{'instances':>10} {'table MB':>9} | {'fixed ms':>8} {'rows':>5} {'vs base':>7}"
        f" | {'steady ms':>9} {'rows':>6} {'us/row':>7}"
        f" | {'RSS MB':>6} {'peak':>6} | due index"
    )
    for r in rows:
        print(
            f"{r['instances']:>10,} {r['table_mb']:>9.1f} | {r['fixed_median_ms']:>8.2f}"
            f" {r['fixed_rows_per_tick']:>5.0f}"
            f" {r['fixed_median_ms'] / base['fixed_median_ms']:>6.2f}x"
            f" | {r['steady_median_ms']:>9.2f} {r['steady_rows_per_tick']:>6.0f}"
            f" {r['steady_us_per_row']:>7.1f}"
            f" | {r['rss_end_mb']:>6.1f} {r['rss_peak_mb']:>6.1f}"
            f" | {'yes' if r['plan_uses_due_index'] else 'NO'}"
        )
    print(f"\nclaim plan at {rows[-1]['instances']:,} instances:")
    for line in rows[-1]["plan"]:
        print("  " + line)


def main() -> int:
    parser = argparse.ArgumentParser()
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1k and 10k, fewer ticks")
    size.add_argument("--full", action="store_true", help="1k, 100k and 1M")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--epoch", help=argparse.SUPPRESS)
    parser.add_argument("--ticks", type=int, default=TICKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, datetime.fromisoformat(args.epoch), args.ticks)))
        return 0
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"), "redis://unused", Path(".data/bench")
    )
    sizes = (
        [1_000, 10_000]
        if args.quick
        else [1_000, 100_000, 1_000_000]
        if args.full
        else [1_000, 10_000, 100_000]
    )
    ticks = 8 if args.quick else args.ticks
    try:
        rows = [measure(services.database_url, n, ticks) for n in sizes]
    finally:
        services.stop()
    _print(rows, ticks)
    if args.json:
        args.json.write_text(json.dumps({"ticks": ticks, "due": DUE, "sizes": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
