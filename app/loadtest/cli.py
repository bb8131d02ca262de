"""``pollinator loadtest``: arguments, then :class:`app.loadtest.run.LoadTest`, then the table.

Exit status: 0 when the run completed with ``missed == 0`` and ``duplicates == 0``; 3 when it
completed but events were missed or duplicated; 1 when it could not run; 130 on Ctrl-C.
Every child process and embedded server is stopped on every path out.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from types import FrameType

from app.domain.pollconfig import DEFAULT_POLLER_CONFIGURATION
from app.loadtest.progress import Progress
from app.loadtest.report import format_table
from app.loadtest.run import LoadTest, Options
from app.procs import NotReady


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pollinator loadtest",
        description="Start the stack and a Keap simulator, create N instances through the API, "
        "drive changes, and check every callback against the simulator's change log.",
    )
    p.add_argument("--instances", type=int, required=True, help="instances to create")
    p.add_argument("--refresh-minutes", type=float, required=True, help="poll interval")
    p.add_argument("--duration", type=float, required=True, help="seconds of changes")
    p.add_argument("--resources", default="contacts,orders", help="comma-separated resources")
    p.add_argument(
        "--changes-per-second",
        type=float,
        default=None,
        help="simulator changes per second across all accounts (default: instances/50, ≥ 1)",
    )
    p.add_argument("--provider-latency-ms", type=float, default=0.0, help="simulator latency")
    p.add_argument("--out", type=Path, default=Path("loadtest-out"), help="output directory")
    ext = p.add_argument_group("an existing stack (instead of starting one)")
    ext.add_argument("--api-url", default=None, help="use this API instead of starting one")
    ext.add_argument("--sim-url", default=None, help="its simulator (required with --api-url)")
    ext.add_argument("--auth", default=None, help="'User …, Organization …' (with --api-url)")
    svc = p.add_argument_group("services")
    svc.add_argument("--database-url", default=None, help="default: embedded, in --data-dir")
    svc.add_argument(
        "--redis-url",
        default=None,
        help="default: embedded. A started stack FLUSHES this Redis database: give a dedicated "
        "db number. With --api-url: where to read the poll journal from (optional)",
    )
    svc.add_argument("--data-dir", type=Path, default=Path(".data/loadtest"))
    svc.add_argument("--keep-database", action="store_true", help="don't drop the run's database")
    tune = p.add_argument_group("tuning")
    tune.add_argument("--instances-per-app", type=int, default=100, help="instances per OAuth app")
    tune.add_argument("--create-concurrency", type=int, default=50)
    tune.add_argument("--poll-workers", type=int, default=1)
    tune.add_argument("--delivery-workers", type=int, default=1)
    tune.add_argument("--records-per-account", type=int, default=10, help="seeded per account")
    tune.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="POLLINATOR_X=VALUE",
        help="an extra setting for the stack's processes (repeatable)",
    )
    tune.add_argument(
        "--drain-timeout", type=float, default=None, help="seconds (default 2×refresh+30)"
    )
    tune.add_argument("--burst-timeout", type=float, default=None, help="seconds")
    tune.add_argument("--ceiling-seconds", type=float, default=15.0, help="bare fetch loop time")
    tune.add_argument("--progress-interval", type=float, default=None, help="seconds")
    flt = p.add_argument_group("provider faults")
    flt.add_argument(
        "--faults",
        action="store_true",
        help="for the whole duration the simulator answers a --fault-rate of calls with 500, "
        "the same rate hangs past the provider timeout, the same rate is throttled (429)",
    )
    flt.add_argument("--fault-rate", type=float, default=0.05)
    flt.add_argument(
        "--provider-timeout",
        type=float,
        default=None,
        help="POLLINATOR_PROVIDER_TIMEOUT_SECONDS for the stack (default 5 with --faults)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    resources = [r.strip() for r in args.resources.split(",") if r.strip()]
    unknown = [r for r in resources if r not in DEFAULT_POLLER_CONFIGURATION]
    if unknown or not resources:
        known = ", ".join(DEFAULT_POLLER_CONFIGURATION)
        raise SystemExit(f"pollinator loadtest: --resources must be among: {known}")
    if args.instances < 1 or args.duration <= 0 or args.refresh_minutes <= 0:
        raise SystemExit("pollinator loadtest: --instances, --duration, --refresh-minutes > 0")
    env: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("POLLINATOR_"):
            raise SystemExit(f"pollinator loadtest: --set needs POLLINATOR_X=VALUE, got {item!r}")
        env[key] = value
    rate = args.changes_per_second
    timeout = args.provider_timeout
    if timeout is None and args.faults:
        timeout = 5.0
    return Options(
        instances=args.instances,
        refresh_minutes=args.refresh_minutes,
        duration=args.duration,
        resources=resources,
        changes_per_second=max(1.0, args.instances / 50) if rate is None else rate,
        provider_latency_ms=args.provider_latency_ms,
        out=args.out,
        api_url=args.api_url.rstrip("/") if args.api_url else None,
        sim_url=args.sim_url.rstrip("/") if args.sim_url else None,
        auth=args.auth,
        database_url=args.database_url,
        redis_url=args.redis_url,
        data_dir=args.data_dir,
        instances_per_app=args.instances_per_app,
        create_concurrency=args.create_concurrency,
        poll_workers=args.poll_workers,
        delivery_workers=args.delivery_workers,
        faults=args.faults,
        fault_rate=args.fault_rate,
        provider_timeout_s=timeout,
        drain_timeout_s=args.drain_timeout,
        burst_timeout_s=args.burst_timeout,
        ceiling_seconds=args.ceiling_seconds,
        records_per_account=args.records_per_account,
        env=env,
        keep_database=args.keep_database,
        progress_interval=args.progress_interval,
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every ``finally``: children are stopped


def main(argv: list[str]) -> int:
    opts = options_from_args(build_parser().parse_args(argv))
    previous = signal.signal(signal.SIGTERM, _terminate)
    test = LoadTest(opts)
    try:
        results = asyncio.run(test.run(Progress(interval=opts.progress_interval)))
    except KeyboardInterrupt:
        print("\npollinator loadtest: interrupted; stopping everything", file=sys.stderr)
        return 130
    # LoadTestError, EmbeddedError, ClientError; NotReady: a process that would not start
    except (RuntimeError, NotReady) as exc:
        print(f"\npollinator loadtest: {exc}", file=sys.stderr)
        return 1
    finally:
        test.close()
        signal.signal(signal.SIGTERM, previous)
    print()
    print(format_table(results))
    if results["burst"].get("bound_by_app_budget"):
        print(
            "\nnote: the burst ran at the per-OAuth-app request budget "
            f"({results['burst']['app_budget_per_s']:g} requests/s for all apps): capacity and "
            "poll_efficiency measure that budget. Lower --instances-per-app (more apps) or "
            "--set POLLINATOR_PROVIDER_APP_RATE_PER_SECOND=0 to measure the engine."
        )
    print(f"\nresults: {opts.out / 'results.json'}   plot: {opts.out / 'latency.png'}")
    return 0 if results["missed"] == 0 and results["duplicates"] == 0 else 3
