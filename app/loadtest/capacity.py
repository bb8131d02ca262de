"""Phases 5 and 6: what the system can do at most, and what nothing could beat.

**burst** — every instance is made due at once (when the tool owns the stack, one
UPDATE and the notification that wakes beat, as ``POST .../polling/run`` does per
instance; else that call per instance); capacity is polls completed ÷ seconds until the
last finished, from the poll journal. **ceiling** — with the stack stopped, a bare aiohttp
loop (own process, :mod:`.ceiling`) fetches the same page URLs from the same simulator:
the page-fetch rate nothing could beat.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from app.domain.limits import MAX_PAGE_SIZE
from app.domain.pollconfig import parse_poller_configuration
from app.loadtest import analysis
from app.loadtest.context import Context, Instance, LoadTestError, bounded
from app.loadtest.setup import oauth_app
from app.providers.infusionsoft import page_url

TRIGGER_CONCURRENCY = 100
STALL_RETRIGGER_S = 10
MAX_RETRIGGERS = 3
CEILING_SAMPLE = 500


async def _all_due(database_url: str, ids: list[int]) -> None:
    """What ``POST .../polling/run`` does for each instance, in one transaction: make it due
    and wake beat (which claims at once rather than at its next tick)."""
    from app.db import libpq_url
    from app.store.schedule import DUE_CHANNEL

    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE instances SET next_poll_at = now() WHERE id = ANY($1::bigint[])", ids
            )
            await conn.execute(f"NOTIFY {DUE_CHANNEL}")
    finally:
        await conn.close()


async def burst(ctx: Context) -> tuple[analysis.BurstResult, float | None]:
    """Every instance due at once. Returns the burst and the simulator's page rate."""
    ctx.set_phase("burst")
    journal = ctx.state.journal
    if journal is None:
        return analysis.BurstResult(len(ctx.instances), 0, None, None, 0), None
    journal.poll()
    stats0 = await ctx.simulator.stats()
    ids = {i.instance_id for i in ctx.instances}
    by_id = {i.instance_id: i for i in ctx.instances}
    start = time.time()

    async def trigger(inst: Instance) -> None:
        for _ in range(3):
            try:
                status, _data = await ctx.pollinator.request(
                    "POST", f"/instances/{inst.instance_id}/polling/run"
                )
            except (aiohttp.ClientError, TimeoutError):
                continue
            if status == 202:
                return

    if ctx.stack is not None and ctx.stack.database_url:
        # We own the stack: make every instance due in one statement, so the burst
        # measures the pollers rather than how fast the API takes 'poll now' calls.
        await _all_due(ctx.stack.database_url, sorted(ids))
        ctx.extra["burst_trigger"] = "database"
    else:
        await bounded(ctx.instances, TRIGGER_CONCURRENCY, trigger)
        ctx.extra["burst_trigger"] = "api"
    ctx.extra["burst_trigger_s"] = round(time.time() - start, 3)
    timeout = ctx.opts.burst_timeout_s or max(60.0, len(ids) / 10)
    deadline = start + timeout
    last_progress, last_done, retriggered = time.time(), -1, 0
    while True:
        ctx.tick()
        result = analysis.burst_capacity(journal.entries, ids, start)
        if result.completed >= len(ids) or time.time() > deadline:
            break
        if result.completed != last_done:
            last_done, last_progress = result.completed, time.time()
        elif time.time() - last_progress > STALL_RETRIGGER_S and retriggered < MAX_RETRIGGERS:
            # a poll that collided with a regular one is skipped (no journal line)
            done = {e.instance for e in journal.entries if e.started >= start}
            await bounded([by_id[i] for i in ids - done], TRIGGER_CONCURRENCY, trigger)
            retriggered += 1
            last_progress = time.time()
        await asyncio.sleep(0.25)
    stats1 = await ctx.simulator.stats()
    sim_requests = int(stats1["rest"]["requests"]) - int(stats0["rest"]["requests"])
    ctx.extra["burst_retriggered"] = retriggered
    ctx.extra["burst_sim_requests"] = sim_requests
    rate = result.requests / result.seconds if result.seconds else None
    return result, rate


async def ceiling(ctx: Context) -> dict[str, Any]:
    ctx.set_phase("ceiling")
    if ctx.stack is not None:
        ctx.stack.stop_pollinator()  # the stack idle: the simulator is the only server left
    step = max(1, len(ctx.instances) // CEILING_SAMPLE)
    sample = ctx.instances[::step][:CEILING_SAMPLE]
    tokens: dict[str, str] = {}
    sim = ctx.simulator

    async def token(inst: Instance) -> None:
        app = oauth_app(inst)
        answer = await sim.token(app, await sim.authorize(app, inst.account))
        tokens[inst.account] = str(answer["access_token"])

    await bounded(sample, 32, token)
    configs = parse_poller_configuration(ctx.poller_configuration())
    since = datetime.fromtimestamp(ctx.state.t_end, UTC)
    base = f"{ctx.sim_url}/crm/rest/v1"
    targets = [
        [
            str(page_url(base, cfg.url.render(since, UTC), cfg.page_size or MAX_PAGE_SIZE, 0)),
            tokens[a],
        ]
        for a in tokens
        for cfg in configs.values()
    ]
    # enough in flight to hide the provider latency at ~10k pages/s, and less in case
    # that many only adds contention
    levels = [16, 64, 256, 1024]
    per_level = max(1.0, ctx.opts.ceiling_seconds / len(levels))
    spec = {"targets": targets, "levels": levels, "seconds": per_level}
    spec_path = ctx.opts.out / "ceiling-spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.loadtest.ceiling",
        str(spec_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), per_level * len(levels) + 60)
    spec_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise LoadTestError(f"ceiling loop failed: {err.decode(errors='replace')[-1500:]}")
    data: dict[str, Any] = json.loads(out)
    return data
