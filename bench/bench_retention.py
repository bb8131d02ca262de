"""Retention purge at scale: throughput, longest lock, and the event-log API's p99 meanwhile.

Fills a scratch database with a 120-day log — ``--instances`` instances, each with
``--deliveries`` deliveries of 5 events (1 attempt each; 2 % failed with 9 attempts; a
few recent ones pending) — directly in PostgreSQL (``INSERT … SELECT generate_series``
in chunks, indexes and foreign keys rebuilt after the fill), then in the same run:

1. baseline — the API (``pollinator api`` in its own process) under a steady load of
   ``GET /instances/{id}/events`` and ``GET /instances/{id}/deliveries`` for random
   instances, with no purge;
2. purge — the same load while one purge run (its own process, defaults 30 days of
   payloads / 90 days of metadata, ``POLLINATOR_PURGE_BATCH_ROWS`` 2000) works off the
   whole backlog: rows/s, every batch transaction's duration (the upper bound of any
   lock it holds), and lock waits sampled from ``pg_stat_activity`` every 50 ms;
3. a steady-state run — the next day's purge (``now`` + 1 day) over the purged log;
4. table and index sizes before, after the purge, and after the next day's purge and a
   plain ``VACUUM`` ("+day, VACUUM": freed space is reused by new rows; files do not shrink).

Usage:
  .venv/bin/python bench/bench_retention.py --quick            # 100k events (make bench)
  .venv/bin/python bench/bench_retention.py --instances 10000 --deliveries 200   # 10M events
  POLLINATOR_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test … (a scratch database
  is created beside it and dropped afterwards; embedded servers otherwise)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from app.db import create_pg_pool, libpq_url
from app.embedded import drop_database, ensure_services, free_port, scratch_database
from app.migrate import upgrade
from app.models import utcnow
from app.security import hash_secret
from app.services import lifecycle
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789"
SPAN_DAYS = 120
EVENTS_PER_DELIVERY = 5
CHUNK_INSTANCES = 100
USER_SECRET, ORG_SECRET = "bench-user-secret", "bench-org-secret"
TABLES = ("events", "deliveries", "delivery_attempts")
LOAD_CONCURRENCY = 8

# One statement per chunk of instances: deliveries, their events and their attempts.
_FILL = f"""
WITH d AS (
  INSERT INTO deliveries (id, instance_id, status, body, event_count, next_attempt_at,
                          created_at, delivered_at)
  SELECT gen_random_uuid(), i,
         CASE WHEN k = 0 THEN 'pending' WHEN k % 50 = 7 THEN 'failed' ELSE 'delivered' END,
         convert_to('{{"message":{{"events":[],"raw":"' || repeat(md5(i::text || ':' || k), 40)
                    || '"}}}}', 'UTF8'),
         {EVENTS_PER_DELIVERY},
         CASE WHEN k = 0 THEN $4::timestamptz + interval '1 day' END,
         $4::timestamptz - make_interval(secs => $5::float8 * (k + 0.5) / $3::int),
         CASE WHEN k <> 0 AND k % 50 <> 7
              THEN $4::timestamptz - make_interval(secs => $5::float8 * (k + 0.5) / $3::int) END
  FROM generate_series($1::bigint, $2::bigint) AS i, generate_series(0, $3::int - 1) AS k
  RETURNING id, instance_id, status, created_at
), e AS (
  INSERT INTO events (id, instance_id, object_type, object_id, event_type, event_date,
                      poll_date, delivery_id, record, created_at)
  SELECT gen_random_uuid(), d.instance_id, 'contacts', md5(d.id::text || j), 'UPDATED',
         d.created_at, d.created_at, d.id,
         jsonb_build_object('id', j, 'email', md5(d.id::text) || '@example.com',
                            'given_name', 'Ada', 'family_name', 'Lovelace',
                            'notes', repeat(md5(d.id::text || j), 4)),
         d.created_at
  FROM d, generate_series(1, {EVENTS_PER_DELIVERY}) AS j
  RETURNING 1
)
INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, duration_ms, error,
                               response_body)
SELECT d.id, a, d.created_at, CASE WHEN d.status = 'failed' THEN 503 ELSE 200 END, 40,
       CASE WHEN d.status = 'failed' THEN 'http' END, 'ok'
FROM d, generate_series(1, CASE WHEN d.status = 'failed' THEN 9
                               WHEN d.status = 'pending' THEN 0 ELSE 1 END) AS a
"""


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"requests": 0, "errors": self.errors}
        ordered = sorted(self.samples)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

        return {
            "requests": len(ordered),
            "errors": self.errors,
            "p50_ms": round(pct(0.50), 1),
            "p99_ms": round(pct(0.99), 1),
            "max_ms": round(ordered[-1] * 1000, 1),
        }


# -- fill -----------------------------------------------------------------------------------------


async def _constraints(conn: asyncpg.Connection) -> tuple[list[str], list[str], list[str]]:
    """(drop statements, re-create statements for keys/indexes, re-create FKs)."""
    cons = await conn.fetch(
        """SELECT conname, conrelid::regclass::text, contype::text, pg_get_constraintdef(oid)
           FROM pg_constraint
           WHERE conrelid::regclass::text = ANY($1::text[]) AND contype IN ('p', 'u', 'f')""",
        list(TABLES),
    )
    idx = await conn.fetch(
        """SELECT indexname, indexdef FROM pg_indexes
           WHERE tablename = ANY($1::text[]) AND indexname NOT IN (
             SELECT conname FROM pg_constraint WHERE contype IN ('p', 'u'))""",
        list(TABLES),
    )
    drops = [f"ALTER TABLE {t} DROP CONSTRAINT {n}" for n, t, k, _ in cons if k == "f"]
    drops += [f"DROP INDEX {n}" for n, _ in idx]
    drops += [f"ALTER TABLE {t} DROP CONSTRAINT {n}" for n, t, k, _ in cons if k != "f"]
    keys = [f"ALTER TABLE {t} ADD CONSTRAINT {n} {d}" for n, t, k, d in cons if k != "f"]
    keys += [d for _, d in idx]
    fks = [f"ALTER TABLE {t} ADD CONSTRAINT {n} {d}" for n, t, k, d in cons if k == "f"]
    return drops, keys, fks


async def fill(url: str, instances: int, per_instance: int) -> tuple[int, datetime]:
    """The log, as of ``now``; returns (organization id, now)."""
    conn = await asyncpg.connect(libpq_url(url))
    now = utcnow()
    try:
        org = await conn.fetchval(
            "INSERT INTO organizations (name, secret_hash) VALUES ('bench', $1) RETURNING id",
            hash_secret(ORG_SECRET),
        )
        await conn.execute(
            "INSERT INTO users (organization_id, name, secret_hash) VALUES ($1, 'u', $2)",
            org,
            hash_secret(USER_SECRET),
        )
        await conn.execute(
            """INSERT INTO instances (id, organization_id, name, token_hash, configuration,
                 client_id, poller, events_enabled, disabled, valid, refresh_interval_minutes)
               SELECT i, $1, 'bench ' || i, md5('t' || i), '{}'::jsonb, 'bench', '{}'::jsonb,
                 false, false, true, 15
               FROM generate_series(1, $2::bigint) AS i""",
            org,
            instances,
        )
        drops, keys, fks = await _constraints(conn)
        for sql in drops:
            await conn.execute(sql)
        started = time.monotonic()
        for lo in range(1, instances + 1, CHUNK_INSTANCES):
            hi = min(lo + CHUNK_INSTANCES - 1, instances)
            await conn.execute(_FILL, lo, hi, per_instance, now, SPAN_DAYS * 86400.0)
            done = hi * per_instance * EVENTS_PER_DELIVERY
            rate = done / (time.monotonic() - started)
            print(f"  filled {done:,} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for sql in keys + fks:
            t0 = time.monotonic()
            await conn.execute(sql)
            print(f"  {time.monotonic() - t0:6.1f} s  {sql[:90]}", file=sys.stderr, flush=True)
        await conn.execute("VACUUM ANALYZE events, deliveries, delivery_attempts")
        print(f"  fill done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        return int(org), now
    finally:
        await conn.close()


async def sizes(url: str) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        out: dict[str, dict[str, float]] = {}
        for table in TABLES:
            row = await conn.fetchrow(
                f"""SELECT count(*), pg_table_size('{table}'), pg_indexes_size('{table}'),
                           (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = '{table}')
                    FROM {table}"""
            )
            assert row is not None
            out[table] = {
                "rows": int(row[0]),
                "table_mib": round(row[1] / 2**20, 1),
                "index_mib": round(row[2] / 2**20, 1),
                "dead_rows": int(row[3] or 0),
            }
        payloads = await conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE octet_length(body) > 0"
        )
        out["deliveries"]["with_payload"] = int(payloads)
        return out
    finally:
        await conn.close()


# -- load and lock sampling -------------------------------------------------------------------


async def api_load(
    base: str, instances: int, stop: asyncio.Event, lat: Latencies, seed: int
) -> None:
    headers = {"Authorization": f"User {USER_SECRET}, Organization {ORG_SECRET}"}
    rng = random.Random(seed)
    async with aiohttp.ClientSession(headers=headers) as http:

        async def worker() -> None:
            while not stop.is_set():
                inst = rng.randint(1, instances)
                path = (
                    f"/instances/{inst}/events?pageSize=100"
                    if rng.random() < 0.5
                    else f"/instances/{inst}/deliveries?pageSize=20"
                )
                t0 = time.perf_counter()
                try:
                    async with http.get(base + path) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    lat.samples.append(time.perf_counter() - t0)
                else:
                    lat.errors += 1

        await asyncio.gather(*(worker() for _ in range(LOAD_CONCURRENCY)))


async def sample_locks(url: str, stop: asyncio.Event) -> dict[str, float]:
    """The longest wait on a lock any session showed, sampled every 50 ms."""
    conn = await asyncpg.connect(libpq_url(url))
    longest, waits = 0.0, 0
    try:
        while not stop.is_set():
            row = await conn.fetchrow(
                """SELECT count(*), coalesce(max(extract(epoch FROM now() - state_change)), 0)
                   FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND datname = current_database()"""
            )
            assert row is not None
            waits += int(row[0])
            longest = max(longest, float(row[1]))
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return {"lock_wait_samples": waits, "longest_lock_wait_ms": round(longest * 1000, 1)}


# -- phases -------------------------------------------------------------------------------------


def _settings(url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=url,
        redis_url=redis_url,
        secret_key=SECRET_KEY,
        payload_retention_days=30,
        metadata_retention_days=90,
    )


async def purge_child(url: str, redis_url: str, now_offset_days: float, rest: float) -> None:
    """``--purge-child``: one unbounded purge run; prints its report as JSON."""
    pool = await create_pg_pool(url, 2)
    try:
        now = await pool.fetchval("SELECT now()") + timedelta(days=now_offset_days)
        report = await lifecycle.purge(
            pool, _settings(url, redis_url), budget_s=1e9, now=now, rest_ratio=rest
        )
    finally:
        await pool.close()
    assert report is not None
    batches = sorted(report.batch_seconds)
    data = report.public()
    data["batch_p99_ms"] = (
        round(batches[int(0.99 * (len(batches) - 1))] * 1000, 1) if batches else 0
    )
    data["batch_median_ms"] = round(statistics.median(batches) * 1000, 1) if batches else 0
    data["in_batches_s"] = round(sum(batches), 1)
    print(json.dumps(data))


def _child(url: str, redis_url: str, offset_days: float, rest: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--purge-child", url, redis_url, str(offset_days), str(rest)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


async def measured(
    url: str, base: str, instances: int, seconds: float | None, child: subprocess.Popen[str] | None
) -> tuple[dict[str, float], dict[str, float], dict[str, Any] | None, float]:
    """API latencies (and lock waits) for ``seconds``, or for as long as ``child`` runs."""
    stop = asyncio.Event()
    lat = Latencies()
    load = asyncio.create_task(api_load(base, instances, stop, lat, seed=7))
    locks = asyncio.create_task(sample_locks(url, stop))
    started = time.monotonic()
    report = None
    if child is not None:
        while child.poll() is None:
            await asyncio.sleep(0.2)
        out, _ = child.communicate()
        report = json.loads(out)
    else:
        assert seconds is not None
        await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    stop.set()
    await load
    return lat.summary(), await locks, report, elapsed


async def run(
    url: str, redis_url: str, instances: int, per_instance: int, baseline_s: float, rest: float
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "instances": instances,
        "events": instances * per_instance * EVENTS_PER_DELIVERY,
        "span_days": SPAN_DAYS,
        "retention": {"payload_days": 30, "metadata_days": 90},
        "rest_ratio": rest,
    }
    await fill(url, instances, per_instance)
    result["before"] = await sizes(url)
    port = free_port()
    env = {
        **os.environ,
        "POLLINATOR_DATABASE_URL": url,
        "POLLINATOR_REDIS_URL": redis_url,
        "POLLINATOR_SECRET_KEY": SECRET_KEY,
        "POLLINATOR_LOG_LEVEL": "WARNING",
    }
    api = subprocess.Popen(
        [str(ROOT / ".venv/bin/pollinator"), "api", "--port", str(port)], env=env, cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}/elements/api-v2"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        # Warm-up, then the baseline, then the same load during the purge.
        await measured(url, base, instances, min(baseline_s, 10.0), None)
        api_base, locks_base, _, _ = await measured(url, base, instances, baseline_s, None)
        result["api_without_purge"] = {**api_base, **locks_base}
        api_purge, locks_purge, report, elapsed = await measured(
            url, base, instances, None, _child(url, redis_url, 0.0, rest)
        )
        assert report is not None
        result["purge"] = {
            **report,
            "rows_per_s": round(report["rows"] / report["seconds"]) if report["seconds"] else 0,
            "rows_per_busy_s": round(report["rows"] / report["in_batches_s"])
            if report["in_batches_s"]
            else 0,
        }
        result["api_during_purge"] = {**api_purge, **locks_purge, "seconds": round(elapsed, 1)}
        result["after_purge"] = await sizes(url)
        _, _, steady, _ = await measured(
            url, base, instances, None, _child(url, redis_url, 1.0, rest)
        )
        result["next_day_purge"] = steady
    finally:
        api.terminate()
        api.wait(timeout=30)
    conn = await asyncpg.connect(libpq_url(url))
    try:
        t0 = time.monotonic()
        await conn.execute("VACUUM events, deliveries, delivery_attempts")
        result["vacuum_seconds"] = round(time.monotonic() - t0, 1)
    finally:
        await conn.close()
    result["after_vacuum"] = await sizes(url)
    return result


def _print(result: dict[str, Any]) -> None:
    print(
        f"retention purge: {result['events']:,} events over {result['span_days']} days,"
        f" {result['instances']:,} instances; payloads 30 d, metadata 90 d"
    )
    p = result["purge"]
    print(
        f"purge   {p['rows']:,} rows in {p['seconds']:.1f} s = {p['rows_per_s']:,} rows/s"
        f" ({p['rows_per_busy_s']:,}/s inside batches; rest ratio {result['rest_ratio']})"
        f"  (payloads: {p['payload_events']:,} events + {p['payload_deliveries']:,} deliveries;"
        f" deleted: {p['deleted_events']:,} events, {p['deleted_deliveries']:,} deliveries,"
        f" {p['deleted_attempts']:,} attempts)"
    )
    print(
        f"batches {p['batches']:,}: median {p['batch_median_ms']} ms, p99 {p['batch_p99_ms']} ms,"
        f" longest {p['longest_batch_s'] * 1000:.0f} ms (upper bound of any lock held)"
    )
    for label, key in (
        ("API, no purge ", "api_without_purge"),
        ("API, in purge ", "api_during_purge"),
    ):
        a = result[key]
        print(
            f"{label} {a['requests']:>7,} req  p50 {a.get('p50_ms', 0):>7} ms"
            f"  p99 {a.get('p99_ms', 0):>7} ms  max {a.get('max_ms', 0):>7} ms"
            f"  errors {a['errors']}  lock waits seen {a['lock_wait_samples']}"
            f" (longest {a['longest_lock_wait_ms']} ms)"
        )
    n = result["next_day_purge"]
    print(
        f"next day's purge: {n['rows']:,} rows in {n['seconds']:.1f} s,"
        f" longest batch {n['longest_batch_s'] * 1000:.0f} ms"
    )
    print(f"{'table':<18} {'':>14} {'rows':>12} {'dead':>10} {'table MiB':>10} {'index MiB':>10}")
    stages = {"before": "before", "after_purge": "after purge", "after_vacuum": "+day, VACUUM"}
    for stage, label in stages.items():
        for table in TABLES:
            s = result[stage][table]
            print(
                f"{table:<18} {label:>14} {s['rows']:>12,} {s['dead_rows']:>10,}"
                f" {s['table_mib']:>10} {s['index_mib']:>10}"
            )
    print(f"plain VACUUM after both purges: {result['vacuum_seconds']} s")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--purge-child":
        asyncio.run(purge_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100k events (make bench)")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--deliveries", type=int, default=200, help="per instance (×5 events)")
    parser.add_argument("--baseline-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--rest-ratio",
        type=float,
        default=lifecycle.PURGE_REST_RATIO,
        help="pause after each batch, as a multiple of its duration (the default is production's)",
    )
    args = parser.parse_args()
    if args.quick:
        args.instances, args.deliveries, args.baseline_seconds = 200, 100, 5.0
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"),
        os.environ.get("POLLINATOR_REDIS_URL"),
        ROOT / ".data/bench",
    )
    url, name = scratch_database(services.database_url, "pollinator_bench")
    try:
        upgrade(url)
        result = asyncio.run(
            run(
                url,
                services.redis_url,
                args.instances,
                args.deliveries,
                args.baseline_seconds,
                args.rest_ratio,
            )
        )
    finally:
        drop_database(services.database_url, name)
        services.stop()
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
