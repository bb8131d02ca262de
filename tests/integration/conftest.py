"""Fixtures for API tests: the real aiohttp app over real HTTP, real PostgreSQL and Redis,
and a local fake OAuth token endpoint standing in for Keap's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.api.server import create_app
from app.client import InstanceSpec, OAuthApp, Pollinator, Simulator
from app.db import create_engine, session_factory, transaction
from app.services.orgs import create_organization
from app.settings import Settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.support.spec_example import SPEC_CONTACTS_POLLER


class FakeTokenEndpoint:
    """Keap's ``POST /token`` with scripted answers keyed by the code."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append({"form": form, "auth": request.headers.get("Authorization")})
        code = str(form.get("code", ""))
        if code == "slow":
            await asyncio.sleep(5)
        if code == "boom":
            return web.Response(status=500, text="upstream exploded")
        if code.startswith("good"):
            return web.json_response(
                {
                    "access_token": f"AT-{code}",
                    "refresh_token": f"RT-{code}",
                    "expires_in": 86400,
                    "token_type": "bearer",
                    "scope": "full",
                }
            )
        return web.json_response(
            {"error": "invalid_grant", "error_description": "Invalid authorization code"},
            status=400,
        )


@pytest.fixture
async def token_endpoint() -> AsyncIterator[tuple[FakeTokenEndpoint, str]]:
    fake = FakeTokenEndpoint()
    app = web.Application()
    app.router.add_post("/token", fake.handle)
    server = TestServer(app)
    await server.start_server()
    yield fake, str(server.make_url("/token"))
    await server.close()


@pytest.fixture
def make_settings(
    service_urls: ServiceUrls, token_endpoint: tuple[FakeTokenEndpoint, str]
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": service_urls.database_url,
            "redis_url": service_urls.redis_url,
            "secret_key": SECRET_KEY,
            "infusionsoft_token_url": token_endpoint[1],
            "min_refresh_minutes": 1.0,
            "allow_private_callbacks": False,
            "provider_timeout_seconds": 1.0,
            **overrides,
        }
        return Settings(**values)

    return build


@pytest.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(make_settings())))
    await client.start_server()
    yield client
    await client.close()


async def new_org_headers(database_url: str, name: str = "acme") -> dict[str, str]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with transaction(session_factory(engine)) as session:
            org = await create_organization(session, name)
    finally:
        await engine.dispose()
    return {
        "Authorization": f"User {org.user_secret}, Organization {org.organization_secret}",
        "X-Org-Id": str(org.organization_id),
    }


@pytest.fixture
async def org(service_urls: ServiceUrls) -> dict[str, str]:
    return await new_org_headers(service_urls.database_url)


def api_clients(
    sim: TestClient[Any, Any], api: TestClient[Any, Any], headers: dict[str, str]
) -> tuple[Simulator, Pollinator]:
    """The typed clients of :mod:`app.client` over in-process simulator and API servers."""
    return (
        Simulator(sim.session, str(sim.make_url(""))),
        Pollinator(api.session, str(api.make_url("")), headers["Authorization"]),
    )


SPEC_EXAMPLE = InstanceSpec(
    app=OAuthApp("client-123", "client-secret-XYZ", "https://app.example.com/oauth/callback"),
    callback_url="https://93.184.215.14/events",
    tags=["crm"],
    refresh_minutes=15,
    signature_key="sig-key-ABC",
    poller={"contacts": SPEC_CONTACTS_POLLER},
)


def create_body(**config_overrides: Any) -> dict[str, Any]:
    """The SPEC §3 create body, with an external (public) callback URL.

    Each override replaces a configuration key; ``None`` removes it.
    """
    body = SPEC_EXAMPLE.body("good-code")
    config: dict[str, Any] = body["configuration"]
    for key, value in config_overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return body
