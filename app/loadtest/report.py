"""The load test's outputs: the summary table, ``results.json`` and ``latency.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The keys SPEC §7 fixes, in the order the table shows them.
RESULT_KEYS = (
    "instances",
    "duration_s",
    "polls",
    "polls_per_s",
    "capacity_polls_per_s",
    "schedule_lag_p50_s",
    "schedule_lag_p99_s",
    "schedule_lag_max_s",
    "changes",
    "events_delivered",
    "missed",
    "duplicates",
    "e2e_latency_p50_s",
    "e2e_latency_p99_s",
    "raw_fetch_per_s",
    "poll_efficiency",
    "cpu_percent",
    "rss_mb",
    "peak_rss_mb",
)
MAX_PLOT_POINTS = 20_000


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    """The spec keys as an aligned two-column table, then the per-process figures."""
    width = max(len(k) for k in RESULT_KEYS)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{key:<{width}}  {_fmt(results.get(key))}" for key in RESULT_KEYS]
    processes = results.get("processes") or {}
    if processes:
        lines += ["", f"{'process':<18} {'cpu %':>8} {'rss MB':>9} {'peak MB':>9}"]
        for name, p in processes.items():
            lines.append(
                f"{name:<18} {_fmt(p.get('cpu_percent')):>8} {_fmt(p.get('rss_mb')):>9} "
                f"{_fmt(p.get('peak_rss_mb')):>9}"
            )
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_PLOT_POINTS:
        return list(points)
    step = len(points) / MAX_PLOT_POINTS
    return [points[int(i * step)] for i in range(MAX_PLOT_POINTS)]


def plot_latency(
    path: Path,
    lags: Sequence[tuple[float, float]],
    latencies: Sequence[tuple[float, float]],
    t0: float,
    title: str,
    marks: dict[str, float] | None = None,
) -> None:
    """Schedule lag and end-to-end latency over time (left) and their distributions (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8), gridspec_kw={"width_ratios": [3, 1]})
    series = (
        ("schedule lag (s)", lags, "tab:blue", "poll start"),
        ("end-to-end latency (s)", latencies, "tab:orange", "change time"),
    )
    for row, (label, points, color, xlabel) in enumerate(series):
        ax_time, ax_hist = axes[row]
        shown = _thin(points)
        if shown:
            ax_time.scatter(
                [t - t0 for t, _ in shown], [v for _, v in shown], s=3, alpha=0.4, color=color
            )
            ax_hist.hist([v for _, v in points], bins=60, color=color, orientation="horizontal")
        else:
            ax_time.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_time.transAxes)
        for name, at in (marks or {}).items():
            ax_time.axvline(at - t0, color="grey", linestyle="--", linewidth=0.8)
            ax_time.text(at - t0, 1.0, f" {name}", transform=ax_time.get_xaxis_transform(),
                         fontsize=8, va="top", color="grey")  # fmt: skip
        ax_time.set_ylabel(label)
        ax_time.set_xlabel(f"{xlabel}, seconds since the changes started")
        ax_time.grid(alpha=0.3)
        ax_hist.set_xlabel("count")
        ax_hist.set_title("distribution", fontsize=9)
        ax_hist.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
