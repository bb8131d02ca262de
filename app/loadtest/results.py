"""Phase 7: the results — results.json (SPEC §7 keys and more), latency.png.

Pure analysis lives in :mod:`.analysis` and the file formats in :mod:`.report`; this
module gathers what the phases measured into the one results dictionary.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from app.domain.isodate import format_ms
from app.loadtest import analysis, report
from app.loadtest.context import Context

POLLINATOR_PREFIXES = ("api", "beat", "worker-")


def results(
    ctx: Context,
    delivery: analysis.DeliveryAnalysis,
    burst: analysis.BurstResult,
    burst_rate: float | None,
    ceiling: dict[str, Any],
) -> dict[str, Any]:
    st = ctx.state
    ids = {i.instance_id for i in ctx.instances}
    entries = st.journal.entries if st.journal else []
    steady = analysis.journal_stats(entries, st.t_start, st.t_end, ids)
    raw = float(ceiling.get("best_per_s") or 0.0) or None
    procs = process_stats(ctx, st.t_start, st.t_end)
    polly = {k: v for k, v in procs.items() if k.startswith(POLLINATOR_PREFIXES)}
    total = total_series(ctx, st.t_start, st.t_end)
    budget = app_budget_per_s(ctx)
    results: dict[str, Any] = {
        "instances": len(ids),
        "duration_s": ctx.opts.duration,
        "polls": steady.polls,
        "polls_per_s": _r(steady.polls_per_s),
        "capacity_polls_per_s": _r(burst.capacity_polls_per_s),
        "schedule_lag_p50_s": _r(steady.lag_p50),
        "schedule_lag_p99_s": _r(steady.lag_p99),
        "schedule_lag_max_s": _r(steady.lag_max),
        "changes": delivery.changes,
        "events_delivered": delivery.events_delivered,
        "missed": delivery.missed,
        "duplicates": delivery.duplicates,
        "e2e_latency_p50_s": _r(delivery.latency_p50),
        "e2e_latency_p99_s": _r(delivery.latency_p99),
        "raw_fetch_per_s": _r(raw),
        "poll_efficiency": _r(burst_rate / raw if burst_rate and raw else None),
        "cpu_percent": _r(sum(p["cpu_percent"] or 0.0 for p in polly.values())),
        "rss_mb": _r(total[-1] if total else None),
        "peak_rss_mb": _r(max(total) if total else None),
        # --- beyond the spec's keys ---
        "processes": procs,
        "polls_failed": steady.failed,
        "provider_requests": steady.requests,
        "delivery": {
            "e2e_latency_max_s": _r(delivery.latency_max),
            "unconfirmed": delivery.unconfirmed,
            "type_mismatch": delivery.type_mismatch,
            "duplicate_deliveries": delivery.duplicate_deliveries,
            "drain_s": ctx.extra.get("drain_s"),
            "drained": ctx.extra.get("drained"),
            "missed_examples": [
                {
                    "account": c.account,
                    "op": c.op,
                    "resource": c.resource,
                    "id": c.object_id,
                    "at": _iso(c.at),
                }
                for c in delivery.missed_changes[:20]
            ],  # fmt: skip
        },
        "burst": {
            "instances": burst.instances,
            "completed": burst.completed,
            "seconds": _r(burst.seconds),
            "trigger_s": ctx.extra.get("burst_trigger_s"),
            "journal_requests": burst.requests,
            "simulator_requests": ctx.extra.get("burst_sim_requests"),
            "page_fetch_per_s": _r(burst_rate),
            "poll_duration_p50_s": _r(burst.duration_p50),
            "poll_duration_p99_s": _r(burst.duration_p99),
            "mean_polls_in_flight": _r(burst.mean_in_flight),
            "ramp_s": _r(burst.ramp_s),
            "retriggered": ctx.extra.get("burst_retriggered"),
            "app_budget_per_s": budget,
            "bound_by_app_budget": bool(budget and burst_rate and burst_rate >= 0.9 * budget),
        },
        "ceiling": ceiling,
        "config": {
            "refresh_minutes": ctx.opts.refresh_minutes,
            "resources": ctx.opts.resources,
            "changes_per_second": ctx.opts.changes_per_second,
            "provider_latency_ms": ctx.opts.provider_latency_ms,
            "instances_per_app": ctx.opts.instances_per_app,
            "poll_workers": ctx.opts.poll_workers,
            "delivery_workers": ctx.opts.delivery_workers,
            "faults": ctx.opts.faults,
            "fault_rate": ctx.opts.fault_rate if ctx.opts.faults else 0.0,
            "create_s": ctx.extra.get("create_s"),
            "settle_s": ctx.extra.get("settle_s"),
            "cpu_note": "cpu_percent: mean over the run of API+beat+workers (100 = one "
            "core); rss_mb: their summed RSS at the end of the run; peak_rss_mb: the "
            "largest summed RSS sampled",
        },
    }
    write_outputs(ctx, results, steady.lags, delivery.latencies)
    return results


def app_budget_per_s(ctx: Context) -> float | None:
    """Provider requests/s the per-OAuth-app budget allows all instances together.

    The burst cannot fetch faster than this (Keap's per-app limit, enforced by the
    poller), so a burst at the budget measures the budget, not the engine.
    """
    from app.settings import Settings

    default = Settings.model_fields["provider_app_rate_per_second"].default
    raw = ctx.opts.env.get("POLLINATOR_PROVIDER_APP_RATE_PER_SECOND", default)
    rate = float(raw)
    if rate <= 0:
        return None
    apps = math.ceil(len(ctx.instances) / max(1, ctx.opts.instances_per_app))
    return apps * rate


def process_stats(ctx: Context, start: float, end: float) -> dict[str, dict[str, float | None]]:
    samples = [s for s in (ctx.sampler.samples if ctx.sampler else []) if start <= s.t <= end]
    names = sorted({n for s in samples for n in s.cpu})
    stats: dict[str, dict[str, float | None]] = {}
    for name in names:
        cpus = [s.cpu[name] for s in samples if name in s.cpu]
        rss = [s.rss_mb[name] for s in samples if name in s.rss_mb]
        stats[name] = {
            "cpu_percent": _r(sum(cpus) / len(cpus)) if cpus else None,
            "rss_mb": _r(rss[-1]) if rss else None,
            "peak_rss_mb": _r(max(rss)) if rss else None,
        }
    return stats


def total_series(ctx: Context, start: float, end: float) -> list[float]:
    """Summed RSS of the Pollinator processes per sample."""
    samples = [s for s in (ctx.sampler.samples if ctx.sampler else []) if start <= s.t <= end]
    return [
        sum(v for k, v in s.rss_mb.items() if k.startswith(POLLINATOR_PREFIXES)) for s in samples
    ]


def write_outputs(
    ctx: Context,
    results: dict[str, Any],
    lags: list[tuple[float, float]],
    latencies: list[tuple[float, float]],
) -> None:
    out = ctx.opts.out
    report.write_json(out / "results.json", results)
    title = (
        f"{results['instances']} instances, refresh {ctx.opts.refresh_minutes:g} min, "
        f"{ctx.opts.duration:g} s, {ctx.opts.changes_per_second:g} changes/s, "
        f"provider latency {ctx.opts.provider_latency_ms:g} ms"
    )
    report.plot_latency(out / "latency.png", lags, latencies, ctx.state.t_start, title, ctx.marks)


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def _iso(ts: float) -> str:
    return format_ms(datetime.fromtimestamp(ts, UTC))
