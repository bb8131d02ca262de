"""The API's and the operator's instance routes at 1k and 1M instances: flat, or not.

Each size gets a fresh database filled by ``scale_fixture.fill`` with poll states (one
organization owns 10 % of the rows, 100k of 1M; the rest are spread over n / 100
organizations). ``pollinator api`` then runs in its own process, and every route is
called one request at a time (``REPEAT`` times; median and p90):

- tenant API: the large organization's instance list, first page and last page
  (``?page=N&pageSize=100``, the SPEC's paging, ``Elements-Total-Count`` included), a
  small organization's first page, one instance, its polling state;
- web console: what one refresh of its instance page costs (the list with
  ``pageSize=25``, then per instance ``/polling`` and ``/deliveries?status=failed&
  pageSize=1`` — 51 requests), and ``/metrics`` (the scrape-time gauges);
- operator commands (their SQL in this process, without the process start-up):
  ``pollinator status`` (backlog, failing resources, table sizes), ``pollinator
  instances list`` across organizations and for one organization, ``instances show``;
- the API process's RSS after start-up and after the run.

``--churn 5`` then reschedules 5 % of the rows without a VACUUM, as a minute of beat at
1M instances does: their pages lose the all-visible bit, so index-only scans read the
heap again (what a live table looks like between two autovacuums).

The baseline of every ratio is the smallest size, measured in the same run.

Usage: .venv/bin/python bench/bench_api_scale.py [--quick] [--churn PCT] [--json PATH]
  --quick 1k / 10k, default 1k / 1M. Uses POLLINATOR_DATABASE_URL (a scratch database
  beside it, dropped afterwards) and POLLINATOR_REDIS_URL when set, else embedded servers
  under .data/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from scale_fixture import BIG_SECRETS, SMALL_SECRETS, Filled, fill

from app.db import libpq_url
from app.embedded import drop_database, ensure_services, free_port, scratch_database
from app.migrate import upgrade
from app.store import operator
from app.store.lifecycle import TABLE_SIZES_SQL

ROOT = Path(__file__).resolve().parent.parent
REPEAT = 20
PAGE = 100
CONSOLE_PAGE = 25


def _auth(secrets: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": f"User {secrets[0]}, Organization {secrets[1]}"}


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


async def _timed(call: Callable[[], Awaitable[object]], repeat: int) -> dict[str, float]:
    await call()  # warm: plans, connections
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 2),
    }


async def api_routes(base: str, filled: Filled, ids: list[int], repeat: int) -> dict[str, Any]:
    big, small = _auth(BIG_SECRETS), _auth(SMALL_SECRETS)
    last_page = max(1, math.ceil(filled.big_rows / PAGE))
    results: dict[str, Any] = {"deep_page": last_page}
    async with aiohttp.ClientSession(base_url=base) as http:

        async def get(path: str, headers: dict[str, str], **params: Any) -> Any:
            async with http.get(path, headers=headers, params=params) as resp:
                body = await resp.json() if resp.content_type == "application/json" else None
                if resp.status != 200:
                    raise RuntimeError(f"{path} {params}: {resp.status} {body}")
                if "Elements-Total-Count" in resp.headers:
                    return body, int(resp.headers["Elements-Total-Count"])
                return body, None

        async def one(path: str, headers: dict[str, str], **params: Any) -> None:
            await get(path, headers, **params)

        def pick() -> int:
            return random.choice(ids)

        _, total = await get("/elements/api-v2/instances", big, page=1, pageSize=PAGE)
        assert total == filled.big_rows, (total, filled.big_rows)
        deep, _ = await get("/elements/api-v2/instances", big, page=last_page, pageSize=PAGE)
        assert deep, "the last page is empty"

        async def console_refresh() -> None:
            page, _ = await get("/elements/api-v2/instances", big, page=1, pageSize=CONSOLE_PAGE)
            calls = []
            for instance in page:
                calls.append(one(f"/elements/api-v2/instances/{instance['id']}/polling", big))
                calls.append(
                    one(
                        f"/elements/api-v2/instances/{instance['id']}/deliveries",
                        big,
                        status="failed",
                        pageSize=1,
                    )
                )
            await asyncio.gather(*calls)

        async def metrics() -> None:
            async with http.get("/metrics") as resp:
                assert resp.status == 200, resp.status
                await resp.read()

        routes: dict[str, Callable[[], Awaitable[object]]] = {
            "list_first_page": lambda: one(
                "/elements/api-v2/instances", big, page=1, pageSize=PAGE
            ),
            "list_deep_page": lambda: one(
                "/elements/api-v2/instances", big, page=last_page, pageSize=PAGE
            ),
            "list_small_org": lambda: one(
                "/elements/api-v2/instances", small, page=1, pageSize=PAGE
            ),
            "get_instance": lambda: one(f"/elements/api-v2/instances/{pick()}", big),
            "polling_state": lambda: one(f"/elements/api-v2/instances/{pick()}/polling", big),
            "console_refresh": console_refresh,
            "metrics": metrics,
        }
        for name, call in routes.items():
            results[name] = await _timed(call, repeat)
    return results


def operator_routes(url: str, filled: Filled, ids: list[int], repeat: int) -> dict[str, Any]:
    """The SQL behind ``pollinator status`` and ``pollinator instances list|show``."""
    results: dict[str, Any] = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:

        def status() -> None:
            operator.backlog(conn)
            operator.failing_resources(conn)
            conn.execute(TABLE_SIZES_SQL).fetchall()

        calls: dict[str, Callable[[], object]] = {
            "status": status,
            "status_backlog": lambda: operator.backlog(conn),
            "status_failing": lambda: operator.failing_resources(conn),
            "instances_list_all": lambda: operator.list_instances(conn, None, 50),
            "instances_list_big_org": lambda: operator.list_instances(conn, filled.big_org, 50),
            "instances_list_small_org": lambda: operator.list_instances(conn, filled.small_org, 50),
            "instances_show": lambda: operator.instance_detail(conn, random.choice(ids)),
        }
        for name, call in calls.items():
            call()
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                call()
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            results[name] = {
                "median_ms": round(statistics.median(samples), 2),
                "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 2),
            }
    return results


async def measure(
    base_url: str, redis_url: str, size: int, repeat: int, churn: float
) -> dict[str, Any]:
    url, name = scratch_database(base_url, "pollinator_bench")
    try:
        upgrade(url)
        started = time.perf_counter()
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            filled = fill(conn, size, poll_states=True)
            if churn:  # what beat leaves between two autovacuums: rows moved, pages dirty
                conn.execute(
                    "UPDATE instances SET next_poll_at = next_poll_at"
                    " + make_interval(secs => refresh_interval_s) WHERE random() < %s",
                    (churn / 100,),
                )
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM instances WHERE organization_id = %s AND deleted_at IS NULL"
                    " ORDER BY random() LIMIT 200",
                    (filled.big_org,),
                ).fetchall()
            ]
        result: dict[str, Any] = {
            "instances": size,
            "organizations": filled.organizations,
            "big_org_rows": filled.big_rows,
            "fill_s": round(time.perf_counter() - started, 1),
            "churn_percent": churn,
        }
        port = free_port()
        env = {
            **os.environ,
            "POLLINATOR_DATABASE_URL": url,
            "POLLINATOR_REDIS_URL": redis_url,
            "POLLINATOR_SECRET_KEY": "bench-api-scale-secret-key-0123456789",
            "POLLINATOR_LOG_LEVEL": "WARNING",
            "POLLINATOR_API_REQUESTS_PER_SECOND_PER_ORG": "0",
            "POLLINATOR_MAX_INSTANCES_PER_ORG": "10000000",
        }
        env.pop("POLLINATOR_BROKER_URL", None)
        api = subprocess.Popen(
            [str(ROOT / ".venv/bin/pollinator"), "api", "--port", str(port)], env=env, cwd=ROOT
        )
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(150):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            result["api_rss_start_mb"] = round(_rss_mb(api.pid)[0], 1)
            result["api"] = await api_routes(f"http://127.0.0.1:{port}", filled, ids, repeat)
            rss, peak = _rss_mb(api.pid)
            result["api_rss_end_mb"], result["api_rss_peak_mb"] = round(rss, 1), round(peak, 1)
        finally:
            api.terminate()
            api.wait(10)
        result["operator"] = operator_routes(url, filled, ids, repeat)
        return result
    finally:
        drop_database(base_url, name)


def _print(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    print(f"median ms of {REPEAT} sequential calls (p90 in brackets); baseline = the")
    print(f"{base['instances']:,}-instance run, same sitting")
    header = f"{'':<34}" + "".join(f"{r['instances']:>22,}" for r in rows)
    print(header + f"{'vs base':>9}")
    for group in ("api", "operator"):
        for name, first in base[group].items():
            if not isinstance(first, dict):
                continue
            cells = "".join(
                f"{r[group][name]['median_ms']:>12.2f} ({r[group][name]['p90_ms']:>7.2f})"
                for r in rows
            )
            ratio = rows[-1][group][name]["median_ms"] / max(first["median_ms"], 0.01)
            print(f"{group + ' ' + name:<34}{cells}{ratio:>8.2f}x")
    print(
        f"{'deep page (pageSize 100)':<34}" + "".join(f"{r['api']['deep_page']:>22,}" for r in rows)
    )
    for key in ("api_rss_start_mb", "api_rss_end_mb", "api_rss_peak_mb"):
        print(f"{key:<34}" + "".join(f"{r[key]:>22.1f}" for r in rows))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1k and 10k")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--churn",
        type=float,
        default=0.0,
        help="after the fill's VACUUM, reschedule this percentage of the instances as beat"
        " does (5 is about one minute of beat at 1M instances)",
    )
    args = parser.parse_args()
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"),
        os.environ.get("POLLINATOR_REDIS_URL"),
        Path(".data/bench"),
    )
    sizes = [1_000, 10_000] if args.quick else [1_000, 1_000_000]
    try:
        rows = [
            asyncio.run(measure(services.database_url, services.redis_url, n, REPEAT, args.churn))
            for n in sizes
        ]
    finally:
        services.stop()
    _print(rows)
    if args.json:
        args.json.write_text(json.dumps({"repeat": REPEAT, "sizes": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
