"""Benchmark of the Keap simulator: memory per 10k accounts and list requests/s on one core.

Runs every server in its own process pinned to CPU 0 and the load generator in another process
(pinned to the other CPUs when there are any), so client CPU does not count against the server.
The baseline is a bare aiohttp handler returning a fixed JSON body of the same size, measured in
the same run with the same client: ``ratio`` = simulator req/s / baseline req/s.

    .venv/bin/python bench/bench_simulator.py            # 10,000 accounts x 300 records, 5 s runs
    .venv/bin/python bench/bench_simulator.py --quick    # 1,000 accounts, 2 s runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

from app.client import OAuthApp, Simulator

ROOT = Path(__file__).resolve().parent.parent
BENCH_APP = OAuthApp("bench", "secret", "https://bench.example.com/cb")


# --- child roles ----------------------------------------------------------------------------------


def run_baseline_server(port: int, body_size: int) -> None:
    """A bare aiohttp app answering every GET with a fixed JSON body of ``body_size`` bytes."""
    filler = "x" * max(body_size - 40, 0)
    body = json.dumps({"contacts": [], "count": 0, "next": filler}).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)

    async def serve() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"baseline listening on http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


async def _get_tokens(base: str, accounts: Sequence[str]) -> list[str]:
    tokens: list[str] = []
    async with aiohttp.ClientSession() as session:
        sim = Simulator(session, base)
        for account in accounts:
            code = await sim.authorize(BENCH_APP, account, state="s")
            tokens.append((await sim.token(BENCH_APP, code))["access_token"])
    return tokens


async def _load(
    base: str, path: str, tokens: list[str], seconds: float, conc: int
) -> dict[str, Any]:
    latencies: list[float] = []
    sizes: list[int] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(i: int) -> None:
            n = i
            while time.monotonic() < deadline:
                headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"} if tokens else {}
                n += conc
                t0 = time.perf_counter()
                async with session.get(base + path, headers=headers) as resp:
                    body = await resp.read()
                latencies.append(time.perf_counter() - t0)
                sizes.append(len(body))
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(conc)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
        "mean_bytes": statistics.fmean(sizes) if sizes else 0.0,
        "statuses": statuses,
    }


def run_client(args: argparse.Namespace) -> None:
    accounts = [a for a in args.accounts.split(",") if a]

    async def go() -> dict[str, Any]:
        tokens = await _get_tokens(args.base, accounts) if accounts else []
        await _load(args.base, args.path, tokens, 0.5, args.concurrency)  # warm-up
        print("START", flush=True)  # the parent measures server CPU from here
        return await _load(args.base, args.path, tokens, args.seconds, args.concurrency)

    print(json.dumps(asyncio.run(go())), flush=True)


# --- orchestration --------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(pid: int, cpus: list[int]) -> None:
    try:
        psutil.Process(pid).cpu_affinity(cpus)
    except (AttributeError, psutil.Error):  # macOS has no affinity
        pass


def _spawn(cmd: list[str], timeout: float = 600) -> tuple[subprocess.Popen[str], str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    _pin(proc.pid, [0])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip(), time.monotonic() - started


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _simulator(accounts: int, records: int) -> tuple[subprocess.Popen[str], str, float]:
    return _spawn(
        [
            sys.executable,
            "-m",
            "app.cli",
            "simulate",
            "--port",
            str(_free_port()),
            "--seed",
            "1",
            "--accounts",
            str(accounts),
            "--records-per-account",
            str(records),
            "--throttle-per-second",
            "0",
            "--throttle-per-minute",
            "0",
            "--quota-per-day",
            "0",
            "--log-level",
            "WARNING",
        ]
    )


def _client(
    base: str, path: str, accounts: list[str], seconds: float, concurrency: int, server_pid: int
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "client",
        "--base",
        base,
        "--path",
        path,
        "--accounts",
        ",".join(accounts),
        "--seconds",
        str(seconds),
        "--concurrency",
        str(concurrency),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    cpus = list(range(1, os.cpu_count() or 1)) or [0]
    _pin(proc.pid, cpus)
    server = psutil.Process(server_pid)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "START":
        proc.kill()
        raise SystemExit("load client failed")
    server.cpu_percent(None)
    out, _ = proc.communicate(timeout=600)
    cpu = server.cpu_percent(None)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["server_cpu_pct"] = cpu
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 accounts, 2 s per scenario")
    p.add_argument("--accounts-count", type=int, default=None)
    p.add_argument("--records", type=int, default=300, help="records per account")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--concurrency", type=int, default=64)
    # child roles
    p.add_argument("--role", choices=["main", "client", "baseline"], default="main")
    p.add_argument("--base", default="")
    p.add_argument("--path", default="/")
    p.add_argument("--accounts", default="")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--body-size", type=int, default=100)
    args = p.parse_args(argv)
    if args.role == "client":
        args.seconds = args.seconds or 5.0
        run_client(args)
        return 0
    if args.role == "baseline":
        run_baseline_server(args.port, args.body_size)
        return 0

    n_accounts = args.accounts_count or (1000 if args.quick else 10_000)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    print(f"CPUs: {os.cpu_count()}  server pinned to CPU 0, client on the others", flush=True)

    empty, _, _ = _simulator(0, 0)
    rss_empty = psutil.Process(empty.pid).memory_info().rss
    _stop(empty)
    sim, base, seed_s = _simulator(n_accounts, args.records)
    rss_full = psutil.Process(sim.pid).memory_info().rss
    delta = rss_full - rss_empty
    print(
        f"seeded {n_accounts} accounts x {args.records} records in {seed_s:.1f}s; "
        f"RSS {rss_full / 2**20:.0f} MB (empty {rss_empty / 2**20:.0f} MB): "
        f"{delta / 2**20:.0f} MB delta = {delta / 2**20 * 10_000 / n_accounts:.0f} MB per 10k "
        f"accounts, {delta / (n_accounts * args.records):.0f} B/record",
        flush=True,
    )
    accounts = [f"acct-{i}" for i in range(1, min(n_accounts, 500) + 1)]
    since = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60))
    scenarios = [
        ("poll: contacts since=now-60s", f"/crm/rest/v1/contacts?since={since}&order=id"),
        ("full page: contacts limit=1000", "/crm/rest/v1/contacts?limit=1000"),
        ("full page: notes (no date filter)", "/crm/rest/v1/notes?limit=1000"),
    ]
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    try:
        for name, path in scenarios:
            res = _client(base, path, accounts, seconds, args.concurrency, sim.pid)
            port = _free_port()
            bproc, bbase, _ = _spawn(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--role",
                    "baseline",
                    "--port",
                    str(port),
                    "--body-size",
                    str(int(res["mean_bytes"])),
                ]
            )
            try:
                bres = _client(bbase, path, [], seconds, args.concurrency, bproc.pid)
            finally:
                _stop(bproc)
            rows.append((name, res, bres))
        rss_after = psutil.Process(sim.pid).memory_info().rss
    finally:
        _stop(sim)

    header = (
        f"{'scenario':<36} {'bytes':>7} {'sim req/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv cpu%':>8} {'base req/s':>10} {'ratio':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    for name, res, bres in rows:
        bad = {k: v for k, v in res["statuses"].items() if k != "200"}
        print(
            f"{name:<36} {res['mean_bytes']:>7.0f} {res['rps']:>10.0f} {res['p50_ms']:>7.1f} "
            f"{res['p99_ms']:>7.1f} {res['server_cpu_pct']:>8.0f} {bres['rps']:>10.0f} "
            f"{res['rps'] / bres['rps']:>6.2f}" + (f"  non-200: {bad}" if bad else "")
        )
    print(f"\nsimulator RSS after load: {rss_after / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
