"""The cost of listing instances: ``GET /elements/api-v2/instances`` with 500 instances.

Instances are created through the public API (the OAuth exchange answered by a local fake
token endpoint), so the script runs unchanged on any revision of the schema: run it on two
checkouts in the same sitting to compare them.

* baseline — ``GET /instances?pageSize=1`` in the same run (auth, one row, the round trip);
* list — ``GET /instances?pageSize=500`` (every row rendered).

Both wall-clock and this process's CPU time are reported: the API server runs in this
process, so CPU time per request is the route's own work (rows decoded, views built,
blobs decrypted), and it is far less disturbed than wall-clock by a loaded machine.

Usage: .venv/bin/python bench/bench_list_instances.py [--quick] [--instances N] [--rounds R]
(uses POLLINATOR_DATABASE_URL / POLLINATOR_REDIS_URL when set, else embedded servers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.api.server import create_app
from app.db import create_engine, session_factory, transaction
from app.embedded import drop_database, ensure_services, scratch_database
from app.migrate import upgrade
from app.services.orgs import create_organization
from app.settings import Settings

SECRET = "bench-secret-key-0123456789abcdef0123456789"
BASE = "/elements/api-v2"


async def _token(request: web.Request) -> web.Response:
    code = str((await request.post()).get("code", ""))
    return web.json_response(
        {"access_token": f"AT-{code}", "refresh_token": f"RT-{code}", "expires_in": 86400}
    )


def _body(n: int) -> dict[str, Any]:
    return {
        "element": {"key": "infusionsoftrest"},
        "providerData": {"code": f"code-{n}"},
        "name": f"bench {n}",
        "tags": ["bench"],
        "configuration": {
            "oauth.api.key": "client-bench",
            "oauth.api.secret": "client-secret-bench",
            "oauth.callback.url": "https://app.example.com/oauth/callback",
            "event.notification.enabled": True,
            "event.vendor.type": "polling",
            "event.notification.callback.url": "http://127.0.0.1:9/events",
            "event.notification.signature.key": "sig-key-bench",
            "event.poller.refresh_interval": 15,
        },
    }


async def _timed(
    client: TestClient[Any, Any], path: str, headers: dict[str, str]
) -> tuple[float, float]:
    """Wall-clock and CPU milliseconds of one request."""
    started, cpu = time.perf_counter(), time.process_time()
    response = await client.get(path, headers=headers)
    await response.read()
    assert response.status == 200, response.status
    return (time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000


async def _run(db_url: str, redis_url: str, instances: int, rounds: int) -> None:
    token_app = web.Application()
    token_app.router.add_post("/token", _token)
    token_server = TestServer(token_app)
    await token_server.start_server()
    settings = Settings(
        database_url=db_url,
        redis_url=redis_url,
        secret_key=SECRET,
        infusionsoft_token_url=str(token_server.make_url("/token")),
        allow_private_callbacks=True,
        max_instances_per_org=instances + 10,
        api_requests_per_second_per_org=0,
    )
    engine = create_engine(db_url, pool_size=1)
    async with transaction(session_factory(engine)) as session:
        org = await create_organization(session, "bench")
    await engine.dispose()
    headers = {"Authorization": f"User {org.user_secret}, Organization {org.organization_secret}"}
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        for n in range(instances):
            response = await client.post(f"{BASE}/instances", json=_body(n), headers=headers)
            assert response.status == 200, await response.text()
        one = f"{BASE}/instances?pageSize=1"
        every = f"{BASE}/instances?pageSize={instances}"
        for _ in range(3):  # warm up connections and caches
            await _timed(client, every, headers)
        baseline = [await _timed(client, one, headers) for _ in range(rounds)]
        listing = [await _timed(client, every, headers) for _ in range(rounds)]
    finally:
        await client.close()
        await token_server.close()
    print(f"instances: {instances}, rounds: {rounds}")
    rows = (("baseline pageSize=1", baseline), (f"list pageSize={instances}", listing))
    for label, samples in rows:
        wall = [w for w, _ in samples]
        cpu = [c for _, c in samples]
        print(
            f"{label:>22}: wall median {statistics.median(wall):7.1f} ms"
            f"  p90 {statistics.quantiles(wall, n=10)[-1]:7.1f} ms"
            f" | cpu median {statistics.median(cpu):7.1f} ms"
        )
    cpu_per_row = (
        statistics.median(c for _, c in listing) - statistics.median(c for _, c in baseline)
    ) / instances
    print(f"{'cpu per instance':>22}: {cpu_per_row * 1000:7.1f} us (list minus baseline, medians)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100 instances, 5 rounds")
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    instances = args.instances or (100 if args.quick else 500)
    rounds = args.rounds or (5 if args.quick else 30)
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL") or None,
        os.environ.get("POLLINATOR_REDIS_URL") or None,
        Path(".data") / "bench",
    )
    db_url, name = scratch_database(services.database_url, "pollinator_bench")
    try:
        upgrade(db_url)
        asyncio.run(_run(db_url, services.redis_url, instances, rounds))
    finally:
        drop_database(services.database_url, name)
        services.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
