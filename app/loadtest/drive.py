"""Phases 3 and 4: settle, drive changes while watching, then drain.

**settle** — creating instances through the API at full speed competes with polling the
ones already created, and a large count leaves the schedule behind when it ends (15 s at
40,000 on two cores). The run waits until the polls of the last ten seconds started on
time (p99 lag within :data:`SETTLE_LAG_S`; at most :data:`SETTLE_TIMEOUT_S`), so the run's
numbers describe the steady state; how long that took is reported (``settle_s``).
**run** — the simulator's mutator makes ``--changes-per-second`` random changes across the
accounts for ``--duration`` seconds (optionally with injected faults); every ten seconds
the missed count is estimated from a sample of accounts. **drain** — changes stop; wait
until every change is covered by a delivered event, or the drain timeout.
"""

from __future__ import annotations

import asyncio
import time

from app.loadtest import analysis
from app.loadtest.analysis import Change
from app.loadtest.context import Context, Instance, bounded

LIVE_MISSED_SAMPLE = 25
LIVE_MISSED_EVERY_S = 10
SETTLE_LAG_S = 1.0
SETTLE_WINDOW_S = 10.0
SETTLE_TIMEOUT_S = 300.0


def settled(entries: list[analysis.JournalEntry], now: float) -> bool:
    """Whether the polls that started in the last :data:`SETTLE_WINDOW_S` were on time."""
    recent = [
        max(e.started - e.scheduled, 0.0)
        for e in entries[-50_000:]
        if e.scheduled and e.started >= now - SETTLE_WINDOW_S
    ]
    p99 = analysis.percentile(recent, 99)
    return p99 is not None and p99 <= SETTLE_LAG_S


async def settle(ctx: Context) -> None:
    """Wait for the schedule to catch up after the instances were created (see above)."""
    ctx.set_phase("settle")
    started = time.time()
    journal = ctx.state.journal
    if journal is not None:
        await asyncio.sleep(SETTLE_WINDOW_S)  # a window of polls made after creation ended
        while (now := time.time()) - started < SETTLE_TIMEOUT_S:
            ctx.tick()
            if settled(journal.entries, now):
                break
            await asyncio.sleep(1.0)
    ctx.extra["settle_s"] = round(time.time() - started, 3)


async def run_changes(ctx: Context) -> None:
    opts = ctx.opts
    sim = ctx.simulator
    ctx.set_phase("run")
    if opts.faults:
        await inject_faults(ctx, opts.duration)
    ctx.state.t_start = time.time()
    ctx.marks["changes start"] = ctx.state.t_start
    await sim.mutator(
        opts.changes_per_second,
        resources=opts.resources,
        create_ratio=0.3,
        accounts=[i.account for i in ctx.instances],
    )
    deadline = ctx.state.t_start + opts.duration
    next_live = time.time() + LIVE_MISSED_EVERY_S
    while (now := time.time()) < deadline:
        await asyncio.sleep(min(1.0, deadline - now))
        ctx.tick()
        if time.time() >= next_live:
            next_live = time.time() + LIVE_MISSED_EVERY_S
            await estimate_missed(ctx)
    await sim.mutator(0)
    ctx.state.t_end = time.time()
    ctx.marks["changes stop"] = ctx.state.t_end
    if opts.faults:
        await sim.clear_faults()


async def inject_faults(ctx: Context, seconds: float) -> None:
    """500s, hangs past the provider timeout and throttling, each at ``--fault-rate``."""
    timeout_s = ctx.opts.provider_timeout_s or 5.0
    rate = ctx.opts.fault_rate
    sim = ctx.simulator
    await sim.add_fault("error500", seconds, rate)
    await sim.add_fault("timeout", seconds, rate, delaySeconds=timeout_s + 3)
    await sim.add_fault("throttle", seconds, rate)


async def account_changes(ctx: Context, account: str) -> list[Change]:
    """The account's changes since the run started, from the simulator's change log."""
    items = await ctx.simulator.changes(account)
    return [
        c
        for c in (analysis.parse_change(account, item) for item in items)
        if c.at >= ctx.state.t_start
    ]


async def estimate_missed(ctx: Context) -> None:
    """Missed so far, extrapolated from a fixed sample of accounts (cheap, approximate)."""
    if ctx.state.receiver is None or not ctx.instances:
        return
    step = max(1, len(ctx.instances) // LIVE_MISSED_SAMPLE)
    sample = [i.account for i in ctx.instances[::step][:LIVE_MISSED_SAMPLE]]
    changes: list[Change] = []
    for account in sample:
        changes += await account_changes(ctx, account)
    wanted = set(sample)
    events = [e for e in ctx.state.receiver.events if e.account in wanted]
    overdue = time.time() - (2 * ctx.opts.refresh_minutes * 60 + 15)
    result = analysis.analyze_delivery(changes, events, overdue_before=overdue)
    ctx.state.live_missed = round(result.missed * len(ctx.instances) / len(sample))


async def drain(ctx: Context) -> analysis.DeliveryAnalysis:
    ctx.set_phase("drain")
    await asyncio.sleep(0.5)
    collected: list[Change] = []

    async def fetch(inst: Instance) -> None:
        collected.extend(await account_changes(ctx, inst.account))

    await bounded(ctx.instances, 32, fetch)
    ctx.changes = sorted(collected, key=lambda c: c.at)
    timeout = ctx.opts.drain_timeout_s
    if timeout is None:
        timeout = 2 * ctx.opts.refresh_minutes * 60 + 30 + (60 if ctx.opts.faults else 0)
    started = time.time()
    deadline = started + timeout
    while True:
        ctx.tick()
        assert ctx.state.receiver is not None
        result = analysis.analyze_delivery(ctx.changes, ctx.state.receiver.events)
        ctx.state.live_missed = result.missed
        if result.missed == 0 or time.time() > deadline:
            break
        await asyncio.sleep(1.0)
    ctx.extra["drain_s"] = round(time.time() - started, 3)
    ctx.extra["drained"] = result.missed == 0
    return result
