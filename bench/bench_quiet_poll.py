"""CPU per quiet poll in one process, beside the CPU of the bare GET it has to make.

Setup as :mod:`bench_poll_worker` (a simulator at 100 ms latency, N instances created
through the service layer, each polling ``contacts``). Then, on uvloop in this process:
one round of polls that each store 3 events, and ``--rounds`` rounds of quiet polls (the
provider has nothing new), each followed by a bare aiohttp loop fetching one empty page
per instance with the same number in flight. Both are measured with this process's CPU
time (``time.process_time``): no Celery, no Flower events, no other process. The machine's
speed varies from minute to minute, so compare the ratio to the bare GET, or runs made
in one sitting.

Each round polls twice: with the garbage collector tuned as Pollinator's processes run it
(:func:`app.gctune.tune_gc`) and with CPython's defaults (the baseline), and reports the
collector's own share of each (timed with ``gc.callbacks``). The bare loop runs at
CPython's defaults, as it did before the services were tuned, so its column compares with
earlier runs of this bench.

Usage: .venv/bin/python bench/bench_quiet_poll.py [--quick] [--instances N] [--rounds R]
(uses POLLINATOR_DATABASE_URL / POLLINATOR_REDIS_URL when set, else embedded servers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop
from bench_poll_worker import LATENCY_MS, SECRET, _setup, _up, bench_settings

from app.db import create_pg_pool, create_redis
from app.embedded import drop_database, ensure_services, free_port, scratch_database
from app.gctune import tune_gc
from app.migrate import upgrade
from app.security import SecretBox
from app.services.polling import PollDeps, run_polls
from app.settings import Settings
from workers.queues import TASK_BATCH

IN_FLIGHT = 64


@dataclass
class Round:
    """CPU ms per quiet poll (and the collector's part of it) with each collector setting,
    and per bare GET."""

    tuned: float
    tuned_gc: float
    default: float
    default_gc: float
    bare: float


class CollectorClock:
    """CPU time spent inside the garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._started = 0.0

    def __call__(self, phase: str, _: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.spent += time.process_time() - self._started


@contextlib.contextmanager
def collector(tuned: bool) -> Iterator[None]:
    """The process's collector as the services run it (``tuned``) or at CPython's defaults."""
    defaults = gc.get_threshold()
    if tuned:
        tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*defaults)


async def _rounds(
    settings: Settings, created: list[tuple[int, str]], sim: str, rounds: int
) -> list[Round]:
    ids = [i for i, _ in created]
    tokens = [t for _, t in created]
    redis_client = create_redis(settings.require("redis_url"))
    out: list[Round] = []
    clock = CollectorClock()
    gc.callbacks.append(clock)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        pg = await create_pg_pool(settings.require("database_url"), 20)
        deps = PollDeps(settings, pg, redis_client, http, SecretBox(SECRET))
        slots = asyncio.Semaphore(IN_FLIGHT)
        batches = [
            [(i, None) for i in ids[k : k + TASK_BATCH]] for k in range(0, len(ids), TASK_BATCH)
        ]
        # Nothing changes after this far-future bound: the same empty page a quiet poll gets.
        query = "since=2099-01-01T00:00:00.000Z&order=id&limit=1000&offset=0"
        url = f"{sim}/crm/rest/v1/contacts?{query}"

        async def polls(tuned: bool) -> tuple[float, float]:
            """(CPU ms per poll, of which in the collector)."""
            with collector(tuned):
                clock.spent = 0.0
                cpu = time.process_time()
                await asyncio.gather(*(run_polls(deps, batch, slots) for batch in batches))
                took = time.process_time() - cpu
            return took * 1000 / len(ids), clock.spent * 1000 / len(ids)

        async def bare() -> float:
            cpu = time.process_time()

            async def loop(k: int) -> None:
                for i in range(k, len(tokens), IN_FLIGHT):
                    headers = {"Authorization": f"Bearer {tokens[i]}"}
                    async with http.get(url, headers=headers) as resp:
                        await resp.read()

            await asyncio.gather(*(loop(k) for k in range(IN_FLIGHT)))
            return (time.process_time() - cpu) * 1000 / len(tokens)

        first, _ = await polls(True)
        print(f"first round (3 new records each): {first:.3f} ms CPU per poll")
        for k in range(rounds):
            order = (True, False) if k % 2 == 0 else (False, True)  # alternate which goes first
            measured = {tuned: await polls(tuned) for tuned in order}
            (tuned, tuned_gc), (default, default_gc) = measured[True], measured[False]
            out.append(Round(tuned, tuned_gc, default, default_gc, await bare()))
        await pg.close()
    gc.callbacks.remove(clock)
    await redis_client.aclose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    n = args.instances or (300 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 5)
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"),
        os.environ.get("POLLINATOR_REDIS_URL"),
        Path(".data/bench"),
    )
    db_url, name = scratch_database(services.database_url, "pollinator_bench")
    port = free_port()
    sim = f"http://127.0.0.1:{port}"
    simulator = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "simulate", "--port", str(port),
         "--latency-ms", str(LATENCY_MS), "--throttle-per-second", "0",
         "--throttle-per-minute", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        upgrade(db_url)
        _up(f"{sim}/_sim/stats")
        settings = bench_settings(db_url, services.redis_url, sim)
        created = asyncio.run(_setup(settings, sim, n))
        results = uvloop.run(_rounds(settings, created, sim, rounds))
    finally:
        os.killpg(simulator.pid, signal.SIGTERM)
        simulator.wait(15)
        drop_database(services.database_url, name)
        services.stop()
    print(f"{n} instances, 1 resource, {LATENCY_MS} ms latency, {IN_FLIGHT} in flight, in process")
    print("CPU ms per quiet poll (of which in the garbage collector), per bare GET, and the ratio")
    print(f"{'round':>6} {'collector tuned':>16} {'CPython defaults':>17} {'bare GET':>9} "
          f"{'tuned/GET':>9} {'default/GET':>11}")  # fmt: skip
    for k, r in enumerate(results):
        print(f"{k:>6} {r.tuned:>7.3f} ({r.tuned_gc:.3f}) {r.default:>8.3f} ({r.default_gc:.3f}) "
              f"{r.bare:>9.3f} {r.tuned / r.bare:>9.2f} {r.default / r.bare:>11.2f}")  # fmt: skip
    med = {f: statistics.median(getattr(r, f) for r in results) for f in Round.__annotations__}
    print(f"{'median':>6} {med['tuned']:>7.3f} ({med['tuned_gc']:.3f}) {med['default']:>8.3f} "
          f"({med['default_gc']:.3f}) {med['bare']:>9.3f} {med['tuned'] / med['bare']:>9.2f} "
          f"{med['default'] / med['bare']:>11.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
