"""Polls per second one poll-worker process sustains against the simulator at 100 ms latency.

Setup: a simulator process (100 ms on every REST answer, throttling off), N
instances created through the real service code (OAuth code exchange included),
each polling ``contacts`` with a handful of changed records. Then:

* baseline — a bare asyncio/aiohttp loop in this process fetching the same
  pages with the same number of requests in flight (the ceiling for that
  concurrency at that latency);
* system — one real ``pollinator worker --queues poll`` process; N ``poll.instance``
  tasks are queued at once and the run ends when the poll journal shows all N done.

Usage: .venv/bin/python bench/bench_poll_worker.py [--quick] [--instances N] [--concurrency C]
       [--profile FILE] [--quiet-rounds N]
(uses POLLINATOR_DATABASE_URL / POLLINATOR_REDIS_URL when set, else embedded servers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

from app.client import InstanceSpec, OAuthApp, Simulator
from app.db import create_engine, create_pg_pool, create_redis, session_factory
from app.embedded import drop_database, ensure_services, free_port, scratch_database, wait_http
from app.metrics import POLL_JOURNAL
from app.migrate import upgrade
from app.security import SecretBox
from app.services.instances import create_instance
from app.services.orgs import create_organization
from app.settings import Settings
from workers.queues import TASK_BATCH

SECRET = "bench-secret-key-0123456789abcdef0123456789"


def _up(url: str) -> None:
    if not wait_http(url, 30):
        raise RuntimeError(f"{url} did not come up")


LATENCY_MS = 100
POLLER = {
    "contacts": {
        "url": "/contacts?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}&order=id",
        "idField": "id",
        "datesConfiguration": {
            "updatedDateField": "last_updated_utc_millis",
            "updatedDateFormat": "milliseconds",
            "createdDateField": "date_created",
        },
    }
}


def bench_settings(database_url: str, redis_url: str, sim: str) -> Settings:
    """Settings for polling the simulator at ``sim`` (no per-app budget: the engine alone)."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        secret_key=SECRET,
        allow_private_callbacks=True,
        min_refresh_minutes=1,
        infusionsoft_api_url=f"{sim}/crm/rest/v1",
        infusionsoft_token_url=f"{sim}/token",
        provider_app_rate_per_second=0,
    )


async def _setup(settings: Settings, sim: str, n: int) -> list[tuple[int, str]]:
    """N instances via the service layer; returns (instance id, access token) pairs."""
    engine = create_engine(settings.require("database_url"))
    sessions = session_factory(engine)
    box = SecretBox(SECRET)
    out: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as http:
        async with sessions() as session, session.begin():
            org = await create_organization(session, "bench")
        sem = asyncio.Semaphore(20)
        simulator = Simulator(http, sim)

        async def one(i: int) -> None:
            async with sem:
                account = f"bench-{i}"
                spec = InstanceSpec(
                    app=OAuthApp(f"app-{i % 50}", "s", "https://b/cb"),
                    callback_url="http://127.0.0.1:9/e",
                    name=f"bench {i}",
                    refresh_minutes=60,
                    poller=POLLER,
                )
                code = await simulator.authorize(spec.app, account)
                body = spec.body(code)
                instance, _ = await create_instance(
                    sessions, http, box, settings, org.organization_id, body
                )
                for k in range(3):
                    await simulator.create_record(account, "contacts", {"given_name": f"c{k}"})
                assert instance.id is not None
                token = box.open(instance.tokens)["access_token"]
                out.append((instance.id, token))

        await asyncio.gather(*(one(i) for i in range(n)))
    await engine.dispose()
    return out


async def _ceiling(sim: str, tokens: list[str], concurrency: int, seconds: float) -> float:
    """Requests/s of a bare aiohttp loop over the same pages."""
    url = f"{sim}/crm/rest/v1/contacts?since=2020-01-01T00:00:00.000Z&order=id&limit=1000&offset=0"
    done = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def loop(k: int) -> None:
            nonlocal done
            i = k
            while time.monotonic() < deadline:
                async with http.get(
                    url, headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
                ) as r:
                    await r.read()
                done += 1
                i += concurrency

        started = time.monotonic()
        await asyncio.gather(*(loop(k) for k in range(concurrency)))
        return done / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--batch", type=int, default=TASK_BATCH, help="polls per Celery message (beat's)"
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy the worker's quiet polls into FILE (raw)"
    )
    parser.add_argument(
        "--quiet-rounds",
        type=int,
        default=1,
        help="poll every instance this many times with nothing changed (more profile samples)",
    )
    args = parser.parse_args()
    n = args.instances or (300 if args.quick else 2000)
    data_dir = Path(".data/bench")
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"), os.environ.get("POLLINATOR_REDIS_URL"), data_dir
    )
    db_url, name = scratch_database(services.database_url, "pollinator_bench")
    sim_port = free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(db_url)
        r = redis.Redis.from_url(services.redis_url)
        r.delete(POLL_JOURNAL)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "simulate",
                    "--port",
                    str(sim_port),
                    "--latency-ms",
                    str(LATENCY_MS),
                    "--throttle-per-second",
                    "0",
                    "--throttle-per-minute",
                    "0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        _up(f"{sim}/_sim/stats")
        settings = bench_settings(db_url, services.redis_url, sim)
        t0 = time.monotonic()
        created = asyncio.run(_setup(settings, sim, n))
        print(f"set up {n} instances in {time.monotonic() - t0:.1f}s")
        ceiling = asyncio.run(_ceiling(sim, [t for _, t in created], args.concurrency, 10))
        half = len(created) // 2
        inproc = asyncio.run(
            _in_process(settings, [i for i, _ in created[:half]], args.concurrency, args.batch)
        )
        env = {
            **os.environ,
            "POLLINATOR_DATABASE_URL": db_url,
            "POLLINATOR_REDIS_URL": services.redis_url,
            "POLLINATOR_SECRET_KEY": SECRET,
            "POLLINATOR_INFUSIONSOFT_API_URL": f"{sim}/crm/rest/v1",
            "POLLINATOR_INFUSIONSOFT_TOKEN_URL": f"{sim}/token",
            "POLLINATOR_PROVIDER_APP_RATE_PER_SECOND": "0",
            "POLLINATOR_ALLOW_PRIVATE_CALLBACKS": "true",
            "POLLINATOR_LOG_LEVEL": "WARNING",
        }
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "worker",
                "--queues",
                "poll",
                "--concurrency",
                str(args.concurrency),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(worker)
        time.sleep(4)  # worker boot
        import psutil

        worker_cpu = psutil.Process(worker.pid)
        cpu_before = sum(worker_cpu.cpu_times()[:2])
        result = _run_polls(env, r, [i for i, _ in created[half:]], args.batch)
        cpu_ms = (sum(worker_cpu.cpu_times()[:2]) - cpu_before) * 1000 / (len(created) - half)
        # Steady state: the same instances again, nothing changed at the provider.
        if args.profile:  # the quiet polls only: the hot path the target is about
            procs.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "--format",
                        "raw",
                        "-o",
                        args.profile,
                        "--pid",
                        str(worker.pid),
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--gil",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            time.sleep(1)
        cpu_before = sum(worker_cpu.cpu_times()[:2])
        rates = [
            _run_polls(env, r, [i for i, _ in created], args.batch)
            for _ in range(max(1, args.quiet_rounds))
        ]
        quiet = sum(rates) / len(rates)
        quiet_cpu_ms = (
            (sum(worker_cpu.cpu_times()[:2]) - cpu_before) * 1000 / (len(created) * len(rates))
        )
        print(
            f"poll worker: {n} polls of 1 resource at {LATENCY_MS} ms provider latency, "
            f"{args.concurrency} in flight, {args.batch} per message"
        )
        print(f"{'':24} {'per second':>10} {'vs ceiling':>10}")
        print(f"{'bare aiohttp (ceiling)':24} {ceiling:>10.1f} {1.0:>10.2f}")
        print(f"{'poll service, no Celery':24} {inproc:>10.1f} {inproc / ceiling:>10.2f}")
        print(
            f"{'one worker process':24} {result:>10.1f} {result / ceiling:>10.2f}"
            f"   ({cpu_ms:.2f} ms worker CPU per poll; 3 new records each)"
        )
        print(
            f"{'  same, nothing changed':24} {quiet:>10.1f} {quiet / ceiling:>10.2f}"
            f"   ({quiet_cpu_ms:.2f} ms worker CPU per poll)"
        )
        r.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
        drop_database(services.database_url, name)
        services.stop()
    return 0


async def _in_process(settings: Settings, ids: list[int], concurrency: int, size: int) -> float:
    """The poll service itself, on one loop in this process, without Celery."""
    from app.services.polling import PollDeps, run_polls

    redis_client = create_redis(settings.require("redis_url"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        pg = await create_pg_pool(settings.require("database_url"), 20)
        deps = PollDeps(settings, pg, redis_client, http, SecretBox(SECRET))
        slots = asyncio.Semaphore(concurrency)
        batches = [[(i, None) for i in ids[k : k + size]] for k in range(0, len(ids), size)]

        started = time.monotonic()
        await asyncio.gather(*(run_polls(deps, batch, slots) for batch in batches))
        elapsed = time.monotonic() - started
        await pg.close()
    await redis_client.aclose()
    return len(ids) / elapsed


def _run_polls(env: dict[str, Any], r: redis.Redis, ids: list[int], batch: int) -> float:
    os.environ.update(env)
    from app.settings import get_settings
    from workers.celery_app import create_celery
    from workers.messages import PollOrder, encode_polls

    get_settings.cache_clear()  # read before ``env`` was set (embedded services: no URLs then)
    app = create_celery(get_settings())
    before = r.xlen(POLL_JOURNAL)
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        for start in range(0, len(ids), batch):  # as beat sends them
            body = encode_polls(PollOrder(i, None) for i in ids[start : start + batch])
            app.send_task("poll.instances", args=[body], queue="poll", producer=producer)
    while r.xlen(POLL_JOURNAL) - before < len(ids):
        if time.monotonic() - started > 600:
            raise RuntimeError("polls did not finish in 10 minutes")
        time.sleep(0.05)
    return len(ids) / (time.monotonic() - started)


if __name__ == "__main__":
    raise SystemExit(main())
