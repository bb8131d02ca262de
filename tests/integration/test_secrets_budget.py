"""The per-OAuth-app request budget is scoped to one organization (real Redis, real polls).

Keap throttles per app, so all instances of one client id share a budget; but the
client id is tenant input, and a budget keyed by it alone let a tenant spend another
tenant's requests by claiming the same client id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from app.api.server import create_app as create_api
from app.client import InstanceSpec, OAuthApp
from app.db import create_pg_pool
from app.security import SecretBox
from app.services import polling
from app.services.polling import PollDeps, run_polls
from app.services.tokens import RedisBudget
from app.settings import Settings
from app.simulator import SimulatorConfig
from app.simulator import create_app as create_sim
from app.store.polling import load_snapshot
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import api_clients, new_org_headers

pytestmark = pytest.mark.integration

BASE = "/elements/api-v2"
PER_SECOND = 3
CLIENT_ID = "shared-client-id"
ONE_RESOURCE = {"contacts": {"url": "/contacts?order=id", "idField": "id"}}


class Stack:
    def __init__(self, sim: TestClient[Any, Any], api: TestClient[Any, Any], deps: PollDeps):
        self.sim, self.api, self.deps = sim, api, deps

    async def instance(self, headers: dict[str, str]) -> int:
        spec = InstanceSpec(
            app=OAuthApp(CLIENT_ID, "csecret", "https://app.example.com/cb"),
            callback_url="http://127.0.0.1:9/events",
            name="budget test",
            refresh_minutes=1,
            poller=ONE_RESOURCE,
        )
        sim, api = api_clients(self.sim, self.api, headers)
        account = f"acct-{len(headers)}-{time.monotonic_ns()}"
        return int((await api.create_authorized(sim, spec, account))["id"])

    async def budget_of(self, instance_id: int) -> RedisBudget:
        """The budget the poll path builds for this instance."""
        async with self.deps.pg.acquire() as conn:
            snapshot = await load_snapshot(conn, instance_id)
        assert snapshot is not None
        budget = polling._client_for(self.deps, snapshot, None).budget
        assert isinstance(budget, RedisBudget)
        return budget


@pytest.fixture
async def stack(service_urls: ServiceUrls) -> AsyncIterator[Stack]:
    sim: TestClient[Any, Any] = TestClient(TestServer(create_sim(SimulatorConfig(seed=5))))
    await sim.start_server()
    sim_url = str(sim.make_url("")).rstrip("/")
    settings = Settings(
        database_url=service_urls.database_url,
        redis_url=service_urls.redis_url,
        secret_key=SECRET_KEY,
        allow_private_callbacks=True,
        min_refresh_minutes=0.01,
        infusionsoft_api_url=f"{sim_url}/crm/rest/v1",
        infusionsoft_token_url=f"{sim_url}/token",
        provider_timeout_seconds=5.0,
        provider_app_rate_per_second=PER_SECOND,
    )
    api: TestClient[Any, Any] = TestClient(TestServer(create_api(settings)))
    await api.start_server()
    redis = Redis.from_url(service_urls.redis_url)
    http = aiohttp.ClientSession()
    pg = await create_pg_pool(service_urls.database_url, 4)
    deps = PollDeps(settings, pg, redis, http, SecretBox(SECRET_KEY))
    yield Stack(sim, api, deps)
    await http.close()
    await redis.aclose()
    await pg.close()
    await api.close()
    await sim.close()


async def test_one_org_exhausting_a_client_id_does_not_delay_another_org(
    stack: Stack, service_urls: ServiceUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_a = await new_org_headers(service_urls.database_url, "budget-a")
    org_b = await new_org_headers(service_urls.database_url, "budget-b")
    a1, a2 = await stack.instance(org_a), await stack.instance(org_a)
    b = await stack.instance(org_b)
    budget_a1, budget_a2 = await stack.budget_of(a1), await stack.budget_of(a2)
    # Within one organization the app's instances still share one budget (Keap's limit).
    assert budget_a1.key == budget_a2.key

    waits: list[str] = []  # budgets org B's poll waited on
    real_sleep = RedisBudget._sleep
    polling_b = False

    async def recording_sleep(self: RedisBudget, seconds: float) -> None:
        if polling_b:
            waits.append(self.key)
        await real_sleep(self, seconds)

    monkeypatch.setattr(RedisBudget, "_sleep", recording_sleep)

    # The budget is a one-second window: the claim holds when A's spending and B's poll
    # fall in the same second; a run that straddles two seconds proves nothing and is
    # repeated.
    for _ in range(10):
        second = int(time.time())
        for budget in (budget_a1, budget_a2, budget_a1):  # org A spends all PER_SECOND
            await budget.acquire()
        polling_b = True
        [outcome] = await run_polls(stack.deps, [(b, None)], asyncio.Semaphore(4))
        polling_b = False
        assert outcome.resources, outcome
        assert not outcome.failed, outcome
        assert waits == [], "org B's poll waited on a budget org A had spent"
        if int(time.time()) == second:
            break
    else:
        pytest.fail("could not fit the scenario into one second")
    # Org A has really exhausted its budget: its next request in that window would wait.
    spent = await stack.deps.redis.get(f"{budget_a1.key}:{second}")
    assert int(spent or 0) >= PER_SECOND
