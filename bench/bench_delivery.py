"""Deliveries per second one delivery-worker process sustains to a local sink, and what one
dead callback URL among many healthy ones does to the healthy ones.

* baseline — a bare aiohttp loop POSTing the same bodies to the same sink with the same
  number of requests in flight;
* system — N pending deliveries in PostgreSQL, leased and enqueued the way the sweeper does,
  one real ``pollinator worker --queues delivery`` process; ends when all are delivered;
* dead URL — the same, with one instance in ten pointing at a receiver that never answers
  (every attempt waits for the 15 s timeout): how fast do the other nine in ten go out,
  and what happens to the dead URL's deliveries (they must wait, not fail or vanish).

Usage: .venv/bin/python bench/bench_delivery.py [--quick] [--deliveries N] [--profile OUT.txt]
(uses POLLINATOR_DATABASE_URL / POLLINATOR_REDIS_URL when set, else embedded servers).
``--profile`` samples the worker with py-spy during the healthy run and writes where its CPU
went (own time by package and by function, and inclusive time by function) to ``OUT.txt``,
and py-spy's raw stacks to ``bench/out/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from app.db import create_engine, create_pg_pool, session_factory
from app.domain.events import EventRecord, InstanceInfo, build_payload
from app.embedded import drop_database, ensure_services, free_port, scratch_database, wait_http
from app.migrate import upgrade
from app.models import Delivery, Instance, utcnow
from app.security import SecretBox, hash_secret
from app.services.breaker import PER_ORIGIN_CONCURRENCY
from app.services.delivery import due_deliveries
from app.services.orgs import create_organization
from workers.celery_app import SWEEP_EVERY_S

SECRET = "bench-secret-key-0123456789abcdef0123456789"


def _up(url: str) -> None:
    if not wait_http(url, 30):
        raise RuntimeError(f"{url} did not come up")


CONCURRENCY = 64


async def _seed(db_url: str, urls: list[str], per_url: int) -> list[bytes]:
    """Instances (one per URL) and ``per_url`` pending deliveries each; returns the bodies."""
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    box = SecretBox(SECRET)
    bodies: list[bytes] = []
    async with sessions() as session, session.begin():
        org = await create_organization(session, "bench")
        for n, url in enumerate(urls):
            instance = Instance(
                organization_id=org.organization_id,
                name=f"bench {n}",
                token_hash=hash_secret(uuid.uuid4().hex),
                configuration={},
                client_id="bench",
                callback_url=url,
                refresh_interval_minutes=15.0,
                poller={},
                secrets=box.seal({"event.notification.signature.key": "bench-key"}),
                secret_keys=["event.notification.signature.key"],
                events_enabled=True,
            )
            session.add(instance)
            await session.flush()
            assert instance.id is not None
            info = InstanceInfo(instance.id, instance.name, [], org.organization_id)
            for k in range(per_url):
                events = [
                    EventRecord(
                        uuid.uuid4(),
                        "contacts",
                        str(k * 10 + j),
                        "UPDATED",
                        utcnow(),
                        {"id": k * 10 + j, "given_name": "x" * 40},
                    )
                    for j in range(3)
                ]
                delivery_id, body = build_payload(info, events, utcnow())
                bodies.append(body)
                session.add(
                    Delivery(
                        id=delivery_id,
                        instance_id=instance.id,
                        body=body,
                        event_count=3,
                        next_attempt_at=utcnow(),
                    )
                )
    await engine.dispose()
    return bodies


@dataclass(frozen=True)
class Rate:
    per_s: float
    cpu_ms: float  # CPU time of the sending process per callback (robust to a loaded machine)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ceiling(url: str, bodies: list[bytes], seconds: float, in_flight: int) -> Rate:
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def loop(k: int) -> None:
            nonlocal done
            i = k
            while time.monotonic() < deadline:
                async with http.post(
                    url, data=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                done += 1
                i += in_flight

        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(loop(k) for k in range(in_flight)))
        cpu_ms = (time.process_time() - cpu) * 1000 / max(done, 1)
        return Rate(done / (time.monotonic() - started), cpu_ms)


def _post_ms(db_url: str) -> tuple[float, float]:
    """Mean and p90 of the attempts' POST time as the worker saw it (a slot is held that long)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT avg(duration_ms), percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_ms)"
            " FROM delivery_attempts"
        ).fetchone()
    assert row is not None
    return float(row[0] or 0), float(row[1] or 0)


def _counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _celery(env: dict[str, str]) -> Any:
    os.environ.update(env)
    from app.settings import get_settings
    from workers.celery_app import create_celery

    get_settings.cache_clear()
    return create_celery(get_settings())


def _wait_ready(env: dict[str, str], timeout: float = 120) -> None:
    """Until the worker answers a ping: its start (imports) is not part of the measure."""
    app = _celery(env)
    deadline = time.monotonic() + timeout
    while not app.control.ping(timeout=1.0):
        if time.monotonic() > deadline:
            raise RuntimeError("the delivery worker did not start")


def _run(
    env: dict[str, str], db_url: str, healthy_total: int, worker: int, timeout: float = 300
) -> tuple[Rate, dict[str, int]]:
    """Lease + enqueue every due delivery, again every ``SWEEP_EVERY_S`` (as beat's sweeper
    does: deliveries deferred by a saturated origin or an open breaker come back); time
    until the healthy ones are delivered."""
    from workers.tasks.delivery import enqueue_deliveries

    app = _celery(env)

    async def lease() -> list[tuple[uuid.UUID, Any]]:
        pool = await create_pg_pool(db_url, 2)
        try:
            return await due_deliveries(pool, 60.0, limit=1_000_000)
        finally:
            await pool.close()

    started, cpu = time.monotonic(), _cpu_s(worker)
    enqueue_deliveries(app, asyncio.run(lease()))
    swept = time.monotonic()
    while _counts(db_url).get("delivered", 0) < healthy_total:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"not delivered in {timeout}s: {_counts(db_url)}")
        time.sleep(0.1)
        if time.monotonic() - swept >= SWEEP_EVERY_S:  # deferred deliveries come back
            enqueue_deliveries(app, asyncio.run(lease()))
            swept = time.monotonic()
    cpu_ms = (_cpu_s(worker) - cpu) * 1000 / healthy_total
    return Rate(healthy_total / (time.monotonic() - started), cpu_ms), _counts(db_url)


def _frame(frame: str) -> tuple[str, str]:
    """``(function, package)`` of one py-spy raw frame ``"name (path/to/file.py)"``."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")")
    parts = [p for p in path.split("/") if p]
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "python3.11" in parts:
        parts = ["stdlib", *parts[parts.index("python3.11") + 1 :]]
    package = parts[0].removesuffix(".py") if parts else "?"
    if package == "stdlib" and len(parts) > 1:
        package = f"stdlib/{parts[1].removesuffix('.py')}"
    return f"{name} ({'/'.join(parts)})", package


def _summarize(raw: Path, out: Path, title: str, top: int = 40) -> None:
    """Text summary of py-spy's collapsed stacks: own samples by package and by function,
    inclusive samples by function (a function counted once per stack)."""
    own_pkg: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        fn, pkg = frames[-1]
        own_fn[fn] += count
        own_pkg[pkg] += count
        for name in {f for f, _ in frames}:
            incl_fn[name] += count

    def table(counter: Counter[str], label: str) -> list[str]:
        rows = [f"## {label}", f"{'samples':>8} {'share':>6}  where"]
        rows += [f"{c:>8} {c / total:>6.1%}  {k}" for k, c in counter.most_common(top)]
        return [*rows, ""]

    sampled = f"{total} samples (py-spy --gil, 200 Hz: the thread holding the GIL)"
    lines = [f"# {title}", sampled, ""]
    lines += table(own_pkg, "own time by package")
    lines += table(own_fn, "own time by function")
    lines += table(incl_fn, "inclusive time by function")
    out.write_text("\n".join(lines))


def _scenario(
    services: Any,
    sink: str,
    dead: str | None,
    n: int,
    procs: list[Any],
    profile: Path | None = None,
) -> tuple[Rate, dict[str, int], list[bytes]]:
    db_url, name = scratch_database(services.database_url, "pollinator_bench")
    try:
        upgrade(db_url)
        urls = [f"{sink}/events/{i}" for i in range(10)]
        if dead:
            urls[0] = dead
        per_url = n // len(urls)
        bodies = asyncio.run(_seed(db_url, urls, per_url))
        env = {
            **os.environ,
            "POLLINATOR_DATABASE_URL": db_url,
            "POLLINATOR_REDIS_URL": services.redis_url,
            "POLLINATOR_SECRET_KEY": SECRET,
            "POLLINATOR_ALLOW_PRIVATE_CALLBACKS": "true",
            "POLLINATOR_LOG_LEVEL": "WARNING",
            "POLLINATOR_DELIVERY_CONCURRENCY": str(CONCURRENCY),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queues", "delivery"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(worker)
        _wait_ready(env)
        healthy = per_url * (9 if dead else 10)
        spy = None
        raw = Path("bench/out") / f"{profile.name}.raw" if profile else None
        if raw is not None:
            raw.parent.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [Path(sys.executable).parent / "py-spy", "record", "--pid", str(worker.pid),
                 "--rate", "200", "--gil", "--nolineno", "--format", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)
        rate, counts = _run(env, db_url, healthy, worker.pid)
        if not dead:
            mean, p90 = _post_ms(db_url)
            print(f"healthy run: POST {mean:.1f} ms mean, {p90:.0f} ms p90 as the worker saw it")
        if spy is not None and raw is not None and profile is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            title = f"delivery worker, {healthy} deliveries, {rate.per_s:.0f}/s"
            _summarize(raw, profile, title)
            print(f"py-spy's raw stacks: {raw}")
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        return rate, counts, bodies
    finally:
        drop_database(services.database_url, name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--deliveries", type=int, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy summary to this file")
    args = parser.parse_args()
    n = args.deliveries or (1000 if args.quick else 5000)
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"),
        os.environ.get("POLLINATOR_REDIS_URL"),
        Path(".data/bench"),
    )
    sink_port, dead_port = free_port(), free_port()
    sink = f"http://127.0.0.1:{sink_port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, extra in ((sink_port, []), (dead_port, ["--delay-seconds", "600"])):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "app.cli",
                        "sink",
                        "--port",
                        str(port),
                        "--keep",
                        "10",
                        *extra,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        _up(f"{sink}/_sink/requests")
        _up(f"http://127.0.0.1:{dead_port}/_sink/requests")
        rate, _, bodies = _scenario(services, sink, None, n, procs, args.profile)
        ceiling_url = f"{sink}/events/ceiling"
        ceiling = asyncio.run(_ceiling(ceiling_url, bodies, 8, CONCURRENCY))
        # The sink is one origin: the worker keeps at most this many POSTs in flight to it.
        capped = asyncio.run(_ceiling(ceiling_url, bodies, 8, PER_ORIGIN_CONCURRENCY))
        dead_rate, counts, _ = _scenario(
            services, sink, f"http://127.0.0.1:{dead_port}/events", n, procs
        )
        print(f"delivery worker: {n} deliveries of 3 events to a local sink (one origin)")
        print(f"{'':40} {'per second':>10} {'vs ceiling':>10} {'CPU ms each':>11}")
        rows = [
            (f"bare aiohttp POST loop, {CONCURRENCY} in flight", ceiling),
            (f"bare aiohttp POST loop, {PER_ORIGIN_CONCURRENCY} in flight", capped),
            ("one delivery worker process", rate),
            ("  same, 1 URL in 10 dead (healthy)", dead_rate),
        ]
        for label, value in rows:
            print(
                f"{label:40} {value.per_s:>10.1f} {value.per_s / ceiling.per_s:>10.2f} "
                f"{value.cpu_ms:>11.3f}"
            )
        print(
            f"  dead URL's deliveries at the end: {counts.get('pending', 0)} pending, "
            f"{counts.get('failed', 0)} failed (none may be dropped)"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
        services.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
