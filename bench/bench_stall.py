"""How long the worst instance bodies a tenant can send hold the API's event loop.

The real API app runs in this process on one event loop (as ``pollinator api`` does). A
separate *process* sends, one at a time, the most expensive bodies we could build at the
body limit (``MAX_BODY_BYTES``) to ``POST /elements/api-v2/instances`` and, for an existing
instance, ``PATCH /elements/api-v2/instances/{id}``, while a thread of that process probes
``GET /healthz`` every 5 ms. The stall of a request is the slowest probe sent while it was in
flight: the time the loop could not answer anyone else.

The baseline, measured in the same run, is a body of the same size and valid shape whose
size is all plain text in an ignored configuration key: the API reads, parses and refuses it
at the provider step (the OAuth code is refused by the local token endpoint). Target: no
body holds the loop much longer than the baseline, and none more than ~50 ms.

Usage: .venv/bin/python bench/bench_stall.py [--quick] [--size BYTES] (uses
POLLINATOR_DATABASE_URL / POLLINATOR_REDIS_URL when set, else embedded servers under
.data/bench). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from app.api.server import create_app
from app.db import create_engine, session_factory, transaction
from app.domain.limits import (
    MAX_BODY_BYTES,
    MAX_DATE_FORMAT_LENGTH,
    MAX_RESOURCES,
    MAX_TEMPLATE_VARIABLES,
)
from app.embedded import drop_database, ensure_services, free_port, scratch_database
from app.migrate import upgrade
from app.services.orgs import create_organization
from app.settings import Settings

PROBE_INTERVAL_S = 0.005
INSTANCES = "/elements/api-v2/instances"
SINCE = "since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}"


# --- bodies ---------------------------------------------------------------------------------


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "oauth.api.key": "client-123",
        "oauth.api.secret": "client-secret",
        "oauth.callback.url": "https://app.example.com/oauth/callback",
        "event.notification.enabled": True,
        "event.notification.callback.url": "http://127.0.0.1:9/events",
        "event.poller.refresh_interval": 15,
        "event.poller.configuration": {
            "contacts": {"url": f"/contacts?{SINCE}", "idField": "id"},
        },
    }
    config.update(overrides)
    return config


def _fill(build: Callable[[int], Any], size: int) -> Any:
    """The largest ``build(n)`` whose JSON body stays within ``size`` bytes (binary search)."""
    low, high = 1, size
    while low < high:
        middle = (low + high + 1) // 2
        if len(json.dumps(build(middle)).encode()) <= size:
            low = middle
        else:
            high = middle - 1
    return build(low)


def _with_poller(make: Callable[[int], Any]) -> Callable[[int], dict[str, Any]]:
    return lambda n: {"configuration": {"event.poller.configuration": make(n)}}


def _format(tag: int) -> str:
    """A distinct date format of the largest allowed length (so that no cache helps)."""
    head = f"yyyy-MM-dd'T'HH:mm:ss.SSSXXX EEE MMMM '{tag:06d}"
    return (head + "x" * MAX_DATE_FORMAT_LENGTH)[: MAX_DATE_FORMAT_LENGTH - 1] + "'"


def _many_costly_resources(n: int) -> dict[str, Any]:
    """MAX_RESOURCES resources, each at every other bound: the most *valid* work there is.

    Every URL has the most dateTimeZone variables, each with a colon-rich zone and its own
    format; every date setting is present with its own format and the longest zone name.
    """
    resources: dict[str, Any] = {}
    for r in range(MAX_RESOURCES):
        tag = (n % 1000) * 10_000 + r * 100
        variables = "&".join(
            f"v{v}=${{dateTimeZone:-08:00:{_format(tag + v)}}}"
            for v in range(MAX_TEMPLATE_VARIABLES)
        )
        resources[f"r{r}"] = {
            "url": f"/contacts/{r}?{variables}",
            "idField": "a." * 50 + "id",
            "datesConfiguration": {
                "updatedDateField": "b." * 50 + "u",
                "updatedDateFormat": _format(tag + 98),
                "updatedDateTimezone": "America/Argentina/ComodRivadavia",
                "createdDateField": "c." * 50 + "c",
                "createdDateFormat": _format(tag + 99),
                "createdDateTimezone": "-08:00",
            },
            "pad": "p" * n,
        }
    return resources


def bodies(size: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, configuration-patch body) pairs; create bodies wrap the same configuration."""
    fmt = "gmtDate:yyyy"
    cases: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
        ("baseline: plain padding", lambda n: {"configuration": {"x-padding": "a" * n}}),
        ("url: '${' repeated", _with_poller(_resource_url_builder("/c?x=", "${"))),
        ("url: dateTimeZone + colons", _with_poller(_tz_colons)),
        ("url: where=since> + '+'", _with_poller(_resource_url_builder("/c?where=since>", "+"))),
        ("url: %25 repeated in path", _with_poller(_resource_url_builder("/c/", "%25"))),
        ("url: '${gmtDate:' + quotes", _with_poller(_resource_url_builder("/c?x=${" + fmt, "''"))),
        (
            "date format: quotes",
            _with_poller(lambda n: {"c": _dated({"updatedDateFormat": "yyyy" + "''" * n})}),
        ),
        (
            "date format: 'zE' repeated",
            _with_poller(lambda n: {"c": _dated({"updatedDateFormat": "zE" * n})}),
        ),
        (
            "zone name: long",
            _with_poller(lambda n: {"c": _dated({"updatedDateTimezone": "+" * n})}),
        ),
        (
            "field path: '[0]' repeated",
            _with_poller(lambda n: {"c": _dated({"idField": "[0]" * n})}),
        ),
        ("resources: 50 at every bound", _with_poller(_many_costly_resources)),
        ("resources: as many as fit", _with_poller(lambda n: {f"r{i}": {} for i in range(n)})),
        ("poller config string: 50 at bound", lambda n: _as_string(_many_costly_resources(n))),
        (
            "poller config string: many",
            lambda n: _as_string({f"r{i}": {} for i in range(n)}),
        ),
        ("nesting: 31 levels, wide", lambda n: {"configuration": {"x": _nested(31, n)}}),
        ("tags: one long string", lambda n: {"tags": "t" * n}),
        ("tags: many", lambda n: {"tags": ["t"] * n}),
        ("name: long", lambda n: {"name": "n" * n}),
        (
            "callback: long URL",
            lambda n: {"configuration": {"event.notification.callback.url": "http://h/" + "a" * n}},
        ),
        (
            "refresh_interval: huge",
            lambda n: {
                "configuration": {"event.poller.refresh_interval": 4_193_436_587, "x": "a" * n}
            },
        ),
    ]
    return [(label, _fill(build, size)) for label, build in cases]


def _resource_url_builder(prefix: str, unit: str) -> Callable[[int], dict[str, Any]]:
    return lambda n: {"contacts": {"url": prefix + unit * n, "idField": "id"}}


def _tz_colons(n: int) -> dict[str, Any]:
    return {"contacts": {"url": "/c?x=${dateTimeZone:" + ":" * n + "}", "idField": "id"}}


def _dated(settings: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = {"url": "/contacts", "idField": "id"}
    dates = {"updatedDateField": "u"}
    for key, value in settings.items():
        (resource if key == "idField" else dates)[key] = value
    resource["datesConfiguration"] = dates
    return resource


def _as_string(resources: dict[str, Any]) -> dict[str, Any]:
    return {"configuration": {"event.poller.configuration": json.dumps(resources)}}


def _nested(depth: int, width: int) -> Any:
    value: Any = ["w"] * max(1, width // 4)
    for _ in range(depth - 1):
        value = [value]
    return value


def create_body(patch: dict[str, Any]) -> dict[str, Any]:
    body = {
        "element": {"key": "infusionsoftrest"},
        "providerData": {"code": "refused-code"},
        "name": "bench",
    }
    body.update({k: v for k, v in patch.items() if k != "configuration"})
    body["configuration"] = _config(**patch.get("configuration", {}))
    return body


# --- the client process -----------------------------------------------------------------


def _prober(port: int, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not stop.is_set():
        sent = time.monotonic()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        samples.append((sent, time.monotonic()))
        time.sleep(PROBE_INTERVAL_S)
    conn.close()


def _send(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, float, float]:
    payload = json.dumps(body).encode()
    started = time.monotonic()
    conn.request(method, path, payload, {**headers, "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, started, time.monotonic()


def client_process(
    port: int, headers: dict[str, str], instance_id: int, size: int, repeats: int, out: Any
) -> None:
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    prober = threading.Thread(target=_prober, args=(port, stop, samples), daemon=True)
    prober.start()
    time.sleep(0.5)  # idle probes, for the idle latency
    idle_until = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    rows: dict[str, dict[str, Any]] = {}
    for repeat in range(repeats):
        # A slightly different size each round makes every format in the costly bodies new,
        # so no round is answered from the parsers' caches.
        for label, patch in bodies(size - 64 * repeat):
            row = rows.setdefault(
                label, {"label": label, "bytes": len(json.dumps(create_body(patch)))}
            )
            for method, path, body in (
                ("POST", INSTANCES, create_body(patch)),
                ("PATCH", f"{INSTANCES}/{instance_id}", patch),
            ):
                status, started, ended = _send(conn, method, path, body, headers)
                time.sleep(0.05)  # let the probes sent during the request come back
                stall = max(
                    (got - sent for sent, got in list(samples) if started <= sent <= ended),
                    default=ended - started,
                )
                row.setdefault(method, []).append((status, stall * 1000))
    stop.set()
    prober.join()
    idle = [(got - sent) * 1000 for sent, got in samples if sent < idle_until]
    out.put({"rows": list(rows.values()), "idle_ms": statistics.median(idle) if idle else 0.0})


# --- the API in this process ------------------------------------------------------------------


async def _token_endpoint(request: web.Request) -> web.Response:
    form = await request.post()
    if str(form.get("code", "")).startswith("good"):
        return web.json_response(
            {"access_token": "AT", "refresh_token": "RT", "expires_in": 86400, "scope": "full"}
        )
    return web.json_response({"error": "invalid_grant"}, status=400)


async def _org_headers(database_url: str) -> dict[str, str]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with transaction(session_factory(engine)) as session:
            org = await create_organization(session, "bench")
    finally:
        await engine.dispose()
    return {"Authorization": f"User {org.user_secret}, Organization {org.organization_secret}"}


async def run(database_url: str, redis_url: str, size: int, repeats: int) -> dict[str, Any]:
    token_app = web.Application()
    token_app.router.add_post("/token", _token_endpoint)
    token_runner = web.AppRunner(token_app)
    await token_runner.setup()
    token_port = free_port()
    await web.TCPSite(token_runner, "127.0.0.1", token_port).start()
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        secret_key="bench-secret-key-0123456789abcdef0123456789",
        infusionsoft_token_url=f"http://127.0.0.1:{token_port}/token",
        allow_private_callbacks=True,
        provider_timeout_seconds=5.0,
    )
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        headers = await _org_headers(database_url)
        instance_id = await asyncio.to_thread(_create_instance, port, headers)
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        client = context.Process(
            target=client_process, args=(port, headers, instance_id, size, repeats, out)
        )
        client.start()
        result: dict[str, Any] = await asyncio.to_thread(out.get, True, 3600)
        await asyncio.to_thread(client.join, 60)
        return result
    finally:
        await runner.cleanup()
        await token_runner.cleanup()


def _create_instance(port: int, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = create_body({})
    body["providerData"] = {"code": "good-1"}
    status, _, _ = _send(conn, "POST", INSTANCES, body, headers)
    if status != 200:
        raise SystemExit(f"could not create the instance to patch: HTTP {status}")
    conn.request("GET", INSTANCES, headers=headers)
    instances = json.loads(conn.getresponse().read())
    return int(instances[0]["id"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one request per body, not three")
    parser.add_argument(
        "--size", type=int, default=MAX_BODY_BYTES - 1024, help="body size in bytes"
    )
    args = parser.parse_args()
    services = ensure_services(
        os.environ.get("POLLINATOR_DATABASE_URL"),
        os.environ.get("POLLINATOR_REDIS_URL"),
        Path(".data/bench"),
    )
    url, name = scratch_database(services.database_url, "pollinator_bench")
    try:
        upgrade(url)
        result = asyncio.run(run(url, services.redis_url, args.size, 1 if args.quick else 3))
    finally:
        drop_database(services.database_url, name)
        services.stop()
    repeats = 1 if args.quick else 3

    def summary(runs: list[tuple[int, float]]) -> tuple[str, float, float]:
        statuses = "/".join(sorted({str(status) for status, _ in runs}))
        stalls = [stall for _, stall in runs]
        return statuses, statistics.median(stalls), max(stalls)

    rows = result["rows"]
    base = max(summary(rows[0]["POST"])[1], summary(rows[0]["PATCH"])[1])
    print(
        f"API event-loop stall per body (~{args.size // 1024} KB; /healthz probed every "
        f"{PROBE_INTERVAL_S * 1000:.0f} ms from another process; idle probe "
        f"{result['idle_ms']:.2f} ms; median and max of {repeats} rounds)"
    )
    print(
        f"{'body':<34} {'bytes':>7} {'POST':>5} {'median':>7} {'max ms':>7} "
        f"{'PATCH':>6} {'median':>7} {'max ms':>7} {'vs base':>8}"
    )
    for row in rows:
        post, patch = summary(row["POST"]), summary(row["PATCH"])
        print(
            f"{row['label']:<34} {row['bytes']:>7} {post[0]:>5} {post[1]:>7.1f} {post[2]:>7.1f} "
            f"{patch[0]:>6} {patch[1]:>7.1f} {patch[2]:>7.1f} "
            f"{max(post[1], patch[1]) / base:>7.1f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
