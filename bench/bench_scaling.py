"""The scaling curve: the load test at several instance counts, one after the other.

For each count this runs ``pollinator loadtest`` (its own stack, database and Redis db;
the machine is assumed otherwise idle) with the same refresh interval, resources,
provider latency and change rate, and collects from each ``results.json``: polls/s,
schedule lag p50/p99/max, missed and duplicates, the Pollinator processes' CPU and RSS,
the burst capacity and the bare loop's page rate of that run. Writes a Markdown table,
the collected JSON and a plot (lag p99, CPU and RSS against the count) next to each other.

A count *passes* when nothing was missed or duplicated, the schedule lag p99 is within
``--lag-target`` and the summed RSS within ``--rss-target``; the table says which is the
largest passing count.

Runs made separately (a longer one at the largest count) are tabulated together with
``--tabulate run-*/results.json --out DIR``.

Usage: .venv/bin/python bench/bench_scaling.py [--quick] [--counts 1000,5000,10000,20000,40000]
       [--duration 180] [--out bench/results/scaling] [--poll-workers 1] [-- extra loadtest args]
(uses POLLINATOR_DATABASE_URL / POLLINATOR_REDIS_URL when set, else embedded servers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COLUMNS = (
    ("instances", "instances", "{:,}"),
    ("polls/s", "polls_per_s", "{:.0f}"),
    ("lag p50 s", "schedule_lag_p50_s", "{:.2f}"),
    ("lag p99 s", "schedule_lag_p99_s", "{:.2f}"),
    ("lag max s", "schedule_lag_max_s", "{:.2f}"),
    ("missed", "missed", "{:,}"),
    ("dup", "duplicates", "{:,}"),
    ("CPU % (100 = 1 core)", "cpu_percent", "{:.0f}"),
    ("RSS MB", "rss_mb", "{:.0f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("burst polls/s", "capacity_polls_per_s", "{:.0f}"),
    ("bare loop pages/s", "raw_fetch_per_s", "{:,.0f}"),
    ("efficiency", "poll_efficiency", "{:.2f}"),
)


def passes(result: dict[str, Any], lag_target: float, rss_target: float) -> bool:
    lag = result.get("schedule_lag_p99_s")
    rss = result.get("peak_rss_mb")
    return (
        result.get("missed") == 0
        and result.get("duplicates") == 0
        and lag is not None
        and lag <= lag_target
        and rss is not None
        and rss <= rss_target
    )


def _cell(result: dict[str, Any], key: str, fmt: str) -> str:
    value = result.get(key)
    return "—" if value is None else fmt.format(value)


def table(results: list[dict[str, Any]], lag_target: float, rss_target: float) -> str:
    head = [name for name, _, _ in COLUMNS] + ["passes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for result in results:
        cells = [_cell(result, key, fmt) for _, key, fmt in COLUMNS]
        cells.append("yes" if passes(result, lag_target, rss_target) else "**no**")
        lines.append("| " + " | ".join(cells) + " |")
    passing = [r["instances"] for r in results if passes(r, lag_target, rss_target)]
    lines.append("")
    lines.append(
        f"Largest passing count (0 missed, 0 duplicates, lag p99 ≤ {lag_target:g} s, "
        f"peak RSS ≤ {rss_target:g} MB): " + (f"**{max(passing):,}**" if passing else "none")
    )
    return "\n".join(lines)


def plot(path: Path, results: list[dict[str, Any]], lag_target: float, rss_target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["instances"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    series = (
        ("schedule lag p99 (s)", "schedule_lag_p99_s", lag_target),
        ("CPU of Pollinator's processes (% of one core)", "cpu_percent", None),
        ("peak RSS of Pollinator's processes (MB)", "peak_rss_mb", rss_target),
    )
    for ax, (label, key, target) in zip(axes, series, strict=True):
        ax.plot(counts, [r.get(key) or 0 for r in results], marker="o")
        if target is not None:
            ax.axhline(target, color="tab:red", linestyle="--", linewidth=0.8, label="target")
            ax.legend()
        ax.set_xlabel("instances (1-minute refresh, 2 resources)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, results: list[dict[str, Any]], lag_target: float, rss_target: float) -> None:
    """The table (Markdown), the collected results (JSON) and the plot, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    (out / "scaling.md").write_text(table(results, lag_target, rss_target) + "\n")
    plot(out / "scaling.png", results, lag_target, rss_target)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="300 and 600 instances, 40 s each")
    parser.add_argument("--counts", default="1000,5000,10000,20000,40000")
    parser.add_argument("--duration", type=int, default=180)
    parser.add_argument("--refresh-minutes", type=float, default=1.0)
    parser.add_argument("--resources", default="contacts,orders")
    parser.add_argument("--changes-per-second", type=float, default=20.0)
    parser.add_argument("--provider-latency-ms", type=float, default=100.0)
    parser.add_argument("--poll-workers", type=int, default=1)
    parser.add_argument("--lag-target", type=float, default=2.0)
    parser.add_argument("--rss-target", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scaling"))
    parser.add_argument(
        "--tabulate",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="run nothing: tabulate and plot these load tests' results.json into --out",
    )
    parser.add_argument("extra", nargs="*", help="more loadtest arguments (after --)")
    args = parser.parse_args()
    if args.tabulate:
        runs = [json.loads(f.read_text()) for f in args.tabulate]
        runs.sort(key=lambda r: int(r["instances"]))
        write(args.out, runs, args.lag_target, args.rss_target)
        print(table(runs, args.lag_target, args.rss_target))
        return 0
    if args.quick:
        args.counts, args.duration = "300,600", 40
        args.out = Path(".data/bench/scaling-quick")
    args.out.mkdir(parents=True, exist_ok=True)
    collected: list[dict[str, Any]] = []
    for count in [int(c) for c in args.counts.split(",")]:
        run_dir = args.out / f"run-{count}"
        argv = [
            sys.executable, "-m", "app.cli", "loadtest",
            "--instances", str(count),
            "--refresh-minutes", f"{args.refresh_minutes:g}",
            "--duration", str(args.duration),
            "--resources", args.resources,
            "--changes-per-second", f"{args.changes_per_second:g}",
            "--provider-latency-ms", f"{args.provider_latency_ms:g}",
            "--poll-workers", str(args.poll_workers),
            "--set", "POLLINATOR_PROVIDER_APP_RATE_PER_SECOND=0",
            "--out", str(run_dir),
            *args.extra,
        ]  # fmt: skip
        for flag, env in (("--database-url", "POLLINATOR_DATABASE_URL"),
                          ("--redis-url", "POLLINATOR_REDIS_URL")):  # fmt: skip
            if os.environ.get(env):
                argv += [flag, os.environ[env]]
        started = time.monotonic()
        print(f"--- {count:,} instances", flush=True)
        code = subprocess.run(argv, check=False).returncode
        result_file = run_dir / "results.json"
        if not result_file.exists():
            print(f"{count:,}: the load test wrote no results (exit {code})", flush=True)
            continue
        result: dict[str, Any] = json.loads(result_file.read_text())
        result["wall_s"] = round(time.monotonic() - started, 1)
        collected.append(result)
        write(args.out, collected, args.lag_target, args.rss_target)
    print(table(collected, args.lag_target, args.rss_target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
