"""The phases of one load test, run in order by :class:`LoadTest`.

1. **stack** — services, a fresh database, simulator, receiver, API, beat, workers
   (or an existing stack with ``--api-url``).
2. **create** — N instances through the public API, each with its own simulator account
   and a real OAuth code (one OAuth app per ``--instances-per-app`` instances, because
   the poller enforces a per-app request budget as Keap does).
3. **settle** — wait until the polls of the last ten seconds started on time (creating
   many instances at full speed leaves the schedule behind); reported as ``settle_s``.
   **run** — the simulator's mutator makes ``--changes-per-second`` random changes across
   the accounts for ``--duration`` seconds (optionally with injected faults).
4. **drain** — changes stop; wait until every change is covered by a delivered event, or
   the drain timeout.
5. **burst** — every instance is made due at once (one UPDATE when the tool owns the stack,
   else ``POST .../polling/run`` per instance); capacity is
   polls completed ÷ seconds until the last finished, from the poll journal.
6. **ceiling** — with the stack stopped, a bare aiohttp loop (own process) fetches the same
   page URLs from the same simulator: the page-fetch rate nothing could beat.
7. **report** — results.json, latency.png, the table.

Phases 1–2 live in :mod:`.setup`, 3–4 in :mod:`.drive`, 5–6 in :mod:`.capacity` and 7 in
:mod:`.results`; what they share is a :class:`~app.loadtest.context.Context`.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from app.client import Pollinator, Simulator
from app.loadtest import analysis, capacity, drive, results, setup
from app.loadtest.context import Context, Options
from app.loadtest.progress import Progress

__all__ = ["LoadTest", "Options"]


class LoadTest:
    """One run: :meth:`run` goes through the phases; :meth:`close` stops whatever started."""

    def __init__(self, opts: Options) -> None:
        self.ctx = Context(opts)

    async def run(self, progress: Progress) -> dict[str, Any]:
        ctx = self.ctx
        ctx.progress = progress
        ctx.opts.out.mkdir(parents=True, exist_ok=True)
        # Started from this (the main) thread, not a worker thread: the kernel's
        # parent-death signal follows the thread that started a child.
        if ctx.opts.managed:
            setup.start_stack(ctx)
        else:
            setup.start_external(ctx)
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            ctx.sim = Simulator(session, ctx.sim_url)
            ctx.api = Pollinator(session, ctx.api_url, ctx.auth)
            progress.start(self.progress_line)
            try:
                await setup.create_instances(ctx)
                await drive.settle(ctx)
                await drive.run_changes(ctx)
                delivery = await drive.drain(ctx)
                burst, burst_rate = await capacity.burst(ctx)
                ceiling = await capacity.ceiling(ctx)
            finally:
                await progress.stop()
            ctx.set_phase("report")
            if ctx.sampler is not None:
                ctx.sampler.stop()
            return results.results(ctx, delivery, burst, burst_rate, ceiling)

    def close(self) -> None:
        ctx = self.ctx
        if ctx.sampler is not None:
            ctx.sampler.stop()
        if ctx.state.journal is not None:
            ctx.state.journal.close()
        if ctx.stack is not None:
            ctx.stack.close()

    def progress_line(self) -> str:
        st = self.ctx.state
        now = time.time()
        parts = [f"[{st.phase}"]
        if st.phase == "run" and st.t_start:
            parts[0] += f" {now - st.t_start:.0f}/{self.ctx.opts.duration:g}s"
        parts[0] += "]"
        parts.append(f"instances {st.created}/{self.ctx.opts.instances}")
        if st.journal is not None and st.t_start:
            recent = [e for e in st.journal.entries[-20000:] if e.finished >= now - 10]
            parts.append(f"polls/s {len(recent) / 10:.1f}")
            window = [
                max(e.started - e.scheduled, 0.0)
                for e in st.journal.entries[-50000:]
                if e.scheduled and e.started >= st.t_start
            ]
            p99 = analysis.percentile(window, 99)
            parts.append(f"lag p99 {p99:.2f}s" if p99 is not None else "lag p99 -")
        if st.receiver is not None:
            parts.append(f"events {len(st.receiver.events)}")
        if st.live_missed is not None:
            approx = "~" if st.phase == "run" else ""
            parts.append(f"missed {approx}{st.live_missed}")
        return "  ".join(parts)
