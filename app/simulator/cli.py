"""``pollinator simulate``: run the Keap simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from aiohttp import web

from app.gctune import tune_gc
from app.simulator.config import SimulatorConfig
from app.simulator.resources import RESOURCE_NAMES
from app.simulator.server import SIMULATOR, create_app

__all__ = ["build_parser", "config_from_args", "main"]

log = logging.getLogger("app.simulator")
#: Pending connections the listening socket holds (the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 2048


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pollinator simulate", description="Infusionsoft (Keap) REST v1 simulator"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay of every REST response")
    p.add_argument("--seed", type=int, default=None, help="make generated data deterministic")
    p.add_argument("--clock-skew-ms", type=int, default=0, help="record dates lag the wall clock")
    p.add_argument("--token-ttl", type=float, default=86_400.0, help="access token lifetime (s)")
    p.add_argument("--throttle-per-second", type=float, default=25.0, help="0 disables")
    p.add_argument("--throttle-per-minute", type=int, default=1500, help="0 disables")
    p.add_argument("--quota-per-day", type=int, default=150_000, help="0 disables")
    p.add_argument(
        "--no-retry-after", action="store_true", help="omit Retry-After on 429 (as Keap does)"
    )
    p.add_argument("--accounts", type=int, default=0, help="pre-seed accounts acct-1..acct-N")
    p.add_argument(
        "--records-per-account",
        type=int,
        default=0,
        help="records per seeded/new account, spread over --seed-resources",
    )
    p.add_argument(
        "--seed-resources",
        default=",".join(RESOURCE_NAMES),
        help="comma-separated resources that seeding fills (default: all)",
    )
    p.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="register a fixed OAuth client (repeatable); default: any client, secret pinned",
    )
    p.add_argument("--max-limit", type=int, default=1000, help="larger limit values are clamped")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    resources = [r.strip() for r in args.seed_resources.split(",") if r.strip()]
    unknown = [r for r in resources if r not in RESOURCE_NAMES]
    if unknown:
        raise SystemExit(f"pollinator simulate: unknown resources: {', '.join(unknown)}")
    clients: dict[str, str] = {}
    for item in args.client:
        cid, sep, secret = item.partition(":")
        if not sep or not cid:
            raise SystemExit(f"pollinator simulate: --client must be ID:SECRET, got {item!r}")
        clients[cid] = secret
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        seed=args.seed,
        clock_skew_ms=args.clock_skew_ms,
        token_ttl=args.token_ttl,
        throttle_per_second=args.throttle_per_second,
        throttle_per_minute=args.throttle_per_minute,
        quota_per_day=args.quota_per_day,
        retry_after=not args.no_retry_after,
        accounts=args.accounts,
        records_per_account=args.records_per_account,
        seed_resources=resources,
        clients=clients,
        max_limit=args.max_limit,
    )


async def serve(config: SimulatorConfig) -> None:
    """Serve until SIGINT/SIGTERM; prints one line with the URL once listening."""
    started = time.monotonic()
    app = create_app(config)
    sim = app[SIMULATOR]
    if config.accounts:
        log.info(
            "seeded %d accounts x %d records in %.1fs",
            config.accounts,
            config.records_per_account,
            time.monotonic() - started,
        )
    # handler_cancellation: a call hung by the ``timeout`` fault ends when its client gives up.
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=5.0, handler_cancellation=True
    )
    await runner.setup()
    # A burst opens hundreds of connections at once; at aiohttp's default backlog (128) the
    # kernel dropped SYNs past it (ListenOverflows) and those requests waited out the 1 s
    # SYN retry: the 1.2 s p99 poll of some load-test bursts. Keap's edge does not do that.
    site = web.TCPSite(runner, config.host, config.port, backlog=LISTEN_BACKLOG)
    await site.start()
    tune_gc()  # what is seeded lives as long as the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1] if runner.addresses else config.port
    print(f"Keap simulator listening on http://{config.host}:{port}", flush=True)  # noqa: T201
    try:
        await stop.wait()
    finally:
        log.info("stopping (%d accounts)", len(sim.store.accounts))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = config_from_args(args)
    try:
        asyncio.run(serve(config))
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, e)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
