"""Schemathesis against ``/openapi.json`` of a running API: no 5xx, no broken promise.

The API runs on a real port (its own event loop in a thread, real PostgreSQL and
Redis), authenticated as an organization made for the run, with a local token
endpoint that accepts every code so creates can succeed. Path ids point at real
instances half of the time (so reads, PATCH and the delivery routes reach the
database instead of stopping at 404), and every DELETE gets a throwaway instance of
its own. Every operation of the document is one test.

``make test`` runs ``POLLINATOR_FUZZ_EXAMPLES`` (default 25) examples per operation;
``make fuzz`` raises it for depth.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.core.parameters import ParameterLocation

from app.api.openapi import build_openapi
from app.api.server import create_app
from app.db import create_engine, session_factory, transaction
from app.services.orgs import create_organization
from app.settings import Settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import create_body

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("POLLINATOR_FUZZ_EXAMPLES", "25"))
BASE = "/elements/api-v2"


@dataclass(frozen=True)
class RunningApi:
    url: str
    headers: dict[str, str]
    instance_ids: list[int]


async def _accept_every_code(request: web.Request) -> web.Response:
    form = await request.post()
    code = str(form.get("code", ""))
    return web.json_response(
        {"access_token": f"AT-{code[:20]}", "refresh_token": "RT", "expires_in": 86400}
    )


class _ServerThread:
    """The API and the token endpoint on real ports, served by an event loop of their own."""

    def __init__(self, service_urls: ServiceUrls) -> None:
        self.service_urls = service_urls
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.runners: list[web.AppRunner] = []
        self.api_url = ""
        self.headers: dict[str, str] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _site(self, app: web.Application) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _start(self) -> None:
        token_app = web.Application()
        token_app.router.add_post("/token", _accept_every_code)
        token_port = await self._site(token_app)
        settings = Settings(
            database_url=self.service_urls.database_url,
            redis_url=self.service_urls.redis_url,
            secret_key=SECRET_KEY,
            infusionsoft_token_url=f"http://127.0.0.1:{token_port}/token",
            # Fuzzed callback hosts must never be resolved: this run stays on loopback.
            allow_private_callbacks=True,
            provider_timeout_seconds=5.0,
            api_requests_per_second_per_org=0,
        )
        self.api_url = f"http://127.0.0.1:{await self._site(create_app(settings))}"
        engine = create_engine(self.service_urls.database_url, pool_size=1)
        try:
            async with transaction(session_factory(engine)) as session:
                org = await create_organization(session, f"fuzz-{uuid.uuid4().hex[:8]}")
        finally:
            await engine.dispose()
        self.headers = {
            "Authorization": f"User {org.user_secret}, Organization {org.organization_secret}"
        }

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(60), "the API did not start"

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        self.loop.close()


def _create(api_url: str, headers: dict[str, str]) -> int:
    resp = requests.post(f"{api_url}{BASE}/instances", json=create_body(), headers=headers)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["id"])


@pytest.fixture(scope="module")
def running_api(service_urls: ServiceUrls) -> Iterator[RunningApi]:
    server = _ServerThread(service_urls)
    server.start()
    try:
        ids = [_create(server.api_url, server.headers) for _ in range(3)]
        yield RunningApi(server.api_url, server.headers, ids)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_schema(running_api: RunningApi) -> Any:
    return schemathesis.openapi.from_url(f"{running_api.url}/openapi.json")


def _negative(case: Any, location: ParameterLocation) -> bool:
    info = case._meta.components.get(location) if case._meta is not None else None
    return info is not None and info.mode == GenerationMode.NEGATIVE


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """Every operation, positive and - where it has an input to break - negative."""
    cases = []
    for path, item in build_openapi()["paths"].items():
        for method, operation in item.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("security") != [] or "parameters" in operation:
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """Cases sent, by status class; printed once the module is done."""
    counts: Counter[str] = Counter()
    yield counts
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        reporter.write_line(f"schemathesis: {counts.total()} cases ({shown})")


@pytest.mark.parametrize(("method", "path", "mode"), _cases(), ids=lambda v: str(v))
def test_api_keeps_its_openapi_promises(
    api_schema: Any,
    running_api: RunningApi,
    tally: Counter[str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        params = case.path_parameters or {}
        # A negative case whose broken part is the path id or the (missing) credentials
        # must reach the API as generated; every other case is authenticated and, half
        # of the time, aimed at a real instance.
        headers = {} if _negative(case, ParameterLocation.HEADER) else running_api.headers
        if "id" in params and not _negative(case, ParameterLocation.PATH):
            if method == "DELETE":
                params["id"] = _create(running_api.url, running_api.headers)
            elif isinstance(params["id"], int) and params["id"] % 2 == 0:
                ids = running_api.instance_ids
                params["id"] = ids[params["id"] % len(ids)]
        response = case.call_and_validate(
            base_url=running_api.url,
            headers=headers,
            excluded_checks=[
                # Schema-valid bodies may still be refused on meaning (a callback on a
                # private address, a date format with an unknown letter): 400 is right.
                checks.positive_data_acceptance,
            ],
            timeout=30,
        )
        tally[f"{response.status_code // 100}xx"] += 1

    run()
